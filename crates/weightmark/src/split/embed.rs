//! `embed` of one copy split into jobs: a plan, one job per group of shard
//! files, and an assemble step that signs one certificate.
//!
//! - The plan ([`EmbedPlan::new`]) fixes the options (with the `created`
//!   time) and computes what marking needs across files: the selection, and
//!   for `ss2` the original's tensor digests (the keys are bound to their
//!   root), its canonical order, sketches and allocation multipliers.
//! - Each part ([`EmbedPart::run`]) marks the tensors of its files with the
//!   plan's inputs and writes those files into the output directory,
//!   byte-identical to the files one `embed` writes; it records, per marked
//!   tensor, the fidelity and the blind and informed statistics (exact
//!   bits), and the digests of what it read and wrote.
//! - [`assemble`] checks that the parts cover every file once, writes the
//!   index and the side files, and signs the certificate one `embed` signs:
//!   the same bytes given the same `created` time.
//!
//! Model directories only (a single file is one job); no `--supersedes`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::detect::{
    model_weights, plan_files, split_error, weights_record, NamedDigest, PlanFile, StatsRecord,
    WeightsRecord,
};
use super::encode::{f64_from_hex, f64_to_hex, u32s_from_base64, u32s_to_base64};
use super::{model_files, PartSpec};
use crate::canonical::Canonical;
use crate::digest::{from_hex, hex, Sha256Digest};
use crate::embed::{certify_written, EmbedOptions, EmbedReport, Marking, MarkingInputs, Ss2Inputs};
use crate::error::{Error, Result};
use crate::key::SecretKey;
use crate::model::{finish_directory, write_shard, Layout, Model, OutputFile, WriteOptions};
use crate::provenance::{HeadSketchRecord, NeuronSketchRecord, SketchRecord};
use crate::scheme::{Fidelity, Stats};
use crate::strength::StrengthChoice;

/// The `format` of an embed plan file.
pub const PLAN_FORMAT: &str = "weightmark-embed-plan/1";

/// The `format` of an embed part file.
pub const PART_FORMAT: &str = "weightmark-embed-part/1";

/// What every part of one split embed reads.
pub struct EmbedPlan {
    record: PlanRecord,
    path: PathBuf,
    sha256: String,
}

