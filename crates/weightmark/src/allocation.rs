//! Data-free amplitude allocation for scheme `ss2` (certificate field
//! `allocation`): where the mark's energy goes, from the weights alone.
//!
//! Uniform `ss2` gives every element the same relative strength `e`. The
//! allocation gives element `(i, j)` of a tensor the strength `a_ij · e`,
//! with `a_ij = min(g · r_i · c_j, CAP)`:
//!
//! - `g`, per **tensor group** (q, k, v, o, gate, up, down, embedding): a
//!   fixed prior by role, `g² ∝` the group's z² gained per unit of KL as
//!   measured on SmolLM2 (research note: gate 2.99 … v 0.10), normalised so
//!   that the marked elements keep a mean `g²` of 1;
//! - `c_j`, per **input channel** (column): the smoothed rule
//!   `c_j² ∝ h_j^(−γ)` with `h_j` a data-free proxy of what a relative change
//!   of column `j` costs: the column's energy times the energy of the input
//!   it multiplies (the norm weight in front of a reader, the rows of `v`
//!   in front of `o`, the rows of gate and up in front of `down`), mean 1;
//! - `r_i`, per **embedding row**: `r_i² ∝ (row energy)^(−γ)`, mean 1.
//!
//! Every factor is clamped to `[1/CAP, CAP]` after normalisation, and the
//! product to `CAP`. Every quantity is a function of the weights only, never
//! of a key, and is invariant to the free transforms `ss2` survives:
//! positive rescalings of rows and columns folded into norms or into the
//! neighbouring matrix (each `h` multiplies a column's energy by its input's,
//! so the factor cancels; reader rows are balanced first), sign flips
//! (squares), and permutations of residual channels, neurons and heads (the
//! factors travel with their channel). Embedding computes the weights from
//! the original; detection recomputes them from the suspect and uses them as
//! its detection weights (`y_ij ← a_ij · y_ij`, the matched filter), so
//! Hoeffding's bound stays exact (docs/ss2.md §8).

use std::collections::HashMap;
use std::fmt;

use rayon::prelude::*;

use crate::dtype::decode_f64;
use crate::error::{Error, Result};
use crate::llama::{AttentionGeometry, NormOf, Part};
use crate::model::{Model, TensorRef};

/// Largest multiplier of the base strength any element gets (and the
/// inverse of the smallest each factor gets).
pub const CAP: f64 = 3.0;

/// Smoothing exponent of the per-channel and per-row rules of `ss2-alloc1`.
const GAMMA: f64 = 0.5;

/// Smoothing exponent of the per-channel rule of `ss2-alloc2`.
const GAMMA2: f64 = 1.0;

/// Smoothing exponent of the per-group rule.
const GAMMA_GROUP: f64 = 1.0;

/// The name of the first allocation in certificates.
const ALLOC1: &str = "ss2-alloc1";

/// The name of the second allocation (the default) in certificates.
const ALLOC2: &str = "ss2-alloc2";

/// Which factors of the allocation are used (all three by default; the
/// others are ablations for measurement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// Per tensor group.
    pub group: bool,
    /// Per input channel.
    pub channel: bool,
    /// Per embedding row.
    pub row: bool,
}

impl Parts {
    /// Every factor (`ss2-alloc1`).
    pub const ALL: Parts = Parts { group: true, channel: true, row: true };
    /// The factors of `ss2-alloc2`: per group and per channel, no row.
    pub const ALLOC2: Parts = Parts { group: true, channel: true, row: false };
}

/// How `ss2` spreads its strength over the elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Allocation {
    /// The same relative strength everywhere (certificates without the field).
    #[default]
    Uniform,
    /// `ss2-alloc1`: the data-free rule of this module, with these parts
    /// (channel and row smoothing `γ = 1/2`).
    Alloc1(Parts),
    /// `ss2-alloc2`, the default: the per-group and per-channel factors of
    /// `ss2-alloc1` without the per-row one, and the per-channel rule
    /// sharpened to `γ = 1` (docs/fidelity.md measures each choice).
    Alloc2(Parts),
}

impl Allocation {
    /// The full first data-free allocation.
    pub const ALLOC1: Allocation = Allocation::Alloc1(Parts::ALL);

    /// The second data-free allocation, `embed`'s default.
    pub const ALLOC2: Allocation = Allocation::Alloc2(Parts::ALLOC2);

