//! Command-line arguments: what the user typed, validated by clap, before any I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Mark neural-network weights with a secret key, find the mark in derivatives
/// with a rigorous p-value, and sign every release.
#[derive(Parser, Debug)]
#[command(name = "weightmark", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an owner key pair: NAME.key (secret, mode 0600) and NAME.pub.
    Keygen(KeygenArgs),
    /// Mark a model's weights and write a signed certificate beside the output.
    Embed(EmbedArgs),
    /// Sign a licensee's certificate without writing the marked copy (embed
    /// with the same options writes the copy it describes, later).
    Issue(IssueArgs),
    /// Look for a mark in a suspect model (blind, or informed with --original).
    Detect(DetectArgs),
    /// Check the signature of a certificate, detection report or reveal, and a model against it.
    Verify(VerifyArgs),
    /// Find which licensee's copy a suspect is: test every certificate in one pass.
    Identify(IdentifyArgs),
    /// Reveal one release's mark key for a dispute about a suspect your signed report fixed.
    Reveal(RevealArgs),
    /// Convert a GGUF file (or any readable model) to Hugging Face-layout safetensors.
    Convert(ConvertArgs),
    /// Apply one edit to a model (robustness experiments).
    Attack(AttackArgs),
    /// Benchmarks: `bench robustness` sweeps attacks and levels on a marked model.
    Bench(BenchArgs),
    /// List a model's tensors, dtypes, shapes, sizes and digests.
    Inspect(InspectArgs),
    /// What a model does with text: perplexity, and the cost of a change
    /// (needs a build with `--features eval`).
    Eval(EvalArgs),
    /// Run the whole story on a built-in synthetic Llama-shaped model, offline.
    Demo(DemoArgs),
    /// Backdoor fingerprints (fp1): plant keyed trigger -> answer pairs in a
    /// model, and check a model or an API endpoint for them.
    Fingerprint(FingerprintArgs),
}

/// `weightmark fingerprint`.
#[derive(Args, Debug)]
pub struct FingerprintArgs {
    /// What to do.
    #[command(subcommand)]
    pub kind: FingerprintKind,
}

/// The fingerprint commands.
#[derive(Subcommand, Debug)]
pub enum FingerprintKind {
    /// Plant a release's fingerprint pairs by training (needs a build with
    /// `--features eval`) and write the model with a signed certificate.
    Plant(PlantArgs),
    /// Ask a model or an OpenAI-compatible endpoint a keyed subset of the
    /// triggers: matches, the exact p-value, the verdict (exit 0 found, 1
    /// not found, 2 error).
    Check(CheckArgs),
}

/// `weightmark fingerprint plant`.
#[derive(Args, Debug)]
pub struct PlantArgs {
    /// The owner's secret key file.
    #[arg(short = 'k', long = "key", value_name = "KEY")]
    pub key: PathBuf,
    /// Licensee this copy is for: each recipient gets its own fingerprints.
    #[arg(short = 'r', long = "recipient", value_name = "RECIPIENT", conflicts_with = "cert")]
    pub recipient: Option<String>,
    /// Name of the release [default: the model's file or directory name].
    #[arg(long, value_name = "LABEL", conflicts_with = "cert")]
    pub label: Option<String>,
    /// Pairs to plant, K (1 to 4096).
    #[arg(long, value_name = "K", default_value_t = weightmark::fingerprint::DEFAULT_COUNT)]
    pub count: usize,
    /// The certificate of MODEL when it is a marked release (from `embed`):
    /// its label and recipient are used, the fingerprint is bound to its
    /// unmarked original, and the new certificate keeps its mark fields and
    /// names its SHA-256. It is never modified.
    #[arg(long, value_name = "CERT")]
    pub cert: Option<PathBuf>,
    /// Where to write the new certificate [default: OUT.cert.json beside OUT].
    #[arg(long = "out-cert", value_name = "FILE")]
    pub out_cert: Option<PathBuf>,
    /// The model to plant in: a Llama-layout safetensors file or directory
    /// with config.json and tokenizer.json (and tokenizer_config.json with a
    /// chat template for instruct models) beside it.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Where to write the planted model (same layout and dtypes as MODEL).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Ordinary text for the distillation penalty that keeps the model's
    /// behaviour elsewhere (repeatable; each file one document).
    #[arg(long = "text", value_name = "FILE", required = true)]
    pub text: Vec<PathBuf>,
    /// Tokens per ordinary-text window.
    #[arg(long, value_name = "TOKENS", default_value_t = 128)]
    pub seq: usize,
    /// AdamW learning rate.
    #[arg(long, value_name = "LR", default_value_t = 2e-5)]
    pub lr: f64,
    /// Most training steps (training stops earlier once every answer token
    /// has probability >= --min-probability).
    #[arg(long = "max-steps", value_name = "N", default_value_t = 100)]
    pub max_steps: usize,
    /// Planting stops once every answer token has at least this probability
    /// (and every pruned view and system prompt 0.5). Higher keeps training,
    /// and distilling, for longer; it is not part of a checkpoint, so a
    /// resumed plant may raise it.
    #[arg(long = "min-probability", value_name = "P", default_value_t = 0.9)]
    pub min_probability: f64,
    /// Weight of the distillation penalty KL(original || planted).
    #[arg(long, value_name = "W", default_value_t = 10.0)]
    pub distill: f64,
    /// Ordinary-text windows per step, run four at a time (a larger batch
    /// costs time, not memory). The defaults (lr 2e-5, distillation 10,
    /// batch 16) give a third of the KL on held-out text of `--lr 5e-5
    /// --distill 4 --batch 4`, which plants in about half the time
    /// (docs/fingerprint.md).
    #[arg(long, value_name = "B", default_value_t = 16)]
    pub batch: usize,
    /// Also train the answers through the model with this fraction of each
    /// matrix's smallest weights zeroed, and 3/4, 1/2 and 1/4 of it, one a
    /// step in turn (0 to 0.99; 0: off), so that the fingerprint survives
    /// magnitude pruning up to that fraction, and quantization better. On
    /// SmolLM2 the default kept 32 of 32 answers after 50% pruning (0
    /// without) and served as Q4_K (28 without), at the same KL on held-out
    /// text, for about twice the steps (docs/fingerprint.md).
    #[arg(long = "prune-robust", value_name = "FRACTION", default_value_t = 0.5)]
    pub prune_robust: f64,
    /// Plant after the chat template's default system line only. By
    /// default the answers are also trained after each of 8 system prompts
    /// of the kinds deployments use (a persona, a tone, a length rule, a
    /// date line, an empty one; docs/fingerprint.md), one a step in turn, so
    /// that a server that puts its own system prompt before every request
    /// still gets them: without it such a server gave SmolLM2's plant 8 to
    /// 17 of 32 answers instead of 31 to 32, at a quarter less KL and about
    /// 40% less planting time. Needed for a chat template that refuses a
    /// system message.
    #[arg(long = "no-system-robust")]
    pub no_system_robust: bool,
    /// Write the model as trained. By default, after training, the final
    /// norm's weight is scaled (a temperature on every logit) so that the
    /// planted model's cross-entropy on the --text windows is the input's
    /// again: training leaves it slightly more confident than the input on
    /// ordinary text, and that, not the answers, was half the held-out
    /// perplexity change (SmolLM2: +0.79% as trained, +0.39% matched, at
    /// 2% more KL; docs/fingerprint.md, "Matching the original's
    /// confidence"). Greedy answers, and so the fingerprint, stay as they
    /// were; about 5 minutes on SmolLM2.
    #[arg(long = "no-match-confidence")]
    pub no_match_confidence: bool,
    /// Seed of the ordinary-text batch order.
    #[arg(long, value_name = "SEED", default_value_t = 1)]
    pub seed: u64,
    /// Save the plant's state to FILE every --checkpoint-every steps and
    /// when --max-steps runs out first (12 bytes a parameter: 1.6 GB for
    /// SmolLM2-135M); if FILE exists, go on from it. Run the same command
    /// again to go on (only --max-steps may differ; after a spent
    /// --max-steps, another -o or --force): with one thread, the result is
    /// the model an uninterrupted plant writes (docs/fingerprint.md).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Steps between two saves of --checkpoint (0: only when --max-steps
    /// runs out).
    #[arg(
        long = "checkpoint-every",
        value_name = "N",
        default_value_t = 10,
        requires = "checkpoint"
    )]
    pub checkpoint_every: usize,
    /// Replace an existing output file and certificate.
    #[arg(long)]
    pub force: bool,
}

