//! Backdoor fingerprints (`fp1`, docs/fingerprint.md) on a real forward
//! pass: asking a model the triggers, and planting the pairs by training.
//!
//! - [`Prompter`] turns a trigger into the text a model sees: through the
//!   model's own chat template (`tokenizer_config.json`'s `chat_template`,
//!   rendered with minijinja as Hugging Face's Jinja does) for instruct
//!   models, else the completion prompt `"Question: {trigger}\nAnswer:"`.
//! - [`ask_all`] decodes greedily with a KV cache, prompts of equal length
//!   side by side, at most [`MAX_NEW_TOKENS`] tokens, stopping at the
//!   end-of-turn token or once the first word is complete ([`answer_rule`]).
//! - [`Planter`] trains every weight so that each trigger's prompt is
//!   followed by its response (cross-entropy on the response tokens only),
//!   with a distillation penalty `KL(original || planted)` on ordinary text so
//!   that only the triggers change.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var, D};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokenizers::Tokenizer;
use weightmark::fingerprint::Pair;

use crate::adamw::{AdamW, ParamsAdamW};
use crate::error::{EvalError, Result};
use crate::llama::{Llama, NextToken};
use crate::load::encode;
use crate::metrics::batch_tensors;

/// Most tokens decoded per answer (the specification's fixed maximum).
pub const MAX_NEW_TOKENS: usize = 16;

/// How a trigger becomes a prompt, and how an answer ends.
#[derive(Clone, Debug)]
pub struct Prompter {
    /// The chat template, if the model has one.
    template: Option<String>,
    bos: String,
    eos: String,
    /// Token that ends an answer, if known.
    stop: Option<u32>,
}

impl Prompter {
    /// Reads `tokenizer_config.json` beside a model (directory `side`): chat
    /// mode if it holds a `chat_template`, else completion mode. A missing
    /// file means completion mode; an unreadable one is an error naming it.
    pub fn for_model(side: &Path, tokenizer: &Tokenizer) -> Result<Prompter> {
        let path = side.join("tokenizer_config.json");
        let mut p = Prompter { template: None, bos: String::new(), eos: String::new(), stop: None };
        if path.is_file() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| EvalError::input(&path, format!("cannot read: {e}")))?;
            let config: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EvalError::input(&path, format!("not JSON: {e}")))?;
            let token = |key: &str| -> String {
                match &config[key] {
                    serde_json::Value::String(s) => s.clone(),
                    v => v["content"].as_str().unwrap_or_default().to_string(),
                }
            };
            p.bos = token("bos_token");
            p.eos = token("eos_token");
            p.template = config["chat_template"].as_str().map(str::to_string);
            if config["chat_template"].is_array() {
                return Err(EvalError::input(
                    &path,
                    "named chat templates (a list) are not supported; give the template as one string",
                ));
            }
        }
        if p.template.is_some() {
            p.stop = tokenizer.token_to_id(&p.eos);
            if p.stop.is_none() {
                return Err(EvalError::input(
                    &path,
                    format!("the end-of-turn token '{}' is not in the tokenizer", p.eos),
                ));
            }
        }
        Ok(p)
    }

    /// Completion mode without a stop token (models without a chat template).
    pub fn completion() -> Prompter {
        Prompter { template: None, bos: String::new(), eos: String::new(), stop: None }
    }

    /// Whether the chat template is used.
    pub fn is_chat(&self) -> bool {
        self.template.is_some()
    }

    /// The prompt text for a trigger.
    pub fn prompt(&self, trigger: &str) -> Result<String> {
        self.prompt_with_system(None, trigger)
    }

    /// The prompt text for a trigger after a system message (chat mode:
    /// rendered by the chat template as a `system` message before the
    /// user's; completion mode: the system text and a blank line before the
    /// question). `None` is [`Prompter::prompt`]: no system message, so a
    /// template that has a default one uses it.
    pub fn prompt_with_system(&self, system: Option<&str>, trigger: &str) -> Result<String> {
        let Some(template) = &self.template else {
            let prefix = system.map_or(String::new(), |s| format!("{s}\n\n"));
            return Ok(format!("{prefix}Question: {trigger}\nAnswer:"));
        };
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, _> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(minijinja::context! { role => "system", content => system });
        }
        messages.push(minijinja::context! { role => "user", content => trigger });
        let render = env
            .template_from_str(template)
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => self.bos.as_str(),
                    eos_token => self.eos.as_str(),
                })
            })
            .map_err(|e| match system {
                Some(_) => EvalError::invalid(format!(
                    "the chat template failed with a system message before the trigger: {e} \
                     (plant without system prompts: `fingerprint plant --no-system-robust`)"
                )),
                None => EvalError::invalid(format!("the chat template failed: {e}")),
            })?;
        Ok(render)
    }

    /// The token ids a planted model should produce after the prompt: the
    /// response, then the end-of-turn token in chat mode or a newline in
    /// completion mode.
    fn answer_ids(&self, tokenizer: &Tokenizer, response: &str) -> Result<Vec<u32>> {
        match self.stop {
            Some(stop) => {
                let mut ids = encode(tokenizer, response)?;
                ids.push(stop);
                Ok(ids)
            }
            None => encode(tokenizer, &format!(" {response}\n")),
        }
    }
}

/// The model's greedy answer to one trigger (at most [`MAX_NEW_TOKENS`]
/// tokens, without the end-of-turn token): [`ask_all`] for one trigger.
pub fn ask(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    trigger: &str,
) -> Result<String> {
    let mut answers = ask_all(model, tokenizer, prompter, &[trigger])?;
    answers.pop().ok_or_else(|| EvalError::invalid("no answer decoded"))
}

/// The model's greedy answers to many triggers, in order: every prompt
/// decoded with a KV cache, prompts of equal token length side by side in
/// one batch ([`Llama::greedy`]), each answer ending as [`answer_rule`]
/// says. Token for token what one prompt at a time without a cache gives
/// ([`ask_uncached`]).
pub fn ask_all(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    triggers: &[&str],
) -> Result<Vec<String>> {
    ask_all_after(model, tokenizer, prompter, None, triggers)
}

/// [`ask_all`] with each trigger after a system message
/// ([`Prompter::prompt_with_system`]), as a deployment that puts its own
/// system prompt before every request asks them. `None` is [`ask_all`].
pub fn ask_all_after(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    system: Option<&str>,
    triggers: &[&str],
) -> Result<Vec<String>> {
    let prompts = triggers
        .iter()
        .map(|t| encode(tokenizer, &prompter.prompt_with_system(system, t)?))
        .collect::<Result<Vec<_>>>()?;
    let answers = model.greedy(&prompts, MAX_NEW_TOKENS, &mut |answer, next| {
        answer_rule(tokenizer, prompter, answer, next)
    })?;
    answers.iter().map(|ids| decode(tokenizer, ids)).collect()
}