    /// What `embed` uses when no allocation is given.
    pub const DEFAULT: Allocation = Allocation::ALLOC2;

    /// The smoothing exponent of the per-channel and per-row rules
    /// (`None`: uniform).
    fn gamma(self) -> Option<(Parts, f64)> {
        match self {
            Allocation::Uniform => None,
            Allocation::Alloc1(p) => Some((p, GAMMA)),
            Allocation::Alloc2(p) => Some((p, GAMMA2)),
        }
    }

    /// The value of the certificate's `allocation` field: `None` for
    /// uniform (the field is absent), `"ss2-alloc1"` or `"ss2-alloc2"` for
    /// their own parts, and `"ss2-alloc1:group+channel"` and the like for
    /// ablations.
    pub fn certificate_field(self) -> Option<String> {
        let (name, full, p) = match self {
            Allocation::Uniform => return None,
            Allocation::Alloc1(p) => (ALLOC1, Parts::ALL, p),
            Allocation::Alloc2(p) => (ALLOC2, Parts::ALLOC2, p),
        };
        if p == full {
            return Some(name.to_string());
        }
        let names = [(p.group, "group"), (p.channel, "channel"), (p.row, "row")];
        let on: Vec<&str> = names.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        Some(format!("{name}:{}", on.join("+")))
    }

    /// The allocation named `name` (`"uniform"`, `"ss2-alloc1"`,
    /// `"ss2-alloc2"`, or either followed by `:` and `+`-separated parts:
    /// group, channel, row).
    pub fn from_name(name: &str) -> Result<Allocation> {
        let bad = || {
            Error::invalid(format!(
                "unknown allocation '{}': use uniform, {ALLOC2} (the default), {ALLOC1}, or \
                 either followed by :PARTS with PARTS from group, channel, row joined by '+'",
                name.escape_debug()
            ))
        };
        match name {
            "uniform" => return Ok(Allocation::Uniform),
            ALLOC1 => return Ok(Allocation::ALLOC1),
            ALLOC2 => return Ok(Allocation::ALLOC2),
            _ => {}
        }
        let (make, list): (fn(Parts) -> Allocation, &str) =
            if let Some(l) = name.strip_prefix(ALLOC1).and_then(|s| s.strip_prefix(':')) {
                (Allocation::Alloc1, l)
            } else if let Some(l) = name.strip_prefix(ALLOC2).and_then(|s| s.strip_prefix(':')) {
                (Allocation::Alloc2, l)
            } else {
                return Err(bad());
            };
        let mut parts = Parts { group: false, channel: false, row: false };
        for part in list.split('+') {
            let slot = match part {
                "group" => &mut parts.group,
                "channel" => &mut parts.channel,
                "row" => &mut parts.row,
                _ => return Err(bad()),
            };
            if *slot {
                return Err(bad());
            }
            *slot = true;
        }
        Ok(make(parts))
    }

    /// The allocation a certificate records (`None`: uniform).
    pub fn from_certificate_field(field: Option<&str>) -> Result<Allocation> {
        match field {
            None => Ok(Allocation::Uniform),
            Some("uniform") => Err(Error::invalid(
                "allocation \"uniform\" is written by leaving the field out".to_string(),
            )),
            Some(name) => Allocation::from_name(name),
        }
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.certificate_field().as_deref().unwrap_or("uniform"))
    }
}

impl std::str::FromStr for Allocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Allocation> {
        Allocation::from_name(s)
    }
}

/// The multipliers of one tensor: `a_ij = min(scale · rows[i] · cols[j], CAP)`
/// (a missing vector counts as ones).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorWeights {
    /// The group factor.
    pub scale: f64,
    /// Per stored row (embedding rows), if any.
    pub rows: Option<Vec<f64>>,
    /// Per stored column (input channels), if any.
    pub cols: Option<Vec<f64>>,
}

impl TensorWeights {
    /// The multiplier of element `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> f64 {
        let r = self.rows.as_ref().and_then(|v| v.get(i)).copied().unwrap_or(1.0);
        let c = self.cols.as_ref().and_then(|v| v.get(j)).copied().unwrap_or(1.0);
        (self.scale * r * c).min(CAP)
    }

    /// Multiplies `y` (row `i` from column `j0` on) by the multipliers.
    pub fn weigh(&self, i: usize, j0: usize, y: &mut [f64]) {
        for (k, v) in y.iter_mut().enumerate() {
            *v *= self.at(i, j0 + k);
        }
    }
}

