//! Looking for a mark in a suspect model, blind or informed.
//!
//! The suspect's tensors are matched to the certificate's by canonical name.
//! A tensor that is missing, has another shape, or cannot be read as numbers
//! is reported by name and left out; every other tensor is tested, and the
//! per-tensor statistics add up to the global z (see [`crate::scheme`]).

use serde::{Deserialize, Serialize};

use crate::allocation::{Allocation, ModelWeights};
use crate::canonical::{Canonical, NeuronSketch, ResidualSketch};
use std::collections::HashSet;
use std::sync::Arc;

use crate::digest::{
    hex, mapped_tensor_digests_until, tensor_digest, tensor_digests_of, tensor_root, Sha256Digest,
};
use crate::error::{Error, Result};
use crate::heads::{HeadMap, HeadSketch};
use crate::key::{MarkKey, SecretKey};
use crate::model::{Model, TensorRef};
use crate::pattern::TensorStreams;
use crate::progress::Progress;
use crate::provenance::Certificate;
use crate::scheme::Scheme;
use crate::scheme::{detect_tensor_multi, p_value_bound, Stats};
use crate::select::is_default_selected;
use crate::ss2::Aligned;
use crate::tardos::{
    accuse, recipient_bits, Accusation, Bias, CodeKey, CodeStream, Reading, RecipientCode,
};

/// Blind (suspect alone) or informed (suspect minus the original).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Without the original.
    Blind,
    /// With the original.
    Informed,
}

/// What to look for: one release's keys and the tensors it marked.
#[derive(Clone)]
pub struct Target {
    /// The scheme the release was marked with.
    pub scheme: Scheme,
    /// The `ss1` release mark key, or the `ss2` release component key.
    pub mark_key: MarkKey,
    /// The `ss2` recipient component key, when the release has a recipient
    /// and the tester holds it.
    pub recipient_key: Option<MarkKey>,
    /// Tensors to test (from a certificate), with their certified shapes;
    /// `None` tests the suspect's default selection.
    pub tensors: Option<Vec<(String, Vec<usize>)>>,
    /// `ss2`: the certificate's public sketch of the original's residual
    /// channels, to find the suspect's canonical order by content. Shared
    /// (an [`Arc`]) by the targets of one release's certificates.
    pub residual_sketch: Option<Arc<ResidualSketch>>,
    /// `ss2`: the certificate's public sketch of the original's MLP neurons,
    /// to undo a permutation of the suspect's neurons in blind detection
    /// (at 7B widths 2.8 MB, at 405B widths about 54 MB).
    pub neuron_sketch: Option<Arc<NeuronSketch>>,
    /// `ss2`: the certificate's public sketch of the original's attention
    /// heads, to undo a permutation of the suspect's heads in blind detection.
    pub head_sketch: Option<Arc<HeadSketch>>,
    /// `ss2`: the certificate's allocation, whose multipliers (recomputed
    /// from the suspect, never from the key) weigh the detection statistic.
    pub allocation: Allocation,
    /// `ss2`: the certificate's recipient code; with
    /// [`RecipientCode::Tardos`] and a recipient key, the recipient
    /// component is scored by the code ([`crate::tardos`]).
    pub recipient_code: RecipientCode,
    /// `ss2` with an independent recipient component: the weight of its sums
    /// against the release component's in the decision on both, the ratio of
    /// the certificate's recipient strength to its release strength (1 at
    /// a share of 0.5, and wherever the recipient is not tested).
    pub recipient_weight: f64,
}

impl Target {
    /// Looks for the `ss1` mark of `mark_key` in the suspect's default selection.
    pub fn new(mark_key: MarkKey) -> Target {
        Target::ss1(mark_key, None)
    }

    /// Looks for the `ss1` mark of `mark_key` in `tensors` (all default-selected
    /// tensors of the suspect when `None`).
    pub fn ss1(mark_key: MarkKey, tensors: Option<Vec<(String, Vec<usize>)>>) -> Target {
        Target {
            scheme: Scheme::Ss1,
            mark_key,
            recipient_key: None,
            tensors,
            residual_sketch: None,
            neuron_sketch: None,
            head_sketch: None,
            allocation: Allocation::Uniform,
            recipient_code: RecipientCode::Independent,
            recipient_weight: 1.0,
        }
    }

    /// The release of `certificate`, with its keys derived from the owner's
    /// `secret` key and checked against the certificate's commitments,
    /// testing the tensors it certifies. Refuses a scheme this version does
    /// not know and a key that did not make the certificate; both errors
    /// name the certificate file.
    pub fn from_certificate(certificate: &Certificate, secret: &SecretKey) -> Result<Target> {
        let named =
            |e: Error| Error::Certificate { path: certificate.path.clone(), reason: e.to_string() };
        let p = certificate.predicate();
        match p.scheme().map_err(named)? {
            Scheme::Ss1 => {
                let mark_key = secret.mark_key(&p.label, p.recipient.as_deref());
                Target::from_revealed(certificate, mark_key)
            }
            Scheme::Ss2 => {
                let root = p.original_root().map_err(named)?;
                let (release, recipient) = secret.ss2_keys(&p.label, p.recipient.as_deref(), &root);
                certificate.check_mark_key(&release).map_err(named)?;
                if let Some(key) = &recipient {
                    certificate.check_recipient_key(key).map_err(named)?;
                }
                Ok(Target {
                    scheme: Scheme::Ss2,
                    mark_key: release,
                    recipient_key: recipient,
                    tensors: Some(p.tensor_shapes()),
                    residual_sketch: p.residual_sketch().map_err(named)?.map(Arc::new),
                    neuron_sketch: p.neuron_sketch().map_err(named)?.map(Arc::new),
                    head_sketch: p.head_sketch().map_err(named)?.map(Arc::new),
                    allocation: p.allocation().map_err(named)?,
                    recipient_code: p.recipient_code().map_err(named)?,
                    recipient_weight: p.recipient_weight().map_err(named)?,
                })
            }
        }
    }

