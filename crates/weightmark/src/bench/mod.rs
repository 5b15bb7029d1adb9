//! Robustness sweeps: apply each attack at several levels to a marked model,
//! then measure blind and informed detection (and a wrong key, which must stay
//! below the threshold everywhere).
//!
//! The rows feed `weightmark bench robustness`, which writes them as JSON, CSV,
//! Markdown and one SVG plot per attack ([`svg`]).

pub mod svg;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::allocation::Allocation;
use crate::attack::{apply, Attack, PruneMethod, Scrub};
use crate::detect::{detect, DetectOptions, Target};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::key::SecretKey;
use crate::model::Model;
use crate::progress::NoProgress;

/// A family of attacks swept over a numeric level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Gaussian noise; level = relative RMS.
    Noise,
    /// Simulated fine-tuning; level = relative RMS.
    Drift,
    /// Absmax quantization per row; level = bits.
    QuantizeRow,
    /// Absmax quantization in groups of 32; level = bits.
    QuantizeGroup32,
    /// Magnitude pruning; level = fraction zeroed.
    PruneMagnitude,
    /// Random pruning; level = fraction zeroed.
    PruneRandom,
    /// LoRA-style rank-16 update; level = relative Frobenius norm.
    LowRank16,
    /// Weight decay; level = factor.
    Scale,
    /// Round trip through f16; level unused (1).
    CastF16,
    /// Linear merge with an unrelated model of the same shapes; level = weight kept.
    Merge,
    /// A second mark with another key; level = its strength.
    Overwrite,
    /// The adaptive scrubber ([`Attack::Scrub`]) aimed at the release under
    /// test (its strength and allocation); level = budget, the amplitude
    /// relative to the mark's.
    Scrub,
    /// Residual-channel permutation and sign flips (Llama layout,
    /// function-preserving, bit-exact); level unused (1).
    Residual,
    /// MLP-neuron and value sign flips (Llama layout with `config.json`,
    /// function-preserving, bit-exact); level unused (1).
    SignFlips,
    /// Diagonal rescalings (Llama layout with `config.json`,
    /// function-preserving up to rounding); level = log-sd of the factors.
    Rescale,
    /// The model written as a GGUF file by `attack gguf` (level: bits,
    /// 16 F16, 8 Q8_0, 6 Q6_K, 4 Q4_K; Llama layout with its `config.json`),
    /// then detected in that file.
    Gguf,
    /// A linear merge with the unmarked original (`--original`; level: the
    /// weight kept of the attacked model): the mark and a fingerprint are
    /// diluted toward the model they were added to.
    MergeOriginal,
}

impl Sweep {
    /// Every sweep, in the default order.
    pub const ALL: [Sweep; 12] = [
        Sweep::Noise,
        Sweep::Drift,
        Sweep::QuantizeRow,
        Sweep::QuantizeGroup32,
        Sweep::PruneMagnitude,
        Sweep::PruneRandom,
        Sweep::LowRank16,
        Sweep::Scale,
        Sweep::CastF16,
        Sweep::Merge,
        Sweep::Overwrite,
        Sweep::Scrub,
    ];

    /// The function-preserving sweeps, which need a Llama-layout model and are
    /// not in [`Sweep::ALL`] (the default plan, which any model can take).
    pub const FREE: [Sweep; 3] = [Sweep::Residual, Sweep::SignFlips, Sweep::Rescale];

    /// The other sweeps that need a Llama-layout model with its
    /// `config.json` and are not in the default plan: the GGUF export.
    pub const LLAMA: [Sweep; 1] = [Sweep::Gguf];

    /// The sweeps that need the unmarked original (`--original`), not in the
    /// default plan: the merge with it.
    pub const WITH_ORIGINAL: [Sweep; 1] = [Sweep::MergeOriginal];

    /// Every sweep: the default plan, then [`Sweep::FREE`], [`Sweep::LLAMA`]
    /// and [`Sweep::WITH_ORIGINAL`].
    pub fn every() -> impl Iterator<Item = Sweep> {
        Sweep::ALL.into_iter().chain(Sweep::FREE).chain(Sweep::LLAMA).chain(Sweep::WITH_ORIGINAL)
    }

