//! `detect` split into jobs: a plan, parts, and a combine step.
//!
//! - The plan ([`DetectPlan::new`]) reads the suspect's headers and what
//!   `ss2` needs across files (the canonical residual order matched to the
//!   certificate's sketch, the neuron and head maps, the allocation's
//!   detection weights), and records them with the digests of what it read.
//! - Each part ([`DetectPart::run`]) tests the tensors of its files with the
//!   plan's inputs and records per-tensor `S` and `V` (exact bits), the
//!   digests of its tensors and the SHA-256 of its files.
//! - [`combine`] checks that the parts come from this plan and cover every
//!   file exactly once, and sums the per-tensor statistics in the order one
//!   run over the whole model sums them: the same [`Detection`], bit for bit.
//!
//! Blind detection only (informed detection re-aligns the whole model
//! first); no `tardos1` recipient code read with the owner's key (its
//! reading is not kept per tensor). Both schemes, `ss1` and `ss2`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::encode::{
    f64_from_hex, f64_to_hex, f64s_from_base64, f64s_to_base64, u32s_from_base64, u32s_to_base64,
};
use super::{model_files, PartSpec};
use crate::allocation::{ModelWeights, TensorWeights};
use crate::canonical::Canonical;
use crate::detect::{
    detect_scoped, test_plan, DetectOptions, Detection, Globals, Mode, Partial, Scope, Skipped,
    SuspectOrder, SuspectOrders, Target, TensorResult, Tested,
};
use crate::digest::{from_hex, hex, tensor_digests_of, Sha256Digest};
use crate::error::{Error, Result};
use crate::heads::HeadMap;
use crate::model::Model;
use crate::provenance::Certificate;
use crate::scheme::{Scheme, Stats};
use crate::tardos::RecipientCode;

/// The `format` of a plan file.
pub const PLAN_FORMAT: &str = "weightmark-detect-plan/1";

/// The `format` of a part file.
pub const PART_FORMAT: &str = "weightmark-detect-part/1";

/// Largest plan or part file read (the inputs of a 405B model's plan are
/// a few hundred MB).
const MAX_FILE: u64 = 4 << 30;

/// What every part of one split detection reads: the suspect's files and
/// tensors, the release tested, and the suspect-wide inputs of `ss2`.
pub struct DetectPlan {
    record: PlanRecord,
    /// The plan file, or `<memory>`.
    path: PathBuf,
    /// SHA-256 of the plan's text, which the parts cite.
    sha256: String,
}

/// One part's result: per-tensor statistics and digests of its files.
pub struct DetectPart {
    record: PartRecord,
    path: PathBuf,
}

