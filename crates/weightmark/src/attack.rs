//! Edits applied to marked models to measure how well the mark survives.
//!
//! Each attack is a seeded, reproducible per-tensor function; [`apply`] writes
//! the attacked model in the input's layout and reports the damage (relative
//! RMS change of the weights it touched). Attacks touch the default-selected
//! tensors (float matrices); everything else is copied.

use std::path::Path;
use std::sync::Mutex;

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::dtype::{decode_f64, encode_nearest};
use crate::error::{Error, Result};
use crate::model::{write_model, Model, TensorRef, WriteOptions, WriteReport};
use crate::progress::Progress;
use crate::rng::{fill_normal, stream};
use crate::scheme::Fidelity;
use crate::select::is_default_selected;

/// An edit of a model's weights.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Attack {
    /// Adds i.i.d. Gaussian noise of `relative` x row RMS.
    Noise {
        /// Noise RMS relative to each row's RMS.
        relative: f64,
    },
    /// Simulated fine-tuning: a change of relative RMS `relative`, half of its
    /// energy a low-rank update (rank 8, as gradient updates are close to
    /// low-rank) and half i.i.d. noise.
    Drift {
        /// Change RMS relative to each row's RMS.
        relative: f64,
    },
    /// Symmetric int8 quantization with one absmax scale per row, then back
    /// to the original dtype.
    QuantizeInt8PerRow,
}

/// What [`apply`] did.
#[derive(Clone, Debug)]
pub struct AttackReport {
    /// The files written.
    pub written: WriteReport,
    /// Change over the tensors the attack touched.
    pub damage: Fidelity,
}

/// Applies `attack` with `seed` to `model`, writing to `out`.
pub fn apply(
    model: &Model,
    out: &Path,
    attack: &Attack,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        if !is_default_selected(t) {
            return Ok(None);
        }
        let (data, f) = attack_tensor(t, attack, seed);
        let mut d = damage.lock().map_err(|_| Error::invalid("an attack thread panicked"))?;
        *d = d.merge(f);
        Ok(Some(data))
    };
    let written = write_model(model, out, &transform, &WriteOptions { progress })?;
    let damage = damage.into_inner().map_err(|_| Error::invalid("an attack thread panicked"))?;
    Ok(AttackReport { written, damage })
}

/// The collusion attack: the element-wise average of several copies of one
/// model (same tensor names and shapes), written in the first copy's layout.
/// Tensors that are not floats are copied from the first copy. The damage is
/// measured against the first copy.
pub fn average_models(
    models: &[&Model],
    out: &Path,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let Some(first) = models.first() else {
        return Err(Error::invalid("nothing to average"));
    };
    for m in &models[1..] {
        for t in first.tensors() {
            let same = m.tensor(t.name).is_some_and(|o| o.shape == t.shape);
            if !same {
                return Err(Error::invalid(format!(
                    "{}: tensor '{}' is missing or has another shape; copies to average must match",
                    m.path.display(),
                    t.name
                )));
            }
        }
    }
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        if !t.dtype.is_markable() {
            return Ok(None);
        }
        let mut sum = Vec::new();
        decode_f64(t.dtype, t.data, &mut sum);
        let first_values = sum.clone();
        let mut buf = Vec::new();
        for m in &models[1..] {
            let other = m.tensor(t.name).ok_or_else(|| Error::invalid("tensor vanished"))?;
            decode_f64(other.dtype, other.data, &mut buf);
            sum.iter_mut().zip(&buf).for_each(|(s, v)| *s += v);
        }
        let k = models.len() as f64;
        let mut data = t.data.to_vec();
        let mut f = Fidelity::default();
        for ((o, s), &old) in data.chunks_exact_mut(t.dtype.size()).zip(&sum).zip(&first_values) {
            let avg = s / k;
            if encode_nearest(t.dtype, avg, o) && old.is_finite() {
                f.sum_sq_original += old * old;
                f.sum_sq_change += (avg - old) * (avg - old);
                f.max_abs_change = f.max_abs_change.max((avg - old).abs());
                f.elements += 1;
            }
        }
        let mut d = damage.lock().map_err(|_| Error::invalid("an attack thread panicked"))?;
        *d = d.merge(f);
        Ok(Some(data))
    };
    let written = write_model(first, out, &transform, &WriteOptions { progress })?;
    let damage = damage.into_inner().map_err(|_| Error::invalid("an attack thread panicked"))?;
    Ok(AttackReport { written, damage })
}

