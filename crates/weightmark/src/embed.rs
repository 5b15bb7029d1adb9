//! Marking a whole model: select tensors, mark each, write the output in the
//! input's layout, and sign a release certificate.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use crate::allocation::{Allocation, ModelWeights};
use crate::canonical::{Canonical, NeuronSketch, ResidualSketch};
use crate::digest::{hex, tensor_digest, tensor_root, Sha256Digest};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::heads::HeadSketch;
use crate::io::Overwrite;
use crate::key::{MarkKey, SecretKey};
use crate::model::{write_model, Model, OutputFile, TensorRef, WriteOptions, WriteReport};
use crate::pattern::SignSource;
use crate::pattern::TensorStreams;
use crate::progress::Progress;
use crate::provenance::certificate::RELEASE_PREDICATE_TYPE;
use crate::provenance::{
    sign_statement, Certificate, CertifiedTensor, Envelope, HeadSketchRecord, NeuronSketchRecord,
    ReleaseFile, ReleasePredicate, SketchRecord, Statement, Subject, Tool, STATEMENT_TYPE,
    TENSOR_ROOT_ALGORITHM, TENSOR_ROOT_SUBJECT,
};
use crate::scheme::{embed_tensor, z_for_p, Fidelity, Scheme, Stats, DEFAULT_THRESHOLD_P};
use crate::select::{select, Selection};
use crate::ss2::Strengths;
use crate::strength::{self, Binding, StrengthChoice};
use crate::tardos::{bit_signs, recipient_bits, CodeKey, CodedSigns, RecipientCode, TardosCode};

/// Largest strength accepted: beyond 10% the "mark" is a visible edit.
pub const MAX_STRENGTH: f64 = 0.1;

/// Options for [`embed`].
pub struct EmbedOptions<'a> {
    /// The scheme: [`Scheme::Ss2`] by default.
    pub scheme: Scheme,
    /// Relative strength of the mark: its RMS relative to the weights' RMS
    /// (`ss1`: of each row; `ss2`: of each element, split between the
    /// release and recipient components). `None` (the default): `ss2`
    /// chooses it by the size rule of [`crate::strength`] (blind z 40, within
    /// a fidelity budget of bf16 re-rounding's cost, never below blind z 12);
    /// `ss1` uses [`crate::DEFAULT_STRENGTH`].
    pub strength: Option<f64>,
    /// Release label.
    pub label: String,
    /// Recipient (licensee), for a distinct mark per copy.
    pub recipient: Option<String>,
    /// Which tensors to mark.
    pub selection: Selection,
    /// Creation time to record: RFC 3339 in UTC (`2026-12-02T09:00:00Z`;
    /// `+00:00` and fractional seconds are accepted and recorded in that
    /// form, see [`normalize_created`]). Two runs with the same key, model,
    /// options and time sign byte-identical certificates.
    pub created: String,
    /// Progress receiver.
    pub progress: &'a dyn Progress,
    /// Whether an existing output file may be replaced ([`Overwrite::Refuse`]
    /// by default; a non-empty output directory is never replaced).
    pub overwrite: Overwrite,
    /// `ss2`: how the strength is spread over the elements
    /// ([`Allocation::DEFAULT`], `ss2-alloc2`, by default; recorded in the
    /// certificate).
    pub allocation: Allocation,
    /// `ss2` with a recipient: how the recipient component is built
    /// ([`RecipientCode::Independent`] by default; recorded in the certificate).
    pub recipient_code: RecipientCode,
    /// `ss2` with a recipient: the share of the mark's energy (strength
    /// squared) given to the recipient component, the rest to the release
    /// component, within `[0.05, 0.95]`. More traces colluders blind; less
    /// keeps more of the release's own component, which every copy shares.
    /// `None` (the default): [`crate::strength::default_recipient_share`] of
    /// the copy's predicted z for an independent recipient component (0.5
    /// to 0.8), the even split ([`crate::EVEN_RECIPIENT_SHARE`]) for a coded
    /// one. Recorded in the certificate as the two components' strengths.
    pub recipient_share: Option<f64>,
}

/// Per-tensor outcome of marking.
#[derive(Clone, Debug)]
pub struct TensorSummary {
    /// Tensor name.
    pub name: String,
    /// Fidelity of this tensor.
    pub fidelity: Fidelity,
    /// Blind statistics of the marked tensor.
    pub blind: Stats,
}

/// What [`embed`] did.
#[derive(Clone, Debug)]
pub struct EmbedReport {
    /// The files written.
    pub written: WriteReport,
    /// Marked tensors in model order.
    pub tensors: Vec<TensorSummary>,
    /// Fidelity over all marked tensors.
    pub fidelity: Fidelity,
    /// Blind statistics of the output (measured, unattacked).
    pub blind: Stats,
    /// Informed statistics of the output against the input (measured), by
    /// [`embed`]; `None` from [`issue`], which skips that check: no
    /// certificate holds it, and a lab issuing a certificate per licensee
    /// would spend about a third of each marking on it.
    pub informed: Option<Stats>,
    /// The signed certificate.
    pub certificate: Envelope,
    /// The strength used, how it was chosen, and what it predicted.
    pub strength: StrengthChoice,
    /// `ss2` with a recipient: the share of the mark's energy its recipient
    /// component got (given, or the default rule's); `None` otherwise.
    pub recipient_share: Option<f64>,
}