    /// The release of `certificate` tested with a key revealed in a dispute
    /// (no secret key needed), checked against the certificate's commitments:
    /// the `ss1` mark key; for `ss2`, the recipient's own component key (what
    /// `reveal` discloses for a release with a recipient: it exposes that
    /// copy's component only) or the release component key (shared by every
    /// copy). Detection then decides on that component.
    pub fn from_revealed(certificate: &Certificate, mark_key: MarkKey) -> Result<Target> {
        let named =
            |e: Error| Error::Certificate { path: certificate.path.clone(), reason: e.to_string() };
        let p = certificate.predicate();
        let scheme = p.scheme().map_err(named)?;
        let is_recipient_component =
            scheme == Scheme::Ss2 && certificate.check_recipient_key(&mark_key).is_ok();
        if is_recipient_component
            && p.recipient_code().map_err(named)? != RecipientCode::Independent
        {
            return Err(named(Error::invalid(
                "a revealed recipient key of a release with a recipient code cannot be tested on \
                 its own (the code's groups and biases come from the release key): a reveal of \
                 such a release discloses both",
            )));
        }
        if !is_recipient_component {
            certificate.check_mark_key(&mark_key).map_err(named)?;
        }
        Ok(Target {
            scheme,
            mark_key,
            recipient_key: None,
            tensors: Some(p.tensor_shapes()),
            residual_sketch: p.residual_sketch().map_err(named)?.map(Arc::new),
            neuron_sketch: p.neuron_sketch().map_err(named)?.map(Arc::new),
            head_sketch: p.head_sketch().map_err(named)?.map(Arc::new),
            allocation: p.allocation().map_err(named)?,
            recipient_code: RecipientCode::Independent,
            recipient_weight: 1.0,
        })
    }

    /// The release of `certificate`, which has a recipient code, tested with
    /// both of its components' keys revealed in a dispute: the `release` key
    /// (from which the code's groups, signs and biases derive) and one
    /// recipient's own component key (its code bits). Both are checked against
    /// the certificate's commitments, so a key of another release or another
    /// recipient is refused before any detection runs. Detection then scores
    /// that recipient by the code, as `identify` does with the owner's key.
    pub fn from_revealed_coded(
        certificate: &Certificate,
        release: MarkKey,
        recipient: MarkKey,
    ) -> Result<Target> {
        let named =
            |e: Error| Error::Certificate { path: certificate.path.clone(), reason: e.to_string() };
        let p = certificate.predicate();
        if p.scheme().map_err(named)? != Scheme::Ss2 {
            return Err(named(Error::invalid("only an ss2 release has a recipient code")));
        }
        let code = p.recipient_code().map_err(named)?;
        if code == RecipientCode::Independent {
            return Err(named(Error::invalid(
                "this release has no recipient code: its recipient key is tested on its own",
            )));
        }
        certificate.check_mark_key(&release).map_err(named)?;
        certificate.check_recipient_key(&recipient).map_err(named)?;
        Ok(Target {
            scheme: Scheme::Ss2,
            mark_key: release,
            recipient_key: Some(recipient),
            tensors: Some(p.tensor_shapes()),
            residual_sketch: p.residual_sketch().map_err(named)?.map(Arc::new),
            neuron_sketch: p.neuron_sketch().map_err(named)?.map(Arc::new),
            head_sketch: p.head_sketch().map_err(named)?.map(Arc::new),
            allocation: p.allocation().map_err(named)?,
            recipient_code: code,
            recipient_weight: 1.0,
        })
    }

    /// An `ss1` release named by label and recipient, without its
    /// certificate: the default selection of the suspect is tested.
    pub fn from_label(secret: &SecretKey, label: &str, recipient: Option<&str>) -> Target {
        Target::new(secret.mark_key(label, recipient))
    }
}

/// Options for [`detect`].
pub struct DetectOptions<'a> {
    /// Decide "detected" when the p-value bound is at most this.
    pub threshold_p: f64,
    /// Progress receiver.
    pub progress: &'a dyn Progress,
}

impl Default for DetectOptions<'static> {
    /// The default threshold ([`crate::DEFAULT_THRESHOLD_P`]), no progress reports.
    fn default() -> Self {
        DetectOptions { threshold_p: crate::DEFAULT_THRESHOLD_P, progress: &crate::NoProgress }
    }
}

/// Statistics of one tested tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorResult {
    /// Tensor name.
    pub name: String,
    /// Its z.
    pub z: f64,
    /// Its S.
    pub s: f64,
    /// Its V.
    pub v: f64,
    /// Elements tested.
    pub elements: u64,
}

/// The statistics of one component of an `ss2` mark over all tested tensors.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct ComponentResult {
    /// Its z.
    pub z: f64,
    /// Hoeffding bound `exp(-z^2/2)`.
    pub p_value: f64,
    /// `log10` of the bound.
    pub log10_p_value: f64,
    /// A coded recipient component (`tardos1`): Bernstein's range ratio
    /// `rho`, and the bound is `exp(-z^2 / (2 (1 + rho z / 3)))`
    /// ([`crate::tardos`]); absent: Hoeffding's `exp(-z^2/2)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<f64>,
}

impl ComponentResult {
    fn of(stats: Stats) -> ComponentResult {
        let z = stats.z();
        ComponentResult {
            z,
            p_value: p_value_bound(z),
            log10_p_value: log10_p_bound(z),
            range: None,
        }
    }