/// Applies `attack` to one float tensor; returns new bytes and the damage.
pub fn attack_tensor(t: &TensorRef<'_>, attack: &Attack, seed: u64) -> (Vec<u8>, Fidelity) {
    let mut w = Vec::new();
    decode_f64(t.dtype, t.data, &mut w);
    let cols = t.info.row_len().max(1);
    let rows = w.len() / cols;
    let mut new = w.clone();
    match attack {
        Attack::Noise { relative } => add_noise(&mut new, cols, *relative, seed, t.name),
        Attack::Drift { relative } => {
            let half = relative / std::f64::consts::SQRT_2;
            add_noise(&mut new, cols, half, seed, t.name);
            add_low_rank(&mut new, rows, cols, half, seed, t.name);
        }
        Attack::QuantizeInt8PerRow => new.par_chunks_mut(cols).for_each(quantize_row_int8),
    }
    let size = t.dtype.size();
    let mut out = t.data.to_vec();
    for ((o, &v), &old) in out.chunks_exact_mut(size).zip(&new).zip(&w) {
        if old.is_finite() {
            // On overflow the original element stays.
            encode_nearest(t.dtype, v, o);
        }
    }
    let mut back = Vec::with_capacity(w.len());
    decode_f64(t.dtype, &out, &mut back);
    let mut fid = Fidelity::default();
    for (&old, &b) in w.iter().zip(&back) {
        if old.is_finite() && b.is_finite() {
            let d = b - old;
            fid.sum_sq_original += old * old;
            fid.sum_sq_change += d * d;
            fid.max_abs_change = fid.max_abs_change.max(d.abs());
            fid.elements += 1;
        }
    }
    (out, fid)
}

fn row_rms(row: &[f64]) -> f64 {
    (row.iter().map(|v| v * v).sum::<f64>() / row.len().max(1) as f64).sqrt()
}

fn add_noise(w: &mut [f64], cols: usize, relative: f64, seed: u64, name: &str) {
    w.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let mut rng = stream(seed, &format!("noise\0{name}"));
        let mut n = vec![0.0; row.len()];
        fill_normal(&mut rng, (r * cols) as u64, &mut n);
        let scale = relative * row_rms(row);
        for (x, e) in row.iter_mut().zip(&n) {
            *x += scale * e;
        }
    });
}

/// Adds `U V` (rank 8) scaled so that each row's change has RMS
/// `relative x row RMS`.
fn add_low_rank(w: &mut [f64], rows: usize, cols: usize, relative: f64, seed: u64, name: &str) {
    const RANK: usize = 8;
    let mut rng = stream(seed, &format!("lowrank\0{name}"));
    let mut u = vec![0.0; rows * RANK];
    let mut v = vec![0.0; RANK * cols];
    fill_normal(&mut rng, 0, &mut u);
    fill_normal(&mut rng, (rows * RANK) as u64, &mut v);
    let (Ok(u), Ok(v)) =
        (Array2::from_shape_vec((rows, RANK), u), Array2::from_shape_vec((RANK, cols), v))
    else {
        return;
    };
    let update: Array2<f64> = u.dot(&v);
    let Ok(original) = ArrayView2::from_shape((rows, cols), &*w).map(|a| a.to_owned()) else {
        return;
    };
    for ((row, up), orig) in w.chunks_mut(cols).zip(update.rows()).zip(original.rows()) {
        let up_rms = (up.iter().map(|x| x * x).sum::<f64>() / cols as f64).sqrt();
        let target = relative * (orig.iter().map(|x| x * x).sum::<f64>() / cols as f64).sqrt();
        if up_rms > 0.0 {
            for (x, d) in row.iter_mut().zip(up.iter()) {
                *x += d * target / up_rms;
            }
        }
    }
}

fn quantize_row_int8(row: &mut [f64]) {
    let absmax = row.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if absmax == 0.0 || !absmax.is_finite() {
        return;
    }
    let scale = absmax / 127.0;
    for x in row.iter_mut() {
        *x = (*x / scale).round().clamp(-127.0, 127.0) * scale;
    }
}