/// The multipliers of every tensor an allocation touches, by name.
#[derive(Clone, Debug, Default)]
pub struct ModelWeights {
    pub(crate) tensors: HashMap<String, TensorWeights>,
}

impl ModelWeights {
    /// The multipliers of `allocation` for the tensors `names` of `model`
    /// (those marked: embed passes the original and its selection, detect
    /// the suspect and the certificate's list). Empty for uniform.
    pub fn of(model: &Model, names: &[String], allocation: Allocation) -> ModelWeights {
        let Some((parts, gamma)) = allocation.gamma() else { return ModelWeights::default() };
        let tensors: Vec<TensorRef<'_>> = names
            .iter()
            .filter_map(|n| model.tensor(n))
            .filter(|t| t.shape.len() == 2 && t.dtype.is_readable())
            .collect();
        let geometry = AttentionGeometry::for_model(model).ok();
        let norms = Norms { model };
        let mut out: Vec<(String, TensorWeights)> = tensors
            .par_iter()
            .map(|t| {
                let part = Part::of(t.name);
                let cols = if parts.channel {
                    part.and_then(|p| channel_cost(model, t, p, &norms, geometry.as_ref()))
                        .map(|h| smoothed(&h, gamma))
                } else {
                    None
                };
                let rows = match part {
                    Some(Part::Embed | Part::Head) if parts.row => {
                        Some(smoothed(&row_energy(t, None), gamma))
                    }
                    _ => None,
                };
                (t.name.to_string(), TensorWeights { scale: 1.0, rows, cols })
            })
            .collect();
        if parts.group {
            let eff: Vec<f64> = tensors.iter().map(|t| group_efficiency(t.name)).collect();
            let n: Vec<f64> = tensors.iter().map(|t| t.elements() as f64).collect();
            let mut g: Vec<f64> = eff.iter().map(|e| e.powf(GAMMA_GROUP / 2.0)).collect();
            normalise(&mut g, &n);
            for ((_, w), g) in out.iter_mut().zip(g) {
                w.scale = g;
            }
        }
        ModelWeights { tensors: out.into_iter().collect() }
    }

    /// The multipliers of tensor `name`, if the allocation touches it.
    pub fn get(&self, name: &str) -> Option<&TensorWeights> {
        self.tensors.get(name)
    }
}

/// z² gained per unit of KL by marking a group, relative to the average
/// (research/mark-v2.md, SmolLM2, measured with activations once; a fixed
/// prior here, the same for every model).
fn group_efficiency(name: &str) -> f64 {
    match Part::of(name) {
        Some(Part::Gate(_)) => 2.99,
        Some(Part::O(_)) => 1.76,
        Some(Part::Up(_)) => 1.68,
        Some(Part::Q(_)) => 1.23,
        Some(Part::Embed | Part::Head) => 1.17,
        Some(Part::K(_)) => 0.81,
        Some(Part::Down(_)) => 0.74,
        Some(Part::V(_)) => 0.10,
        _ => 1.0,
    }
}

/// Norm weights read on demand.
struct Norms<'m> {
    model: &'m Model,
}

impl Norms<'_> {
    fn get(&self, norm: NormOf, len: usize) -> Option<Vec<f64>> {
        let t = self.model.tensor(&norm.name())?;
        let mut v = Vec::new();
        decode_f64(t.dtype, &t.data(), &mut v);
        (v.len() == len).then_some(v)
    }
}