    fn of_accusation(a: Accusation) -> ComponentResult {
        ComponentResult {
            z: a.z,
            p_value: 10f64.powf(a.log10_p_value),
            log10_p_value: a.log10_p_value,
            range: Some(a.range),
        }
    }
}

/// A tensor that could not be tested, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skipped {
    /// Tensor name.
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}

/// The outcome of a detection.
#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    /// Whether `p_value <= threshold_p`.
    pub detected: bool,
    /// Blind or informed.
    pub mode: Mode,
    /// The scheme tested (`ss1` or `ss2`).
    pub scheme: String,
    /// Global z of the decision: for `ss2`, of the release component, or,
    /// when the certificate tested names a recipient with an independent
    /// component, of both components together (`S` and `V` summed over
    /// both; see [`Detection::release_component`]).
    pub z: f64,
    /// Hoeffding bound `exp(-z^2/2)` on the probability of a z this large
    /// without the mark (one-sided: the decision). When the decision adds
    /// both components of a copy, the release component alone is tested
    /// too, and this is the smaller of the two bounds doubled,
    /// `min(1, 2 min(exp(-z^2/2), exp(-z_release^2/2)))` (docs/ss2.md, "The
    /// decision").
    pub p_value: f64,
    /// `min(1, 2 exp(-z^2/2))`: the bound on a |z| this large either way (a
    /// strongly negative z is evidence too, e.g. of a subtracted mark);
    /// with both components, `min(1, 4 exp(-m^2/2))` for `m` the larger
    /// `|z|` of the two tests.
    pub p_value_two_sided: f64,
    /// For an `ss2` release with a recipient: the z of the recipient's own
    /// component (whose copy it is), with its one-sided bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_component: Option<ComponentResult>,
    /// When the decision adds both components of a copy with an
    /// independent recipient component: the release component alone (what
    /// every copy of the release shares), with its one-sided bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_component: Option<ComponentResult>,
    /// `log10` of `p_value` (`-z^2 / (2 ln 10)` for one test): exact where
    /// `p_value` underflows to 0 (z above about 38).
    pub log10_p_value: f64,
    /// How many certificates (releases, recipients, keys) were tried to
    /// find this one: the Bonferroni factor N of `adjusted_p_value`. 1
    /// unless set with [`Detection::adjusted_for`].
    pub certificates_tested: u64,
    /// `min(1, N x p_value)`: the bound corrected for N tests, on which
    /// `detected` decides (equal to `p_value` when N = 1).
    pub adjusted_p_value: f64,
    /// `log10` of the adjusted bound (exact where it underflows).
    pub log10_adjusted_p_value: f64,
    /// Decision threshold on `adjusted_p_value`.
    pub threshold_p: f64,
    /// Elements tested.
    pub elements: u64,
    /// Global S.
    pub s: f64,
    /// Global V.
    pub v: f64,
    /// Per-tensor results: in certificate order with a certificate, else in
    /// suspect order.
    pub tensors: Vec<TensorResult>,
    /// Tensors that could not be tested.
    pub skipped: Vec<Skipped>,
    /// Tensor root over every tensor of the suspect (hex).
    pub suspect_digest: String,
    /// Function-preserving transforms found and undone before testing
    /// (informed detection only).
    pub realigned: Vec<String>,
    /// Digest of every tensor of the suspect (for signed reports).
    #[serde(skip)]
    pub suspect_tensor_digests: Vec<(String, Sha256Digest)>,
}

impl Detection {
    /// Whether no tensor could be tested at all (every one skipped: missing,
    /// another shape, unreadable): the suspect cannot be judged. A tested
    /// tensor whose elements all equal the original's (informed detection of
    /// the original itself) is tested: it carries no mark.
    pub fn nothing_tested(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The same detection accounted as one of `tests` tried (a user who
    /// tested N certificates, or N keys, before this one): the adjusted
    /// bound is `min(1, N x p_value)` and the decision is taken on it, so
    /// trying many certificates does not raise the chance of a false
    /// finding above the threshold (the union bound). `tests` must be at
    /// least 1.
    pub fn adjusted_for(mut self, tests: u64) -> Result<Detection> {
        if tests == 0 {
            return Err(Error::invalid(
                "the number of certificates tested must be at least 1 (this one)",
            ));
        }
        self.certificates_tested = tests;
        self.log10_adjusted_p_value = adjusted_log10(self.log10_p_value, tests);
        self.adjusted_p_value = if self.p_value > 0.0 {
            (tests as f64 * self.p_value).min(1.0)
        } else {
            10f64.powf(self.log10_adjusted_p_value) // the bound underflowed
        };
        self.detected = self.log10_adjusted_p_value <= self.threshold_p.log10();
        Ok(self)
    }
}

/// `log10 min(1, tests x 10^log10_p)`: the Bonferroni-adjusted bound.
pub fn adjusted_log10(log10_p: f64, tests: u64) -> f64 {
    (log10_p + (tests.max(1) as f64).log10()).min(0.0)
}

/// Runs detection of `target` in `suspect`, informed when `original` is given.
pub fn detect(
    suspect: &Model,
    original: Option<&Model>,
    target: &Target,
    options: &DetectOptions<'_>,
) -> Result<Detection> {
    let mut all = detect_many(suspect, original, &[target], options)?;
    all.pop().ok_or_else(|| Error::internal("detection produced no result"))
}

/// Runs detection of several targets (releases, recipients) in one read pass
/// over the suspect: each tensor is decoded once and tested under every key
/// that marked it ([`detect_tensor_multi`]). Results are in target order.
pub fn detect_many(
    suspect: &Model,
    original: Option<&Model>,
    targets: &[&Target],
    options: &DetectOptions<'_>,
) -> Result<Vec<Detection>> {
    let partial = detect_scoped(suspect, original, targets, options, &Scope::Whole)?;
    let tested: Vec<Tested> = targets.iter().map(|t| Tested::of(t)).collect();
    Ok(partial.finish(&tested, options.threshold_p))
}

/// What summing a target's statistics needs to know of it.
#[derive(Clone, Copy)]
pub(crate) struct Tested {
    /// Its scheme.
    pub(crate) scheme: Scheme,
    /// Whether its recipient component was tested.
    pub(crate) recipient: bool,
    /// The recipient component's weight in the decision ([`Target::recipient_weight`]).
    pub(crate) recipient_weight: f64,
}

impl Tested {
    /// Of `target`.
    pub(crate) fn of(target: &Target) -> Tested {
        Tested {
            scheme: target.scheme,
            recipient: target.recipient_key.is_some(),
            recipient_weight: target.recipient_weight,
        }
    }
}

/// Which tensors one run tests and hashes: the whole suspect, or one part
/// of a split run ([`crate::split`]) with the suspect-wide inputs its plan
/// computed once.
pub(crate) enum Scope<'a> {
    /// Every tensor; the suspect-wide inputs are computed here.
    Whole,
    /// The tensors named (those of the part's files), with the plan's
    /// suspect-wide inputs. Blind detection only.
    Part {
        /// The plan's canonical orders and allocation multipliers.
        globals: &'a Globals,
        /// Names of the tensors in the part.
        tensors: &'a HashSet<String>,
    },
}

impl Scope<'_> {
    /// Whether this run tests and hashes tensor `name`.
    fn covers(&self, name: &str) -> bool {
        match self {
            Scope::Whole => true,
            Scope::Part { tensors, .. } => tensors.contains(name),
        }
    }
}

