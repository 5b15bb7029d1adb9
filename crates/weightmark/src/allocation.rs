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
use crate::ss2::{sums_side_by_side, Profile, ProfileBuilder};

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

    /// The multipliers of row `i` from column `j0` on, into `out`: what
    /// [`TensorWeights::at`] gives, bit for bit.
    pub fn multipliers(&self, i: usize, j0: usize, out: &mut [f64]) {
        match self.row_piece(i, j0, out.len()) {
            (sr, Some(Some(c))) => capped_products(out, sr, c),
            (sr, None) => out.fill(sr.min(CAP)),
            (_, Some(None)) => {
                for (k, v) in out.iter_mut().enumerate() {
                    *v = self.at(i, j0 + k);
                }
            }
        }
    }

    /// Multiplies `y` (row `i` from column `j0` on) by the multipliers.
    pub fn weigh(&self, i: usize, j0: usize, y: &mut [f64]) {
        match self.row_piece(i, j0, y.len()) {
            (sr, Some(Some(c))) => weigh_by_columns(y, sr, c),
            (sr, None) => {
                let a = sr.min(CAP);
                y.iter_mut().for_each(|v| *v *= a);
            }
            (_, Some(None)) => {
                for (k, v) in y.iter_mut().enumerate() {
                    *v *= self.at(i, j0 + k);
                }
            }
        }
    }

    /// For `len` columns of row `i` from `j0` on: the row's factor times the
    /// group's, `scale · r_i` (as [`TensorWeights::at`] multiplies, first),
    /// and the column factors: `None` without any (each is one, and
    /// `sr · 1 = sr` exactly), `Some(None)` where the piece runs past them.
    fn row_piece(&self, i: usize, j0: usize, len: usize) -> (f64, Option<Option<&[f64]>>) {
        let r = self.rows.as_ref().and_then(|v| v.get(i)).copied().unwrap_or(1.0);
        let cols = self.cols.as_deref().map(|c| c.get(j0..j0.checked_add(len)?));
        (self.scale * r, cols)
    }
}

/// `y_j ← y_j · min(sr · c_j, CAP)`.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn weigh_by_columns(y: &mut [f64], sr: f64, c: &[f64]) {
    for (v, &c) in y.iter_mut().zip(c) {
        *v *= (sr * c).min(CAP);
    }
}

/// `out_j = min(sr · c_j, CAP)`.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn capped_products(out: &mut [f64], sr: f64, c: &[f64]) {
    for (v, &c) in out.iter_mut().zip(c) {
        *v = (sr * c).min(CAP);
    }
}

/// The multipliers of every tensor an allocation touches, by name.
#[derive(Clone, Debug, Default)]
pub struct ModelWeights {
    pub(crate) tensors: HashMap<String, TensorWeights>,
    /// The `ss2` blind profiles of the tensors read, when asked for
    /// ([`ModelWeights::for_detection`]): the same pass gives them.
    pub(crate) profiles: HashMap<String, Profile>,
}

impl ModelWeights {
    /// The multipliers of `allocation` for the tensors `names` of `model`
    /// (those marked: embed passes the original and its selection, detect
    /// the suspect and the certificate's list). Empty for uniform.
    pub fn of(model: &Model, names: &[String], allocation: Allocation) -> ModelWeights {
        ModelWeights::build(model, names, allocation, false)
    }

    /// [`ModelWeights::of`] for a suspect, keeping the blind `ss2` profile
    /// of each tensor read ([`ModelWeights::profile`]) so that detection
    /// does not read the tensor once more for it.
    pub(crate) fn for_detection(
        model: &Model,
        names: &[String],
        allocation: Allocation,
    ) -> ModelWeights {
        ModelWeights::build(model, names, allocation, true)
    }