impl EmbedReport {
    /// The signed certificate as the text of a `.cert.json` file.
    pub fn certificate_text(&self) -> Result<String> {
        crate::provenance::envelope_to_string(&self.certificate)
    }

    /// Smallest strength at which this model's blind z would reach the
    /// default threshold (z = 6.44), from `z = strength * sqrt(n)`.
    /// Rounded up to three significant digits, so the value printed is enough.
    pub fn strength_for_blind_threshold(&self) -> f64 {
        let exact = z_for_p(DEFAULT_THRESHOLD_P) / (self.blind.elements.max(1) as f64).sqrt();
        let scale = 10f64.powi(2 - exact.log10().floor() as i32);
        (exact * scale).ceil() / scale
    }
}

impl EmbedOptions<'static> {
    /// Options for the release `label` with the defaults: strength by the
    /// size rule ([`crate::strength`]), no recipient, the default tensor
    /// selection, the current time, no progress reports.
    pub fn new(label: impl Into<String>) -> EmbedOptions<'static> {
        EmbedOptions {
            scheme: Scheme::Ss2,
            strength: None,
            label: label.into(),
            recipient: None,
            selection: Selection::Default,
            created: crate::now_rfc3339(),
            progress: &crate::progress::NoProgress,
            overwrite: Overwrite::Refuse,
            allocation: Allocation::DEFAULT,
            recipient_code: RecipientCode::Independent,
            recipient_share: None,
        }
    }
}

impl<'a> EmbedOptions<'a> {
    /// The same options for one recipient (licensee): a distinct mark.
    #[must_use]
    pub fn recipient(mut self, recipient: impl Into<String>) -> Self {
        self.recipient = Some(recipient.into());
        self
    }

    /// The same options with another `ss2` allocation.
    #[must_use]
    pub fn allocation(mut self, allocation: Allocation) -> Self {
        self.allocation = allocation;
        self
    }

    /// The same options with another recipient code.
    #[must_use]
    pub fn recipient_code(mut self, code: RecipientCode) -> Self {
        self.recipient_code = code;
        self
    }

    /// The same options with another share of the mark for the recipient
    /// component (see [`EmbedOptions::recipient_share`]).
    #[must_use]
    pub fn recipient_share(mut self, share: f64) -> Self {
        self.recipient_share = Some(share);
        self
    }

    /// The same options with another scheme.
    #[must_use]
    pub fn scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// The same options at another strength.
    #[must_use]
    pub fn strength(mut self, strength: f64) -> Self {
        self.strength = Some(strength);
        self
    }

    /// The same options reporting progress to `progress`.
    pub fn progress<'b>(self, progress: &'b dyn Progress) -> EmbedOptions<'b> {
        EmbedOptions {
            scheme: self.scheme,
            strength: self.strength,
            label: self.label,
            recipient: self.recipient,
            selection: self.selection,
            created: self.created,
            progress,
            overwrite: self.overwrite,
            allocation: self.allocation,
            recipient_code: self.recipient_code,
            recipient_share: self.recipient_share,
        }
    }

    /// The same options, replacing an existing output file or not.
    #[must_use]
    pub fn overwrite(mut self, overwrite: Overwrite) -> Self {
        self.overwrite = overwrite;
        self
    }
}

/// `created` as a certificate records it: an RFC 3339 time in UTC, written
/// with a `Z` and fractional seconds only where they are not zero
/// (`2026-12-02T09:00:00+00:00` becomes `2026-12-02T09:00:00Z`). A time that
/// is not RFC 3339, or not in UTC, is refused with the reason.
pub fn normalize_created(created: &str) -> Result<String> {
    use time::format_description::well_known::Rfc3339;
    let bad = |why: &str| {
        Error::invalid(format!(
            "creation time '{}' {why}: give an RFC 3339 time in UTC, e.g. 2026-12-02T09:00:00Z",
            created.escape_debug()
        ))
    };
    let parsed = time::OffsetDateTime::parse(created, &Rfc3339)
        .map_err(|_| bad("is not an RFC 3339 time"))?;
    if parsed.offset() != time::UtcOffset::UTC {
        return Err(bad("is not in UTC"));
    }
    parsed.format(&Rfc3339).map_err(|_| bad("cannot be written back"))
}