/// What a detection needs from the whole suspect before any tensor is
/// tested, computed from the weights and the targets' public sketches (never
/// from a key): the original's canonical order (informed), each `ss2`
/// target's order of the suspect, and the allocation multipliers.
pub(crate) struct Globals {
    /// The original's canonical order (empty for blind detection).
    pub(crate) canonical_o: Canonical,
    /// The suspect's canonical orders.
    pub(crate) orders: SuspectOrders,
    /// Detection weights, one set per allocation in use.
    pub(crate) allocations: Vec<(Allocation, ModelWeights)>,
}

impl Globals {
    /// The inputs for testing the tensors `planned` of `suspect` under `targets`.
    pub(crate) fn of(
        suspect: &Model,
        original: Option<&Model>,
        targets: &[&Target],
        planned: &[String],
    ) -> Globals {
        // Canonical coordinates (ss2) come from the weights and the
        // certificate's public sketch of the original, never the key.
        let any_ss2 = targets.iter().any(|t| t.scheme == Scheme::Ss2);
        let canonical_o = match (any_ss2, original) {
            (true, Some(o)) => Canonical::of(o),
            _ => Canonical::default(),
        };
        let sketch_o = original.and_then(|o| ResidualSketch::of(o, &canonical_o));
        let neurons_o = original.and_then(|o| NeuronSketch::of(o, &canonical_o));
        let heads_o = original.and_then(|o| HeadSketch::of(o, &canonical_o));
        let originals = OriginalSketches {
            residual: sketch_o.as_ref(),
            neurons: neurons_o.as_ref(),
            heads: heads_o.as_ref(),
        };
        let orders = SuspectOrders::new(suspect, original, targets, originals, &canonical_o);
        // Allocation multipliers (detection weights) from the suspect's own
        // weights, one set per allocation in use.
        let mut allocations: Vec<(Allocation, ModelWeights)> = Vec::new();
        for target in targets.iter().filter(|t| t.scheme == Scheme::Ss2) {
            if !allocations.iter().any(|(a, _)| *a == target.allocation) {
                let weights = if original.is_none() {
                    ModelWeights::for_detection(suspect, planned, target.allocation)
                } else {
                    // Informed detection balances the suspect against the
                    // original, not on its own.
                    ModelWeights::of(suspect, planned, target.allocation)
                };
                allocations.push((target.allocation, weights));
            }
        }
        Globals { canonical_o, orders, allocations }
    }
}

/// The tensors of a detection, each with its original's and the targets
/// that test it, in order of first appearance.
type Planned<'m> = Vec<(TensorRef<'m>, Option<TensorRef<'m>>, Vec<usize>)>;

/// Matches every target's tensors to the suspect's (and the original's)
/// from the headers alone: the tensors to test, in order of first
/// appearance, and per target those left out with the reason.
pub(crate) fn test_plan<'m>(
    suspect: &'m Model,
    original: Option<&'m Model>,
    targets: &[&Target],
) -> (Planned<'m>, Vec<Vec<Skipped>>) {
    let mut skipped: Vec<Vec<Skipped>> = vec![Vec::new(); targets.len()];
    // Tensor name -> (suspect tensor, original tensor, targets that test it), in
    // order of first appearance.
    let mut plan: Planned<'m> = Vec::new();
    for (ti, target) in targets.iter().enumerate() {
        let wanted: Vec<(String, Option<Vec<usize>>)> = match &target.tensors {
            Some(list) => list.iter().map(|(n, s)| (n.clone(), Some(s.clone()))).collect(),
            None => suspect
                .tensors()
                .filter(is_default_selected)
                .map(|t| (t.name.to_string(), None))
                .collect(),
        };
        let mut seen = HashSet::new();
        for (name, shape) in &wanted {
            // A tensor counted twice would inflate z; test each once.
            if !seen.insert(name.as_str()) {
                skipped[ti].push(Skipped { name: name.clone(), reason: "listed twice".into() });
                continue;
            }
            match check_tensor(suspect, original, name, shape.as_deref()) {
                Err(reason) => skipped[ti].push(Skipped { name: name.clone(), reason }),
                Ok((t, o)) => match plan.iter_mut().find(|(p, _, _)| p.name == t.name) {
                    Some((_, _, users)) => users.push(ti),
                    None => plan.push((t, o, vec![ti])),
                },
            }
        }
    }
    (plan, skipped)
}