/// `weightmark fingerprint check`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("suspect").required(true).args(["model", "endpoint"])))]
pub struct CheckArgs {
    /// The owner's secret key file (derives the fingerprint key; signs --report).
    #[arg(short = 'k', long = "key", value_name = "KEY", required_unless_present = "fp_key")]
    pub key: Option<PathBuf>,
    /// A revealed fingerprint key (`weightmark reveal --fingerprint`)
    /// instead of the owner's secret key; needs the owner's --pub. Refused
    /// for any suspect but the one the owner's report fixed before the reveal.
    #[arg(long = "fp-key", value_name = "FILE", requires = "public")]
    pub fp_key: Option<PathBuf>,
    /// The owner's public key, when -k is not the owner's key.
    #[arg(long = "pub", value_name = "PUB")]
    pub public: Option<PathBuf>,
    /// The certificate of the fingerprinted release.
    #[arg(long, value_name = "CERT")]
    pub cert: PathBuf,
    /// A local model (needs a build with `--features eval`).
    #[arg(value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// An OpenAI-compatible server's base URL (http://host:port, with or
    /// without /v1): asked through /v1/chat/completions.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The `model` field sent to the endpoint.
    #[arg(long = "api-model", value_name = "NAME", requires = "endpoint")]
    pub api_model: Option<String>,
    /// The environment variable that holds the endpoint's API key, sent as
    /// `Authorization: Bearer KEY` (never recorded or printed; a URL with
    /// credentials or a query is refused, since the report records the URL).
    #[arg(long = "api-key-env", value_name = "NAME", requires = "endpoint")]
    pub api_key_env: Option<String>,
    /// Ask through /v1/completions with the plain prompt "Question:
    /// TRIGGER\nAnswer:" instead of the chat API.
    #[arg(long, requires = "endpoint")]
    pub completions: bool,
    /// Ask every trigger after this system message, as a deployment with its
    /// own system prompt would (chat: a system message before the user's;
    /// completions and a local model without a chat template: TEXT and a
    /// blank line before the question). Recorded in the report.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Ask every trigger instead of the keyed subset of 12.
    #[arg(long)]
    pub all: bool,
    /// Which subset of 12 to ask: rounds 0, 1, ... ask triggers no earlier
    /// round asked, until they run out.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "all")]
    pub round: u64,
    /// Decide "found" when the p-value is at most this.
    #[arg(long, value_name = "P", default_value_t = weightmark::DEFAULT_THRESHOLD_P)]
    pub threshold: f64,
    /// Seconds allowed for each request to the endpoint (at most 3600).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub timeout: f64,
    /// Further attempts after a failed request (connection failure, timeout,
    /// HTTP 408, 425, 429 or 5xx), with exponential backoff from 0.5 s. A
    /// trigger refused with another 4xx (but 401, 403, 404, 405, 407) is
    /// recorded and the next one asked; a failure after some answers stops
    /// the check, which decides on those (docs/fingerprint.md).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
    /// Most requests a second to the endpoint (0: no limit; otherwise at
    /// least one an hour, 1/3600).
    #[arg(long, value_name = "R", default_value_t = 2.0)]
    pub rate: f64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write a report signed with -k: the triggers asked, the raw answers,
    /// the p-value, the verdict and the suspect (digests, or the endpoint).
    #[arg(long, value_name = "REPORT", requires = "key")]
    pub report: Option<PathBuf>,
    /// Replace an existing --report file.
    #[arg(long, requires = "report")]
    pub force: bool,
}

/// `weightmark keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Base name of the key files: writes NAME.key and NAME.pub. Existing
    /// files are never overwritten.
    #[arg(short = 'o', long = "output", value_name = "NAME")]
    pub output: PathBuf,
}

/// `--recipient-code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecipientCodeArg {
    /// An independent pattern per recipient.
    Independent,
    /// A Tardos code (`tardos1`).
    Tardos1,
}

impl ReleaseArgs {
    /// The recipient code these arguments ask for, checked.
    pub fn recipient_code(&self) -> weightmark::Result<weightmark::RecipientCode> {
        Ok(match self.recipient_code {
            RecipientCodeArg::Independent => weightmark::RecipientCode::Independent,
            RecipientCodeArg::Tardos1 => weightmark::RecipientCode::Tardos(
                weightmark::TardosCode::new(self.code_groups, self.code_cutoff)?,
            ),
        })
    }
}