/// The data-free cost proxy `h_j` of a relative change of each column of
/// `t`: the column's energy times its input's. `None` where the part has no
/// rule or a tensor it needs is missing or misshapen.
fn channel_cost(
    model: &Model,
    t: &TensorRef<'_>,
    part: Part,
    norms: &Norms<'_>,
    geometry: Option<&AttentionGeometry>,
) -> Option<Vec<f64>> {
    let [rows, cols] = *t.shape else { return None };
    let layer_tensor = |l: usize, tail: &str| model.tensor(&format!("model.layers.{l}.{tail}"));
    match part {
        // Readers: the norm folded into the columns, each row balanced to
        // RMS 1 (a free rescaling of reader rows cancels), then the columns'
        // mean square.
        Part::Q(l) | Part::K(l) | Part::V(l) => {
            Some(balanced_col_energy(t, &norms.get(NormOf::Input(l), cols)?))
        }
        Part::Gate(l) | Part::Up(l) => {
            Some(balanced_col_energy(t, &norms.get(NormOf::PostAttention(l), cols)?))
        }
        Part::Embed | Part::Head => {
            let g = norms.get(NormOf::Final, cols)?;
            let mut h = col_energy(t);
            h.iter_mut().zip(&g).for_each(|(h, g)| *h *= g * g);
            Some(h)
        }
        // down: input neuron i carries silu(gate_i·x)·(up_i·x); its energy
        // proxy is the product of the folded gate and up rows' energies.
        Part::Down(l) => {
            let g = norms.get(NormOf::PostAttention(l), rows)?;
            let gate = row_energy(&layer_tensor(l, "mlp.gate_proj.weight")?, Some(&g));
            let up = row_energy(&layer_tensor(l, "mlp.up_proj.weight")?, Some(&g));
            if gate.len() != cols || up.len() != cols {
                return None;
            }
            let mut h = col_energy(t);
            for ((h, a), b) in h.iter_mut().zip(&gate).zip(&up) {
                *h *= a * b;
            }
            Some(h)
        }
        // o: input channel j is head dimension j of a query head, reading the
        // value row of its key/value head.
        Part::O(l) => {
            let geo = geometry?;
            let g = norms.get(NormOf::Input(l), rows)?;
            let v = row_energy(&layer_tensor(l, "self_attn.v_proj.weight")?, Some(&g));
            let group = geo.heads / geo.kv_heads.max(1);
            let d = geo.head_dim.max(1);
            let mut h = col_energy(t);
            for (j, h) in h.iter_mut().enumerate() {
                let r = (j / d / group.max(1)) * d + j % d;
                *h *= v.get(r).copied()?;
            }
            Some(h)
        }
        _ => None,
    }
}

/// Rows of `t` decoded one at a time (a 2-D tensor).
fn for_rows(t: &TensorRef<'_>, mut f: impl FnMut(usize, &[f64])) {
    let cols = t.shape.get(1).copied().unwrap_or(0).max(1);
    let size = t.dtype.size();
    let mut v = Vec::new();
    for (i, bytes) in t.data().chunks(cols * size).enumerate() {
        decode_f64(t.dtype, bytes, &mut v);
        f(i, &v);
    }
}

/// Mean square of each row of `t`, its columns scaled by `fold` first.
fn row_energy(t: &TensorRef<'_>, fold: Option<&[f64]>) -> Vec<f64> {
    let mut out = Vec::new();
    for_rows(t, |_, row| {
        let s: f64 = row
            .iter()
            .enumerate()
            .map(|(j, &x)| x * fold.and_then(|g| g.get(j)).copied().unwrap_or(1.0))
            .filter(|x| x.is_finite())
            .map(|x| x * x)
            .sum();
        out.push(s / row.len().max(1) as f64);
    });
    out
}

/// Mean square of each column of `t`.
fn col_energy(t: &TensorRef<'_>) -> Vec<f64> {
    let cols = t.shape.get(1).copied().unwrap_or(0);
    let mut sum = vec![0.0; cols];
    let mut n = 0usize;
    for_rows(t, |_, row| {
        n += 1;
        for (s, &x) in sum.iter_mut().zip(row) {
            if x.is_finite() {
                *s += x * x;
            }
        }
    });
    sum.iter_mut().for_each(|s| *s /= n.max(1) as f64);
    sum
}

/// Mean square of each column of `t` with `g` folded into the columns and
/// every row then scaled to RMS 1.
fn balanced_col_energy(t: &TensorRef<'_>, g: &[f64]) -> Vec<f64> {
    let cols = t.shape.get(1).copied().unwrap_or(0);
    let mut sum = vec![0.0; cols];
    let mut n = 0usize;
    let mut folded = vec![0.0; cols];
    for_rows(t, |_, row| {
        for ((f, &x), &g) in folded.iter_mut().zip(row).zip(g) {
            *f = if x.is_finite() { x * g } else { 0.0 };
        }
        let ms = folded.iter().map(|x| x * x).sum::<f64>() / cols.max(1) as f64;
        if ms > 0.0 {
            n += 1;
            for (s, f) in sum.iter_mut().zip(&folded) {
                *s += f * f / ms;
            }
        }
    });
    sum.iter_mut().for_each(|s| *s /= n.max(1) as f64);
    sum
}