/// The per-tensor outcome of a detection before it is summed: what a part
/// of a split run writes, and what [`Partial::finish`] turns into
/// [`Detection`]s (one per target).
pub(crate) struct Partial {
    /// Blind or informed.
    pub(crate) mode: Mode,
    /// Per target, its tested tensors in test order.
    pub(crate) tensors: Vec<Vec<TensorResult>>,
    /// Per target, the statistics of its recipient component per tensor,
    /// in test order (independent components only).
    pub(crate) recipients: Vec<Vec<(String, Stats)>>,
    /// Per target, its coded recipient component, scored.
    pub(crate) coded: Vec<Option<ComponentResult>>,
    /// Per target, the tensors it left out.
    pub(crate) skipped: Vec<Vec<Skipped>>,
    /// Digests of the tensors covered, in model order.
    pub(crate) digests: Vec<(String, Sha256Digest)>,
    /// Transforms undone before testing.
    pub(crate) realigned: Vec<String>,
}

impl Partial {
    /// The detections: per-tensor statistics summed in test order (the same
    /// additions whether they came from one run or from the parts of a
    /// split one), the suspect's tensor root over `digests`.
    pub(crate) fn finish(self, targets: &[Tested], threshold_p: f64) -> Vec<Detection> {
        let suspect_digest = hex(&tensor_root(&self.digests));
        let Partial { mode, tensors, recipients, coded, skipped, digests, realigned } = self;
        tensors
            .into_iter()
            .zip(skipped)
            .zip(recipients.into_iter().zip(coded))
            .zip(targets)
            .map(|(((tensors, skipped), (recipient, coded)), target)| {
                let sum = |tensors: &[TensorResult]| {
                    tensors.iter().fold(Stats::default(), |acc, r| {
                        acc.merge(Stats { s: r.s, v: r.v, elements: r.elements })
                    })
                };
                let release = sum(&tensors);
                // A copy with an independent recipient component is decided
                // on both components (docs/ss2.md, "The decision").
                let both = target.recipient && coded.is_none();
                let tensors = if both {
                    combined(tensors, &recipient, target.recipient_weight)
                } else {
                    tensors
                };
                let total = sum(&tensors);
                let recipient =
                    recipient.iter().fold(Stats::default(), |acc, (_, s)| acc.merge(*s));
                let z = total.z();
                let release = both.then(|| ComponentResult::of(release));
                let decision = Decision::of(z, release.map(|r| r.z));
                Detection {
                    detected: decision.p <= threshold_p,
                    mode,
                    scheme: target.scheme.name().to_string(),
                    z,
                    p_value: decision.p,
                    p_value_two_sided: decision.p_two_sided,
                    recipient_component: coded
                        .or_else(|| target.recipient.then(|| ComponentResult::of(recipient))),
                    release_component: release,
                    log10_p_value: decision.log10_p,
                    certificates_tested: 1,
                    adjusted_p_value: decision.p,
                    log10_adjusted_p_value: decision.log10_p,
                    threshold_p,
                    elements: total.elements,
                    s: total.s,
                    v: total.v,
                    tensors,
                    skipped,
                    suspect_digest: suspect_digest.clone(),
                    realigned: realigned.clone(),
                    suspect_tensor_digests: digests.clone(),
                }
            })
            .collect()
    }
}

/// The bound a detection decides on.
///
/// One test: the decision's z, `exp(-z^2/2)`. A copy with an independent
/// recipient component is tested twice against the same null hypothesis
/// (the suspect depends on neither key): on both components together (the
/// licensee's own copy, strongest there) and on the release component alone
/// (any copy of the release, or copies mixed: there the recipient's term
/// only adds noise, `w^2 V_q` of it, and at a recipient share of 0.8 it
/// would hide a release component of z 8.8 under a decision z of 3.9). Each
/// bound holds alone, so the smaller of the two, doubled, holds for the
/// pair (Bonferroni): `min(1, 2 min(p_both, p_release))`.
struct Decision {
    p: f64,
    log10_p: f64,
    p_two_sided: f64,
}

impl Decision {
    fn of(z: f64, release_z: Option<f64>) -> Decision {
        let Some(r) = release_z else {
            return Decision {
                p: p_value_bound(z),
                log10_p: log10_p_bound(z),
                p_two_sided: (2.0 * p_value_bound(z.abs())).min(1.0),
            };
        };
        let best = z.max(r);
        let log10_p = adjusted_log10(log10_p_bound(best), 2);
        let bound = p_value_bound(best);
        let p = if bound > 0.0 { (2.0 * bound).min(1.0) } else { 10f64.powf(log10_p) };
        let farthest = z.abs().max(r.abs());
        Decision { p, log10_p, p_two_sided: (4.0 * p_value_bound(farthest)).min(1.0) }
    }
}

/// Per tensor, the release component's statistics plus the recipient
/// component's (`recipient`: the same tensors in the same order) weighted by
/// `weight`. Given the suspect, the two keyed patterns are independent fair
/// signs under the null hypothesis, so `S_p + w S_q` is sub-Gaussian with
/// variance proxy `V_p + w^2 V_q` and Hoeffding's `exp(-z^2/2)` holds for the
/// sum's z.
fn combined(
    release: Vec<TensorResult>,
    recipient: &[(String, Stats)],
    weight: f64,
) -> Vec<TensorResult> {
    release
        .into_iter()
        .map(|t| match recipient.iter().find(|(name, _)| *name == t.name) {
            Some((_, q)) => {
                let both = Stats { s: t.s, v: t.v, elements: t.elements }.and_weighted(*q, weight);
                TensorResult { z: both.z(), s: both.s, v: both.v, ..t }
            }
            None => t,
        })
        .collect()
}