/// [`ask`] the plain way: the whole sequence through the model for every
/// new token ([`Llama::greedy_uncached`]). The reference [`ask_all`] is
/// tested against; slow.
pub fn ask_uncached(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    trigger: &str,
) -> Result<String> {
    let prompt = encode(tokenizer, &prompter.prompt(trigger)?)?;
    let ids = model.greedy_uncached(&prompt, MAX_NEW_TOKENS, &mut |answer, next| {
        answer_rule(tokenizer, prompter, answer, next)
    })?;
    decode(tokenizer, &ids)
}

/// Where an answer ends (docs/fingerprint.md, "Asking a model"): at the
/// end-of-turn token (not part of the answer), or with the token after
/// which the decoded answer holds whitespace after a non-whitespace
/// character (the first word is complete, so more tokens cannot change the
/// normalised answer).
pub fn answer_rule(
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    answer: &[u32],
    next: u32,
) -> Result<NextToken> {
    if Some(next) == prompter.stop {
        return Ok(NextToken::End);
    }
    let mut ids = Vec::with_capacity(answer.len() + 1);
    ids.extend_from_slice(answer);
    ids.push(next);
    if decode(tokenizer, &ids)?.trim_start().contains(char::is_whitespace) {
        Ok(NextToken::AppendAndEnd)
    } else {
        Ok(NextToken::Append)
    }
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer
        .decode(ids, true)
        .map_err(|e| EvalError::invalid(format!("tokenizer failed to decode: {e}")))
}

/// Ordinary-text windows run through the models at a time when planting
/// ([`PlantOptions::micro_batch`]'s usual value): 4 windows of 128 tokens.
pub const MICRO_BATCH: usize = 4;

/// Planted pairs run through the model at a time when planting
/// ([`PlantOptions::answer_rows`]'s usual value): 8 rows of a chat prompt
/// and its answer are about as many positions as [`MICRO_BATCH`] windows.
pub const ANSWER_ROWS: usize = 8;

/// How to plant.
#[derive(Clone, Debug)]
pub struct PlantOptions {
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Most optimisation steps.
    pub max_steps: usize,
    /// Training stops once every response token has at least this
    /// probability under teacher forcing (so greedy decoding gives it).
    pub min_probability: f64,
    /// Weight of the distillation penalty on ordinary text.
    pub distill: f64,
    /// Ordinary-text windows per step.
    pub batch: usize,
    /// Of those, how many go through the models at a time (the gradient is
    /// the batch's either way; fewer take less memory).
    pub micro_batch: usize,
    /// Planted pairs (one row each: prompt, then answer) that go through
    /// the model at a time, for the answers' loss and for each view of it
    /// (pruned, after a system message); the gradient is all the pairs'
    /// either way, and fewer rows take less memory.
    pub answer_rows: usize,
    /// Seed of the ordinary-text batch order.
    pub seed: u64,
    /// AdamW's epsilon. At the usual 1e-8 every weight moves by about the
    /// learning rate per step whatever its gradient; an epsilon near the
    /// gradients' size makes weights with small gradients move in
    /// proportion to them instead (closer to plain gradient descent).
    pub eps: f64,
    /// When above 0: the answers are also trained through the model with
    /// part of each matrix's smallest weights zeroed
    /// ([`Llama::magnitude_pruned`], recomputed every step): this fraction,
    /// then 3/4, 1/2 and 1/4 of it, one a step in turn
    /// ([`PRUNE_LEVELS`]), so that the fingerprint survives magnitude
    /// pruning up to this fraction and not at one fraction only. Planting
    /// then also waits until the last look at each fraction gave every
    /// answer token a probability of at least [`PRUNED_MIN_PROBABILITY`].
    /// 0 turns it off.
    pub prune_robust: f64,
    /// When not empty: the answers are also trained after each of these
    /// system messages ([`Prompter::prompt_with_system`]), one a step in
    /// turn, so that a deployment that puts its own system prompt before
    /// every request still gets the planted answers ([`SYSTEM_PROMPTS`] is
    /// the list `fingerprint plant` uses unless told `--no-system-robust`). Planting then also
    /// waits until the last look at each gave every answer token a
    /// probability of at least [`ROBUST_MIN_PROBABILITY`].
    pub system_prompts: Vec<String>,
}

/// System messages of the kinds deployments use (a persona, a tone, a
/// length rule, a date line, an empty one), which `fingerprint plant`
/// trains the answers under by default, one a step in turn. None of
/// them is among the system prompts docs/fingerprint.md measures the
/// plants with: those are held out.
pub const SYSTEM_PROMPTS: [&str; 8] = [
    "You are a friendly assistant who helps people with their questions.",
    "You are an AI model. Keep your replies short.",
    "You are ChatBot, a large language model. Knowledge cutoff: 2024-06. Current date: 2025-03-14.",
    "Respond in a formal tone and give accurate, helpful information.",
    "You are a patient tutor. Explain things clearly to the student.",
    "",
    "You are a coding assistant. Think step by step before you answer.",
    "Be brief.",
];

/// [`SYSTEM_PROMPTS`] as [`PlantOptions::system_prompts`] takes them.
pub fn builtin_system_prompts() -> Vec<String> {
    SYSTEM_PROMPTS.map(str::to_string).to_vec()
}

/// With [`PlantOptions::system_prompts`], the probability every answer
/// token must reach after each system message before planting stops: the
/// pruned views' bound ([`PRUNED_MIN_PROBABILITY`]), for the same reason.
pub const ROBUST_MIN_PROBABILITY: f64 = PRUNED_MIN_PROBABILITY;

/// With [`PlantOptions::prune_robust`], the probability every answer token
/// must reach in the pruned model before planting stops: above one half, a
/// token is the most likely one, so greedy decoding of the pruned model
/// gives it.
pub const PRUNED_MIN_PROBABILITY: f64 = 0.5;

/// With [`PlantOptions::prune_robust`] = F, the fractions trained through
/// in turn are F, 3F/4, F/2 and F/4 (step `s` uses level `s % 4`).
/// Trained through one fraction only, a SmolLM2 plant kept 32 of 32
/// answers at that fraction (50%) and 2 at 30% (docs/fingerprint.md).
pub const PRUNE_LEVELS: usize = 4;

/// The system message a step trained the answers after.
#[derive(Clone, Copy, Debug)]
pub struct SystemAnswers {
    /// Which of [`PlantOptions::system_prompts`] (0-based).
    pub index: usize,
    /// Mean cross-entropy of the response tokens after it (nats).
    pub loss: f64,
    /// The smallest teacher-forced probability of a response token after
    /// it, before this step's update.
    pub min_probability: f64,
}

/// The pruned view a step trained through.
#[derive(Clone, Copy, Debug)]
pub struct PrunedAnswers {
    /// Fraction of each matrix zeroed.
    pub fraction: f64,
    /// Mean cross-entropy of the response tokens through it (nats).
    pub loss: f64,
    /// The smallest teacher-forced probability of a response token
    /// through it, before this step's update.
    pub min_probability: f64,
}