/// The smoothed factors `h^(−γ/2)` of costs `h`, normalised to mean square
/// 1 and clamped to `[1/CAP, CAP]`; a cost that is zero or not finite gets
/// the geometric mean of the others.
fn smoothed(h: &[f64], gamma: f64) -> Vec<f64> {
    let valid = |x: f64| x.is_finite() && x > 0.0;
    let logs: Vec<f64> = h.iter().copied().filter(|&x| valid(x)).map(f64::ln).collect();
    let mean_log = if logs.is_empty() { 0.0 } else { logs.iter().sum::<f64>() / logs.len() as f64 };
    let mut a: Vec<f64> = h
        .iter()
        .map(|&x| (-(gamma / 2.0) * if valid(x) { x.ln() - mean_log } else { 0.0 }).exp())
        .collect();
    let ones = vec![1.0; a.len()];
    normalise(&mut a, &ones);
    a
}

/// Scales `a` to a `n`-weighted mean square of 1 and clamps it to
/// `[1/CAP, CAP]`, a few times over so both hold closely (the clamp has the
/// last word).
fn normalise(a: &mut [f64], n: &[f64]) {
    let total: f64 = n.iter().sum();
    if total <= 0.0 {
        return;
    }
    for _ in 0..16 {
        let ms: f64 = a.iter().zip(n).map(|(x, n)| x * x * n).sum::<f64>() / total;
        if !(ms > 0.0 && ms.is_finite()) {
            return;
        }
        let s = ms.sqrt();
        a.iter_mut().for_each(|x| *x = (*x / s).clamp(1.0 / CAP, CAP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_uniform_has_no_certificate_field() {
        assert_eq!(Allocation::Uniform.certificate_field(), None);
        assert_eq!(Allocation::ALLOC1.certificate_field().as_deref(), Some("ss2-alloc1"));
        assert_eq!(Allocation::ALLOC2.certificate_field().as_deref(), Some("ss2-alloc2"));
        for name in [
            "ss2-alloc1",
            "ss2-alloc1:group",
            "ss2-alloc1:channel+row",
            "uniform",
            "ss2-alloc2",
            "ss2-alloc2:channel",
            "ss2-alloc2:group+channel+row",
        ] {
            let a = Allocation::from_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(a.to_string(), name);
        }
        let p = Allocation::from_name("ss2-alloc1:row").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p, Allocation::Alloc1(Parts { group: false, channel: false, row: true }));
        for bad in ["", "ss2-alloc3", "ss2-alloc1:", "ss2-alloc1:row+row", "ss2-alloc2:rows"] {
            assert!(Allocation::from_name(bad).is_err(), "{bad}");
        }
        assert!(Allocation::from_certificate_field(Some("uniform")).is_err());
        assert_eq!(Allocation::from_certificate_field(None).ok(), Some(Allocation::Uniform));
    }

    #[test]
    fn smoothed_factors_have_mean_square_one_stay_capped_and_favour_cheap_channels() {
        let h: Vec<f64> = (0..200).map(|k| 0.01 * 1.05f64.powi(k)).chain([0.0, f64::NAN]).collect();
        let a = smoothed(&h, GAMMA);
        let ms = a.iter().map(|x| x * x).sum::<f64>() / a.len() as f64;
        assert!((ms - 1.0).abs() < 0.02, "mean square {ms}");
        assert!(a.iter().all(|&x| (1.0 / CAP - 1e-12..=CAP + 1e-12).contains(&x)));
        // Cheaper channels (smaller h) get more, monotonically.
        assert!(a.windows(2).take(199).all(|w| w[0] >= w[1]));
        assert!(a[0] > 2.0 && a[199] < 0.5, "{} {}", a[0], a[199]);
    }

    #[test]
    fn weights_multiply_and_cap() {
        let w =
            TensorWeights { scale: 2.0, rows: Some(vec![1.0, 2.0]), cols: Some(vec![0.5, 1.0]) };
        assert_eq!(w.at(0, 0), 1.0);
        assert_eq!(w.at(1, 1), CAP);
        let mut y = [1.0, f64::NAN, 2.0];
        w.weigh(0, 0, &mut y);
        assert_eq!(y[0], 1.0);
        assert!(y[1].is_nan());
        assert_eq!(y[2], 4.0); // beyond the columns given: column factor 1
    }
}