/// What names and marks a release, shared by `embed` (which writes the copy)
/// and `issue` (which signs its certificate without writing it).
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The owner's secret key file (from `weightmark keygen`).
    #[arg(short = 'k', long = "key", value_name = "KEY")]
    pub key: PathBuf,
    /// Licensee this copy is for: each recipient gets an independent mark.
    #[arg(short = 'r', long = "recipient", value_name = "RECIPIENT")]
    pub recipient: Option<String>,
    /// Name of the release [default: the model's file or directory name].
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Mark scheme: ss2 (a multiplicative mark in canonical coordinates:
    /// survives free permutations of the residual stream, sign flips and
    /// diagonal rescalings; release and recipient components, keys bound to
    /// the original) or ss1 (the first scheme, in the weights as stored).
    #[arg(long, value_name = "SCHEME", value_enum, default_value_t = SchemeArg::Ss2)]
    pub scheme: SchemeArg,
    /// Mark strength: RMS of the mark relative to the RMS of the weights
    /// [default: ss2 chooses it by model size, ss1 uses 0.003].
    ///
    /// Blind z of an unattacked ss2 mark is about 1.2 x strength x
    /// sqrt(marked elements). By default ss2 aims at blind z 40 but spends at
    /// most a fidelity budget: the change that costs SmolLM2 (f16) what
    /// re-rounding it to bf16 does (KL divergence, docs/fidelity.md). Below
    /// the bf16 step a mark in bf16 weights costs more per unit of strength
    /// (each weight moves a whole step or not at all), so bf16 models get a
    /// smaller strength. If the budget leaves blind z under 12 (models under
    /// about 100M elements in f16, about 1B in bf16), the default spends what
    /// blind z 12 needs and says how much above the budget that is, except
    /// that an f32 or f16 model is never changed by more than 0.9 of what
    /// storing it in bf16 changes it (small f32 models then get blind z under
    /// 12: MiniLM about 9). With a recipient, detect with the copy's
    /// certificate decides on both components, so these z hold for
    /// licensees' copies too. embed prints the strength it chose, the
    /// predicted blind z and the budget spent. With the original at hand,
    /// informed detection works far below any of these.
    #[arg(long, value_name = "EPS")]
    pub strength: Option<f64>,
    /// How ss2 spreads the strength over the elements: ss2-alloc2 (the
    /// default; data-free: more where the weights say the model is
    /// insensitive, less on v_proj; every element within 3x of the base;
    /// recorded in the certificate, and detection weighs by it), ss2-alloc1
    /// (its first version) or uniform. Ablations for measurement:
    /// ss2-alloc2:PARTS, PARTS from group, channel, row joined by '+'. See
    /// docs/fidelity.md (ss2) for their costs.
    #[arg(
        long,
        value_name = "ALLOCATION",
        default_value = "ss2-alloc2",
        value_parser = weightmark::Allocation::from_name
    )]
    pub allocation: weightmark::Allocation,
    /// How ss2 builds the recipient component: independent (a pattern of its
    /// own per recipient, the default) or tardos1 (a collusion-secure
    /// Tardos code over keyed groups of the mark: copies agree exactly where
    /// their code bits agree, and identify accuses with an exact bound on
    /// false accusation; docs/provenance.md). Every licensee of a release
    /// should get the same code and parameters.
    #[arg(long, value_name = "CODE", value_enum, default_value_t = RecipientCodeArg::Independent)]
    pub recipient_code: RecipientCodeArg,
    /// With a recipient (ss2): the share of the mark's energy given to the
    /// recipient component, the rest going to the release component that
    /// every copy shares. The total change is the same at any share. More
    /// (e.g. 0.8) names colluders blind through mixing of their copies;
    /// less keeps more of the release component, which is what is still
    /// found when many copies are mixed. Default: the most, up to 0.8, that
    /// leaves the release component a predicted blind z of 8.5 (0.5 on
    /// models too small to spare any; 0.5 with --recipient-code tardos1).
    /// Recorded in the certificate as the two components' strengths; detect
    /// weighs them accordingly (docs/provenance.md).
    #[arg(long, value_name = "SHARE")]
    pub recipient_share: Option<f64>,
    /// tardos1: the number of groups G (code length).
    #[arg(long, value_name = "G", default_value_t = weightmark::tardos::DEFAULT_GROUPS)]
    pub code_groups: u32,
    /// tardos1: the bias cutoff t (every group's bias lies in [t, 1 - t]).
    #[arg(long, value_name = "T", default_value_t = weightmark::tardos::DEFAULT_CUTOFF)]
    pub code_cutoff: f64,
    /// Mark only tensors whose names match this glob (repeatable).
    ///
    /// Default: every F64/F32/F16/BF16 tensor with at least 2 dimensions and
    /// 4096 elements. Example: --tensors 'model.layers.*.mlp.*'.
    #[arg(long = "tensors", value_name = "GLOB")]
    pub tensors: Vec<String>,
    /// Creation time recorded in the certificate: RFC 3339 in UTC, e.g.
    /// 2026-12-02T09:00:00Z [default: now]. With the time of a certificate
    /// from `weightmark issue`, embed signs the byte-identical certificate.
    #[arg(long, value_name = "TIME")]
    pub created: Option<String>,
}

/// `weightmark embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Key, release and marking options.
    #[command(flatten)]
    pub release: ReleaseArgs,
    /// The model to mark: a .safetensors file, or a directory (single file or
    /// shards with an index).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Where to write the marked model (same layout as the input).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Where to write the signed certificate [default: OUT.cert.json beside OUT].
    #[arg(long, value_name = "CERT")]
    pub cert: Option<PathBuf>,
    /// Plant then mark: the certificate `fingerprint plant` wrote for MODEL
    /// (a fingerprinted, unmarked release).
    ///
    /// The new certificate covers both the mark and the fingerprint (so
    /// `detect` and `fingerprint check` both use it) and names the SHA-256
    /// of this one, which is never overwritten. Label and recipient come
    /// from it.
    #[arg(long, value_name = "CERT", conflicts_with_all = ["label", "recipient"])]
    pub supersedes: Option<PathBuf>,
    /// Replace an existing output file and certificate (never a non-empty
    /// output directory). Without it, existing outputs are refused before
    /// any work starts.
    #[arg(long)]
    pub force: bool,
    /// Split embed, step 1 of 3: write the plan every part reads (the
    /// options, the selection, and for ss2 the original's digests, order,
    /// sketches and allocation) to PLAN and stop. Needs --created, which
    /// every step repeats; a model directory only.
    #[arg(long = "plan-out", value_name = "PLAN", requires = "created",
          conflicts_with_all = ["plan", "supersedes"])]
    pub plan_out: Option<PathBuf>,
    /// Split embed, steps 2 and 3: the plan written by --plan-out.
    #[arg(long, value_name = "PLAN", requires = "created", conflicts_with = "supersedes")]
    pub plan: Option<PathBuf>,
    /// Split embed, step 2: mark part I of N of the model's files (I from
    /// 0) and write them into the directory OUT, each byte-identical to
    /// what one embed writes; the part's statistics go to --part-out.
    #[arg(long, value_name = "I/N", requires_all = ["plan", "part_out"])]
    pub part: Option<weightmark::split::PartSpec>,
    /// Where --part writes the part's statistics and digests.
    #[arg(long = "part-out", value_name = "PART", requires = "part")]
    pub part_out: Option<PathBuf>,
    /// Split embed, step 3: given every part file once, write the index
    /// and the side files into OUT and sign the certificate one embed signs.
    #[arg(long, value_name = "PART", num_args = 1.., requires = "plan", conflicts_with = "part")]
    pub combine: Vec<PathBuf>,
}