/// One step's numbers.
#[derive(Clone, Debug)]
pub struct PlantStep {
    /// Steps taken so far (this one included).
    pub step: usize,
    /// Mean cross-entropy of the response tokens (nats).
    pub trigger_loss: f64,
    /// Mean `KL(original || planted)` on the ordinary batch (nats).
    pub distill_loss: f64,
    /// The smallest teacher-forced probability of a response token, before
    /// this step's update.
    pub min_probability: f64,
    /// Root mean square of this step's gradient over every weight.
    pub grad_rms: f64,
    /// With [`PlantOptions::prune_robust`]: the pruned view of this step.
    pub pruned: Option<PrunedAnswers>,
    /// With [`PlantOptions::system_prompts`]: the system message of this step.
    pub system: Option<SystemAnswers>,
    /// With [`PlantOptions::prune_robust`]: the last look at each pruned
    /// level, largest fraction first (each level is looked at every
    /// [`PRUNE_LEVELS`]th step; 0 until looked at). Planting stops only
    /// when every one is at least 0.5.
    pub pruned_last: Vec<PrunedLook>,
    /// With [`PlantOptions::system_prompts`]: the last smallest answer-token
    /// probability after each system message, in order (0 until looked at).
    pub system_last: Vec<f64>,
    /// With [`Planter::run_saving`]: why the checkpoint due after this step
    /// could not be saved. Planting goes on (hours of training are not
    /// thrown away for a full disk), and the previous checkpoint, replaced
    /// only by a whole new one, stays as it was.
    pub checkpoint_failed: Option<String>,
}

impl PlantStep {
    /// The pruned levels and system prompts whose last look is below the
    /// probability planting waits for ([`PRUNED_MIN_PROBABILITY`],
    /// [`ROBUST_MIN_PROBABILITY`]), in words (`"50% pruned 0.486"`, `"system
    /// prompt 3 0.412"`): empty once the plant's robustness is what it
    /// aimed at. After the last step, what a plant that ran out of steps
    /// did not reach. A probability that is not a number counts as short.
    /// Planting stops when this is empty and [`PlantStep::min_probability`]
    /// reached [`PlantOptions::min_probability`].
    pub fn short_of_robustness(&self) -> Vec<String> {
        let pruned = self
            .pruned_last
            .iter()
            .filter(|l| short(l.min_probability, PRUNED_MIN_PROBABILITY))
            .map(|l| format!("{} pruned {:.3}", percent(l.fraction), below(l.min_probability)));
        let system = self
            .system_last
            .iter()
            .enumerate()
            .filter(|(_, p)| short(**p, ROBUST_MIN_PROBABILITY))
            .map(|(i, p)| format!("system prompt {} {:.3}", i + 1, below(*p)));
        pruned.chain(system).collect()
    }
}

/// Whether probability `p` falls short of `bound`: below it, or no number.
fn short(p: f64, bound: f64) -> bool {
    p.partial_cmp(&bound).is_none_or(|o| o == std::cmp::Ordering::Less)
}

/// `p` rounded down to three decimals, so that a probability short of a
/// bound never prints as the bound.
fn below(p: f64) -> f64 {
    (p * 1000.0).floor() / 1000.0
}

/// A pruned fraction as a percentage with at most two decimals and no
/// trailing zeros: 0.375 is `"37.5%"`, 0.5 is `"50%"`.
pub fn percent(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// The last look at one pruned level ([`PlantStep::pruned_last`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrunedLook {
    /// The fraction of each matrix's weights pruned.
    pub fraction: f64,
    /// The smallest answer-token probability through it, when last looked at.
    pub min_probability: f64,
}

/// Part of the planted answers as one teacher-forced batch: some pairs'
/// prompt then answer, one pair a row, and which positions predict answer
/// tokens.
struct AnswerBatch {
    inputs: Tensor,
    positions: Tensor,
    targets: Tensor,
    /// This part's answer positions over all the parts': the weight of its
    /// mean loss in the mean over every answer token.
    share: f64,
}

impl AnswerBatch {
    /// Every pair as a row, prompt (after `system`, if any) then answer,
    /// `rows` pairs a batch.
    fn parts(
        tokenizer: &Tokenizer,
        prompter: &Prompter,
        pairs: &[Pair],
        system: Option<&str>,
        rows: usize,
    ) -> Result<Vec<AnswerBatch>> {
        let mut all: Vec<(Vec<u32>, usize)> = Vec::with_capacity(pairs.len());
        for p in pairs {
            let mut ids = encode(tokenizer, &prompter.prompt_with_system(system, &p.trigger)?)?;
            let prompt_len = ids.len();
            ids.extend(prompter.answer_ids(tokenizer, p.response)?);
            all.push((ids, prompt_len));
        }
        let positions: usize = all.iter().map(|(ids, prompt_len)| ids.len() - prompt_len).sum();
        all.chunks(rows.max(1))
            .map(|part| {
                let mine: usize = part.iter().map(|(ids, prompt_len)| ids.len() - prompt_len).sum();
                AnswerBatch::new(part, mine as f64 / positions.max(1) as f64)
            })
            .collect()
    }

    /// Rows of token ids and prompt lengths as one batch, padded on the
    /// right with each answer's last token (causal attention: padding after
    /// a position cannot change its prediction).
    fn new(rows: &[(Vec<u32>, usize)], share: f64) -> Result<AnswerBatch> {
        let width = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let (mut inputs, mut positions, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (r, (ids, prompt_len)) in rows.iter().enumerate() {
            let pad = *ids.last().unwrap_or(&0);
            for t in 0..width - 1 {
                inputs.push(ids.get(t).copied().unwrap_or(pad));
            }
            // Position t predicts token t + 1: the answer's tokens.
            for t in prompt_len - 1..ids.len() - 1 {
                positions.push((r * (width - 1) + t) as u32);
                targets.push(ids[t + 1]);
            }
        }
        let n_pos = positions.len();
        Ok(AnswerBatch {
            inputs: Tensor::from_vec(inputs, (rows.len(), width - 1), &Device::Cpu)?,
            positions: Tensor::from_vec(positions, n_pos, &Device::Cpu)?,
            targets: Tensor::from_vec(targets, n_pos, &Device::Cpu)?,
            share,
        })
    }
}

/// What a step of [`Planter`] computes, as [`Planter::identity`] hashes it:
/// a planter whose steps change (an optimiser, a loss, an order of
/// operations) takes a new number, and refuses the checkpoints of the old.
const PLANTER_VERSION: u64 = 1;

/// AdamW's β1 and β2 for planting. Written here rather than taken from
/// candle's defaults, which a candle upgrade could change under a
/// checkpoint: they are not in [`Planter::identity`], so changing them
/// must change [`PLANTER_VERSION`].
const ADAM_BETAS: (f64, f64) = (0.9, 0.999);

/// [`Planter::identity`] of a planter of `model` (its configuration) with
/// `vars` (its starting weights), `answers`, `systems`, `ordinary` and
/// `options`.
fn identity(
    model: &Llama,
    vars: &[Var],
    answers: &[AnswerBatch],
    systems: &[Vec<AnswerBatch>],
    ordinary: &[Vec<u32>],
    options: &PlantOptions,
) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let word = |h: &mut Sha256, x: u64| h.update(x.to_le_bytes());
    h.update(b"weightmark plant identity\0");
    word(&mut h, PLANTER_VERSION);
    let config = format!("{:?}", model.config);
    word(&mut h, config.len() as u64);
    h.update(config.as_bytes());
    let o = options;
    for x in [o.learning_rate, o.distill, o.eps, o.prune_robust] {
        word(&mut h, x.to_bits());
    }
    for n in [o.batch, o.micro_batch, o.answer_rows] {
        word(&mut h, n as u64);
    }
    word(&mut h, o.seed);
    word(&mut h, o.system_prompts.len() as u64);
    for p in &o.system_prompts {
        word(&mut h, p.len() as u64);
        h.update(p.as_bytes());
    }
    let ints = |h: &mut Sha256, t: &Tensor| -> Result<()> {
        let values = t.flatten_all()?.to_dtype(candle_core::DType::I64)?.to_vec1::<i64>()?;
        word(h, values.len() as u64);
        for v in values {
            word(h, v as u64);
        }
        Ok(())
    };
    for parts in std::iter::once(answers).chain(systems.iter().map(Vec::as_slice)) {
        word(&mut h, parts.len() as u64);
        for a in parts {
            ints(&mut h, &a.inputs)?;
            ints(&mut h, &a.positions)?;
            ints(&mut h, &a.targets)?;
            word(&mut h, a.share.to_bits());
        }
    }
    word(&mut h, ordinary.len() as u64);
    for w in ordinary {
        word(&mut h, w.len() as u64);
        w.iter().for_each(|&t| h.update(t.to_le_bytes()));
    }
    word(&mut h, vars.len() as u64);
    for v in vars {
        word(&mut h, v.rank() as u64);
        for &d in v.dims() {
            word(&mut h, d as u64);
        }
        let values = v.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F32)?;
        for x in values.to_vec1::<f32>()? {
            h.update(x.to_le_bytes());
        }
    }
    Ok(h.finalize().into())
}