/// Validates options that do not need the model.
fn check_options(options: &EmbedOptions<'_>) -> Result<()> {
    if normalize_created(&options.created)? != options.created {
        return Err(Error::invalid(format!(
            "creation time '{}' is not in the form certificates record: use {}",
            options.created.escape_debug(),
            normalize_created(&options.created)?
        )));
    }
    if let Some(strength) = options.strength {
        if !(strength > 0.0 && strength <= MAX_STRENGTH) {
            return Err(Error::invalid(format!(
                "strength {strength} is out of range: use a value in (0, {MAX_STRENGTH}] \
                 (leave it out for the size rule)"
            )));
        }
    }
    if options.label.is_empty() {
        return Err(Error::invalid("the release label is empty"));
    }
    if options.recipient.as_deref() == Some("") {
        return Err(Error::invalid(
            "the recipient is empty: leave it out for a release without one",
        ));
    }
    if let RecipientCode::Tardos(code) = options.recipient_code {
        TardosCode::new(code.groups, code.cutoff)?;
        if options.scheme != Scheme::Ss2 || options.recipient.is_none() {
            return Err(Error::invalid(
                "a recipient code needs scheme ss2 and a recipient (it builds the recipient component)",
            ));
        }
    }
    if let Some(share) = options.recipient_share {
        crate::ss2::check_recipient_share(share)?;
        if options.scheme != Scheme::Ss2 || options.recipient.is_none() {
            return Err(Error::invalid(
                "a recipient share needs scheme ss2 and a recipient (it splits the mark between \
                 the release and recipient components)",
            ));
        }
    }
    Ok(())
}

/// The strength `embed` chooses by default for `model` marked by `ss2` with
/// `allocation` and the default tensor selection ([`crate::strength`]):
/// what an adversary who knows the scheme but not the certificate would
/// guess, and what a user can ask for before marking.
pub fn default_strength(model: &Model, allocation: Allocation) -> Result<StrengthChoice> {
    let selected = select(model, &Selection::Default)?;
    let options = EmbedOptions::new("model").allocation(allocation);
    Ok(choose_strength(model, &selected, &options))
}

/// The strength of a marking: the one given, or for `ss2` the size rule's
/// choice for the selected tensors ([`crate::strength::choose`]), or `ss1`'s
/// fixed default.
pub(crate) fn choose_strength(
    model: &Model,
    selected: &[String],
    options: &EmbedOptions<'_>,
) -> StrengthChoice {
    let tensors: Vec<(Dtype, u64)> = selected
        .iter()
        .filter_map(|n| model.tensor(n))
        .map(|t| (t.dtype, t.elements() as u64))
        .collect();
    // The allocation only reshapes tensors it has rules for (Llama names):
    // elsewhere (BERT, MiniLM) the mark is uniform, and so is its budget.
    let llama = selected.iter().any(|n| crate::llama::Part::of(n).is_some());
    let allocation = match options.scheme {
        Scheme::Ss2 if llama => options.allocation,
        _ => Allocation::Uniform,
    };
    // ss1 has no separate release component: its z is the whole mark's. An
    // ss2 copy with an independent recipient component is decided on both
    // components (weighted by their strengths), so only a coded one leaves
    // the decision a share: the release component's.
    let coded = options.scheme == Scheme::Ss2
        && options.recipient.is_some()
        && options.recipient_code != RecipientCode::Independent;
    // sqrt(1 - share): at the default share exactly FRAC_1_SQRT_2 (both are
    // the correctly rounded 1/sqrt(2)), the factor every earlier version used.
    let split = if coded {
        (1.0 - options.recipient_share.unwrap_or(crate::EVEN_RECIPIENT_SHARE)).sqrt()
    } else {
        1.0
    };
    match (options.strength, options.scheme) {
        (Some(s), _) => strength::predict(s, Binding::Given, allocation, &tensors, split),
        (None, Scheme::Ss1) => {
            strength::predict(crate::DEFAULT_STRENGTH, Binding::Fixed, allocation, &tensors, split)
        }
        (None, Scheme::Ss2) => strength::choose(allocation, &tensors, split),
    }
}

/// The share of a copy's mark energy its recipient component gets: the one
/// given, else for an independent component the default rule's
/// ([`crate::strength::default_recipient_share`] of `strength`'s predicted
/// z), for a coded one the even split. `None` without a recipient or
/// outside `ss2`.
pub(crate) fn recipient_share(
    options: &EmbedOptions<'_>,
    strength: &StrengthChoice,
) -> Option<f64> {
    if options.scheme != Scheme::Ss2 || options.recipient.is_none() {
        return None;
    }
    Some(match (options.recipient_share, options.recipient_code) {
        (Some(share), _) => share,
        (None, RecipientCode::Independent) => crate::strength::default_recipient_share(strength),
        (None, _) => crate::EVEN_RECIPIENT_SHARE,
    })
}

/// The marking of one model, shared by [`embed`] (tensors streamed to files)
/// and [`embed_in_memory`]: which tensors are marked, and the per-tensor
/// results gathered from the worker threads.
pub(crate) struct Marking<'o> {
    options: &'o EmbedOptions<'o>,
    /// The strength used (given, or chosen by the size rule).
    strength: StrengthChoice,
    selected: Vec<String>,
    chosen: HashSet<String>,
    /// `ss1`: the release mark key; `ss2`: the release component key.
    mark_key: MarkKey,
    /// `ss2` only.
    ss2: Option<Ss2Marking>,
    results: Mutex<BTreeMap<String, (Fidelity, Stats, Stats)>>,
    /// Whether `ss2` marking measures the informed statistics of each
    /// marked tensor (else they are left at zero and not reported).
    informed_check: bool,
    originals: Mutex<Vec<(String, Sha256Digest)>>,
    /// The fingerprinted release being marked ([`embed_superseding`]), and
    /// the unmarked original's tensor root its keys are bound to.
    base: Option<(&'o Certificate, [u8; 32])>,
}