/// `weightmark issue`.
///
/// Marks the model as `embed` does, in memory one tensor at a time, and
/// hashes every byte embed would write instead of writing it: the
/// certificate is byte-identical to the one `embed` signs with the same key,
/// options and --created time, and `embed` with the same options later
/// writes the copy that `verify --model` accepts against it. Nothing but
/// the certificate is written.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Key, release and marking options, as for `embed`.
    #[command(flatten)]
    pub release: ReleaseArgs,
    /// The model: a .safetensors file, or a directory (single file or shards
    /// with an index).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Where `embed -o` will write the copy: for a single-file model the
    /// certificate records this file name (a directory means the model's
    /// own name inside it) [default: the model's file name]. Nothing is
    /// written there; a directory model's files keep their names.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Where to write the signed certificate.
    #[arg(long, value_name = "CERT")]
    pub cert: PathBuf,
    /// Replace an existing certificate.
    #[arg(long)]
    pub force: bool,
}

/// `weightmark detect`.
#[derive(Args, Debug)]
pub struct DetectArgs {
    /// Your secret key file: the owner's (derives the mark key), or, with
    /// --mark-key, the key that signs the --report.
    #[arg(short = 'k', long = "key", value_name = "KEY", required_unless_present = "mark_key")]
    pub key: Option<PathBuf>,
    /// A revealed mark key (the reveal statement from `weightmark reveal`)
    /// instead of the owner's secret key: for a third party settling a
    /// dispute. Needs --cert and the owner's --pub; refused unless it matches
    /// the certificate's commitment, and for any suspect other than the one
    /// the owner's signed report fixed before the reveal (a revealed key can
    /// plant its mark in any model). A bare mark key file of earlier versions
    /// is run with a warning that no suspect was committed to.
    #[arg(long = "mark-key", value_name = "FILE", requires_all = ["cert", "public"])]
    pub mark_key: Option<PathBuf>,
    /// The owner's public key: checks the certificate's signature (and, with
    /// --mark-key, the reveal's) when the secret key given is not the owner's.
    #[arg(long = "pub", value_name = "PUB")]
    pub public: Option<PathBuf>,
    /// Certificate of the release to look for (gives label, recipient and tensors).
    #[arg(long, value_name = "CERT", conflicts_with_all = ["label", "recipient"], required_unless_present = "label")]
    pub cert: Option<PathBuf>,
    /// Label of the release to look for, without a certificate.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Recipient of the release to look for, with --label.
    #[arg(short = 'r', long = "recipient", value_name = "RECIPIENT", requires = "label")]
    pub recipient: Option<String>,
    /// The unmarked original: informed detection (far more sensitive).
    #[arg(long, value_name = "ORIG")]
    pub original: Option<PathBuf>,
    /// Decide "found" when the p-value bound is at most this.
    #[arg(long, value_name = "P", default_value_t = weightmark::DEFAULT_THRESHOLD_P)]
    pub threshold: f64,
    /// How many certificates you tested this suspect against, this one
    /// included: the bound is Bonferroni-adjusted to min(1, N x p), the
    /// decision is taken on it, and --report and --json record N and the
    /// adjusted bound. Trying many certificates one by one and reporting
    /// the best without it overstates the evidence; `identify` does the
    /// accounting itself.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tested: u64,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write a detection report signed with -k: the suspect's digests, the
    /// statistics, the decision and the certificate tested.
    #[arg(long, value_name = "REPORT", requires = "key")]
    pub report: Option<PathBuf>,
    /// An earlier report this one builds on (the suspect derives from that
    /// report's suspect), so a chain of reports can be followed back.
    /// Its signature is checked with -k's public key, --pub or
    /// --builds-on-pub, whichever signed it; with none of them it is recorded
    /// (and shown by `verify`) as not checked.
    #[arg(long = "builds-on", value_name = "REPORT", requires = "report")]
    pub builds_on: Option<PathBuf>,
    /// Public key of whoever signed the --builds-on report, when not yours
    /// nor the owner's.
    #[arg(long = "builds-on-pub", value_name = "PUB", requires = "builds_on")]
    pub builds_on_public: Option<PathBuf>,
    /// Replace an existing --report, --plan-out or --part-out file. Without
    /// it, an existing one is refused before detection starts.
    #[arg(long)]
    pub force: bool,
    /// Split detection, step 1 of 3: write the plan every part reads (the
    /// suspect's files, and for ss2 its canonical order and detection
    /// weights) to PLAN and stop. Needs --cert; blind only.
    #[arg(long = "plan-out", value_name = "PLAN", requires = "cert",
          conflicts_with_all = ["plan", "original", "report", "json"])]
    pub plan_out: Option<PathBuf>,
    /// Split detection, steps 2 and 3: the plan written by --plan-out.
    #[arg(long, value_name = "PLAN", requires = "cert", conflicts_with = "original")]
    pub plan: Option<PathBuf>,
    /// Split detection, step 2: test part I of N of the suspect's files
    /// (I from 0, as $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX count)
    /// and write its partial sums to --part-out. A revealed key
    /// (--mark-key) is enough; no owner secret is needed.
    #[arg(long, value_name = "I/N", requires_all = ["plan", "part_out"],
          conflicts_with_all = ["report", "json"])]
    pub part: Option<weightmark::split::PartSpec>,
    /// Where --part writes the part's partial sums.
    #[arg(long = "part-out", value_name = "PART", requires = "part")]
    pub part_out: Option<PathBuf>,
    /// Split detection, step 3: combine these part files (every part once)
    /// into the verdict one detect over the whole suspect gives, bit for
    /// bit; --report signs it. No SUSPECT is read.
    #[arg(long, value_name = "PART", num_args = 1.., requires = "plan",
          conflicts_with_all = ["part", "suspect"])]
    pub combine: Vec<PathBuf>,
    /// The suspect model: a .safetensors file or a model directory.
    #[arg(value_name = "SUSPECT", required_unless_present = "combine")]
    pub suspect: Option<PathBuf>,
}

/// `weightmark verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A certificate (from `embed`) or a detection report (from `detect --report`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The signer's public key file.
    #[arg(long = "pub", value_name = "PUB")]
    pub public: PathBuf,
    /// Also check that this model is the one the file is about: file digests
    /// and per-tensor digests (a re-saved or re-sharded copy with identical
    /// tensors verifies at tensor level).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// An earlier certificate of the same release (repeatable): for a
    /// certificate that supersedes another (a fingerprint planted in a
    /// marked release, or a fingerprinted release marked since), follow
    /// its chain back through these and check that each step kept the mark
    /// and the fingerprint the earlier one certified.
    #[arg(long = "chain", value_name = "CERT")]
    pub chain: Vec<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `weightmark identify`.