/// One part's result: the files it wrote and its per-tensor statistics.
pub struct EmbedPart {
    record: PartRecord,
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanRecord {
    format: String,
    /// The original as the plan step was given it.
    original: String,
    /// The options every step must be given: scheme, strength, label,
    /// recipient, allocation, recipient code (and share, off the default),
    /// creation time, signer.
    options: serde_json::Value,
    files: Vec<PlanFile>,
    selected: Vec<String>,
    ss2: Option<Ss2Record>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ss2Record {
    original_digests: Vec<NamedDigest>,
    rank: String,
    residual_sketch: Option<SketchRecord>,
    neuron_sketch: Option<NeuronSketchRecord>,
    head_sketch: Option<HeadSketchRecord>,
    weights: Vec<WeightsRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartRecord {
    format: String,
    plan_sha256: String,
    part: String,
    /// The files written: name, SHA-256, size.
    files: Vec<FileRecord>,
    /// Per marked tensor: fidelity and statistics.
    tensors: Vec<MarkedRecord>,
    /// Digests of the output's tensors, in write order.
    digests: Vec<NamedDigest>,
    /// `ss1`: digests of the original's tensors read.
    originals: Vec<NamedDigest>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecord {
    name: String,
    sha256: String,
    size: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkedRecord {
    name: String,
    /// Sum of squares of the original, of the change, largest change (bits).
    fidelity: [String; 3],
    fidelity_elements: u64,
    blind: StatsRecord,
    informed: StatsRecord,
}

/// The options every step must agree on, as the plan records them, with the
/// recipient share the marking uses (`share`, given or the default rule's
/// for `strength`).
fn options_record(
    options: &EmbedOptions<'_>,
    key: &SecretKey,
    strength: &StrengthChoice,
) -> serde_json::Value {
    let mut record = serde_json::json!({
        "scheme": options.scheme.name(),
        // Given or not: each step then applies the same size rule to the
        // same original ([`crate::strength`]).
        "strength": options.strength.map(f64_to_hex),
        "label": options.label,
        "recipient": options.recipient,
        "allocation": options.allocation.certificate_field(),
        "recipient_code": options.recipient_code.to_record(),
        "created": options.created,
        "signer": key.public_key().key_id(),
    });
    // Recorded when given, and when the default rule chose other than the
    // even split: every step then agrees on the share it marks with, and a
    // plan or part from a build whose default was the even split (before
    // the rule) is refused instead of mixing shares. Default plans at the
    // even split stay as they were.
    let share = options.recipient_share.or_else(|| {
        crate::embed::recipient_share(options, strength)
            .filter(|&s| s != crate::EVEN_RECIPIENT_SHARE)
    });
    if let Some(share) = share {
        record["recipient_share"] = serde_json::json!(f64_to_hex(share));
    }
    record
}

/// Refuses a model that a split embed does not write.
fn check_layout(model: &Model) -> Result<()> {
    model_files(model)?;
    if model.layout == Layout::File {
        return Err(Error::NotAModel {
            path: model.path.clone(),
            reason: "a single safetensors file is one job: split embed writes model directories"
                .into(),
        });
    }
    Ok(())
}

fn digests_to_records(d: &[(String, Sha256Digest)]) -> Vec<NamedDigest> {
    d.iter().map(|(name, d)| NamedDigest { name: name.clone(), sha256: hex(d) }).collect()
}

fn digests_from_records(d: &[NamedDigest], path: &Path) -> Result<Vec<(String, Sha256Digest)>> {
    d.iter()
        .map(|r| {
            from_hex::<32>(&r.sha256)
                .map(|h| (r.name.clone(), h))
                .ok_or_else(|| split_error(path, "malformed digest"))
        })
        .collect()
}

impl EmbedPlan {
    /// The plan for marking `original` (called `original_name` in the plan)
    /// with `key` and `options` (whose `created` every step must repeat).
    pub fn new(
        original: &Model,
        original_name: &str,
        key: &SecretKey,
        options: &EmbedOptions<'_>,
    ) -> Result<EmbedPlan> {
        check_layout(original)?;
        let inputs = MarkingInputs::of(original, options)?;
        let ss2 = inputs.ss2.map(|s| Ss2Record {
            original_digests: digests_to_records(&s.original_digests),
            rank: u32s_to_base64(&s.canonical.rank),
            residual_sketch: s.sketch.as_ref().map(SketchRecord::of),
            neuron_sketch: s.neurons.as_ref().map(NeuronSketchRecord::of),
            head_sketch: s.heads.as_ref().map(HeadSketchRecord::of),
            weights: weights_record(&s.weights),
        });
        let record = PlanRecord {
            format: PLAN_FORMAT.into(),
            original: original_name.into(),
            options: options_record(options, key, &inputs.strength),
            files: plan_files(original)?,
            selected: inputs.selected,
            ss2,
        };
        let text = super::record_text(&record, "plan")?;
        Ok(EmbedPlan {
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
    pub fn load(path: &Path) -> Result<EmbedPlan> {
        let (record, bytes) = super::load_record(
            path,
            "an embed plan",
            |r: &PlanRecord| r.format.as_str(),
            PLAN_FORMAT,
        )?;
        Ok(EmbedPlan { record, path: path.to_path_buf(), sha256: hex(&Sha256::digest(&bytes)) })
    }

    /// How many files the original has (the most parts).
    pub fn files(&self) -> usize {
        self.record.files.len()
    }

    /// How many tensors are marked.
    pub fn selected(&self) -> usize {
        self.record.selected.len()
    }

    /// Refuses an original, key or options other than the plan's, naming
    /// the plan file.
    fn check(&self, original: &Model, key: &SecretKey, options: &EmbedOptions<'_>) -> Result<()> {
        check_layout(original)?;
        let strength = crate::embed::choose_strength(original, &self.record.selected, options);
        if options_record(options, key, &strength) != self.record.options {
            return Err(split_error(
                &self.path,
                "was made with other options or another key (scheme, strength, label, \
                 recipient, allocation, recipient code, --created, signer): give every step the \
                 same",
            ));
        }
        if plan_files(original)? != self.record.files {
            return Err(split_error(
                &self.path,
                format!("was made for another model than {}", original.path.display()),
            ));
        }
        Ok(())
    }

    /// The marking inputs the plan recorded, with the strength `options`
    /// give `original` (the size rule's choice depends only on the
    /// selected tensors' types and sizes, which the plan's checks fix).
    fn inputs(&self, original: &Model, options: &EmbedOptions<'_>) -> Result<MarkingInputs> {
        let bad = |what: &str| split_error(&self.path, format!("malformed {what}"));
        let ss2 = match &self.record.ss2 {
            None => None,
            Some(s) => Some(Ss2Inputs {
                original_digests: digests_from_records(&s.original_digests, &self.path)?,
                canonical: Canonical {
                    rank: u32s_from_base64(&s.rank).ok_or_else(|| bad("order"))?,
                },
                sketch: s.residual_sketch.as_ref().map(SketchRecord::to_sketch).transpose()?,
                neurons: s.neuron_sketch.as_ref().map(NeuronSketchRecord::to_sketch).transpose()?,
                heads: s.head_sketch.as_ref().map(HeadSketchRecord::to_sketch).transpose()?,
                weights: model_weights(&s.weights, &self.path)?,
            }),
        };
        let selected = self.record.selected.clone();
        let strength = crate::embed::choose_strength(original, &selected, options);
        Ok(MarkingInputs { selected, strength, ss2 })
    }
}

impl EmbedPart {
    /// Marks the files in `part` of `original` with the plan's inputs and
    /// writes them into the directory `out` (created if missing; an
    /// existing file is refused unless `options.overwrite` allows it).
    pub fn run(
        original: &Model,
        plan: &EmbedPlan,
        key: &SecretKey,
        options: &EmbedOptions<'_>,
        part: PartSpec,
        out: &Path,
    ) -> Result<EmbedPart> {
        plan.check(original, key, options)?;
        let count = plan.files();
        if part.count > count {
            return Err(Error::invalid(format!(
                "part {part}: the model has {count} file(s), so split it into at most {count} parts"
            )));
        }
        crate::model::refuse_same_path(&original.path, out)?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let marking = Marking::with_inputs(key, options, None, plan.inputs(original, options)?)?;
        let transform = |t: &crate::model::TensorRef<'_>| marking.mark(t);
        let write = WriteOptions { progress: options.progress, overwrite: options.overwrite };
        let files = &original.files[part.files(count)];
        let total: u64 = files.iter().map(|f| f.bytes().len() as u64).sum();
        options.progress.start("writing", total);
        let mut written = Vec::new();
        let mut digests = Vec::new();
        for f in files {
            let (file, d) = write_shard(f, out, &transform, &write)?;
            written.push(FileRecord {
                name: file.name,
                sha256: hex(&file.sha256),
                size: file.size,
            });
            digests.extend(d);
        }
        options.progress.finish();
        let (results, originals) = marking.take_results()?;
        let tensors = results
            .into_iter()
            .map(|(name, (f, b, i))| MarkedRecord {
                name,
                fidelity: [
                    f64_to_hex(f.sum_sq_original),
                    f64_to_hex(f.sum_sq_change),
                    f64_to_hex(f.max_abs_change),
                ],
                fidelity_elements: f.elements,
                blind: StatsRecord::of(b),
                informed: StatsRecord::of(i),
            })
            .collect();
        let record = PartRecord {
            format: PART_FORMAT.into(),
            plan_sha256: plan.sha256.clone(),
            part: part.to_string(),
            files: written,
            tensors,
            digests: digests_to_records(&digests),
            originals: digests_to_records(&originals),
        };
        Ok(EmbedPart { record, path: PathBuf::from("<memory>") })
    }

    /// The part as the text of its file (one line of JSON).
    pub fn to_text(&self) -> Result<String> {
        super::record_text(&self.record, "part")
    }

    /// Reads a part file.
    pub fn load(path: &Path) -> Result<EmbedPart> {
        let (record, _) = super::load_record(
            path,
            "an embed part",
            |r: &PartRecord| r.format.as_str(),
            PART_FORMAT,
        )?;
        Ok(EmbedPart { record, path: path.to_path_buf() })
    }
}

/// Assembles the parts of `plan` written into `out`: checks that they come
/// from this plan and cover every file once, writes the index and the side
/// files, and signs the certificate that one `embed` of `original` with
/// `key` and `options` signs (returned in the report, for the caller to
/// save). A part missing, given twice, or of another plan is refused naming
/// the file.
pub fn assemble(
    original: &Model,
    plan: &EmbedPlan,
    parts: &[EmbedPart],
    key: &SecretKey,
    options: &EmbedOptions<'_>,
    out: &Path,
) -> Result<EmbedReport> {
    plan.check(original, key, options)?;
    let mut by_file: HashMap<&str, (&FileRecord, &Path)> = HashMap::new();
    let known: HashSet<&str> = plan.record.files.iter().map(|f| f.name.as_str()).collect();
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
                    format!("wrote '{}', which is not a file of the plan", f.name.escape_debug()),
                ));
            }
            if let Some((_, other)) = by_file.insert(f.name.as_str(), (f, &part.path)) {
                return Err(split_error(
                    &part.path,
                    format!(
                        "wrote '{}', which {} wrote too (a part given twice?)",
                        f.name.escape_debug(),
                        other.display()
                    ),
                ));
            }
        }
    }
    let mut files = Vec::new();
    for f in &plan.record.files {
        let (r, path) = by_file.get(f.name.as_str()).ok_or_else(|| {
            split_error(
                &plan.path,
                format!("no part wrote '{}' (a part missing?)", f.name.escape_debug()),
            )
        })?;
        let sha256 =
            from_hex::<32>(&r.sha256).ok_or_else(|| split_error(path, "malformed digest"))?;
        files.push(OutputFile { name: r.name.clone(), sha256, size: r.size });
    }
    // Tensor digests in write order: file by file, in the plan's file order.
    let position: HashMap<&str, usize> =
        plan.record.files.iter().enumerate().map(|(i, f)| (f.name.as_str(), i)).collect();
    let mut ordered: Vec<(usize, &EmbedPart)> = parts
        .iter()
        .map(|p| {
            let first = p.record.files.iter().filter_map(|f| position.get(f.name.as_str())).min();
            (first.copied().unwrap_or(usize::MAX), p)
        })
        .collect();
    ordered.sort_by_key(|(i, _)| *i);
    let mut digests = Vec::new();
    let mut results = BTreeMap::new();
    let mut originals = Vec::new();
    for (_, part) in &ordered {
        let p = &part.record;
        digests.extend(digests_from_records(&p.digests, &part.path)?);
        originals.extend(digests_from_records(&p.originals, &part.path)?);
        for t in &p.tensors {
            let bad = || split_error(&part.path, format!("malformed statistics of '{}'", t.name));
            let [a, b, c] = &t.fidelity;
            let fidelity = Fidelity {
                sum_sq_original: f64_from_hex(a).ok_or_else(bad)?,
                sum_sq_change: f64_from_hex(b).ok_or_else(bad)?,
                max_abs_change: f64_from_hex(c).ok_or_else(bad)?,
                elements: t.fidelity_elements,
            };
            let stats: (Stats, Stats) =
                (t.blind.stats().ok_or_else(bad)?, t.informed.stats().ok_or_else(bad)?);
            if results.insert(t.name.clone(), (fidelity, stats.0, stats.1)).is_some() {
                return Err(split_error(&part.path, format!("marked '{}' twice", t.name)));
            }
        }
    }
    let marking = Marking::with_inputs(key, options, None, plan.inputs(original, options)?)?;
    marking.put_results((results, originals))?;
    let written = finish_directory(original, out, files, digests, options.overwrite)?;
    certify_written(original, key, marking, written)
}