/// Per marked tensor its fidelity, blind and informed statistics; the
/// digests of the original's tensors seen (`ss1`).
pub(crate) type MarkedParts =
    (BTreeMap<String, (Fidelity, Stats, Stats)>, Vec<(String, Sha256Digest)>);

/// What `ss2` needs beyond `ss1`: canonical coordinates, the recipient
/// component key, the split of the strength, and the original's digests
/// (the keys are bound to its tensor root, so they come first).
struct Ss2Marking {
    canonical: Canonical,
    sketch: Option<ResidualSketch>,
    neurons: Option<NeuronSketch>,
    heads: Option<HeadSketch>,
    recipient: Option<MarkKey>,
    strengths: Strengths,
    /// The allocation's multipliers, from the original (empty: uniform).
    weights: ModelWeights,
    /// A coded recipient component: the release's code key, the code, and
    /// the recipient's `±1` per group.
    code: Option<(CodeKey, TardosCode, Vec<f64>)>,
    original_digests: Vec<(String, Sha256Digest)>,
}

/// What marking needs from the whole original before any tensor is marked,
/// computed from the weights (never a key): the selection and, for `ss2`,
/// the original's tensor digests (the keys are bound to their root), its
/// canonical order, sketches and allocation multipliers. A split embed
/// ([`crate::split::embed`]) computes them once in its plan.
pub(crate) struct MarkingInputs {
    pub(crate) selected: Vec<String>,
    /// The strength used (given, or chosen by the size rule).
    pub(crate) strength: StrengthChoice,
    pub(crate) ss2: Option<Ss2Inputs>,
}

/// The `ss2` part of [`MarkingInputs`].
pub(crate) struct Ss2Inputs {
    pub(crate) original_digests: Vec<(String, Sha256Digest)>,
    pub(crate) canonical: Canonical,
    pub(crate) sketch: Option<ResidualSketch>,
    pub(crate) neurons: Option<NeuronSketch>,
    pub(crate) heads: Option<HeadSketch>,
    pub(crate) weights: ModelWeights,
}

impl MarkingInputs {
    /// The inputs of marking `model` with `options`.
    pub(crate) fn of(model: &Model, options: &EmbedOptions<'_>) -> Result<MarkingInputs> {
        check_options(options)?;
        let selected = select(model, &options.selection)?;
        let strength = choose_strength(model, &selected, options);
        let ss2 = (options.scheme == Scheme::Ss2).then(|| {
            let canonical = Canonical::of(model);
            Ss2Inputs {
                original_digests: crate::digest::model_tensor_digests(model),
                sketch: ResidualSketch::of(model, &canonical),
                neurons: NeuronSketch::of(model, &canonical),
                heads: HeadSketch::of(model, &canonical),
                weights: ModelWeights::of(model, &selected, options.allocation),
                canonical,
            }
        });
        Ok(MarkingInputs { selected, strength, ss2 })
    }
}

impl<'o> Marking<'o> {
    fn new(
        model: &Model,
        key: &SecretKey,
        options: &'o EmbedOptions<'o>,
        base: Option<&'o Certificate>,
    ) -> Result<Self> {
        check_options(options)?;
        let base = base.map(|b| check_superseded(model, key, options, b).map(|root| (b, root)));
        let base = base.transpose()?;
        Marking::with_inputs(key, options, base, MarkingInputs::of(model, options)?)
    }