    /// Short name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Sweep::Noise => "noise",
            Sweep::Drift => "drift",
            Sweep::QuantizeRow => "quantize-row",
            Sweep::QuantizeGroup32 => "quantize-g32",
            Sweep::PruneMagnitude => "prune-magnitude",
            Sweep::PruneRandom => "prune-random",
            Sweep::LowRank16 => "lowrank-r16",
            Sweep::Scale => "scale",
            Sweep::CastF16 => "cast-f16",
            Sweep::Merge => "merge-unrelated",
            Sweep::Overwrite => "overwrite",
            Sweep::Scrub => "scrub",
            Sweep::Residual => "residual",
            Sweep::SignFlips => "sign-flips",
            Sweep::Rescale => "rescale",
            Sweep::Gguf => "gguf",
            Sweep::MergeOriginal => "merge-original",
        }
    }

    /// What the level means.
    pub fn level_name(self) -> &'static str {
        match self {
            Sweep::Noise | Sweep::Drift => "relative RMS change",
            Sweep::QuantizeRow | Sweep::QuantizeGroup32 => "bits",
            Sweep::PruneMagnitude | Sweep::PruneRandom => "fraction pruned",
            Sweep::LowRank16 => "relative norm of the update",
            Sweep::Scale => "factor",
            Sweep::CastF16 => "(none)",
            Sweep::Merge | Sweep::MergeOriginal => "weight kept (lambda)",
            Sweep::Overwrite => "strength of the second mark",
            Sweep::Scrub => "budget (amplitude relative to the mark's)",
            Sweep::Residual | Sweep::SignFlips => "(none)",
            Sweep::Rescale => "log-sd of the factors",
            Sweep::Gguf => "bits (16 F16, 8 Q8_0, 6 Q6_K, 4 Q4_K)",
        }
    }

    /// Parses a short name (any of [`Sweep::every`]).
    pub fn from_name(name: &str) -> Option<Sweep> {
        Sweep::every().find(|s| s.name() == name)
    }

    /// Default levels, mildest first.
    pub fn default_levels(self) -> Vec<f64> {
        match self {
            Sweep::Noise => vec![0.05, 0.1, 0.2, 0.5, 1.0],
            Sweep::Drift => vec![0.05, 0.1, 0.2, 0.5],
            Sweep::QuantizeRow => vec![8.0, 6.0, 4.0, 3.0],
            Sweep::QuantizeGroup32 => vec![8.0, 4.0, 3.0, 2.0],
            Sweep::PruneMagnitude => vec![0.25, 0.5, 0.75, 0.9],
            Sweep::PruneRandom => vec![0.25, 0.5, 0.75, 0.9],
            Sweep::LowRank16 => vec![0.05, 0.1, 0.2, 0.5],
            Sweep::Scale => vec![0.99, 0.9, 0.5],
            Sweep::CastF16 => vec![1.0],
            Sweep::Merge | Sweep::MergeOriginal => vec![0.75, 0.5, 0.25],
            Sweep::Overwrite => vec![0.003, 0.03, 0.1],
            Sweep::Scrub => vec![1.0, 2.0, 4.0],
            Sweep::Residual | Sweep::SignFlips => vec![1.0],
            Sweep::Rescale => vec![0.5, 1.0, 2.0],
            Sweep::Gguf => vec![8.0, 6.0, 4.0],
        }
    }

    /// The attack at `level`, validated ([`Attack::validate`]): a level out of
    /// range (16 bits, a fraction above 1) is an error naming the sweep. The
    /// scrubber is aimed at a uniform mark of the default strength here;
    /// [`robustness`] aims it at the release under test
    /// ([`Sweep::attack_on`]).
    pub fn attack(self, level: f64) -> Result<Attack> {
        let bits = || {
            if level.fract() == 0.0 && (0.0..=64.0).contains(&level) {
                Ok(level as u32)
            } else {
                Err(Error::invalid(format!(
                    "{} at level {level}: bits must be a whole number",
                    self.name()
                )))
            }
        };
        let attack = match self {
            Sweep::Noise => Attack::Noise { relative: level },
            Sweep::Drift => Attack::Drift { relative: level },
            Sweep::QuantizeRow => Attack::Quantize { bits: bits()?, group: None },
            Sweep::QuantizeGroup32 => Attack::Quantize { bits: bits()?, group: Some(32) },
            Sweep::PruneMagnitude => {
                Attack::Prune { fraction: level, method: PruneMethod::Magnitude }
            }
            Sweep::PruneRandom => Attack::Prune { fraction: level, method: PruneMethod::Random },
            Sweep::LowRank16 => Attack::LowRank { rank: 16, relative: level },
            Sweep::Scale => Attack::Scale { factor: level },
            Sweep::CastF16 => Attack::Cast { via: Dtype::F16 },
            Sweep::Merge => Attack::MergeUnrelated { lambda: level },
            // The path is the original's, filled in by `attack_on`.
            Sweep::MergeOriginal => Attack::Merge { with: PathBuf::new(), lambda: level },
            Sweep::Overwrite => Attack::Overwrite { strength: level },
            Sweep::Scrub => Attack::Scrub(Scrub::new(level)),
            Sweep::Residual => Attack::Residual { permute: true, flip_signs: true },
            Sweep::SignFlips => Attack::SignFlips,
            Sweep::Rescale => Attack::Rescale { log_sd: level },
            Sweep::Gguf => Attack::Gguf {
                ty: match bits()? {
                    16 => GgmlType::F16,
                    8 => GgmlType::Q8_0,
                    6 => GgmlType::Q6K,
                    4 => GgmlType::Q4K,
                    _ => {
                        return Err(Error::invalid(format!(
                            "gguf at level {level}: use 16 (F16), 8 (Q8_0), 6 (Q6_K) or 4 (Q4_K)"
                        )))
                    }
                },
            },
        };
        attack
            .validate()
            .map_err(|e| Error::invalid(format!("{} at level {level}: {e}", self.name())))?;
        Ok(attack)
    }

    /// [`Sweep::attack`] against a release of `strength` spread by
    /// `allocation` (what its certificate states), whose unmarked original
    /// is `original` when known: the adaptive scrubber takes the strength and
    /// allocation as its guess of the mark, `merge-original` merges with the
    /// original (an error without it); every other attack ignores them.
    pub fn attack_on(
        self,
        level: f64,
        strength: f64,
        allocation: Allocation,
        original: Option<&Path>,
    ) -> Result<Attack> {
        let attack = match self.attack(level)? {
            Attack::Scrub(s) => Attack::Scrub(s.against(strength, allocation)),
            Attack::Merge { lambda, .. } => {
                let with = original.ok_or_else(|| {
                    Error::invalid(format!(
                        "{} needs the unmarked original (--original) to merge with",
                        self.name()
                    ))
                })?;
                Attack::Merge { with: with.to_path_buf(), lambda }
            }
            other => return Ok(other),
        };
        attack
            .validate()
            .map_err(|e| Error::invalid(format!("{} at level {level}: {e}", self.name())))?;
        Ok(attack)
    }
}