/// What [`combine`] gives: the detection, and the SHA-256 of every file of
/// the suspect (for a signed report).
pub struct Combined {
    /// The detection, equal to one run's over the whole suspect.
    pub detection: Detection,
    /// SHA-256 of each file of the suspect (its shards, then the index).
    pub suspect_files: Vec<(String, Sha256Digest)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanRecord {
    format: String,
    /// The suspect as the plan step was given it.
    suspect: String,
    certificate_sha256: String,
    scheme: String,
    mark_key_commitment: String,
    recipient_key_commitment: Option<String>,
    /// The recipient component's weight in the decision when it is not 1
    /// (a copy marked at another recipient share than the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recipient_weight: Option<String>,
    /// The suspect's safetensors files, in model order.
    files: Vec<PlanFile>,
    /// Other files of the suspect a report names (the shard index).
    other_files: Vec<NamedDigest>,
    /// Tensors tested, in test order.
    tested: Vec<String>,
    /// Tensors of the release left out, with why.
    skipped: Vec<Skipped>,
    /// Digests of the tensors whose data the plan read.
    read: Vec<NamedDigest>,
    /// `ss2`: the suspect's canonical order.
    order: Option<OrderRecord>,
    /// `ss2` with an allocation: the detection weights, by tensor.
    weights: Option<Vec<WeightsRecord>>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanFile {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) header_sha256: String,
    pub(crate) tensors: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamedDigest {
    pub(crate) name: String,
    pub(crate) sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRecord {
    rank: String,
    neurons: Vec<Option<String>>,
    heads: Vec<Option<HeadMapRecord>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadMapRecord {
    q: String,
    kv: String,
    q_rows: String,
    kv_rows: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightsRecord {
    name: String,
    scale: String,
    rows: Option<String>,
    cols: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartRecord {
    format: String,
    plan_sha256: String,
    part: String,
    /// SHA-256 of each file of the part.
    files: Vec<NamedDigest>,
    /// Statistics of the tested tensors of the part, in test order.
    tensors: Vec<TensorRecord>,
    /// Digests of every tensor of the part's files, in model order.
    digests: Vec<NamedDigest>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorRecord {
    name: String,
    s: String,
    v: String,
    elements: u64,
    recipient: Option<StatsRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsRecord {
    s: String,
    v: String,
    elements: u64,
}

impl StatsRecord {
    pub(crate) fn of(s: Stats) -> StatsRecord {
        StatsRecord { s: f64_to_hex(s.s), v: f64_to_hex(s.v), elements: s.elements }
    }

    pub(crate) fn stats(&self) -> Option<Stats> {
        Some(Stats {
            s: f64_from_hex(&self.s)?,
            v: f64_from_hex(&self.v)?,
            elements: self.elements,
        })
    }
}

/// Refuses what a split run does not do, naming the certificate.
fn check_splittable(certificate: &Certificate, target: &Target) -> Result<()> {
    if target.scheme == Scheme::Ss2
        && target.recipient_key.is_some()
        && matches!(target.recipient_code, RecipientCode::Tardos(_))
    {
        return Err(Error::Certificate {
            path: certificate.path.clone(),
            reason: "its recipient code (tardos1) is read over the whole model at once; test \
                     the release component with its revealed key, or run one detection"
                .into(),
        });
    }
    Ok(())
}

/// The files of `model` as a plan records them.
pub(crate) fn plan_files(model: &Model) -> Result<Vec<PlanFile>> {
    let names = model_files(model)?;
    Ok(model
        .files
        .iter()
        .zip(names)
        .map(|(f, (name, tensors))| PlanFile {
            name: name.to_string(),
            size: f.bytes().len() as u64,
            header_sha256: hex(&Sha256::digest(f.header_bytes())),
            tensors: tensors.into_iter().map(str::to_string).collect(),
        })
        .collect())
}

/// The tensors whose data the `ss2` inputs are computed from: the order
/// source, the MLP and attention matrices the sketches match, the norms,
/// and with an allocation every tested tensor.
fn read_by_plan(model: &Model, target: &Target, tested: &[String]) -> HashSet<String> {
    if target.scheme != Scheme::Ss2 {
        return HashSet::new();
    }
    let allocated = target.allocation != crate::allocation::Allocation::Uniform;
    let tested: HashSet<&str> = tested.iter().map(String::as_str).collect();
    model
        .tensors()
        .filter(|t| {
            let n = t.name;
            n == "model.embed_tokens.weight"
                || n == "lm_head.weight"
                || n.ends_with("norm.weight")
                || n.ends_with("mlp.gate_proj.weight")
                || n.ends_with("mlp.up_proj.weight")
                || n.ends_with("self_attn.o_proj.weight")
                || n.ends_with("self_attn.v_proj.weight")
                || (allocated && tested.contains(n))
        })
        .map(|t| t.name.to_string())
        .collect()
}

impl DetectPlan {
    /// The plan for testing `suspect` (called `suspect_name` in the output)
    /// for the release of `certificate` with `target` (its keys): reads the
    /// headers, and for `ss2` the weights its inputs come from.
    pub fn new(
        suspect: &Model,
        suspect_name: &str,
        certificate: &Certificate,
        target: &Target,
    ) -> Result<DetectPlan> {
        check_splittable(certificate, target)?;
        let files = plan_files(suspect)?;
        let (planned, skipped) = test_plan(suspect, None, &[target]);
        let tested: Vec<String> = planned.iter().map(|(t, _, _)| t.name.to_string()).collect();
        let globals = Globals::of(suspect, None, &[target], &tested);
        let read = read_by_plan(suspect, target, &tested);
        let read = tensor_digests_of(suspect, &HashMap::new(), &|n| read.contains(n));
        let order = globals.orders.orders.first().map(order_record);
        let weights = (target.scheme == Scheme::Ss2)
            .then(|| globals.allocations.first().map(|(_, w)| weights_record(w)))
            .flatten();
        let record = PlanRecord {
            format: PLAN_FORMAT.into(),
            suspect: suspect_name.into(),
            certificate_sha256: certificate.digest.clone(),
            scheme: target.scheme.name().into(),
            mark_key_commitment: hex(&target.mark_key.commitment()),
            recipient_key_commitment: target.recipient_key.as_ref().map(|k| hex(&k.commitment())),
            recipient_weight: (target.recipient_key.is_some() && target.recipient_weight != 1.0)
                .then(|| f64_to_hex(target.recipient_weight)),
            files,
            other_files: suspect
                .index
                .iter()
                .map(|i| NamedDigest {
                    name: i.file_name.clone(),
                    sha256: hex(&Sha256::digest(&i.bytes)),
                })
                .collect(),
            tested,
            skipped: skipped.into_iter().next().unwrap_or_default(),
            read: read.into_iter().map(|(name, d)| NamedDigest { name, sha256: hex(&d) }).collect(),
            order,
            weights,
        };
        let text = super::record_text(&record, "plan")?;
        Ok(DetectPlan {
            record,
            path: PathBuf::from("<memory>"),
            sha256: hex(&Sha256::digest(text.as_bytes())),
        })
    }

    /// The plan as the text of its file (one line of JSON).
    pub fn to_text(&self) -> Result<String> {
        super::record_text(&self.record, "plan")
    }

    /// Reads a plan file.
    pub fn load(path: &Path) -> Result<DetectPlan> {
        let (record, bytes) = super::load_record(
            path,
            "a detection plan",
            |r: &PlanRecord| r.format.as_str(),
            PLAN_FORMAT,
        )?;
        Ok(DetectPlan { record, path: path.to_path_buf(), sha256: hex(&Sha256::digest(&bytes)) })
    }

    /// The suspect as the plan step was given it.
    pub fn suspect(&self) -> &str {
        &self.record.suspect
    }

    /// How many files the suspect has (the most parts that are not empty).
    pub fn files(&self) -> usize {
        self.record.files.len()
    }

    /// How many tensors are tested.
    pub fn tested(&self) -> usize {
        self.record.tested.len()
    }

    /// Refuses a certificate other than the plan's, naming it.
    pub fn check_certificate(&self, certificate: &Certificate) -> Result<()> {
        if certificate.digest != self.record.certificate_sha256 {
            return Err(Error::Certificate {
                path: certificate.path.clone(),
                reason: format!(
                    "is not the certificate the plan {} was made for (SHA-256 {}, the plan's {})",
                    self.path.display(),
                    certificate.digest,
                    self.record.certificate_sha256
                ),
            });
        }
        Ok(())
    }

    /// The suspect-wide inputs for `target`, checked against the plan.
    fn globals(&self, target: &Target) -> Result<Globals> {
        let bad = |what: &str| split_error(&self.path, format!("malformed {what}"));
        let order = match &self.record.order {
            None => Vec::new(),
            Some(o) => vec![SuspectOrder {
                canonical: Canonical {
                    rank: u32s_from_base64(&o.rank).ok_or_else(|| bad("order"))?,
                },
                residual: None,
                neurons: o
                    .neurons
                    .iter()
                    .map(|n| n.as_deref().map(|n| u32s_from_base64(n).ok_or_else(|| bad("order"))))
                    .map(Option::transpose)
                    .collect::<Result<_>>()?,
                heads: o
                    .heads
                    .iter()
                    .map(|h| h.as_ref().map(|h| head_map(h).ok_or_else(|| bad("head map"))))
                    .map(Option::transpose)
                    .collect::<Result<_>>()?,
            }],
        };
        if target.scheme == Scheme::Ss2 && order.is_empty() {
            return Err(bad("plan: an ss2 plan without an order"));
        }
        let mut allocations = Vec::new();
        if target.scheme == Scheme::Ss2 {
            let weights = self.record.weights.as_deref().unwrap_or_default();
            allocations.push((target.allocation, model_weights(weights, &self.path)?));
        }
        Ok(Globals {
            canonical_o: Canonical::default(),
            orders: SuspectOrders { orders: order, of_target: vec![0] },
            allocations,
        })
    }

    /// Refuses keys other than the plan's, naming the plan.
    fn check_target(&self, target: &Target) -> Result<()> {
        let same = target.scheme.name() == self.record.scheme
            && hex(&target.mark_key.commitment()) == self.record.mark_key_commitment
            && target.recipient_key.as_ref().map(|k| hex(&k.commitment()))
                == self.record.recipient_key_commitment;
        if !same {
            return Err(split_error(
                &self.path,
                "was made with another key (or for another component of the release) than this \
                 part's: give every step the same key",
            ));
        }
        Ok(())
    }

    /// Refuses a suspect whose files differ from those the plan read.
    fn check_suspect(&self, suspect: &Model) -> Result<()> {
        let files = plan_files(suspect)?;
        if files.len() != self.record.files.len() {
            return Err(split_error(
                &self.path,
                format!(
                    "was made for a model of {} files; {} has {}",
                    self.record.files.len(),
                    suspect.path.display(),
                    files.len()
                ),
            ));
        }
        for (ours, theirs) in self.record.files.iter().zip(&files) {
            if ours != theirs {
                return Err(split_error(
                    &self.path,
                    format!(
                        "was made for another model: file '{}' of {} differs from the plan's \
                         '{}' (name, size or header)",
                        theirs.name.escape_debug(),
                        suspect.path.display(),
                        ours.name.escape_debug()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl DetectPart {
    /// Tests the tensors in `part` of `suspect`'s files for `target` (whose
    /// keys must be the plan's; a revealed key is enough), with the plan's
    /// suspect-wide inputs, and hashes those files.
    pub fn run(
        suspect: &Model,
        plan: &DetectPlan,
        target: &Target,
        part: PartSpec,
        options: &DetectOptions<'_>,
    ) -> Result<DetectPart> {
        plan.check_target(target)?;
        plan.check_suspect(suspect)?;
        let count = plan.record.files.len();
        if part.count > count {
            return Err(Error::invalid(format!(
                "part {part}: the model has {count} file(s), so split it into at most {count} parts"
            )));
        }
        let range = part.files(count);
        let files: Vec<&PlanFile> = plan.record.files[range.clone()].iter().collect();
        let names: HashSet<String> = files.iter().flat_map(|f| f.tensors.iter().cloned()).collect();
        let globals = plan.globals(target)?;
        let scope = Scope::Part { globals: &globals, tensors: &names };
        let partial = detect_scoped(suspect, None, &[target], options, &scope)?;
        let hashes: Vec<NamedDigest> = {
            use rayon::prelude::*;
            suspect.files[range]
                .par_iter()
                .map(|f| NamedDigest {
                    name: f.file_name.clone(),
                    sha256: hex(&Sha256::digest(f.bytes())),
                })
                .collect()
        };
        let recipients: HashMap<String, Stats> = partial.recipients.into_iter().flatten().collect();
        let tensors = partial
            .tensors
            .into_iter()
            .flatten()
            .map(|r| TensorRecord {
                recipient: recipients.get(&r.name).copied().map(StatsRecord::of),
                s: f64_to_hex(r.s),
                v: f64_to_hex(r.v),
                elements: r.elements,
                name: r.name,
            })
            .collect();
        let record = PartRecord {
            format: PART_FORMAT.into(),
            plan_sha256: plan.sha256.clone(),
            part: part.to_string(),
            files: hashes,
            tensors,
            digests: partial
                .digests
                .into_iter()
                .map(|(name, d)| NamedDigest { name, sha256: hex(&d) })
                .collect(),
        };
        Ok(DetectPart { record, path: PathBuf::from("<memory>") })
    }

    /// The part as the text of its file (one line of JSON).
    pub fn to_text(&self) -> Result<String> {
        super::record_text(&self.record, "part")
    }

    /// Reads a part file.
    pub fn load(path: &Path) -> Result<DetectPart> {
        let (record, _) = super::load_record(
            path,
            "a detection part",
            |r: &PartRecord| r.format.as_str(),
            PART_FORMAT,
        )?;
        Ok(DetectPart { record, path: path.to_path_buf() })
    }
}

/// Combines the `parts` of `plan` into the detection one run over the
/// whole suspect gives, bit for bit. Refused, naming the part file: a part
/// of another plan (another model, certificate or key), a file covered by
/// two parts or by none, a tensor missing or given twice, a digest that
/// differs from the one the plan read.
pub fn combine(plan: &DetectPlan, parts: &[DetectPart], threshold_p: f64) -> Result<Combined> {
    let record = &plan.record;
    let mut by_file: HashMap<&str, &Path> = HashMap::new();
    let mut file_sha: HashMap<&str, Sha256Digest> = HashMap::new();
    let known: HashSet<&str> = record.files.iter().map(|f| f.name.as_str()).collect();
    for part in parts {
        let p = &part.record;
        if p.plan_sha256 != plan.sha256 {
            return Err(split_error(
                &part.path,
                format!(
                    "comes from another plan (SHA-256 {}, not {} of {})",
                    p.plan_sha256,
                    plan.sha256,
                    plan.path.display()
                ),
            ));
        }
        for f in &p.files {
            if !known.contains(f.name.as_str()) {
                return Err(split_error(
                    &part.path,
                    format!("covers '{}', which is not a file of the plan", f.name.escape_debug()),
                ));
            }
            if let Some(other) = by_file.insert(f.name.as_str(), &part.path) {
                return Err(split_error(
                    &part.path,
                    format!(
                        "covers '{}', which {} covers too (a part given twice?)",
                        f.name.escape_debug(),
                        other.display()
                    ),
                ));
            }
            let sha = from_hex::<32>(&f.sha256)
                .ok_or_else(|| split_error(&part.path, "malformed file digest"))?;
            file_sha.insert(f.name.as_str(), sha);
        }
    }
    let missing: Vec<&str> =
        record.files.iter().map(|f| f.name.as_str()).filter(|n| !by_file.contains_key(n)).collect();
    if let Some(first) = missing.first() {
        return Err(split_error(
            &plan.path,
            format!(
                "{} of its {} file(s) are covered by no part given, e.g. '{}' (a part missing?)",
                missing.len(),
                record.files.len(),
                first.escape_debug()
            ),
        ));
    }
    // Per tensor: its statistics and digest, from the part of its file.
    let mut stats: HashMap<&str, (&TensorRecord, &Path)> = HashMap::new();
    let mut digests: HashMap<&str, (Sha256Digest, &Path)> = HashMap::new();
    let owner: HashMap<&str, &str> = record
        .files
        .iter()
        .flat_map(|f| f.tensors.iter().map(move |t| (t.as_str(), f.name.as_str())))
        .collect();
    for part in parts {
        let p = &part.record;
        let covered: HashSet<&str> = p.files.iter().map(|f| f.name.as_str()).collect();
        let own = |name: &str| owner.get(name).is_some_and(|f| covered.contains(f));
        for t in &p.tensors {
            if !own(&t.name) || stats.insert(t.name.as_str(), (t, &part.path)).is_some() {
                return Err(split_error(
                    &part.path,
                    format!(
                        "has statistics of '{}', not a tensor of its files",
                        t.name.escape_debug()
                    ),
                ));
            }
        }
        for d in &p.digests {
            let sha = from_hex::<32>(&d.sha256)
                .ok_or_else(|| split_error(&part.path, "malformed tensor digest"))?;
            if !own(&d.name) || digests.insert(d.name.as_str(), (sha, &part.path)).is_some() {
                return Err(split_error(
                    &part.path,
                    format!(
                        "has a digest of '{}', not a tensor of its files",
                        d.name.escape_debug()
                    ),
                ));
            }
        }
    }
    // What the plan read is what the parts read.
    for r in &record.read {
        let (d, path) = digests.get(r.name.as_str()).ok_or_else(|| {
            split_error(&plan.path, format!("no part has a digest of '{}'", r.name.escape_debug()))
        })?;
        if hex(d) != r.sha256 {
            return Err(split_error(
                path,
                format!(
                    "tensor '{}' differs from the one the plan read (the model changed between \
                     the plan and this part?)",
                    r.name.escape_debug()
                ),
            ));
        }
    }
    let mut tensors = Vec::with_capacity(record.tested.len());
    let mut recipients = Vec::new();
    for name in &record.tested {
        let (t, path) = stats.remove(name.as_str()).ok_or_else(|| {
            split_error(&plan.path, format!("no part tested '{}'", name.escape_debug()))
        })?;
        let bad =
            || split_error(path, format!("malformed statistics of '{}'", name.escape_debug()));
        let st = StatsRecord { s: t.s.clone(), v: t.v.clone(), elements: t.elements }
            .stats()
            .ok_or_else(bad)?;
        tensors.push(TensorResult {
            name: name.clone(),
            z: st.z(),
            s: st.s,
            v: st.v,
            elements: st.elements,
        });
        if let Some(r) = &t.recipient {
            recipients.push((name.clone(), r.stats().ok_or_else(bad)?));
        }
    }
    if let Some((name, (_, path))) = stats.into_iter().next() {
        return Err(split_error(
            path,
            format!("has statistics of '{}', which the plan does not test", name.escape_debug()),
        ));
    }
    let mut all = Vec::with_capacity(digests.len());
    for f in &record.files {
        for name in &f.tensors {
            let (d, _) = digests.get(name.as_str()).ok_or_else(|| {
                split_error(
                    &plan.path,
                    format!("no part has a digest of '{}'", name.escape_debug()),
                )
            })?;
            all.push((name.clone(), *d));
        }
    }
    let scheme = Scheme::from_name(&record.scheme).ok_or_else(|| {
        split_error(&plan.path, format!("unknown scheme '{}'", record.scheme.escape_debug()))
    })?;
    let recipient_weight = match &record.recipient_weight {
        Some(hex) => f64_from_hex(hex).unwrap_or(f64::NAN),
        None => 1.0,
    };
    if !(recipient_weight.is_finite() && recipient_weight > 0.0) {
        return Err(split_error(&plan.path, "recipient_weight is not a positive number"));
    }
    let tested =
        Tested { scheme, recipient: record.recipient_key_commitment.is_some(), recipient_weight };
    let partial = Partial {
        mode: Mode::Blind,
        tensors: vec![tensors],
        recipients: vec![recipients],
        coded: vec![None],
        skipped: vec![record.skipped.clone()],
        digests: all,
        realigned: Vec::new(),
    };
    let detection = partial
        .finish(&[tested], threshold_p)
        .pop()
        .ok_or_else(|| Error::internal("combining produced no result"))?;
    let mut suspect_files: Vec<(String, Sha256Digest)> = record
        .files
        .iter()
        .filter_map(|f| file_sha.get(f.name.as_str()).map(|d| (f.name.clone(), *d)))
        .collect();
    for o in &record.other_files {
        let d = from_hex::<32>(&o.sha256)
            .ok_or_else(|| split_error(&plan.path, "malformed file digest"))?;
        suspect_files.push((o.name.clone(), d));
    }
    Ok(Combined { detection, suspect_files })
}

/// The record of one suspect order.
fn order_record(o: &SuspectOrder) -> OrderRecord {
    OrderRecord {
        rank: u32s_to_base64(&o.canonical.rank),
        neurons: o.neurons.iter().map(|n| n.as_deref().map(u32s_to_base64)).collect(),
        heads: o
            .heads
            .iter()
            .map(|h| {
                h.as_ref().map(|h| HeadMapRecord {
                    q: u32s_to_base64(&h.q),
                    kv: u32s_to_base64(&h.kv),
                    q_rows: u32s_to_base64(&h.q_rows),
                    kv_rows: u32s_to_base64(&h.kv_rows),
                })
            })
            .collect(),
    }
}

/// A head map read back.
fn head_map(h: &HeadMapRecord) -> Option<HeadMap> {
    Some(HeadMap {
        q: u32s_from_base64(&h.q)?,
        kv: u32s_from_base64(&h.kv)?,
        q_rows: u32s_from_base64(&h.q_rows)?,
        kv_rows: u32s_from_base64(&h.kv_rows)?,
    })
}

/// An allocation's weights read back from their records in `path`.
pub(crate) fn model_weights(records: &[WeightsRecord], path: &Path) -> Result<ModelWeights> {
    let bad = || split_error(path, "malformed detection weights");
    let mut tensors = HashMap::new();
    for w in records {
        let f = |v: &Option<String>| v.as_deref().map(|v| f64s_from_base64(v).ok_or_else(bad));
        let weights = TensorWeights {
            scale: f64_from_hex(&w.scale).ok_or_else(bad)?,
            rows: f(&w.rows).transpose()?,
            cols: f(&w.cols).transpose()?,
        };
        tensors.insert(w.name.clone(), weights);
    }
    Ok(ModelWeights { tensors, profiles: Default::default() })
}

/// The records of an allocation's weights, by name.
pub(crate) fn weights_record(w: &ModelWeights) -> Vec<WeightsRecord> {
    let sorted: BTreeMap<&String, &TensorWeights> = w.tensors.iter().collect();
    sorted
        .into_iter()
        .map(|(name, t)| WeightsRecord {
            name: name.clone(),
            scale: f64_to_hex(t.scale),
            rows: t.rows.as_deref().map(f64s_to_base64),
            cols: t.cols.as_deref().map(f64s_to_base64),
        })
        .collect()
}

pub(crate) fn split_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Split { path: path.to_path_buf(), reason: reason.into() }
}

/// A plan or part file's bytes, refusing one over [`MAX_FILE`].
pub(crate) fn read_capped(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(split_error(path, format!("larger than {MAX_FILE} bytes")));
    }
    Ok(bytes)
}