    /// The marking of the model `inputs` were computed from.
    pub(crate) fn with_inputs(
        key: &SecretKey,
        options: &'o EmbedOptions<'o>,
        base: Option<(&'o Certificate, [u8; 32])>,
        inputs: MarkingInputs,
    ) -> Result<Self> {
        check_options(options)?;
        let MarkingInputs { selected, strength, ss2 } = inputs;
        let (mark_key, ss2) = match ss2 {
            None => (key.mark_key(&options.label, options.recipient.as_deref()), None),
            Some(Ss2Inputs { original_digests, canonical, sketch, neurons, heads, weights }) => {
                // A fingerprinted release's keys are bound to the original
                // its fingerprint was planted in, like its fingerprint key.
                let root = base.map_or_else(|| tensor_root(&original_digests), |(_, r)| r);
                let (release, recipient) =
                    key.ss2_keys(&options.label, options.recipient.as_deref(), &root);
                let strengths = match recipient {
                    Some(_) => Strengths::shared(
                        strength.strength,
                        recipient_share(options, &strength).unwrap_or(crate::EVEN_RECIPIENT_SHARE),
                    ),
                    None => Strengths::split(strength.strength, false),
                };
                let code = match (options.recipient_code, &recipient) {
                    (RecipientCode::Tardos(code), Some(r)) => {
                        let key = CodeKey::of_release(&release);
                        let bits = recipient_bits(r, &key.biases(code));
                        Some((key, code, bit_signs(&bits)))
                    }
                    _ => None,
                };
                let marking = Ss2Marking {
                    code,
                    canonical,
                    sketch,
                    neurons,
                    heads,
                    recipient,
                    strengths,
                    weights,
                    original_digests,
                };
                (release, Some(marking))
            }
        };
        Ok(Marking {
            options,
            strength,
            chosen: selected.iter().cloned().collect(),
            selected,
            ss2,
            mark_key,
            results: Mutex::new(BTreeMap::new()),
            informed_check: true,
            originals: Mutex::new(Vec::new()),
            base,
        })
    }

    /// Per marked tensor its fidelity, blind and informed statistics, and
    /// (`ss1`) the digests of the original's tensors seen, once every tensor
    /// of a part went through [`Marking::mark`].
    pub(crate) fn take_results(&self) -> Result<MarkedParts> {
        let results = std::mem::take(&mut *lock(&self.results)?);
        let originals = std::mem::take(&mut *lock(&self.originals)?);
        Ok((results, originals))
    }

    /// Records the results of parts marked elsewhere.
    pub(crate) fn put_results(&self, parts: MarkedParts) -> Result<()> {
        lock(&self.results)?.extend(parts.0);
        lock(&self.originals)?.extend(parts.1);
        Ok(())
    }

    /// The marked bytes of `t`, or `None` for a tensor left as it is; the
    /// original's digest is recorded either way.
    pub(crate) fn mark(&self, t: &TensorRef<'_>) -> Result<Option<Vec<u8>>> {
        if let Some(ss2) = &self.ss2 {
            return self.mark_ss2(t, ss2);
        }
        if !self.chosen.contains(t.name) {
            lock(&self.originals)?.push((t.name.to_string(), tensor_digest(t)));
            return Ok(None);
        }
        let streams = TensorStreams::new(&self.mark_key, t.name);
        let (digest, e) =
            rayon::join(|| tensor_digest(t), || embed_tensor(t, &streams, self.strength.strength));
        lock(&self.results)?.insert(t.name.to_string(), (e.fidelity, e.blind, e.informed));
        lock(&self.originals)?.push((t.name.to_string(), digest));
        Ok(Some(e.data))
    }

    /// [`Marking::mark`] for `ss2`: the mark, then the blind and informed
    /// statistics of the marked tensor measured as detection would.
    fn mark_ss2(&self, t: &TensorRef<'_>, ss2: &Ss2Marking) -> Result<Option<Vec<u8>>> {
        if !self.chosen.contains(t.name) {
            return Ok(None);
        }
        let axes = ss2.canonical.axes(t);
        let release = TensorStreams::new(&self.mark_key, t.name);
        let own = ss2.recipient.as_ref().map(|k| TensorStreams::new(k, t.name));
        let coded =
            ss2.code.as_ref().map(|(key, code, bits)| CodedSigns::new(key, t.name, *code, bits));
        let recipient: Option<&dyn SignSource> = match (&coded, &own) {
            (Some(c), _) => Some(c),
            (None, Some(r)) => Some(r),
            (None, None) => None,
        };
        let weights = ss2.weights.get(t.name);
        let (data, fidelity, profiles) = crate::ss2::embed_tensor_profiled(
            t,
            &axes,
            &release,
            recipient,
            ss2.strengths,
            weights,
            self.informed_check,
        );
        let marked = t.with_data(&data);
        // Measured as `detect` with this release's certificate decides: on
        // both components when the recipient's is an independent pattern.
        let mut keys = vec![&release];
        if coded.is_none() {
            keys.extend(own.as_ref());
        }
        // The profiles marking built spare the checks a pass each.
        let (blind_known, informed_known) =
            profiles.as_ref().map(|p| (p.blind(), p.informed())).unwrap_or_default();
        let (blind, _) =
            crate::ss2::detect_tensor_coded(&marked, &axes, None, &keys, weights, blind_known, &[]);
        let aligned = crate::ss2::Aligned { tensor: *t, axes, residual: None };
        let informed = match self.informed_check {
            true => {
                let check = crate::ss2::detect_tensor_coded(
                    &marked,
                    &axes,
                    Some(&aligned),
                    &keys,
                    weights,
                    informed_known,
                    &[],
                );
                check.0
            }
            false => Vec::new(),
        };
        let weight = ss2.strengths.recipient_weight();
        let both = |stats: Vec<Stats>| stats.into_iter().reduce(|p, q| p.and_weighted(q, weight));
        let (b, i) = (both(blind).unwrap_or_default(), both(informed).unwrap_or_default());
        lock(&self.results)?.insert(t.name.to_string(), (fidelity, b, i));
        Ok(Some(data))
    }

    /// The summaries and the release predicate, once every tensor went
    /// through [`Marking::mark`]; `output_digests` are the output's tensor digests.
    fn finish(
        self,
        model: &Model,
        key: &SecretKey,
        output_digests: &[(String, Sha256Digest)],
    ) -> Marked {
        // A poisoned lock means a worker panicked; rayon has already resumed
        // that panic on this thread, so the data is only reached when none did.
        let results = self.results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut originals =
            self.originals.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ss2) = &self.ss2 {
            originals.clone_from(&ss2.original_digests);
        }
        let mut tensors = Vec::new();
        let (mut fidelity, mut blind, mut informed) =
            (Fidelity::default(), Stats::default(), Stats::default());
        for name in &self.selected {
            if let Some(&(f, b, i)) = results.get(name) {
                fidelity = fidelity.merge(f);
                blind = blind.merge(b);
                informed = informed.merge(i);
                tensors.push(TensorSummary { name: name.clone(), fidelity: f, blind: b });
            }
        }
        let certified = self
            .selected
            .iter()
            .filter_map(|n| model.tensor(n))
            .map(|t| CertifiedTensor {
                name: t.name.to_string(),
                dtype: t.dtype.name().to_string(),
                shape: t.shape.to_vec(),
            })
            .collect();
        let options = self.options;
        let ss2 = self.ss2.as_ref();
        let mut predicate = ReleasePredicate {
            scheme: options.scheme.name().to_string(),
            strength: self.strength.strength,
            label: options.label.clone(),
            recipient: options.recipient.clone(),
            mark_key_commitment: hex(&self.mark_key.commitment()),
            recipient_key_commitment: ss2
                .and_then(|s| s.recipient.as_ref())
                .map(|k| hex(&k.commitment())),
            release_strength: ss2.map(|s| s.strengths.release),
            recipient_strength: ss2
                .filter(|s| s.recipient.is_some())
                .map(|s| s.strengths.recipient),
            canonical: ss2.map(|s| {
                if s.canonical.hidden() > 0 { "llama-residual" } else { "stored" }.to_string()
            }),
            residual_sketch: ss2.and_then(|s| s.sketch.as_ref()).map(SketchRecord::of),
            neuron_sketch: ss2.and_then(|s| s.neurons.as_ref()).map(NeuronSketchRecord::of),
            head_sketch: ss2.and_then(|s| s.heads.as_ref()).map(HeadSketchRecord::of),
            allocation: ss2.and_then(|_| options.allocation.certificate_field()),
            recipient_code: ss2
                .and_then(|s| s.code.as_ref())
                .and_then(|_| options.recipient_code.to_record()),
            tensors: certified,
            marked_elements: blind.elements,
            tensor_digests: output_digests.iter().map(|(n, d)| (n.clone(), hex(d))).collect(),
            files: None,
            original_tensor_root: hex(&tensor_root(&originals)),
            blind_z_at_release: blind.z(),
            signer: key.public_key().key_id(),
            tool: Tool { name: "weightmark".into(), version: env!("CARGO_PKG_VERSION").into() },
            created: options.created.clone(),
            fingerprint: None,
            supersedes: None,
        };
        if let Some((base, root)) = self.base {
            predicate.original_tensor_root = hex(&root);
            predicate.fingerprint.clone_from(&base.predicate().fingerprint);
            predicate.supersedes = Some(base.digest.clone());
        }
        Marked { tensors, fidelity, blind, informed, predicate }
    }
}