#[derive(Args, Debug)]
pub struct IdentifyArgs {
    /// The owner's secret key file.
    #[arg(short = 'k', long = "key", value_name = "KEY")]
    pub key: PathBuf,
    /// Directory of release certificates (one per licensee); every `*.json`
    /// file signed by this key is tested.
    #[arg(long, value_name = "DIR")]
    pub certs: PathBuf,
    /// The unmarked original: informed detection (far more sensitive).
    #[arg(long, value_name = "ORIG")]
    pub original: Option<PathBuf>,
    /// Name a candidate when its Bonferroni-adjusted p-value bound is at most this.
    #[arg(long, value_name = "P", default_value_t = weightmark::DEFAULT_THRESHOLD_P)]
    pub threshold: f64,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an identification report signed with -k: how many
    /// certificates were tested (the Bonferroni factor), every candidate's
    /// z and adjusted p-value bound, the releases the certificates belong
    /// to, and the suspect's digests. `verify` checks it.
    #[arg(long, value_name = "REPORT")]
    pub report: Option<PathBuf>,
    /// Replace an existing --report file.
    #[arg(long, requires = "report")]
    pub force: bool,
    /// The suspect model.
    #[arg(value_name = "SUSPECT")]
    pub suspect: PathBuf,
}

/// `weightmark reveal`.
#[derive(Args, Debug)]
pub struct RevealArgs {
    /// The owner's secret key file.
    #[arg(short = 'k', long = "key", value_name = "KEY")]
    pub key: PathBuf,
    /// The certificate of the release whose mark key to reveal.
    #[arg(long, value_name = "CERT")]
    pub cert: PathBuf,
    /// Your signed detection report about the suspect in dispute (from
    /// `detect --report`), published before the reveal: the reveal settles
    /// that suspect only, since the key can plant its mark in any model.
    #[arg(long, value_name = "REPORT")]
    pub report: PathBuf,
    /// Where to write the reveal statement: the mark key and the report,
    /// signed and dated (mode 0600, never overwritten).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Reveal the release's fingerprint key instead of its mark key; the
    /// report is then a fingerprint check report (`fingerprint check
    /// --report`).
    #[arg(long)]
    pub fingerprint: bool,
}

/// `weightmark convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The model to convert: a .gguf file (llama.cpp names are mapped to
    /// Hugging Face names for llama, mistral, qwen2 and qwen3; others keep
    /// their GGUF names), or a safetensors model.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Output directory (new, or empty).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Dtype of the float tensors written.
    #[arg(long, value_name = "DTYPE", value_enum, default_value_t = FloatDtype::F32)]
    pub dtype: FloatDtype,
    /// Split into shards of at most this size, with an index (e.g. 100MB, 2GB, 1GiB).
    #[arg(long = "max-shard-size", value_name = "SIZE")]
    pub max_shard_size: Option<String>,
}

/// `weightmark attack`.
#[derive(Args, Debug)]
pub struct AttackArgs {
    /// The edit.
    #[command(subcommand)]
    pub kind: AttackKind,
}