/// One measured point.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Attack family.
    pub attack: String,
    /// Level.
    pub level: f64,
    /// Relative RMS change the attack made to the touched weights.
    pub damage: f64,
    /// Blind z with the right key.
    pub blind_z: f64,
    /// Its p-value bound.
    pub blind_p: f64,
    /// Informed z with the right key (when the original was given).
    pub informed_z: Option<f64>,
    /// Its p-value bound.
    pub informed_p: Option<f64>,
    /// Blind z with a wrong key.
    pub wrong_key_blind_z: f64,
    /// Informed z with a wrong key.
    pub wrong_key_informed_z: Option<f64>,
    /// Held-out perplexity of the attacked model, for attacks that measure it
    /// (real fine-tuning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// The second detector, for a fingerprinted release: every trigger asked
    /// of the attacked model ([`SweepInputs::fingerprint`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<FingerprintReading>,
    /// Seconds this point took (attack and detections).
    pub seconds: f64,
}

/// The backdoor fingerprint (docs/fingerprint.md) read on an attacked model:
/// every trigger of the release asked, and as many triggers of a wrong
/// fingerprint key, which must match no more than chance allows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FingerprintReading {
    /// Triggers asked (all of the release's).
    pub asked: usize,
    /// Answers that matched their keyed response.
    pub matches: usize,
    /// Exact bound `P(Binomial(asked, 1/N) >= matches)`.
    pub p_value: f64,
    /// Its `log10`, exact where `p_value` underflows.
    pub log10_p: f64,
    /// Matches of a wrong fingerprint key's triggers (as many asked).
    pub wrong_key_matches: usize,
}

/// Reads the fingerprint of the attacked model at a path: a model in the
/// marked model's layout, or a GGUF file ([`Sweep::Gguf`]). The caller
/// provides it (a forward pass needs the eval crate).
pub type FingerprintCheck<'a> = &'a (dyn Fn(&Path) -> Result<FingerprintReading> + Sync);