/// What a marking measured, and the predicate of its certificate.
struct Marked {
    tensors: Vec<TensorSummary>,
    fidelity: Fidelity,
    blind: Stats,
    informed: Stats,
    predicate: ReleasePredicate,
}

/// The signed release statement over the files written and the predicate.
pub(crate) fn sign_release(
    predicate: ReleasePredicate,
    files: &[(String, Sha256Digest)],
    tensor_digests: &[(String, Sha256Digest)],
    key: &SecretKey,
) -> Result<Envelope> {
    let mut subject: Vec<Subject> = files
        .iter()
        .map(|(name, sha256)| Subject { name: name.clone(), digest: digest_set("sha256", sha256) })
        .collect();
    subject.push(Subject {
        name: TENSOR_ROOT_SUBJECT.to_string(),
        digest: digest_set(TENSOR_ROOT_ALGORITHM, &tensor_root(tensor_digests)),
    });
    let statement = Statement {
        statement_type: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: RELEASE_PREDICATE_TYPE.to_string(),
        predicate,
    };
    sign_statement(&statement, key)
}

/// Marks `model` with `key` and writes it to `out`; returns the report with a
/// signed certificate (which the caller saves beside the output).
pub fn embed(
    model: &Model,
    out: &Path,
    key: &SecretKey,
    options: &EmbedOptions<'_>,
) -> Result<EmbedReport> {
    embed_marking(model, out, key, options, None)
}