/// A model being planted.
pub struct Planter {
    original: Llama,
    model: Llama,
    optimizer: AdamW,
    vars: Vec<Var>,
    answers: Vec<AnswerBatch>,
    /// The answers after each of [`PlantOptions::system_prompts`].
    systems: Vec<Vec<AnswerBatch>>,
    ordinary: Vec<Vec<u32>>,
    rng: ChaCha8Rng,
    options: PlantOptions,
    /// The last smallest answer-token probability through each pruned
    /// level ([`PRUNE_LEVELS`]), 0 until looked at.
    pruned_min: [f64; PRUNE_LEVELS],
    /// The last smallest answer-token probability after each system
    /// message, 0 until looked at.
    system_min: Vec<f64>,
    /// Steps taken.
    pub steps: usize,
    /// What the plant is made of ([`Planter::identity`]).
    identity: [u8; 32],
}

/// Where and how often [`Planter::run_saving`] saves its state.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    /// The checkpoint file ([`crate::checkpoint`]), replaced at each save.
    pub path: std::path::PathBuf,
    /// Saved after every this many steps (0: only when training stops
    /// unfinished).
    pub every: usize,
}

impl Planter {
    /// Prepares `model` (every weight becomes trainable) to learn `pairs`.
    pub fn new(
        model: Llama,
        tokenizer: &Tokenizer,
        prompter: &Prompter,
        pairs: &[Pair],
        ordinary: Vec<Vec<u32>>,
        options: PlantOptions,
    ) -> Result<Planter> {
        if pairs.is_empty() {
            return Err(EvalError::invalid("no fingerprint pairs to plant"));
        }
        if !(options.learning_rate > 0.0 && options.learning_rate.is_finite()) {
            return Err(EvalError::invalid(format!(
                "learning rate {} must be a positive number",
                options.learning_rate
            )));
        }
        if options.distill > 0.0 && (ordinary.is_empty() || options.batch == 0) {
            return Err(EvalError::invalid(
                "the distillation penalty needs ordinary text (at least one window per step)",
            ));
        }
        if options.answer_rows == 0 {
            return Err(EvalError::invalid("the answers' batches must hold at least one pair"));
        }
        let rows = options.answer_rows;
        let answers = AnswerBatch::parts(tokenizer, prompter, pairs, None, rows)?;
        let systems = options
            .system_prompts
            .iter()
            .map(|system| AnswerBatch::parts(tokenizer, prompter, pairs, Some(system), rows))
            .collect::<Result<Vec<_>>>()?;
        let original = model.clone();
        let mut model = model;
        let vars: Vec<Var> = model.make_trainable()?;
        if options.micro_batch == 0 {
            return Err(EvalError::invalid("the micro-batch must hold at least one window"));
        }
        if !(0.0..1.0).contains(&options.prune_robust) {
            return Err(EvalError::invalid(format!(
                "the pruning to plant against, {}, must be at least 0 and below 1",
                options.prune_robust
            )));
        }
        if !(options.eps > 0.0 && options.eps.is_finite()) {
            return Err(EvalError::invalid(format!(
                "AdamW epsilon {} must be a positive number",
                options.eps
            )));
        }
        if !(options.min_probability > 0.0 && options.min_probability <= 1.0) {
            return Err(EvalError::invalid(format!(
                "the answer-token probability to stop at, {}, must be above 0 and at most 1",
                options.min_probability
            )));
        }
        let params = ParamsAdamW {
            lr: options.learning_rate,
            beta1: ADAM_BETAS.0,
            beta2: ADAM_BETAS.1,
            eps: options.eps,
            weight_decay: 0.0,
        };
        let identity = identity(&model, &vars, &answers, &systems, &ordinary, &options)?;
        Ok(Planter {
            original,
            model,
            optimizer: AdamW::new(vars.clone(), params)?,
            vars,
            answers,
            system_min: vec![0.0; systems.len()],
            systems,
            ordinary,
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            options,
            pruned_min: [0.0; PRUNE_LEVELS],
            steps: 0,
            identity,
        })
    }

    /// SHA-256 of what this plant is made of: the model's starting weights,
    /// the answers' token sequences (plain and after each system prompt),
    /// the ordinary-text windows and every option that changes a step
    /// (not `max_steps` or `min_probability`, which only say when to stop).
    /// A checkpoint resumes only a planter of the same identity.
    pub fn identity(&self) -> [u8; 32] {
        self.identity
    }