/// [`detect_many`] over the tensors of `scope`, before summing.
///
/// The suspect's tensor digests (for the report) are taken on whatever core
/// the tests leave idle, while they run, rather than after them; a tensor
/// decoded to be read (GGUF) is hashed while it is decoded, by the tests.
pub(crate) fn detect_scoped(
    suspect: &Model,
    original: Option<&Model>,
    targets: &[&Target],
    options: &DetectOptions<'_>,
    scope: &Scope<'_>,
) -> Result<Partial> {
    if matches!(scope, Scope::Part { .. }) && original.is_some() {
        return Err(Error::invalid(
            "a split detection is blind: informed detection runs on one machine",
        ));
    }
    // The suspect's mapped tensors are hashed while the tests run; a test
    // that fails stops that hashing (an error should not wait for it).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (early, tested) = rayon::join(
        || mapped_tensor_digests_until(suspect, &|name| scope.covers(name), &stop),
        || {
            let tested = test_scoped(suspect, original, targets, options, scope);
            if tested.is_err() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            tested
        },
    );
    let (mut partial, mut hashed) = tested?;
    hashed.extend(early);
    partial.digests = tensor_digests_of(suspect, &hashed, &|name| scope.covers(name));
    let hashed_bytes: u64 =
        suspect.tensors().filter(|t| scope.covers(t.name)).map(|t| t.byte_len() as u64).sum();
    options.progress.advance(hashed_bytes);
    options.progress.finish();
    Ok(partial)
}