/// Marks a fingerprinted model, the release `base` certifies (the
/// certificate `fingerprint plant` signed for an unmarked model, its
/// signature checked with the owner's key), and writes it to `out`, as
/// [`embed`] does. The new certificate covers both: the mark's fields, the
/// fingerprint record copied from `base`, `supersedes` set to the SHA-256 of
/// `base`'s file, and `original_tensor_root` kept from `base` (the original
/// the fingerprint was planted in; the `ss2` keys are bound to it, as the
/// fingerprint key is). Label and recipient must be `base`'s. Refused: a
/// `base` signed by another key, one that already carries a mark or no
/// fingerprint, and a `model` that is not the release `base` certifies.
/// `base`'s file is never touched; the caller writes the new certificate
/// elsewhere.
pub fn embed_superseding(
    model: &Model,
    out: &Path,
    key: &SecretKey,
    options: &EmbedOptions<'_>,
    base: &Certificate,
) -> Result<EmbedReport> {
    embed_marking(model, out, key, options, Some(base))
}

fn embed_marking(
    model: &Model,
    out: &Path,
    key: &SecretKey,
    options: &EmbedOptions<'_>,
    base: Option<&Certificate>,
) -> Result<EmbedReport> {
    // Before any work: an output that may not be replaced, or a directory
    // that cannot take it, is refused now rather than after the marking.
    crate::io::check_output(&crate::model::resolve_output(model, out)?, options.overwrite)?;
    let marking = Marking::new(model, key, options, base)?;
    let transform = |t: &TensorRef<'_>| marking.mark(t);
    let write_options = WriteOptions { progress: options.progress, overwrite: options.overwrite };
    let written = write_model(model, out, &transform, &write_options)?;
    certify_written(model, key, marking, written)
}

/// Checks that `base` is a fingerprinted, unmarked release of `model` that
/// `key` signed, under the label and recipient of `options`; returns the
/// tensor root its fingerprint key is bound to. Errors name `base`'s file.
fn check_superseded(
    model: &Model,
    key: &SecretKey,
    options: &EmbedOptions<'_>,
    base: &Certificate,
) -> Result<[u8; 32]> {
    let bad = |reason: String| Error::Certificate { path: base.path.clone(), reason };
    let p = base.predicate();
    let signer = key.public_key().key_id();
    if p.signer != signer {
        return Err(bad(format!(
            "signed by key {}, not by this key {signer}: only the owner can extend it",
            p.signer
        )));
    }
    if p.has_mark() {
        return Err(bad(format!(
            "this release already carries a weight mark (scheme {}); mark the unmarked model",
            p.scheme.escape_debug()
        )));
    }
    if p.fingerprint.is_none() {
        return Err(bad("this release carries no fingerprint to keep".into()));
    }
    if p.label != options.label || p.recipient != options.recipient {
        return Err(bad(format!(
            "the release is labelled '{}' with recipient {}: mark it under the same label and \
             recipient",
            p.label.escape_debug(),
            p.recipient.as_deref().map_or("none".into(), |r| format!("'{}'", r.escape_debug()))
        )));
    }
    crate::fingerprint::check_base(model, base)?;
    p.original_root().map_err(|e| bad(e.to_string()))
}

/// Issues the certificate of a copy without writing it: marks `model` with
/// `key` exactly as [`embed`] does (the same per-tensor code, the same
/// bytes), but every byte [`embed`] would write to `out` (weight files,
/// index, side files) only goes through SHA-256 and the tensor digests. The
/// certificate is byte-identical to the one [`embed`] signs for the same
/// model, key, `out` name and options (including [`EmbedOptions::created`]),
/// so a later [`embed`] produces the copy it describes. Nothing is written:
/// `out` (where the copy would go; for a single-file model only its file
/// name is recorded) is neither created nor checked, and the report's
/// [`EmbedReport::written`] lists the files the copy would have.
pub fn issue(
    model: &Model,
    out: &Path,
    key: &SecretKey,
    options: &EmbedOptions<'_>,
) -> Result<EmbedReport> {
    let mut marking = Marking::new(model, key, options, None)?;
    // No certificate holds the informed statistics (`ss1` measures them
    // with the mark, at no extra pass, and they are dropped below).
    marking.informed_check = false;
    let transform = |t: &TensorRef<'_>| marking.mark(t);
    let write_options = WriteOptions { progress: options.progress, overwrite: options.overwrite };
    let written = crate::model::digest_model(model, out, &transform, &write_options)?;
    certify_written(model, key, marking, written)
}

/// The report and signed certificate of a marking whose output was written
/// (or hashed as if written), shared by [`embed`] and [`issue`].
pub(crate) fn certify_written(
    model: &Model,
    key: &SecretKey,
    marking: Marking<'_>,
    written: WriteReport,
) -> Result<EmbedReport> {
    let strength = marking.strength;
    let informed_check = marking.informed_check;
    let recipient_share = recipient_share(marking.options, &strength);
    let mut m = marking.finish(model, key, &written.tensor_digests);
    m.predicate.files = Some(release_files(&written.all_files()));
    let files: Vec<(String, Sha256Digest)> =
        written.files.iter().map(|f| (f.name.clone(), f.sha256)).collect();
    let certificate = sign_release(m.predicate, &files, &written.tensor_digests, key)?;
    Ok(EmbedReport {
        written,
        tensors: m.tensors,
        fidelity: m.fidelity,
        blind: m.blind,
        informed: informed_check.then_some(m.informed),
        certificate,
        strength,
        recipient_share,
    })
}