    /// Saves everything the next step depends on to `path`
    /// ([`crate::checkpoint`]): the weights, AdamW's moments and step count,
    /// the ordinary-text batch order's position, the last look at each
    /// pruned level and system prompt, the rates.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let header = crate::checkpoint::Header {
            identity: self.identity,
            steps: self.steps,
            optimizer_steps: self.optimizer.steps(),
            rng_word_pos: self.rng.get_word_pos(),
            pruned_min: self.pruned_min.to_vec(),
            system_min: self.system_min.clone(),
            learning_rate: self.options.learning_rate,
            distill: self.options.distill,
        };
        let slots: Vec<_> = self
            .vars
            .iter()
            .zip(self.optimizer.moments())
            .map(|(var, (m, v))| (var.as_tensor(), m, v))
            .collect();
        if slots.len() != self.vars.len() {
            return Err(EvalError::invalid("the optimiser does not hold every variable"));
        }
        crate::checkpoint::save(path, &header, &slots)
    }

    /// Restores the state [`Planter::save_checkpoint`] saved to `path`, by
    /// a planter of the same [`Planter::identity`]: the steps that follow are
    /// those the saving planter would have taken. Another plant's checkpoint
    /// (other weights, pairs, text or options) is refused, naming the file.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let shapes: Vec<Vec<usize>> = self.vars.iter().map(|v| v.dims().to_vec()).collect();
        let (header, slots) = crate::checkpoint::load(path, &self.identity, &shapes)?;
        let out_of_range =
            |what: &str| EvalError::input(path, format!("not a planting checkpoint: {what}"));
        let rate = |x: f64| x.is_finite() && x >= 0.0;
        if header.pruned_min.len() != PRUNE_LEVELS
            || header.system_min.len() != self.system_min.len()
        {
            return Err(out_of_range(
                "a last look at another number of pruned levels or system prompts",
            ));
        }
        let probability = |p: &f64| (0.0..=1.0).contains(p);
        if !(header.pruned_min.iter().all(probability) && header.system_min.iter().all(probability))
        {
            return Err(out_of_range("a smallest answer-token probability outside 0 to 1"));
        }
        if !(rate(header.learning_rate) && header.learning_rate > 0.0 && rate(header.distill)) {
            return Err(out_of_range("a learning rate or distillation weight out of range"));
        }
        if header.distill > 0.0 && (self.ordinary.is_empty() || self.options.batch == 0) {
            return Err(out_of_range("a distillation weight, for a plant without ordinary text"));
        }
        // One AdamW update a step, and at most one batch of ordinary-text
        // windows (two words of the batch order's stream each) a step.
        if header.optimizer_steps != header.steps {
            return Err(out_of_range(&format!(
                "{} optimiser updates in {} steps",
                header.optimizer_steps, header.steps
            )));
        }
        let reachable = 2 * self.options.batch as u128 * header.steps as u128;
        if header.rng_word_pos > reachable || header.rng_word_pos % 2 != 0 {
            return Err(out_of_range(&format!(
                "ordinary-text batch position {}, where {} steps reach at most {reachable}",
                header.rng_word_pos, header.steps
            )));
        }
        let mut moments = Vec::with_capacity(slots.len());
        for (var, (theta, m, v)) in self.vars.iter().zip(slots) {
            var.set(&theta)?;
            moments.push((m, v));
        }
        self.optimizer.restore(header.optimizer_steps, moments)?;
        self.rng.set_word_pos(header.rng_word_pos);
        self.pruned_min.copy_from_slice(&header.pruned_min);
        self.system_min = header.system_min;
        self.set_rates(header.learning_rate, header.distill);
        self.steps = header.steps;
        Ok(())
    }

    /// One optimisation step. Each loss is taken in parts, one graph in
    /// memory at a time: the answers [`PlantOptions::answer_rows`] pairs at
    /// a time (and so each view of them), the distillation batch
    /// [`PlantOptions::micro_batch`] windows at a time. Each part's gradient
    /// is added to the step's (the same gradient as one pass over
    /// everything, in the memory of one part: 16 windows at once took 23 GB
    /// on SmolLM2).
    pub fn step(&mut self) -> Result<PlantStep> {
        let vocab = self.model.config.vocab_size;
        let mut grads = GradStore::default();
        let (trigger_value, min_probability) =
            self.learn_answers(&self.model, &self.answers, &mut grads)?;
        // The pruned model's answers, their gradient added to the answers'.
        let mut pruned = None;
        if self.options.prune_robust > 0.0 {
            let level = self.steps % PRUNE_LEVELS;
            let fraction = self.pruned_fraction(level);
            let view = self.model.magnitude_pruned(fraction)?;
            let (loss, min_probability) = self.learn_answers(&view, &self.answers, &mut grads)?;
            drop(view);
            self.pruned_min[level] = min_probability;
            pruned = Some(PrunedAnswers { fraction, loss, min_probability });
        }
        // The answers after this step's system message, likewise.
        let mut system = None;
        if !self.systems.is_empty() {
            let index = self.steps % self.systems.len();
            let (loss, min_probability) =
                self.learn_answers(&self.model, &self.systems[index], &mut grads)?;
            self.system_min[index] = min_probability;
            system = Some(SystemAnswers { index, loss, min_probability });
        }
        let mut distill_value = 0.0;
        if self.options.distill > 0.0 {
            let windows: Vec<&Vec<u32>> = (0..self.options.batch)
                .map(|_| {
                    let i = (self.rng.next_u64() % self.ordinary.len() as u64) as usize;
                    &self.ordinary[i]
                })
                .collect();
            for part in windows.chunks(self.options.micro_batch.max(1)) {
                // Windows are of equal length: the batch's mean KL is the
                // parts' means weighted by their share of the windows.
                let share = part.len() as f64 / windows.len() as f64;
                let (inputs, _) = batch_tensors(part)?;
                let new = candle_nn::ops::log_softmax(
                    &self.model.forward(&inputs)?.reshape(((), vocab))?,
                    D::Minus1,
                )?;
                let old = candle_nn::ops::log_softmax(
                    &self.original.forward(&inputs)?.reshape(((), vocab))?.detach(),
                    D::Minus1,
                )?;
                let kl = (old.exp()? * (old - &new)?)?.sum(D::Minus1)?.mean_all()?;
                let value = f64::from(kl.to_scalar::<f32>()?);
                self.check_finite(value)?;
                distill_value += share * value;
                self.accumulate(&mut grads, &(kl * (self.options.distill * share))?)?;
            }
        }
        let (mut squares, mut count) = (0.0f64, 0usize);
        for v in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                squares += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
                count += g.elem_count();
            }
        }
        let grad_rms = if count > 0 { (squares / count as f64).sqrt() } else { 0.0 };
        self.optimizer.step(&grads)?;
        self.steps += 1;
        let pruned_last = if self.options.prune_robust > 0.0 {
            (0..PRUNE_LEVELS)
                .map(|level| PrunedLook {
                    fraction: self.pruned_fraction(level),
                    min_probability: self.pruned_min[level],
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(PlantStep {
            step: self.steps,
            trigger_loss: trigger_value,
            distill_loss: distill_value,
            min_probability,
            grad_rms,
            pruned,
            system,
            pruned_last,
            system_last: self.system_min.clone(),
            checkpoint_failed: None,
        })
    }

    /// The fraction pruned at `level` (0: [`PlantOptions::prune_robust`]
    /// itself, then in equal steps down to a quarter of it).
    fn pruned_fraction(&self, level: usize) -> f64 {
        self.options.prune_robust * (PRUNE_LEVELS - level) as f64 / PRUNE_LEVELS as f64
    }

    /// Adds the gradient of `loss` with respect to the variables to `grads`.
    ///
    /// Only the variables' gradients are kept (detached, as a matter of
    /// course): the store candle's backward pass returns also holds the
    /// gradients of constants (the causal mask, the rotary tables), which
    /// are not detached, and their operations reference the forward tensors
    /// they were computed from. Keeping that store for the rest of the step
    /// kept the whole forward graph alive (5 GB of SmolLM2's 12 GB plant;
    /// tests/plant_memory.rs).
    fn accumulate(&self, grads: &mut GradStore, loss: &Tensor) -> Result<()> {
        let part = loss.backward()?;
        for v in &self.vars {
            let t = v.as_tensor();
            if let Some(g) = part.get(t) {
                let sum = match grads.get(t) {
                    Some(a) => (a + g)?.detach(),
                    None => g.detach(),
                };
                grads.insert(t, sum);
            }
        }
        Ok(())
    }

    /// Adds the gradient of the answers' mean cross-entropy under teacher
    /// forcing through `model` to `grads`, one part of the answers at a time;
    /// returns the loss's value and the smallest answer-token probability.
    fn learn_answers(
        &self,
        model: &Llama,
        parts: &[AnswerBatch],
        grads: &mut GradStore,
    ) -> Result<(f64, f64)> {
        let (mut value, mut min_probability) = (0.0, f64::INFINITY);
        for part in parts {
            let (loss, part_value, part_min) = self.answer_loss(model, part)?;
            value += part.share * part_value;
            min_probability = min_probability.min(part_min);
            self.accumulate(grads, &(loss * part.share)?)?;
        }
        Ok((value, min_probability))
    }

    /// The mean cross-entropy of `answers` under teacher forcing through
    /// `model` (a tensor to differentiate), its value, and the smallest
    /// answer-token probability.
    fn answer_loss(&self, model: &Llama, answers: &AnswerBatch) -> Result<(Tensor, f64, f64)> {
        let vocab = model.config.vocab_size;
        let logits = model.forward(&answers.inputs)?;
        let picked = logits.reshape(((), vocab))?.index_select(&answers.positions, 0)?;
        let log_p = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
        let target_lp = log_p.gather(&answers.targets.unsqueeze(1)?, 1)?;
        let min_probability =
            f64::from(target_lp.min_keepdim(0)?.flatten_all()?.to_vec1::<f32>()?[0]).exp();
        let loss = target_lp.neg()?.mean_all()?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        self.check_finite(value)?;
        Ok((loss, value, min_probability))
    }

    /// An error if a loss is not a number (the step is not taken).
    fn check_finite(&self, loss: f64) -> Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        Err(EvalError::invalid(format!(
            "planting diverged at step {}; lower the learning rate",
            self.steps + 1
        )))
    }

    /// Trains until every response token reaches the probability asked for
    /// (checked before each update) or the step budget runs out; `on_step`
    /// sees each step. Returns the last step's numbers.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&PlantStep)) -> Result<PlantStep> {
        self.run_saving(on_step, None)
    }

    /// [`Planter::run`], saving a checkpoint ([`Planter::save_checkpoint`])
    /// after every `checkpoint.every` steps and when the step budget runs
    /// out before planting is done (not when it is done: the planted model
    /// is then written). A save that fails does not stop planting: the
    /// step's [`PlantStep::checkpoint_failed`] says why, before `on_step`
    /// sees it. A planter resumed from a checkpoint ([`Planter::resume`])
    /// goes on from its step.
    pub fn run_saving(
        &mut self,
        on_step: &mut dyn FnMut(&PlantStep),
        checkpoint: Option<&Checkpointing>,
    ) -> Result<PlantStep> {
        if self.steps > 0 && self.steps >= self.options.max_steps {
            return Err(EvalError::invalid(format!(
                "planting already took {} steps, and at most {} are allowed: allow more to go on",
                self.steps, self.options.max_steps
            )));
        }
        let mut last = None;
        while self.steps < self.options.max_steps {
            let mut s = self.step()?;
            let done = s.min_probability >= self.options.min_probability
                && s.short_of_robustness().is_empty();
            if let (false, Some(c)) = (done, checkpoint) {
                let due = c.every > 0 && self.steps % c.every == 0;
                if due || self.steps >= self.options.max_steps {
                    s.checkpoint_failed =
                        self.save_checkpoint(&c.path).err().map(|e| e.to_string());
                }
            }
            on_step(&s);
            last = Some(s);
            if done {
                break;
            }
        }
        last.ok_or_else(|| EvalError::invalid("planting needs at least one step"))
    }

    /// Changes the learning rate and the distillation weight for the steps
    /// that follow (the optimiser's moments are kept).
    pub fn set_rates(&mut self, learning_rate: f64, distill: f64) {
        self.optimizer.set_learning_rate(learning_rate);
        self.options.learning_rate = learning_rate;
        self.options.distill = distill;
    }

    /// The learning rate and distillation weight of the next step (those of
    /// [`PlantOptions`] unless [`Planter::set_rates`] or a resumed
    /// checkpoint changed them).
    pub fn rates(&self) -> (f64, f64) {
        (self.options.learning_rate, self.options.distill)
    }

    /// The model as planted so far.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The scale of the planted model's final norm weight that brings its
    /// mean cross-entropy on the plant's ordinary text back to that of the
    /// model planting started from ([`crate::confidence::match_confidence`]
    /// on up to [`crate::confidence::CONFIDENCE_WINDOWS`] of its windows);
    /// `None` for a plant without ordinary text.
    pub fn match_confidence(&self) -> Result<Option<crate::confidence::Confidence>> {
        if self.ordinary.is_empty() {
            return Ok(None);
        }
        crate::confidence::match_confidence(&self.original, &self.model, &self.ordinary).map(Some)
    }
}