/// What a sweep needs.
pub struct SweepInputs<'a> {
    /// The marked model.
    pub marked: &'a Model,
    /// The unmarked original, for informed detection.
    pub original: Option<&'a Model>,
    /// The release under test (mark key and certified tensors).
    pub target: &'a Target,
    /// Its strength (from the certificate), which the adaptive scrubber
    /// matches.
    pub strength: f64,
    /// Sweeps and their levels.
    pub plan: Vec<(Sweep, Vec<f64>)>,
    /// Seed of the attacks.
    pub seed: u64,
    /// Scratch directory for attacked models (each removed after use).
    pub scratch: &'a Path,
    /// Called after each point with the row (for progress).
    pub on_row: &'a (dyn Fn(&Row) + Sync),
    /// The second detector: for a fingerprinted release, reads the
    /// fingerprint of every attacked model (`None`: the mark only).
    pub fingerprint: Option<FingerprintCheck<'a>>,
}

/// Checks every level of a plan before any work.
pub fn validate_plan(plan: &[(Sweep, Vec<f64>)]) -> Result<()> {
    for (sweep, levels) in plan {
        for &level in levels {
            sweep.attack(level)?;
        }
    }
    Ok(())
}

/// Runs the sweep (every level is validated first).
pub fn robustness(inputs: &SweepInputs<'_>) -> Result<Vec<Row>> {
    validate_plan(&inputs.plan)?;
    let original = inputs.original.map(|o| o.path.as_path());
    for (sweep, levels) in &inputs.plan {
        for &level in levels {
            sweep.attack_on(level, inputs.strength, inputs.target.allocation, original)?;
        }
    }
    let mut rows = Vec::new();
    for (sweep, levels) in &inputs.plan {
        for &level in levels {
            let started = Instant::now();
            let name = format!("{}-{level}", sweep.name());
            let out = match sweep {
                Sweep::Gguf => inputs.scratch.join(name).with_extension("gguf"),
                _ => scratch_path(inputs.marked, inputs.scratch, &name),
            };
            let attack =
                sweep.attack_on(level, inputs.strength, inputs.target.allocation, original)?;
            let damage = apply(inputs.marked, &out, &attack, inputs.seed, &NoProgress)?
                .damage
                .relative_rms_change();
            let row = measure(inputs, &out, sweep.name(), level, damage, started)?;
            (inputs.on_row)(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Detects the mark in the attacked model at `out` (blind and, with the
/// original, informed; with the release key and with a wrong one), removes
/// `out`, and returns the row. `started` is when the attack began.
pub fn measure(
    inputs: &SweepInputs<'_>,
    out: &Path,
    attack: &str,
    level: f64,
    damage: f64,
    started: Instant,
) -> Result<Row> {
    let wrong = Target {
        scheme: inputs.target.scheme,
        mark_key: SecretKey::from_seed([0xa5; 32]).mark_key("wrong key", None),
        recipient_key: None,
        tensors: inputs.target.tensors.clone(),
        residual_sketch: inputs.target.residual_sketch.clone(),
        neuron_sketch: inputs.target.neuron_sketch.clone(),
        head_sketch: inputs.target.head_sketch.clone(),
        allocation: inputs.target.allocation,
        recipient_code: crate::tardos::RecipientCode::Independent,
        recipient_weight: 1.0,
    };
    let attacked = Model::open(out)?;
    let opts = DetectOptions::default();
    let run =
        |target: &Target, original: Option<&Model>| detect(&attacked, original, target, &opts);
    let blind = run(inputs.target, None)?;
    let informed = inputs.original.map(|o| run(inputs.target, Some(o))).transpose()?;
    let wrong_blind = run(&wrong, None)?;
    let wrong_informed = inputs.original.map(|o| run(&wrong, Some(o))).transpose()?;
    drop(attacked);
    let fingerprint = inputs.fingerprint.map(|check| check(out)).transpose();
    remove(out);
    let fingerprint = fingerprint?;
    Ok(Row {
        attack: attack.to_string(),
        level,
        damage,
        blind_z: blind.z,
        blind_p: blind.p_value,
        informed_z: informed.as_ref().map(|d| d.z),
        informed_p: informed.as_ref().map(|d| d.p_value),
        wrong_key_blind_z: wrong_blind.z,
        wrong_key_informed_z: wrong_informed.as_ref().map(|d| d.z),
        perplexity: None,
        fingerprint,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where an attacked copy of `marked` named `name` goes in `scratch`: a file
/// for a single-file model, else a directory.
pub fn scratch_path(marked: &Model, scratch: &Path, name: &str) -> std::path::PathBuf {
    let out = scratch.join(name);
    match marked.layout {
        crate::model::Layout::File => out.with_extension("safetensors"),
        _ => out,
    }
}

fn remove(path: &Path) {
    let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
}

/// The rows as CSV.
pub fn to_csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "attack,level,damage,blind_z,blind_p,informed_z,informed_p,wrong_key_blind_z,wrong_key_informed_z,perplexity,seconds,\
         fingerprint_asked,fingerprint_matches,fingerprint_log10_p,wrong_key_fingerprint_matches\n",
    );
    let opt = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
    let opt_e = |v: Option<f64>| v.map(|x| format!("{x:e}")).unwrap_or_default();
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{:e},{},{},{},{},{},{:.2},{}\n",
            r.attack,
            r.level,
            r.damage,
            r.blind_z,
            r.blind_p,
            opt(r.informed_z),
            opt_e(r.informed_p),
            r.wrong_key_blind_z,
            opt(r.wrong_key_informed_z),
            opt(r.perplexity),
            r.seconds,
            r.fingerprint
                .as_ref()
                .map(|f| format!("{},{},{},{}", f.asked, f.matches, f.log10_p, f.wrong_key_matches))
                .unwrap_or_else(|| ",,,".into())
        ));
    }
    out
}

/// What the level of the rows of `attack` means: a sweep's
/// [`Sweep::level_name`], alpha for `smooth` (AWQ-style smoothing, eval
/// crate), else training steps (real fine-tuning, eval crate).
pub fn level_name_of(attack: &str) -> &'static str {
    match Sweep::from_name(attack) {
        Some(s) => s.level_name(),
        None if attack == "smooth" => "alpha",
        None => "training steps",
    }
}

/// The rows as Markdown tables, one per attack.
pub fn to_markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let threshold = crate::scheme::z_for_p(crate::DEFAULT_THRESHOLD_P);
    let mut attacks: Vec<&str> = Vec::new();
    for r in rows {
        if !attacks.contains(&r.attack.as_str()) {
            attacks.push(&r.attack);
        }
    }
    for attack in attacks {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.attack == attack).collect();
        let level_name = level_name_of(attack);
        let has_ppl = mine.iter().any(|r| r.perplexity.is_some());
        let has_fp = mine.iter().any(|r| r.fingerprint.is_some());
        out.push_str(&format!("### {attack} (level: {level_name})\n\n"));
        out.push_str("| level | damage | blind z | found blind | informed z | found informed | wrong key z (blind / informed) |");
        out.push_str(if has_ppl { " held-out perplexity |" } else { "" });
        out.push_str(if has_fp {
            " fingerprint (matches, log10 p) | wrong fingerprint key |\n"
        } else {
            "\n"
        });
        out.push_str("|---:|---:|---:|:---:|---:|:---:|---:|");
        out.push_str(if has_ppl { "---:|" } else { "" });
        out.push_str(if has_fp { "---:|---:|\n" } else { "\n" });
        for r in mine {
            let informed = r.informed_z.map(|z| format!("{z:.1}")).unwrap_or_else(|| "-".into());
            let found_i = r.informed_z.map(|z| if z >= 7.43 { "yes" } else { "no" }).unwrap_or("-");
            let wrong_i =
                r.wrong_key_informed_z.map(|z| format!("{z:.2}")).unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "| {} | {:.2}% | {:.2} | {} | {} | {} | {:.2} / {} |",
                r.level,
                100.0 * r.damage,
                r.blind_z,
                if r.blind_z >= threshold { "yes" } else { "no" },
                informed,
                found_i,
                r.wrong_key_blind_z,
                wrong_i
            ));
            match (has_ppl, r.perplexity) {
                (false, _) => {}
                (true, Some(p)) => out.push_str(&format!(" {p:.3} |")),
                (true, None) => out.push_str(" - |"),
            }
            match (has_fp, &r.fingerprint) {
                (false, _) => {}
                (true, Some(f)) => out.push_str(&format!(
                    " {} of {} ({:.1}) | {} of {} |",
                    f.matches, f.asked, f.log10_p, f.wrong_key_matches, f.asked
                )),
                (true, None) => out.push_str(" - | - |"),
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str("Found blind: p <= 1e-9 (z >= 6.44). Found informed: p <= 1e-12 (z >= 7.43).\n");
    if rows.iter().any(|r| r.fingerprint.is_some()) {
        out.push_str(
            "Fingerprint: every trigger asked; log10 p is the exact binomial bound \
             (docs/fingerprint.md), found at p <= 1e-9 (log10 p <= -9).\n",
        );
    }
    out
}