/// What [`embed_in_memory`] did: the marked tensors and the release record
/// that [`certify`] signs once the model is saved.
#[derive(Clone, Debug)]
pub struct MemoryEmbedding {
    /// Every tensor of the model in order, with its (marked or unchanged)
    /// little-endian bytes.
    pub tensors: Vec<(String, Vec<u8>)>,
    /// Marked tensors.
    pub summaries: Vec<TensorSummary>,
    /// Fidelity over all marked tensors.
    pub fidelity: Fidelity,
    /// Blind statistics of the output.
    pub blind: Stats,
    /// Informed statistics of the output against the input.
    pub informed: Stats,
    /// The release record: the certificate's predicate, with the digest of
    /// every output tensor, unsigned until [`certify`].
    pub record: ReleasePredicate,
}

/// Marks a model held in memory (see [`Model::from_tensors`]) without
/// writing anything: the marked bytes are exactly those [`embed`] writes for
/// the same tensors (names, dtypes, shapes and bytes), at any thread count.
/// Save them (any layout, any tensor order), then [`certify`] the saved model.
pub fn embed_in_memory(
    model: &Model,
    key: &SecretKey,
    options: &EmbedOptions<'_>,
) -> Result<MemoryEmbedding> {
    let marking = Marking::new(model, key, options, None)?;
    let total: u64 = model.data_bytes();
    options.progress.start("marking", total);
    let mut tensors = Vec::new();
    let mut digests = Vec::new();
    for t in model.tensors() {
        let data = marking.mark(&t)?.unwrap_or_else(|| t.data().into_owned());
        let mut h = crate::digest::tensor_hasher(t.name, t.dtype.name(), t.shape);
        sha2::Digest::update(&mut h, &data);
        digests.push((t.name.to_string(), sha2::Digest::finalize(h).into()));
        options.progress.advance(t.byte_len() as u64);
        tensors.push((t.name.to_string(), data));
    }
    options.progress.finish();
    let m = marking.finish(model, key, &digests);
    Ok(MemoryEmbedding {
        tensors,
        summaries: m.tensors,
        fidelity: m.fidelity,
        blind: m.blind,
        informed: m.informed,
        record: m.predicate,
    })
}

/// Signs the certificate of a model marked in memory and saved since: the
/// saved files' SHA-256 become its subjects. The saved model must hold
/// exactly the tensors of the record (same names and digests), and `key`
/// must be the key that marked it; otherwise nothing is signed and the error
/// names the first difference.
pub fn certify(saved: &Model, record: &ReleasePredicate, key: &SecretKey) -> Result<Envelope> {
    let refuse = |reason: String| Err(Error::Certificate { path: saved.path.clone(), reason });
    if record.signer != key.public_key().key_id() {
        return refuse(format!(
            "the release record was made with key {}, not with this key {}",
            record.signer,
            key.public_key().key_id()
        ));
    }
    let scheme = record
        .scheme()
        .map_err(|e| Error::Certificate { path: saved.path.clone(), reason: e.to_string() })?;
    let (mark_key, recipient_key) = match scheme {
        Scheme::Ss1 => (key.mark_key(&record.label, record.recipient.as_deref()), None),
        Scheme::Ss2 => {
            let root = record.original_root()?;
            key.ss2_keys(&record.label, record.recipient.as_deref(), &root)
        }
    };
    if hex(&mark_key.commitment()) != record.mark_key_commitment
        || recipient_key.map(|k| hex(&k.commitment())) != record.recipient_key_commitment
    {
        return refuse("the release record's mark-key commitment is not this key's".into());
    }
    if saved.files.is_empty() {
        return refuse("only a saved model (safetensors files) can be certified".into());
    }
    let digests = crate::digest::model_tensor_digests(saved);
    for (name, digest) in &digests {
        match record.tensor_digests.get(name) {
            None => {
                return refuse(format!(
                    "tensor '{}' is not in the release record",
                    name.escape_debug()
                ))
            }
            Some(d) if *d != hex(digest) => {
                return refuse(format!(
                    "tensor '{}' differs from the marked tensor of the release record",
                    name.escape_debug()
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(missing) =
        record.tensor_digests.keys().find(|n| !digests.iter().any(|(d, _)| d == *n))
    {
        return refuse(format!(
            "tensor '{}' of the release record is missing",
            missing.escape_debug()
        ));
    }
    let files = crate::digest::model_file_digests(saved);
    let mut record = record.clone();
    record.files = Some(release_files(&crate::provenance::verify::release_inventory(saved)?));
    sign_release(record, &files, &digests, key)
}

/// The certificate's list of release files.
pub(crate) fn release_files(files: &[OutputFile]) -> Vec<ReleaseFile> {
    let mut list: Vec<ReleaseFile> = files
        .iter()
        .map(|f| ReleaseFile { name: f.name.clone(), sha256: hex(&f.sha256), size: f.size })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

fn digest_set(algorithm: &str, digest: &Sha256Digest) -> BTreeMap<String, String> {
    BTreeMap::from([(algorithm.to_string(), hex(digest))])
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    Ok(m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}