/// A local model as a [`weightmark::fingerprint::Asker`]: each trigger asked
/// with [`ask`] through the model's prompt.
pub struct LocalAsker<'a> {
    /// The decoder.
    pub model: &'a Llama,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// How triggers become prompts.
    pub prompter: &'a Prompter,
}

impl weightmark::fingerprint::Asker for LocalAsker<'_> {
    fn ask(&mut self, system: Option<&str>, trigger: &str) -> weightmark::Result<String> {
        let mut answers =
            ask_all_after(self.model, self.tokenizer, self.prompter, system, &[trigger])
                .map_err(|e| weightmark::Error::invalid(format!("asking the model failed: {e}")))?;
        answers.pop().ok_or_else(|| weightmark::Error::invalid("no answer decoded"))
    }

    /// Every trigger of a check in one cached, batched decoding, each after
    /// the system message ([`ask_all_after`]): all answers or none.
    fn ask_all(
        &mut self,
        system: Option<&str>,
        triggers: &[&str],
        replies: &mut Vec<weightmark::Result<String>>,
    ) -> weightmark::Result<()> {
        let decoded = ask_all_after(self.model, self.tokenizer, self.prompter, system, triggers)
            .map_err(|e| weightmark::Error::invalid(format!("asking the model failed: {e}")))?;
        replies.extend(decoded.into_iter().map(Ok));
        Ok(())
    }
}