/// [`detect_scoped`]'s tests, with the digests of the tensors they decoded
/// (the report's digests are left empty).
fn test_scoped(
    suspect: &Model,
    original: Option<&Model>,
    targets: &[&Target],
    options: &DetectOptions<'_>,
    scope: &Scope<'_>,
) -> Result<(Partial, std::collections::HashMap<String, Sha256Digest>)> {
    // With the original at hand, undo function-preserving edits first. The
    // digests below are still those of the suspect as given.
    let realigned = match original {
        Some(o) => {
            let undo = if targets.iter().all(|t| t.scheme == Scheme::Ss2) {
                crate::align::Undo::RotationsOnly
            } else {
                crate::align::Undo::All
            };
            crate::align::realign(suspect, o, undo)?
        }
        None => None,
    };
    let given = suspect;
    let suspect = realigned.as_ref().map_or(suspect, |r| &r.model);
    let original = realigned.as_ref().and_then(|r| r.original.as_ref()).or(original);
    let recovered: Vec<String> =
        realigned.as_ref().map(|r| r.recovered.clone()).unwrap_or_default();
    let (plan, skipped) = test_plan(suspect, original, targets);
    let computed;
    let (globals, plan) = match scope {
        Scope::Whole => {
            let planned: Vec<String> = plan.iter().map(|(t, _, _)| t.name.to_string()).collect();
            computed = Globals::of(suspect, original, targets, &planned);
            (&computed, plan)
        }
        Scope::Part { globals, .. } => {
            let plan: Planned<'_> =
                plan.into_iter().filter(|(t, _, _)| scope.covers(t.name)).collect();
            (*globals, plan)
        }
    };
    let Globals { canonical_o, orders, allocations } = globals;
    let planned: u64 = plan.iter().map(|(t, _, _)| t.byte_len() as u64).sum();
    let hashed_bytes: u64 =
        given.tensors().filter(|t| scope.covers(t.name)).map(|t| t.byte_len() as u64).sum();
    options.progress.start("detecting", planned + hashed_bytes);
    let mut results: Vec<Vec<TensorResult>> = vec![Vec::new(); targets.len()];
    let mut recipients: Vec<Vec<(String, Stats)>> = vec![Vec::new(); targets.len()];
    // Coded recipient components: one reading per release, code and order,
    // whatever the number of its recipients tested.
    let mut codes: Vec<CodeReading> = Vec::new();
    let mut code_of: Vec<Option<usize>> = vec![None; targets.len()];
    for (ti, target) in targets.iter().enumerate() {
        let RecipientCode::Tardos(code) = target.recipient_code else { continue };
        if target.scheme != Scheme::Ss2 || target.recipient_key.is_none() {
            continue;
        }
        let key = CodeKey::of_release(&target.mark_key);
        let order = orders.of_target[ti];
        let same = |c: &CodeReading| {
            c.key.same(&key)
                && c.code == code
                && c.order == order
                && c.allocation == target.allocation
        };
        code_of[ti] = Some(match codes.iter().position(same) {
            Some(i) => i,
            None => {
                codes.push(CodeReading {
                    key,
                    code,
                    order,
                    allocation: target.allocation,
                    reading: Reading::new(code.groups),
                });
                codes.len() - 1
            }
        });
    }
    // One tensor under every target that tests it.
    let test_tensor = |t: &TensorRef<'_>,
                       o: Option<&TensorRef<'_>>,
                       users: &[usize],
                       results: &mut Vec<Vec<TensorResult>>,
                       recipients: &mut Vec<Vec<(String, Stats)>>,
                       codes: &mut Vec<CodeReading>| {
        let (ss1, ss2): (Vec<usize>, Vec<usize>) =
            users.iter().partition(|&&ti| targets[ti].scheme == Scheme::Ss1);
        let mut per_user: Vec<(usize, Stats)> = Vec::new();
        if !ss1.is_empty() {
            let streams: Vec<TensorStreams> =
                ss1.iter().map(|&ti| TensorStreams::new(&targets[ti].mark_key, t.name)).collect();
            let refs: Vec<&TensorStreams> = streams.iter().collect();
            per_user.extend(ss1.iter().copied().zip(detect_tensor_multi(t, o, &refs)));
        }
        // ss2 users that share a suspect order are tested in one pass.
        let by_allocation = orders.groups(&ss2).into_iter().flat_map(|(order, group)| {
            allocations.iter().filter_map(move |(allocation, weights)| {
                let users: Vec<usize> = group
                    .iter()
                    .copied()
                    .filter(|&ti| targets[ti].allocation == *allocation)
                    .collect();
                (!users.is_empty()).then_some((order, users, weights))
            })
        });
        for (order, group, weights) in by_allocation {
            // Release keys first (one stream per distinct key), then the
            // recipient keys that are held (coded ones are read by code).
            let mut streams: Vec<TensorStreams> = Vec::new();
            let mut release_of: Vec<usize> = Vec::new();
            for (gi, &ti) in group.iter().enumerate() {
                let key = &targets[ti].mark_key;
                let earlier = group[..gi].iter().position(|&tj| targets[tj].mark_key.same(key));
                release_of.push(match earlier {
                    Some(e) => release_of[e],
                    None => {
                        streams.push(TensorStreams::new(key, t.name));
                        streams.len() - 1
                    }
                });
            }
            let mut recipient_of: Vec<(usize, usize)> = Vec::new();
            let mut coded: Vec<usize> = Vec::new();
            for &ti in &group {
                match (code_of[ti], &targets[ti].recipient_key) {
                    (Some(c), _) => {
                        if !coded.contains(&c) {
                            coded.push(c);
                        }
                    }
                    (None, Some(k)) => {
                        recipient_of.push((ti, streams.len()));
                        streams.push(TensorStreams::new(k, t.name));
                    }
                    (None, None) => {}
                }
            }
            let code_streams: Vec<CodeStream> =
                coded.iter().map(|&c| codes[c].key.tensor(t.name, codes[c].code)).collect();
            let code_refs: Vec<&CodeStream> = code_streams.iter().collect();
            let refs: Vec<&TensorStreams> = streams.iter().collect();
            let axes = order.axes(t);
            let aligned = o.map(|&tensor| Aligned {
                tensor,
                axes: canonical_o.axes(&tensor),
                residual: order.residual.as_deref(),
            });
            let (stats, readings) = crate::ss2::detect_tensor_coded(
                t,
                &axes,
                aligned.as_ref(),
                &refs,
                weights.get(t.name),
                crate::ss2::Known { blind: weights.profile(t.name), pair: None },
                &code_refs,
            );
            for (&c, r) in coded.iter().zip(&readings) {
                codes[c].reading.merge(r);
            }
            per_user.extend(group.iter().copied().zip(release_of.iter().map(|&k| stats[k])));
            for (ti, k) in recipient_of {
                recipients[ti].push((t.name.to_string(), stats[k]));
            }
        }
        per_user.sort_by_key(|(ti, _)| *ti);
        for (ti, st) in per_user {
            results[ti].push(TensorResult {
                name: t.name.to_string(),
                z: st.z(),
                s: st.s,
                v: st.v,
                elements: st.elements,
            });
        }
    };
    // Digests of the suspect's tensors decoded here (GGUF), taken while
    // they are at hand rather than decoding them again afterwards.
    let mut hashed: std::collections::HashMap<String, Sha256Digest> = Default::default();
    for (t, o, users) in &plan {
        // Read once for every key and group below: a GGUF tensor is decoded
        // here and dropped at the end of the iteration, one at a time.
        let hash_here = realigned.is_none() && t.is_decoded_on_read();
        let (t_data, o_data) = (t.data(), o.map(|o| o.data()));
        let t = &t.with_data(&t_data);
        let o = &o.zip(o_data.as_deref()).map(|(o, d)| o.with_data(d));
        let (digest, ()) = rayon::join(
            || hash_here.then(|| tensor_digest(t)),
            || test_tensor(t, o.as_ref(), users, &mut results, &mut recipients, &mut codes),
        );
        hashed.extend(digest.map(|d| (t.name.to_string(), d)));
        options.progress.advance(t.byte_len() as u64);
    }
    // Each code's group values, biases and scale once; each recipient's
    // score is then one pass over its G bits.
    let scored: Vec<ScoredCode> = codes
        .iter()
        .map(|c| {
            let y = c.reading.values();
            let biases = c.key.biases(c.code);
            let scale = crate::tardos::scale(&y, &biases);
            (y, biases, scale)
        })
        .collect();
    let coded_component = |ti: usize| -> Option<ComponentResult> {
        let (y, biases, scale) = scored.get(code_of[ti]?)?;
        let bits = recipient_bits(targets[ti].recipient_key.as_ref()?, biases);
        Some(ComponentResult::of_accusation(accuse(y, biases, &bits, *scale)))
    };
    Ok((
        Partial {
            mode: if original.is_some() { Mode::Informed } else { Mode::Blind },
            tensors: results,
            recipients,
            coded: (0..targets.len()).map(coded_component).collect(),
            skipped,
            digests: Vec::new(),
            realigned: recovered,
        },
        hashed,
    ))
}

/// One code's group values, biases and `(sigma, rho)`.
type ScoredCode = (Vec<f64>, Vec<Bias>, (f64, f64));

/// The per-group reading of one release's recipient code, in one suspect
/// order and allocation.
struct CodeReading {
    key: CodeKey,
    code: crate::tardos::TardosCode,
    order: usize,
    allocation: Allocation,
    reading: Reading,
}