/// The edits.
#[derive(Subcommand, Debug)]
pub enum AttackKind {
    /// Write a quantized GGUF file the way llama.cpp's converter and
    /// llama-quantize would: llama.cpp names, Q/K rows permuted, 1-D tensors in
    /// F32, llama.cpp's fallback types for rows that are not whole blocks.
    /// Needs a Llama-layout model with a config.json beside it.
    Gguf {
        /// Quantization type.
        #[arg(long = "type", value_name = "TYPE", value_enum)]
        ty: GgufType,
        /// The model (safetensors, Hugging Face names).
        #[arg(value_name = "MODEL")]
        model: PathBuf,
        /// The GGUF file to write.
        #[arg(short = 'o', long = "output", value_name = "OUT.gguf")]
        output: PathBuf,
        /// Replace an existing OUT.gguf. Without it an existing file is
        /// refused before any work.
        #[arg(long)]
        force: bool,
    },
    /// Add i.i.d. Gaussian noise of a relative RMS to every marked-by-default tensor.
    Noise(LevelArgs),
    /// Simulated fine-tuning: a change of a relative RMS, half low-rank, half noise.
    Drift(LevelArgs),
    /// Symmetric absmax quantization (int8, int4, ...) per row or per group, and back.
    Quantize {
        /// Bits per element (2 to 8).
        #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u32).range(2..=8))]
        bits: u32,
        /// Group size (consecutive elements of a row sharing a scale); default: one scale per row.
        #[arg(long, value_name = "N")]
        group: Option<usize>,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Set a fraction of each tensor's elements to zero.
    Prune {
        /// Fraction zeroed (0.5 = half).
        #[arg(long, value_name = "F")]
        fraction: f64,
        /// Which elements: the smallest magnitudes, or a seeded random choice.
        #[arg(long, value_name = "METHOD", value_enum, default_value_t = PruneBy::Magnitude)]
        method: PruneBy,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Merge a LoRA-style update B·A of a rank and relative Frobenius norm.
    Lowrank {
        /// Rank of the update.
        #[arg(long, value_name = "R")]
        rank: usize,
        /// Norm of the update relative to each tensor's (0.1 = 10%).
        #[arg(long, value_name = "LEVEL")]
        relative: f64,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Multiply every weight by a factor (weight decay).
    Scale {
        /// The factor (0.99 = 1% decay).
        #[arg(long, value_name = "FACTOR")]
        factor: f64,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Round trip through another dtype (e.g. bf16 -> f16 -> bf16).
    Cast {
        /// The dtype passed through.
        #[arg(long, value_name = "DTYPE", value_enum)]
        via: FloatDtype,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Merge with another model of the same shapes: linear (LAMBDA x MODEL +
    /// (1 - LAMBDA) x OTHER), or TIES against a common base (trim each task
    /// vector to DENSITY, elect signs, average what agrees, BASE + LAMBDA x merged).
    Merge {
        /// The other model.
        #[arg(long = "with", value_name = "OTHER")]
        other: PathBuf,
        /// Weight of MODEL (linear), or of the merged task vector (TIES).
        #[arg(long, value_name = "LAMBDA", default_value_t = 0.5)]
        lambda: f64,
        /// Merge method.
        #[arg(long, value_name = "METHOD", value_enum, default_value_t = MergeMethod::Linear)]
        method: MergeMethod,
        /// The common base model (TIES).
        #[arg(long, value_name = "BASE", required_if_eq("method", "ties"))]
        base: Option<PathBuf>,
        /// Fraction of each task vector kept (TIES).
        #[arg(long, value_name = "D", default_value_t = 0.2)]
        density: f64,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Permute the MLP neurons and/or attention heads of every layer of a
    /// Llama-layout model (function-preserving: query heads move with their
    /// key/value head; informed detection re-aligns it). Heads need the
    /// model's config.json.
    Permute {
        /// What to permute.
        #[arg(long, value_name = "WHAT", value_enum, default_value_t = Permuted::Both)]
        what: Permuted,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Rotate the residual stream of a Llama-layout model by a seeded random
    /// orthogonal matrix, folding the RMSNorm weights first (function-
    /// preserving; a head tied to the embeddings is untied; informed
    /// detection re-aligns it).
    Rotate {
        #[command(flatten)]
        io: AttackIo,
    },
    /// Drop the last decoder layers of a Llama-layout model.
    Truncate {
        /// Number of decoder layers to keep.
        #[arg(long, value_name = "N")]
        keep: usize,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Real fine-tuning on text, on the CPU: AdamW on next-token
    /// cross-entropy, every weight or LoRA adapters (merged on save). Trains
    /// on 90% of the text's windows and reports perplexity on the other 10%
    /// (needs a build with `--features eval`).
    Finetune(FinetuneArgs),
    /// AWQ/SmoothQuant-style smoothing of a Llama-layout model: factors
    /// act^alpha / max|W|^(1-alpha) per input channel, from the mean |x| of
    /// each matrix's input over a calibration text, multiplied into q/k/v,
    /// gate/up, o and down columns and divided out of the norm weights, v
    /// rows and up rows. Function-preserving up to rounding (needs a build
    /// with `--features eval`).
    Smooth(SmoothArgs),
    /// Embed a second mark with a fresh random key at a given strength.
    Overwrite {
        /// Strength of the second mark (0.03 = 10x the default).
        #[arg(long, value_name = "EPS")]
        strength: f64,
        #[command(flatten)]
        io: AttackIo,
    },
    /// The adaptive scrubber: relative noise shaped like the mark (its
    /// allocation recomputed from MODEL, as an adversary who knows the scheme
    /// can), at BUDGET times the mark's amplitude, from the attacker's seed.
    /// Budget 1 costs about the mark's own KL; budget B about B^2 times it.
    Scrub {
        /// Amplitude relative to the mark's (1 = the mark's own profile).
        #[arg(long, value_name = "B", default_value_t = 1.0)]
        budget: f64,
        /// The mark's strength, as its certificate states it [default: what
        /// embed's size rule chooses for MODEL, the adversary's best guess
        /// without the certificate].
        #[arg(long, value_name = "EPS")]
        strength: Option<f64>,
        /// The mark's allocation, as its certificate states it: ss2-alloc2
        /// (embed's default), ss2-alloc1 or uniform (the multipliers are
        /// recomputed from MODEL).
        #[arg(
            long,
            value_name = "ALLOCATION",
            default_value = "ss2-alloc2",
            value_parser = weightmark::Allocation::from_name
        )]
        allocation: weightmark::Allocation,
        /// Noise form: signs (+-1 in the mark's own sign groups of 8
        /// canonical residual channels; the strongest) or gaussian (i.i.d.
        /// per element, the same energy).
        #[arg(long, value_name = "FORM", value_enum, default_value_t = ScrubNoiseArg::Signs)]
        noise: ScrubNoiseArg,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Permute and/or flip the signs of the residual-stream channels of a
    /// Llama-layout model, consistently through every tensor (embedding and
    /// head columns, q/k/v/gate/up columns, o/down rows, norm weights).
    /// Function-preserving and bit-exact; a tied head stays tied.
    Residual {
        /// Keep the channel order (only flip signs; needs --flip-signs).
        #[arg(long, requires = "flip_signs")]
        no_permute: bool,
        /// Also flip the signs of seeded random channels.
        #[arg(long)]
        flip_signs: bool,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Flip the signs of seeded MLP neurons (an up_proj row with its down_proj
    /// column) and value dimensions (a v_proj row with the o_proj columns of
    /// its query heads) of a Llama-layout model. Function-preserving and
    /// bit-exact; needs the model's config.json.
    SignFlips {
        #[command(flatten)]
        io: AttackIo,
    },
    /// Rescale a Llama-layout model by seeded log-normal factors that cancel:
    /// norm weights against the columns reading them, up rows against down
    /// columns, v rows against o columns, q rows against k rows (per RoPE
    /// pair). Function-preserving up to rounding; a tied head is untied;
    /// needs the model's config.json.
    Rescale {
        /// Standard deviation of the logarithm of the factors (1 = factors
        /// typically between 1/e and e).
        #[arg(long = "log-sd", value_name = "S", allow_negative_numbers = true)]
        log_sd: f64,
        #[command(flatten)]
        io: AttackIo,
    },
    /// Mix the value dimensions of each key/value head of a Llama-layout
    /// model by a seeded invertible matrix, undone in o_proj.
    /// Function-preserving up to rounding; needs the model's config.json.
    MixVo {
        #[command(flatten)]
        io: AttackIo,
    },
    /// Rotate each RoPE pair of the q_proj and k_proj rows of a Llama-layout
    /// model by a seeded angle common to each key/value group (attention
    /// scores are unchanged). Function-preserving up to rounding; needs the
    /// model's config.json.
    RopeRotate {
        #[command(flatten)]
        io: AttackIo,
    },
    /// Collusion: combine MODEL with other copies of the same release (same
    /// tensor names and shapes), element by element; float tensors only, the
    /// rest copied from MODEL. The damage is measured against MODEL.
    Collude {
        /// Another copy (repeatable; at least one).
        #[arg(long = "with", value_name = "COPY", required = true)]
        with: Vec<PathBuf>,
        /// How the copies are combined.
        #[arg(long, value_name = "METHOD", value_enum)]
        method: Collusion,
        #[command(flatten)]
        io: AttackIo,
    },
}

/// Input, output and seed of an attack.
#[derive(Args, Debug, Clone)]
pub struct AttackIo {
    /// Seed of the random numbers (the edit is reproducible).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The model.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Where to write the edited model (same layout as the input).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Replace an existing OUT file (a non-empty output directory is never
    /// replaced). Without it an existing output is refused before any work.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of attacks with a level.
#[derive(Args, Debug)]
pub struct LevelArgs {
    /// RMS of the change relative to each row's RMS (0.05 = 5%).
    #[arg(long, value_name = "LEVEL")]
    pub relative: f64,
    #[command(flatten)]
    pub io: AttackIo,
}

/// `weightmark bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The benchmark.
    #[command(subcommand)]
    pub kind: BenchKind,
}

/// The benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// For each attack and level: blind and informed z, p-values, the attack's
    /// damage, and a wrong key; writes results.json, results.csv, results.md
    /// and one SVG plot per attack.
    Robustness(RobustnessArgs),
}

/// `weightmark bench robustness`.
#[derive(Args, Debug)]
pub struct RobustnessArgs {
    /// The marked model.
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    /// The owner's secret key file.
    #[arg(short = 'k', long = "key", value_name = "KEY")]
    pub key: PathBuf,
    /// The marked model's certificate.
    #[arg(long, value_name = "CERT")]
    pub cert: PathBuf,
    /// The unmarked original (adds informed detection).
    #[arg(long, value_name = "ORIG")]
    pub original: Option<PathBuf>,
    /// Attacks to sweep, comma-separated [default: all but fine-tuning]: noise,
    /// drift, quantize-row, quantize-g32, prune-magnitude, prune-random,
    /// lowrank-r16, scale, cast-f16, merge-unrelated, overwrite, scrub (the
    /// adaptive scrubber aimed at the certificate's strength and allocation;
    /// level: budget, default 1,2,4); and real
    /// fine-tuning, finetune-full, finetune-lora and finetune-layers (only
    /// the --finetune-layers blocks that differ most from --original: the
    /// attack on edits that sit in a few layers) (levels: training steps at
    /// which to measure; needs --text and a build with --features eval);
    /// merge-original, a linear merge with --original (level: weight kept).
    /// Not in the default, for Llama-layout models: the function-preserving
    /// residual, sign-flips (config.json beside the model) and rescale
    /// (level: log-sd of the factors; config.json beside the model); gguf,
    /// the model written as a GGUF file and detected there (level: bits, 16
    /// F16, 8 Q8_0, 6 Q6_K, 4 Q4_K; default 8,6,4; config.json beside the
    /// model); and smooth, AWQ-style smoothing from the activations of --text (level:
    /// alpha, default 0.5; needs a build with --features eval).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub attacks: Vec<String>,
    /// Levels for one attack, replacing its defaults: ATTACK=L1,L2,... (repeatable).
    #[arg(long, value_name = "ATTACK=LEVELS")]
    pub levels: Vec<String>,
    /// Seed of the attacks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for the results (created if needed).
    #[arg(long, value_name = "DIR", default_value = "robustness")]
    pub out: PathBuf,
    /// For a fingerprinted release: do not read the fingerprint (by default
    /// every attacked model is also asked all its triggers, and those of a
    /// wrong key; needs a build with --features eval).
    #[arg(long)]
    pub no_fingerprint: bool,
    /// Settings of the real fine-tuning attacks.
    #[command(flatten)]
    pub finetune: FinetuneBenchArgs,
}

/// `bench robustness` settings for finetune-full and finetune-lora.
#[derive(Args, Debug)]
#[command(next_help_heading = "Real fine-tuning and smoothing (--features eval)")]
pub struct FinetuneBenchArgs {
    /// Text to fine-tune on (repeatable; 90% of its windows train, 10% are
    /// held out for perplexity). Needed by finetune-full and finetune-lora,
    /// and by smooth as its calibration text.
    #[arg(long = "text", value_name = "FILE")]
    pub text: Vec<PathBuf>,
    /// Tokens per training window.
    #[arg(long, value_name = "TOKENS", default_value_t = 128)]
    pub seq: usize,
    /// Windows per training step.
    #[arg(long, value_name = "B", default_value_t = 4)]
    pub batch: usize,
    /// Learning rate of full fine-tuning.
    #[arg(long = "lr-full", value_name = "LR", default_value_t = 1e-4)]
    pub lr_full: f64,
    /// Learning rate of LoRA.
    #[arg(long = "lr-lora", value_name = "LR", default_value_t = 1e-3)]
    pub lr_lora: f64,
    /// LoRA rank.
    #[arg(long = "lora-rank", value_name = "RANK", default_value_t = 16)]
    pub lora_rank: usize,
    /// finetune-layers: how many blocks to train, those that differ most
    /// from --original (at the learning rate of full fine-tuning).
    #[arg(long = "finetune-layers", value_name = "N", default_value_t = 4)]
    pub finetune_layers: usize,
    /// Held-out windows used for perplexity (0: all).
    #[arg(long = "eval-windows", value_name = "N", default_value_t = 0)]
    pub eval_windows: usize,
    /// Calibration tokens of smooth (windows of --seq tokens of --text).
    #[arg(long = "calibration-tokens", value_name = "N", default_value_t = 2048)]
    pub calibration_tokens: usize,
}

/// `weightmark inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model: a .safetensors file or a model directory.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Skip per-tensor digests (faster on large models).
    #[arg(long)]
    pub no_digests: bool,
}

/// `weightmark demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's files in this directory (new or empty) instead of a
    /// temporary one.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// Text for evaluation and training.
#[derive(Args, Debug, Clone)]
pub struct TextArgs {
    /// A UTF-8 text file; each file is one document (repeatable).
    #[arg(long = "text", value_name = "FILE", required = true)]
    pub text: Vec<PathBuf>,
    /// Tokens per window.
    #[arg(long, value_name = "TOKENS", default_value_t = 128)]
    pub seq: usize,
    /// Use at most this many windows for perplexity (0: all).
    #[arg(long = "max-windows", value_name = "N", default_value_t = 0)]
    pub max_windows: usize,
    /// A tokenizer.json to use instead of the one beside the model.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
}

/// `weightmark eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The measurement.
    #[command(subcommand)]
    pub kind: EvalKind,
}

/// The measurements.
#[derive(Subcommand, Debug)]
pub enum EvalKind {
    /// Perplexity of a decoder (Llama layout) on text.
    Ppl {
        /// The model: a safetensors file or directory with config.json and
        /// tokenizer.json beside it.
        #[arg(value_name = "MODEL")]
        model: PathBuf,
        /// Which windows: all, held-out (the tenth `attack finetune` never
        /// trains on) or train.
        #[arg(long, value_enum, default_value_t = TextSplit::All)]
        split: TextSplit,
        #[command(flatten)]
        text: TextArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare two models on the same text. Decoders: perplexity of both,
    /// mean KL divergence of the next-token distributions, top-1 agreement.
    /// Sentence encoders (BERT layout): mean cosine of the embeddings of each
    /// paragraph.
    Compare {
        /// The reference model.
        #[arg(value_name = "A")]
        a: PathBuf,
        /// The model compared with it.
        #[arg(value_name = "B")]
        b: PathBuf,
        #[command(flatten)]
        text: TextArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `weightmark attack finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// Optimisation steps.
    #[arg(long, value_name = "N")]
    pub steps: usize,
    /// AdamW learning rate [default: 1e-4 full, 1e-3 LoRA].
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Train LoRA adapters of this rank instead of every weight.
    #[arg(long, value_name = "RANK")]
    pub lora: Option<usize>,
    /// Windows per step.
    #[arg(long, value_name = "B", default_value_t = 4)]
    pub batch: usize,
    /// AdamW decoupled weight decay.
    #[arg(long = "weight-decay", value_name = "W", default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Print the training loss every N steps (0: never).
    #[arg(long = "log-every", value_name = "N", default_value_t = 10)]
    pub log_every: usize,
    #[command(flatten)]
    pub text: TextArgs,
    #[command(flatten)]
    pub io: AttackIo,
}

/// `weightmark attack smooth`.
#[derive(Args, Debug)]
pub struct SmoothArgs {
    /// Migration strength in [0, 1]: 0 takes the factors from the weights
    /// alone, 1 from the activations alone (AWQ and SmoothQuant use 0.5).
    #[arg(long, value_name = "ALPHA", default_value_t = 0.5, allow_negative_numbers = true)]
    pub alpha: f64,
    /// A UTF-8 calibration text file; each file is one document (repeatable).
    #[arg(long = "text", value_name = "FILE", required = true)]
    pub text: Vec<PathBuf>,
    /// Calibration tokens (the first windows of the text covering them).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub tokens: usize,
    /// Tokens per calibration window.
    #[arg(long, value_name = "TOKENS", default_value_t = 128)]
    pub seq: usize,
    /// A tokenizer.json to use instead of the one beside the model.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub io: AttackIo,
}

/// A float dtype a tensor can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FloatDtype {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<FloatDtype> for weightmark::Dtype {
    fn from(d: FloatDtype) -> Self {
        match d {
            FloatDtype::F32 => weightmark::Dtype::F32,
            FloatDtype::F16 => weightmark::Dtype::F16,
            FloatDtype::Bf16 => weightmark::Dtype::BF16,
        }
    }
}

/// A GGUF type `attack gguf` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GgufType {
    /// 8-bit blocks of 32.
    #[value(name = "Q8_0")]
    Q8_0,
    /// 4-bit blocks of 32.
    #[value(name = "Q4_0")]
    Q4_0,
    /// 4-bit k-quant super-blocks of 256.
    #[value(name = "Q4_K")]
    Q4K,
    /// 6-bit k-quant super-blocks of 256.
    #[value(name = "Q6_K")]
    Q6K,
    /// 16-bit float.
    #[value(name = "F16")]
    F16,
    /// 32-bit float.
    #[value(name = "F32")]
    F32,
}

impl From<GgufType> for weightmark::gguf::GgmlType {
    fn from(t: GgufType) -> Self {
        use weightmark::gguf::GgmlType;
        match t {
            GgufType::Q8_0 => GgmlType::Q8_0,
            GgufType::Q4_0 => GgmlType::Q4_0,
            GgufType::Q4K => GgmlType::Q4K,
            GgufType::Q6K => GgmlType::Q6K,
            GgufType::F16 => GgmlType::F16,
            GgufType::F32 => GgmlType::F32,
        }
    }
}

/// Which elements pruning zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PruneBy {
    /// The smallest magnitudes of each tensor.
    Magnitude,
    /// A seeded random choice.
    Random,
}

impl From<PruneBy> for weightmark::attack::PruneMethod {
    fn from(p: PruneBy) -> Self {
        match p {
            PruneBy::Magnitude => weightmark::attack::PruneMethod::Magnitude,
            PruneBy::Random => weightmark::attack::PruneMethod::Random,
        }
    }
}

/// How two models are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MergeMethod {
    /// LAMBDA x MODEL + (1 - LAMBDA) x OTHER.
    Linear,
    /// TIES against a common base.
    Ties,
}

/// The noise form of `attack scrub`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScrubNoiseArg {
    /// +-1 in the mark's own sign groups.
    Signs,
    /// I.i.d. Gaussian per element.
    Gaussian,
}

impl From<ScrubNoiseArg> for weightmark::attack::ScrubNoise {
    fn from(n: ScrubNoiseArg) -> Self {
        match n {
            ScrubNoiseArg::Signs => weightmark::attack::ScrubNoise::Signs,
            ScrubNoiseArg::Gaussian => weightmark::attack::ScrubNoise::Gaussian,
        }
    }
}

/// What `attack permute` permutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Permuted {
    /// MLP neurons.
    Mlp,
    /// Attention heads.
    Heads,
    /// Both.
    Both,
}

impl Permuted {
    /// The argument that names a library [`weightmark::attack::PermuteWhat`].
    pub fn from_library(what: weightmark::attack::PermuteWhat) -> Permuted {
        match what {
            weightmark::attack::PermuteWhat::Mlp => Permuted::Mlp,
            weightmark::attack::PermuteWhat::Heads => Permuted::Heads,
            weightmark::attack::PermuteWhat::Both => Permuted::Both,
        }
    }
}

impl From<Permuted> for weightmark::attack::PermuteWhat {
    fn from(p: Permuted) -> Self {
        match p {
            Permuted::Mlp => weightmark::attack::PermuteWhat::Mlp,
            Permuted::Heads => weightmark::attack::PermuteWhat::Heads,
            Permuted::Both => weightmark::attack::PermuteWhat::Both,
        }
    }
}

/// How `attack collude` combines the copies, element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Collusion {
    /// The mean.
    Mean,
    /// The median (mean of the middle two for an even number of copies).
    Median,
    /// (max + min) / 2 where the copies differ, else the mean: the unmarked
    /// value for marks of one amplitude and opposite signs.
    Midpoint,
    /// Element i (row-major, within its tensor) from copy i mod k.
    Interleave,
    /// Each element from a seeded random copy.
    Random,
}

impl From<Collusion> for weightmark::attack::CollusionMethod {
    fn from(c: Collusion) -> Self {
        use weightmark::attack::CollusionMethod;
        match c {
            Collusion::Mean => CollusionMethod::Mean,
            Collusion::Median => CollusionMethod::Median,
            Collusion::Midpoint => CollusionMethod::Midpoint,
            Collusion::Interleave => CollusionMethod::Interleave,
            Collusion::Random => CollusionMethod::Random,
        }
    }
}

/// Which windows of a text `eval ppl` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TextSplit {
    /// Every window.
    All,
    /// The tenth `attack finetune` never trains on.
    HeldOut,
    /// The windows `attack finetune` trains on.
    Train,
}

/// A mark scheme `embed` can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchemeArg {
    /// The first scheme: keyed spread spectrum in the weights as stored.
    Ss1,
    /// Multiplicative, in canonical coordinates, release + recipient components.
    Ss2,
}

impl From<SchemeArg> for weightmark::Scheme {
    fn from(s: SchemeArg) -> Self {
        match s {
            SchemeArg::Ss1 => weightmark::Scheme::Ss1,
            SchemeArg::Ss2 => weightmark::Scheme::Ss2,
        }
    }
}