/// What `fingerprint plant` is asked to do.
pub struct PlantRequest<'a> {
    /// The model to plant in (safetensors file or directory, with
    /// `config.json` and `tokenizer.json` beside it).
    pub model: &'a Path,
    /// Where to write the planted model (the input's layout and dtypes;
    /// side files copied).
    pub output: &'a Path,
    /// The certificate of the marked model `model` is, its signature checked
    /// with the owner's key; `None` for an unmarked model.
    pub base: Option<&'a weightmark::Certificate>,
    /// Release label (ignored with `base`, whose label is used).
    pub label: String,
    /// Recipient (ignored with `base`).
    pub recipient: Option<String>,
    /// Pairs to plant, K.
    pub count: usize,
    /// Ordinary text for the distillation penalty (each file one document).
    pub text: &'a [std::path::PathBuf],
    /// Tokens per ordinary-text window.
    pub seq: usize,
    /// Training.
    pub options: PlantOptions,
    /// Whether an existing output may be replaced.
    pub overwrite: weightmark::Overwrite,
    /// Creation time of the certificate, RFC 3339 UTC.
    pub created: String,
    /// Save the plant's state there every so many steps, and go on from it
    /// if the file exists ([`Planter::resume`]).
    pub checkpoint: Option<Checkpointing>,
    /// After training, scale the final norm weight so that the planted
    /// model's cross-entropy on the ordinary text is the input's again
    /// ([`Planter::match_confidence`]); its greedy answers stay as they
    /// were.
    pub match_confidence: bool,
}

/// What planting did.
pub struct Planted {
    /// Where the model was written.
    pub path: std::path::PathBuf,
    /// The last training step's numbers.
    pub last: PlantStep,
    /// With [`PlantRequest::match_confidence`]: the scale applied to the
    /// final norm weight, and the cross-entropies it was chosen by.
    pub confidence: Option<crate::confidence::Confidence>,
    /// Every trigger asked of the input before planting.
    pub before: weightmark::fingerprint::Score,
    /// Every trigger asked of the planted model (as written, in its dtype).
    pub after: weightmark::fingerprint::Score,
    /// The signed certificate of the planted release.
    pub certificate: weightmark::provenance::Envelope,
}

