//! A mark followed through real fine-tuning: at each checkpoint of a training
//! run, the trained model is written, the mark is looked for (blind and
//! informed, with the release key and a wrong one), and held-out perplexity
//! is measured. Beside each checkpoint, the simulated `drift` attack is
//! applied to the marked model at the same relative weight change, so the two
//! can be compared point by point: is `drift` a fair proxy for training?
//!
//! Rows use the robustness sweep's [`Row`]; the level is the number of
//! training steps (for the drift rows too, so they line up).

use std::time::Instant;

use weightmark::attack::{apply, Attack};
use weightmark::bench::{measure, scratch_path, Row, SweepInputs};
use weightmark::NoProgress;

use crate::error::{EvalError, Result};
use crate::finetune::{FinetuneOptions, Trainer};
use crate::llama::Llama;
use crate::load::tensors_f32;
use crate::metrics::perplexity;

/// One training run and its checkpoints.
pub struct CurvePlan {
    /// How to train.
    pub options: FinetuneOptions,
    /// Steps after which to measure, increasing; 0 measures the start.
    pub checkpoints: Vec<usize>,
}

/// Name of the rows of a run (`finetune-full`, `finetune-lora-r16`).
pub fn attack_name(plan: &CurvePlan) -> String {
    format!("finetune-{}", plan.options.method)
}

/// Name of the matching drift rows.
pub fn drift_name(plan: &CurvePlan) -> String {
    format!("drift-as-{}", attack_name(plan))
}

/// Trains `model` (the marked model as a decoder, read from
/// `inputs.marked`) on `train`, measuring at each checkpoint; returns the
/// fine-tuning rows followed by the drift rows.
pub fn finetune_curve(
    inputs: &SweepInputs<'_>,
    model: Llama,
    train: Vec<Vec<u32>>,
    held_out: &[Vec<u32>],
    plan: &CurvePlan,
) -> Result<Vec<Row>> {
    if plan.checkpoints.windows(2).any(|w| w[0] >= w[1]) {
        return Err(EvalError::invalid("checkpoints must be increasing step counts"));
    }
    let name = attack_name(plan);
    let config = model.config.clone();
    let mut trainer = Trainer::new(model, train, &plan.options)?;
    let (mut tuned, mut drifted) = (Vec::new(), Vec::new());
    for &checkpoint in &plan.checkpoints {
        let started = Instant::now();
        while trainer.steps < checkpoint {
            trainer.step()?;
        }
        let ppl = perplexity(trainer.model(), held_out)?;
        let out = scratch_path(inputs.marked, inputs.scratch, &format!("{name}-{checkpoint}"));
        let damage = trainer.write(inputs.marked, &out)?.damage.relative_rms_change();
        let mut row = measure(inputs, &out, &name, checkpoint as f64, damage, started)?;
        row.perplexity = Some(ppl);
        (inputs.on_row)(&row);
        tuned.push(row);

        let started = Instant::now();
        let out = scratch_path(inputs.marked, inputs.scratch, &format!("drift-{checkpoint}"));
        let drift = Attack::Drift { relative: damage };
        let report = apply(inputs.marked, &out, &drift, inputs.seed, &NoProgress)?;
        let attacked = weightmark::Model::open(&out)?;
        let drifted_model =
            Llama::from_tensors(config.clone(), &tensors_f32(&attacked)?, &attacked.path)?;
        let ppl = perplexity(&drifted_model, held_out)?;
        drop((attacked, drifted_model));
        let damage = report.damage.relative_rms_change();
        let mut row = measure(inputs, &out, &drift_name(plan), checkpoint as f64, damage, started)?;
        row.perplexity = Some(ppl);
        (inputs.on_row)(&row);
        drifted.push(row);
    }
    tuned.extend(drifted);
    Ok(tuned)
}
