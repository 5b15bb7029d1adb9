//! AdamW whose state can be saved and restored: what a planting checkpoint
//! ([`crate::checkpoint`]) needs and candle's optimizer keeps private.
//!
//! The update is the usual decoupled-weight-decay Adam (Loshchilov and
//! Hutter), element by element with bias-corrected moments:
//!
//! ```text
//! m ← β1·m + (1 − β1)·g          v ← β2·v + (1 − β2)·g²
//! θ ← θ·(1 − lr·λ) − lr · (m·c1) / (√(v·c2) + ε)      c_k = 1 / (1 − β_k^t)
//! ```
//!
//! computed with the same tensor operations in the same order as
//! `candle_nn::optim::AdamW`, so that it gives the same bits (a test compares
//! the two) and plants measured before it existed are reproduced.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
pub use candle_nn::optim::ParamsAdamW;

use crate::Result;

/// One variable and its two moments.
struct Slot {
    var: Var,
    first: Var,
    second: Var,
}

/// AdamW over a fixed list of variables.
pub struct AdamW {
    slots: Vec<Slot>,
    steps: usize,
    params: ParamsAdamW,
}

impl AdamW {
    /// An optimiser of `vars` (floating-point ones; others are left alone),
    /// its moments zero.
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<AdamW> {
        let slots = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|var| {
                let zeros = || Var::zeros(var.shape(), var.dtype(), var.device());
                Ok(Slot { first: zeros()?, second: zeros()?, var })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { slots, steps: 0, params })
    }

    /// Updates every variable that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps = self
            .steps
            .checked_add(1)
            .ok_or_else(|| crate::EvalError::invalid("AdamW's step count overflowed"))?;
        let p = &self.params;
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        let (c1, c2) = (1.0 / (1.0 - p.beta1.powi(t)), 1.0 / (1.0 - p.beta2.powi(t)));
        let decay = 1.0 - p.lr * p.weight_decay;
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            let m = ((s.first.as_tensor() * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((s.second.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&m * c1)?;
            let v_hat = (&v * c2)?;
            let decayed = (s.var.as_tensor() * decay)?;
            let direction = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let theta = (decayed - (direction * p.lr)?)?;
            s.first.set(&m)?;
            s.second.set(&v)?;
            s.var.set(&theta)?;
        }
        Ok(())
    }

    /// The learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    /// Changes the learning rate of the steps that follow.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Updates taken (the bias correction's `t`).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The first and second moments of each variable, in the order given
    /// to [`AdamW::new`].
    pub fn moments(&self) -> impl Iterator<Item = (&Tensor, &Tensor)> {
        self.slots.iter().map(|s| (s.first.as_tensor(), s.second.as_tensor()))
    }

    /// Variables with moments (the floating-point ones given to
    /// [`AdamW::new`]).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no variable is optimised.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Restores the state [`AdamW::steps`] and [`AdamW::moments`] gave:
    /// `moments` in the same order, each pair of its variable's shape.
    pub fn restore(&mut self, steps: usize, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.slots.len() {
            return Err(crate::EvalError::invalid(format!(
                "{} moments given for {} variables",
                moments.len(),
                self.slots.len()
            )));
        }
        for (s, (m, v)) in self.slots.iter().zip(moments) {
            s.first.set(&m)?;
            s.second.set(&v)?;
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::optim::Optimizer;

    /// A loss whose gradient differs in every element and every step.
    fn loss(vars: &[Var], step: usize) -> Result<Tensor> {
        let mut total = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for (i, v) in vars.iter().enumerate() {
            let w = Tensor::arange(0f32, v.elem_count() as f32, &Device::Cpu)?
                .reshape(v.shape())?
                .affine(0.01 * (i + 1) as f64, step as f64 * 0.1)?;
            total = (total + (v.as_tensor().sqr()? * w)?.sum_all()?.sin()?)?;
        }
        Ok(total)
    }

    fn vars() -> Result<Vec<Var>> {
        Ok(vec![
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 7), &Device::Cpu)?)?,
            Var::from_tensor(&Tensor::randn(0f32, 0.1, 13, &Device::Cpu)?)?,
        ])
    }

    fn copies(vars: &[Var]) -> Result<Vec<Var>> {
        vars.iter().map(|v| Ok(Var::from_tensor(&v.as_tensor().copy()?)?)).collect()
    }

    fn bits(vars: &[Var]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for v in vars {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?.iter().map(|x| x.to_bits()));
        }
        Ok(out)
    }

    #[test]
    fn the_same_bits_as_candles_adamw_and_a_restored_state_continues_exactly() -> Result<()> {
        let params = ParamsAdamW { lr: 3e-3, weight_decay: 0.01, ..ParamsAdamW::default() };
        let theirs_vars = vars()?;
        let ours_vars = copies(&theirs_vars)?;
        let mut theirs = candle_nn::optim::AdamW::new(theirs_vars.clone(), params.clone())?;
        let mut ours = AdamW::new(ours_vars.clone(), params.clone())?;
        // A copy that takes over from `ours` after 3 steps from its saved state.
        let resumed_vars = copies(&ours_vars)?;
        let mut resumed = AdamW::new(resumed_vars.clone(), params)?;
        for step in 0..6 {
            theirs.step(&loss(&theirs_vars, step)?.backward()?)?;
            ours.step(&loss(&ours_vars, step)?.backward()?)?;
            assert_eq!(bits(&theirs_vars)?, bits(&ours_vars)?, "step {step}");
            if step == 2 {
                for (r, o) in resumed_vars.iter().zip(&ours_vars) {
                    r.set(&o.as_tensor().copy()?)?;
                }
                let saved = ours.moments().map(|(m, v)| Ok((m.copy()?, v.copy()?)));
                resumed.restore(ours.steps(), saved.collect::<Result<Vec<_>>>()?)?;
            }
            if step > 2 {
                resumed.step(&loss(&resumed_vars, step)?.backward()?)?;
                assert_eq!(bits(&resumed_vars)?, bits(&ours_vars)?, "resumed, step {step}");
            }
        }
        assert_eq!(ours.steps(), 6);
        assert!(resumed.restore(1, Vec::new()).is_err(), "a state of another size is refused");
        Ok(())
    }
}