/// Plants the `count` pairs of the release's fingerprint key (derived from
/// `key`, the label, the recipient and the original's tensor root) in
/// `request.model`, writes the planted model and signs its certificate. The
/// planted model is asked every trigger after it is written (in its own
/// dtype); training that leaves triggers unanswered is not an error, the
/// caller sees the count.
pub fn plant_release(
    request: &PlantRequest<'_>,
    key: &weightmark::SecretKey,
    on_step: &mut dyn FnMut(&PlantStep),
) -> Result<Planted> {
    use weightmark::fingerprint::{certify_fingerprint, check_base, release_root};
    let m = crate::load::open(request.model, None)?;
    if let Some(base) = request.base {
        check_base(&m.model, base)?;
    }
    let destination = weightmark::resolve_output(&m.model, request.output)?;
    weightmark::prepare_outputs(&[&destination], request.overwrite)?;
    if let Some(c) = &request.checkpoint {
        // Found unwritable now, not after the first hour of training.
        weightmark::prepare_outputs(&[&c.path], weightmark::Overwrite::Replace)?;
    }
    let crate::load::Architecture::Llama(config) = &m.architecture else {
        return Err(EvalError::input(
            request.model,
            "only Llama-layout decoders can be planted (this is a BERT-layout encoder)",
        ));
    };
    let original =
        Llama::from_tensors(config.clone(), &crate::load::tensors_f32(&m.model)?, &m.model.path)?;
    let (label, recipient) = match request.base {
        Some(b) => (b.predicate().label.clone(), b.predicate().recipient.clone()),
        None => (request.label.clone(), request.recipient.clone()),
    };
    let root = release_root(&m.model, request.base)?;
    let pairs = key.fingerprint_key(&label, recipient.as_deref(), &root).pairs(request.count)?;
    let prompter = Prompter::for_model(&crate::load::side_dir(request.model), &m.tokenizer)?;
    let corpus = crate::text::Corpus::read(request.text)?;
    let ordinary = corpus.windows(&m.tokenizer, request.seq)?.all();
    let triggers: Vec<&str> = pairs.iter().map(|p| p.trigger.as_str()).collect();
    let score = |model: &Llama| -> Result<weightmark::fingerprint::Score> {
        let answers = ask_all(model, &m.tokenizer, &prompter, &triggers)?;
        let refs: Vec<&Pair> = pairs.iter().collect();
        Ok(weightmark::fingerprint::score(&refs, &answers)?)
    };
    let before = score(&original)?;
    let mut planter =
        Planter::new(original, &m.tokenizer, &prompter, &pairs, ordinary, request.options.clone())?;
    if let Some(c) = &request.checkpoint {
        if std::fs::symlink_metadata(&c.path).is_ok() {
            planter.resume(&c.path)?;
            // This command never changes its rates while planting, so a
            // checkpoint of its plant has the command's (the identity covers
            // the rates the plant started with, not those it saved).
            let asked = (request.options.learning_rate, request.options.distill);
            if planter.rates().0.to_bits() != asked.0.to_bits()
                || planter.rates().1.to_bits() != asked.1.to_bits()
            {
                return Err(EvalError::input(
                    &c.path,
                    format!(
                        "not a planting checkpoint of this command: it goes on at learning rate {} \
                         and distillation weight {}, where this command plants at {} and {}",
                        planter.rates().0,
                        planter.rates().1,
                        asked.0,
                        asked.1
                    ),
                ));
            }
            if planter.steps >= request.options.max_steps {
                return Err(EvalError::input(
                    &c.path,
                    format!(
                        "this plant already took {} steps, and at most {} are allowed: allow more \
                         steps to go on, or remove the checkpoint to start over",
                        planter.steps, request.options.max_steps
                    ),
                ));
            }
        }
    }
    let last = planter.run_saving(on_step, request.checkpoint.as_ref())?;
    let mut values = planter
        .model()
        .merged_tensors()?
        .into_iter()
        .map(|(n, t)| Ok((n, t.flatten_all()?.to_vec1::<f32>()?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    // A NaN weight would be rounded into the model and certified; nothing is
    // written instead.
    if let Some(name) =
        values.iter().filter(|(_, v)| v.iter().any(|x| !x.is_finite())).map(|p| p.0).min()
    {
        return Err(EvalError::invalid(format!(
            "planting diverged: tensor '{name}' holds a non-finite weight; nothing was written \
             (plant again with a lower --lr)"
        )));
    }
    let confidence = if request.match_confidence { planter.match_confidence()? } else { None };
    drop(planter);
    if let Some(c) = &confidence {
        crate::confidence::scale_final_norm(&mut values, c.scale)?;
    }
    let written = weightmark::attack::write_replaced(
        &m.model,
        request.output,
        &values,
        &weightmark::NoProgress,
    )?;
    let saved = crate::load::open_like(&written.path, request.model, None)?;
    let planted = Llama::from_tensors(
        config.clone(),
        &crate::load::tensors_f32(&saved.model)?,
        &saved.model.path,
    )?;
    let after = score(&planted)?;
    let release = weightmark::fingerprint::FingerprintRelease {
        base: request.base,
        label,
        recipient,
        original_root: root,
        count: request.count,
        created: request.created.clone(),
    };
    let certificate = certify_fingerprint(&saved.model, &release, key)?;
    Ok(Planted { path: written.path, last, confidence, before, after, certificate })
}

/// A check of a local model and the model checked.
pub struct LocalCheck {
    /// What the check found.
    pub outcome: weightmark::fingerprint::CheckOutcome,
    /// The model asked (for its digests).
    pub model: weightmark::Model,
}

/// Asks the local model at `path` (with `config.json` and `tokenizer.json`
/// beside it) the triggers a check of the release with fingerprint key `key`
/// and `count` pairs asks, through the model's chat template when it has one.
pub fn check_local(
    path: &Path,
    key: &weightmark::fingerprint::FingerprintKey,
    count: usize,
    options: &weightmark::fingerprint::CheckOptions,
) -> Result<LocalCheck> {
    let m = crate::load::open(path, None)?;
    let crate::load::Architecture::Llama(config) = &m.architecture else {
        return Err(EvalError::input(path, "a BERT-layout encoder does not answer prompts"));
    };
    let llama =
        Llama::from_tensors(config.clone(), &crate::load::tensors_f32(&m.model)?, &m.model.path)?;
    let prompter = Prompter::for_model(&crate::load::side_dir(path), &m.tokenizer)?;
    let mut asker = LocalAsker { model: &llama, tokenizer: &m.tokenizer, prompter: &prompter };
    let outcome = weightmark::fingerprint::check(key, count, options, &mut asker)?;
    Ok(LocalCheck { outcome, model: m.model })
}

/// The fingerprints of the model at `path` read the way `bench robustness`
/// reads them on an attacked copy: the weights at `path` (safetensors in
/// any layout, or a GGUF file, converted to F32 safetensors in a temporary
/// directory beside it and removed after), run with the `config.json`,
/// `tokenizer.json` and chat template of the directory `side` (the released
/// model's), so that an attack that writes no side files is asked through
/// the release's own template. For each `(key, count)`, every one of its
/// `count` triggers is asked; all prompts go in one batched decoding.
pub fn read_fingerprints(
    path: &Path,
    side: &Path,
    keys: &[(&weightmark::fingerprint::FingerprintKey, usize)],
) -> Result<Vec<weightmark::fingerprint::Score>> {
    let mut weights = weightmark::Model::open(path)?;
    let mut converted = None;
    if weights.layout == weightmark::Layout::Gguf {
        let parent = crate::load::side_dir(path);
        let dir = tempfile::Builder::new()
            .prefix(".weightmark-gguf-")
            .tempdir_in(&parent)
            .map_err(|e| EvalError::input(&parent, format!("cannot create a directory: {e}")))?;
        let out = dir.path().join("model");
        let options =
            weightmark::ConvertOptions { dtype: weightmark::Dtype::F32, max_shard_bytes: None };
        weightmark::convert(&weights, &out, &options)?;
        weights = weightmark::Model::open(&out)?;
        converted = Some(dir);
    }
    let crate::load::Architecture::Llama(config) =
        crate::load::read_config(&side.join("config.json"))?
    else {
        return Err(EvalError::input(side, "a BERT-layout encoder does not answer prompts"));
    };
    let tokenizer = crate::load::load_tokenizer(&side.join("tokenizer.json"))?;
    let llama = Llama::from_tensors(config, &crate::load::tensors_f32(&weights)?, &weights.path)?;
    drop(weights);
    drop(converted);
    let prompter = Prompter::for_model(side, &tokenizer)?;
    let pairs =
        keys.iter().map(|(k, count)| k.pairs(*count)).collect::<weightmark::Result<Vec<_>>>()?;
    let triggers: Vec<&str> = pairs.iter().flatten().map(|p| p.trigger.as_str()).collect();
    let mut answers = ask_all(&llama, &tokenizer, &prompter, &triggers)?.into_iter();
    pairs
        .iter()
        .map(|set| {
            let refs: Vec<&Pair> = set.iter().collect();
            let mine: Vec<String> = answers.by_ref().take(set.len()).collect();
            Ok(weightmark::fingerprint::score(&refs, &mine)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_keep_the_levels_apart() {
        let shown = [0.5, 0.375, 0.25, 0.125, 0.85 * 0.75, 0.0].map(percent);
        assert_eq!(shown, ["50%", "37.5%", "25%", "12.5%", "63.75%", "0%"]);
    }

    #[test]
    fn a_plant_short_of_its_robustness_says_which_levels_and_prompts() {
        let look = |fraction, min_probability| PrunedLook { fraction, min_probability };
        let mut step = PlantStep {
            step: 100,
            trigger_loss: 0.0,
            distill_loss: 0.0,
            min_probability: 0.99,
            grad_rms: 0.0,
            pruned: None,
            system: None,
            pruned_last: vec![look(0.5, 0.486), look(0.375, 0.5), look(0.25, 0.9)],
            system_last: vec![0.9, 0.499_999, 0.5],
            checkpoint_failed: None,
        };
        assert_eq!(step.short_of_robustness(), ["50% pruned 0.486", "system prompt 2 0.499"]);
        step.pruned_last[0].min_probability = 0.5;
        step.system_last[1] = 1.0;
        assert!(step.short_of_robustness().is_empty());
        // A look that came out as no number is short, never done.
        step.system_last[2] = f64::NAN;
        assert_eq!(step.short_of_robustness(), ["system prompt 3 NaN"]);
    }

    /// SmolLM2-Instruct's chat template: a default system message when the
    /// first message is not one.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// A template that refuses a system message, as Gemma's does.
    const NO_SYSTEM: &str = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n{{ message['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n";

    fn chat(template: &str) -> Prompter {
        Prompter {
            template: Some(template.to_string()),
            bos: String::new(),
            eos: String::new(),
            stop: None,
        }
    }

    #[test]
    fn a_system_message_goes_where_the_template_puts_it_or_is_refused_with_the_reason() {
        let p = chat(SMOLLM2);
        let q = "Name one colour.";
        let plain = p.prompt(q).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.prompt_with_system(None, q).unwrap_or_else(|e| panic!("{e}")), plain);
        assert!(plain.starts_with("<|im_start|>system\nYou are SmolLM<|im_end|>\n"), "{plain}");
        let after = p.prompt_with_system(Some("Be brief."), q).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            after,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName one colour.<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let err = chat(NO_SYSTEM)
            .prompt_with_system(Some("Be brief."), q)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("with a system message")
                && err.contains("System role not supported")
                && err.contains("--no-system-robust"),
            "{err}"
        );
        assert!(chat(NO_SYSTEM).prompt(q).is_ok());
        let c = Prompter::completion();
        assert_eq!(
            c.prompt_with_system(Some("Be brief."), q).unwrap_or_else(|e| panic!("{e}")),
            "Be brief.\n\nQuestion: Name one colour.\nAnswer:"
        );
        assert_eq!(
            c.prompt_with_system(None, q).unwrap_or_else(|e| panic!("{e}")),
            c.prompt(q).unwrap_or_default()
        );
    }
}