/// The suspect's canonical residual order for each `ss2` target: matched by
/// content to the target's sketch (blind) or to the original's (informed),
/// by magnitude alone without one. Targets with equal sketches share one.
pub(crate) struct SuspectOrders {
    pub(crate) orders: Vec<SuspectOrder>,
    /// Index into `orders` for each target (0 for `ss1` targets, unused).
    pub(crate) of_target: Vec<usize>,
}

/// Sketches of the original at hand (informed detection).
#[derive(Clone, Copy)]
struct OriginalSketches<'a> {
    residual: Option<&'a ResidualSketch>,
    neurons: Option<&'a NeuronSketch>,
    heads: Option<&'a HeadSketch>,
}

/// One canonical order of the suspect, and for informed detection each
/// suspect residual channel's counterpart in the original.
pub(crate) struct SuspectOrder {
    pub(crate) canonical: Canonical,
    pub(crate) residual: Option<Vec<usize>>,
    /// For each layer, the canonical index (the original's stored index) of
    /// each suspect neuron.
    pub(crate) neurons: Vec<Option<Vec<u32>>>,
    /// For each layer, the original head of each suspect attention head.
    pub(crate) heads: Vec<Option<HeadMap>>,
}

impl SuspectOrder {
    /// The canonical axes of `t` in this order.
    fn axes<'a>(&'a self, t: &TensorRef<'_>) -> crate::canonical::Axes<'a> {
        let mut axes = self.canonical.axes(t);
        if let Some((l, _)) = crate::llama::mlp_tensor(t.name) {
            axes.neurons = self.neurons.get(l).and_then(|m| m.as_deref());
        } else if let Some((l, part)) = crate::llama::attention_part(t.name) {
            axes.neurons = self.heads.get(l).and_then(Option::as_ref).and_then(|m| m.of_part(part));
        }
        axes
    }
}

impl SuspectOrders {
    fn new(
        suspect: &Model,
        original: Option<&Model>,
        targets: &[&Target],
        originals: OriginalSketches<'_>,
        canonical_o: &Canonical,
    ) -> SuspectOrders {
        type Key<'k> =
            (Option<&'k ResidualSketch>, Option<&'k NeuronSketch>, Option<&'k HeadSketch>);
        let mut keys: Vec<Key<'_>> = Vec::new();
        let mut orders = Vec::new();
        let mut of_target = vec![0; targets.len()];
        for (ti, target) in targets.iter().enumerate() {
            if target.scheme != Scheme::Ss2 {
                continue;
            }
            // Informed: the original's own sketches, in the same order as
            // `canonical_o` (a certificate's describe that same original);
            // matching neurons by content also covers a permutation the
            // re-alignment could not see through a permuted residual stream.
            let (sketch, neuron_sketch, head_sketch) = match original {
                Some(_) => (originals.residual, originals.neurons, originals.heads),
                None => (
                    target.residual_sketch.as_deref(),
                    target.neuron_sketch.as_deref(),
                    target.head_sketch.as_deref(),
                ),
            };
            let key = (sketch, neuron_sketch, head_sketch);
            of_target[ti] = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    let (canonical, flipped) = sketch
                        .and_then(|k| k.order_of(suspect))
                        .unwrap_or_else(|| (Canonical::of(suspect), Vec::new()));
                    // Pair each channel with the original's by content, near
                    // its matched rank (the sketch settles the rough order).
                    let residual = original.and_then(|o| {
                        crate::canonical::match_residual(suspect, o, &canonical, canonical_o)
                    });
                    let neurons = neuron_sketch
                        .map(|k| k.neuron_maps(suspect, &canonical, &flipped))
                        .unwrap_or_default();
                    let heads = head_sketch
                        .map(|k| k.head_maps(suspect, &canonical, &flipped))
                        .unwrap_or_default();
                    keys.push(key);
                    orders.push(SuspectOrder { canonical, residual, neurons, heads });
                    orders.len() - 1
                }
            };
        }
        SuspectOrders { orders, of_target }
    }

    /// The `ss2` targets `users` grouped by the order they share.
    fn groups(&self, users: &[usize]) -> Vec<(&SuspectOrder, Vec<usize>)> {
        self.orders
            .iter()
            .enumerate()
            .map(|(k, order)| {
                (order, users.iter().copied().filter(|&ti| self.of_target[ti] == k).collect())
            })
            .filter(|(_, g): &(&SuspectOrder, Vec<usize>)| !g.is_empty())
            .collect()
    }
}

/// `log10` of the bound `exp(-z^2/2)`: `-z^2 / (2 ln 10)` for positive `z`.
pub fn log10_p_bound(z: f64) -> f64 {
    if z > 0.0 {
        -z * z / (2.0 * std::f64::consts::LN_10)
    } else {
        0.0
    }
}

/// The suspect's (and original's) tensor called `name`, or why it cannot be tested.
fn check_tensor<'m>(
    suspect: &'m Model,
    original: Option<&'m Model>,
    name: &str,
    shape: Option<&[usize]>,
) -> std::result::Result<(TensorRef<'m>, Option<TensorRef<'m>>), String> {
    let t = suspect.tensor(name).ok_or("missing from the suspect")?;
    if let Some(shape) = shape.filter(|s| *s != t.shape) {
        return Err(format!("shape {:?} in the suspect, {shape:?} when marked", t.shape));
    }
    if !t.dtype.is_readable() {
        return Err(format!("dtype {} in the suspect cannot be read as numbers", t.dtype));
    }
    let Some(o) = original else { return Ok((t, None)) };
    let ot = o.tensor(name).ok_or("missing from the original")?;
    if ot.shape != t.shape || !ot.dtype.is_readable() {
        return Err(format!(
            "original has shape {:?} and dtype {}, suspect {:?} and {}",
            ot.shape, ot.dtype, t.shape, t.dtype
        ));
    }
    Ok((t, Some(ot)))
}