    /// The blind `ss2` profile of tensor `name`, if the pass kept it.
    pub(crate) fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    fn build(
        model: &Model,
        names: &[String],
        allocation: Allocation,
        profiles: bool,
    ) -> ModelWeights {
        let Some((parts, gamma)) = allocation.gamma() else { return ModelWeights::default() };
        let tensors: Vec<TensorRef<'_>> = names
            .iter()
            .filter_map(|n| model.tensor(n))
            .filter(|t| t.shape.len() == 2 && t.dtype.is_readable())
            .collect();
        let geometry = AttentionGeometry::for_model(model).ok();
        let norms = Norms { model };
        // One pass over each tensor for everything the rules read of it (its
        // columns' energy and, for the tensors another's cost reads, its rows'),
        // then each tensor's factors.
        let mut scans: HashMap<&str, Scan> = tensors
            .par_iter()
            .filter_map(|t| {
                let part = Part::of(t.name)?;
                Some((t.name, Scan::of(t, part, parts, &norms, profiles)?))
            })
            .collect();
        let profiles: HashMap<String, Profile> = scans
            .iter_mut()
            .filter_map(|(name, scan)| Some((name.to_string(), scan.profile.take()?)))
            .collect();
        let mut out: Vec<(String, TensorWeights)> = tensors
            .par_iter()
            .map(|t| {
                let part = Part::of(t.name);
                let scan = scans.get(t.name);
                let cols = if parts.channel {
                    part.and_then(|p| {
                        channel_cost(model, t, p, &norms, geometry.as_ref(), scan, &scans)
                    })
                    .map(|h| smoothed(&h, gamma))
                } else {
                    None
                };
                let rows = match part {
                    Some(Part::Embed | Part::Head) if parts.row => {
                        let energy = scan.and_then(|s| s.rows.clone());
                        Some(smoothed(&energy.unwrap_or_else(|| row_energy(t, None)), gamma))
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
        ModelWeights { tensors: out.into_iter().collect(), profiles }
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

/// What the allocation reads of one tensor, from one pass over it
/// ([`energies`]): its columns' energy as its own cost needs it, and its
/// rows' energy with its norm folded in where another tensor's cost reads
/// them (`v` for `o`, gate and up for `down`; an embedding's own rows for
/// the row rule).
struct Scan {
    cols: Vec<f64>,
    rows: Option<Vec<f64>>,
    /// The tensor's blind `ss2` profile, when asked for.
    profile: Option<Profile>,
}

impl Scan {
    fn of(
        t: &TensorRef<'_>,
        part: Part,
        parts: Parts,
        norms: &Norms<'_>,
        profile: bool,
    ) -> Option<Scan> {
        let cols = t.shape.get(1).copied()?;
        let (norm, balanced, rows) = match part {
            Part::Q(l) | Part::K(l) => (Some(NormOf::Input(l)), true, false),
            Part::V(l) => (Some(NormOf::Input(l)), true, parts.channel),
            Part::Gate(l) | Part::Up(l) => (Some(NormOf::PostAttention(l)), true, parts.channel),
            Part::Embed | Part::Head => (None, false, parts.row),
            Part::Down(_) | Part::O(_) => (None, false, false),
            Part::InputNorm(_) | Part::PostAttentionNorm(_) | Part::FinalNorm => return None,
        };
        if !parts.channel && !rows {
            return None;
        }
        let fold = match norm {
            Some(norm) => Some(norms.get(norm, cols)?),
            None => None,
        };
        let builder = if profile { ProfileBuilder::new(cols) } else { None };
        let (cols, rows, profile) = energies(t, fold.as_deref(), balanced, rows, builder);
        Some(Scan { cols, rows, profile })
    }
}

/// The data-free cost proxy `h_j` of a relative change of each column of
/// `t`: the column's energy times its input's. `None` where the part has no
/// rule or a tensor it needs is missing or misshapen. `scan` is `t`'s own
/// pass and `scans` every tensor's; a tensor outside them is read here.
fn channel_cost(
    model: &Model,
    t: &TensorRef<'_>,
    part: Part,
    norms: &Norms<'_>,
    geometry: Option<&AttentionGeometry>,
    scan: Option<&Scan>,
    scans: &HashMap<&str, Scan>,
) -> Option<Vec<f64>> {
    let [rows, cols] = *t.shape else { return None };
    // Rows' energy of another tensor of layer `l`, its norm folded in.
    let rows_of = |l: usize, tail: &str, norm: NormOf, len: usize| -> Option<Vec<f64>> {
        let name = format!("model.layers.{l}.{tail}");
        if let Some(r) = scans.get(name.as_str()).and_then(|s| s.rows.clone()) {
            return Some(r);
        }
        Some(row_energy(&model.tensor(&name)?, Some(&norms.get(norm, len)?)))
    };
    let own_cols = |balanced_by: Option<NormOf>| -> Option<Vec<f64>> {
        if let Some(s) = scan {
            return Some(s.cols.clone());
        }
        Some(match balanced_by {
            Some(norm) => balanced_col_energy(t, &norms.get(norm, cols)?),
            None => col_energy(t),
        })
    };
    match part {
        // Readers: the norm folded into the columns, each row balanced to
        // RMS 1 (a free rescaling of reader rows cancels), then the columns'
        // mean square.
        Part::Q(l) | Part::K(l) | Part::V(l) => own_cols(Some(NormOf::Input(l))),
        Part::Gate(l) | Part::Up(l) => own_cols(Some(NormOf::PostAttention(l))),
        Part::Embed | Part::Head => {
            let g = norms.get(NormOf::Final, cols)?;
            let mut h = own_cols(None)?;
            h.iter_mut().zip(&g).for_each(|(h, g)| *h *= g * g);
            Some(h)
        }
        // down: input neuron i carries silu(gate_i·x)·(up_i·x); its energy
        // proxy is the product of the folded gate and up rows' energies.
        Part::Down(l) => {
            let norm = NormOf::PostAttention(l);
            let gate = rows_of(l, "mlp.gate_proj.weight", norm, rows)?;
            let up = rows_of(l, "mlp.up_proj.weight", norm, rows)?;
            if gate.len() != cols || up.len() != cols {
                return None;
            }
            let mut h = own_cols(None)?;
            for ((h, a), b) in h.iter_mut().zip(&gate).zip(&up) {
                *h *= a * b;
            }
            Some(h)
        }
        // o: input channel j is head dimension j of a query head, reading the
        // value row of its key/value head.
        Part::O(l) => {
            let geo = geometry?;
            let v = rows_of(l, "self_attn.v_proj.weight", NormOf::Input(l), rows)?;
            let group = geo.heads / geo.kv_heads.max(1);
            let d = geo.head_dim.max(1);
            let mut h = own_cols(None)?;
            for (j, h) in h.iter_mut().enumerate() {
                let r = (j / d / group.max(1)) * d + j % d;
                *h *= v.get(r).copied()?;
            }
            Some(h)
        }
        _ => None,
    }
}

/// Rows read side by side by [`energies`]: eight independent sums, each
/// still in element order.
const SIDE_BY_SIDE: usize = 8;

/// One pass over the rows of 2-D tensor `t` for the allocation's energies:
///
/// - the columns' mean square: with `balanced`, of the values with `fold`
///   folded into the columns and every row scaled to RMS 1 (rows of RMS 0
///   left out); else of the plain values;
/// - with `rows`, each row's mean square with `fold` folded into its
///   columns (a missing factor counts as one).
///
/// Non-finite values count as zero (and a non-finite folded value adds
/// nothing to its row). Every sum adds in element order, row after row, so
/// the result does not depend on how the work is laid out. With `profile`,
/// the same pass also gives the tensor's blind `ss2` profile (read in the
/// builder's chunks).
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn energies(
    t: &TensorRef<'_>,
    fold: Option<&[f64]>,
    balanced: bool,
    rows: bool,
    mut profile: Option<ProfileBuilder>,
) -> (Vec<f64>, Option<Vec<f64>>, Option<Profile>) {
    let cols = t.shape.get(1).copied().unwrap_or(0);
    let width = cols.max(1);
    let size = t.dtype.size();
    let fold = fold.filter(|g| g.len() >= cols);
    let balanced = balanced && fold.is_some();
    let mut sum = vec![0.0; cols];
    let mut counted = 0usize;
    let mut row_energies = rows.then(Vec::new);
    let (mut v, mut folded, mut zeroed, mut terms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let data = t.data();
    // Rows read at a time: the profile's chunks, or about a chunk's worth.
    let block_rows = match &profile {
        Some(p) => p.rows_per_chunk(),
        None => (crate::scheme::CHUNK_ELEMENTS / width).max(SIDE_BY_SIDE),
    };
    for block in data.chunks(block_rows * width * size) {
        decode_f64(t.dtype, block, &mut v);
        if let Some(p) = profile.as_mut() {
            p.add_chunk(&v);
        }
        // The values with the fold applied (`x · g_j`, or `x`).
        folded.clear();
        match fold {
            Some(g) => {
                for row in v.chunks(width) {
                    folded.extend(row.iter().zip(g).map(|(&x, &g)| x * g));
                }
            }
            None => folded.extend_from_slice(&v),
        }
        if let Some(out) = row_energies.as_mut() {
            // Rows' mean squares of the folded values, non-finite ones left out.
            let square = |x: f64| if x.is_finite() { x * x } else { 0.0 };
            let lens = v.chunks(width).map(<[f64]>::len);
            for (len, s) in lens.zip(row_sums(&folded, width, square, &mut terms)) {
                out.push(s / len.max(1) as f64);
            }
        }
        if balanced {
            // Each row's mean square of the folded values, zero where `x`
            // is not finite.
            zeroed.clear();
            zeroed
                .extend(v.iter().zip(&folded).map(|(&x, &f)| if x.is_finite() { f } else { 0.0 }));
            let ms = row_sums(&zeroed, width, |f| f * f, &mut terms);
            for (f, ms) in zeroed.chunks(width).zip(ms) {
                let ms = ms / width as f64;
                if ms > 0.0 {
                    counted += 1;
                    for (s, f) in sum.iter_mut().zip(f) {
                        *s += f * f / ms;
                    }
                }
            }
        } else {
            for row in v.chunks(width) {
                counted += 1;
                for (s, &x) in sum.iter_mut().zip(row) {
                    *s += if x.is_finite() { x * x } else { 0.0 };
                }
            }
        }
    }
    sum.iter_mut().for_each(|s| *s /= counted.max(1) as f64);
    (sum, row_energies, profile.map(ProfileBuilder::finish))
}

/// `Σ_j term(x_j)` of each row of `values` (rows of `width`, the last
/// possibly shorter), in element order, the rows' sums interleaved
/// [`SIDE_BY_SIDE`] at a time ([`crate::ss2::sums_side_by_side`]); the
/// terms go through `terms`, a buffer reused between calls.
fn row_sums(
    values: &[f64],
    width: usize,
    term: impl Fn(f64) -> f64,
    terms: &mut Vec<f64>,
) -> Vec<f64> {
    let width = width.max(1);
    terms.clear();
    terms.extend(values.iter().map(|&x| term(x)));
    let mut out = Vec::with_capacity(values.len().div_ceil(width));
    let mut whole = terms.chunks_exact(SIDE_BY_SIDE * width);
    for group in whole.by_ref() {
        let mut rows = group.chunks_exact(width);
        let rows: [&[f64]; SIDE_BY_SIDE] = std::array::from_fn(|_| rows.next().unwrap_or(&[]));
        out.extend_from_slice(&sums_side_by_side(rows));
    }
    // The rest side by side too (a short last row adds its own elements).
    let rest: Vec<&[f64]> = whole.remainder().chunks(width).collect();
    if !rest.is_empty() {
        crate::ss2::side_by_side!(rest.len(), K => {
            let rows: [&[f64]; K] = std::array::from_fn(|i| rest[i]);
            out.extend_from_slice(&sums_side_by_side(rows));
        });
    }
    out
}

/// Mean square of each row of `t`, its columns scaled by `fold` first.
fn row_energy(t: &TensorRef<'_>, fold: Option<&[f64]>) -> Vec<f64> {
    energies(t, fold, false, true, None).1.unwrap_or_default()
}

/// Mean square of each column of `t`.
fn col_energy(t: &TensorRef<'_>) -> Vec<f64> {
    energies(t, None, false, false, None).0
}

/// Mean square of each column of `t` with `g` folded into the columns and
/// every row then scaled to RMS 1.
fn balanced_col_energy(t: &TensorRef<'_>, g: &[f64]) -> Vec<f64> {
    energies(t, Some(g), true, false, None).0
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
    fn row_sums_add_each_row_in_element_order_however_many_rows_there_are() {
        // 8 side by side, then 0 to 7 more, the last possibly short.
        for (rows, width, short) in [(8usize, 5usize, 0usize), (13, 7, 0), (5, 9, 4), (1, 3, 1)] {
            let n = rows * width - short;
            let values: Vec<f64> = (0..n).map(|k| ((k as f64) * 0.77).sin() * 1e3).collect();
            let mut terms = Vec::new();
            let got = row_sums(&values, width, |x| x * x, &mut terms);
            let want: Vec<f64> =
                values.chunks(width).map(|r| r.iter().fold(0.0, |s, &x| s + x * x)).collect();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{rows} rows of {width}, {short} short");
        }
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
