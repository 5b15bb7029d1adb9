//! Scheme `ss1`: keyed spread-spectrum embedding and its detection statistic,
//! one tensor at a time.
//!
//! **Embedding.** Element `i` of a selected tensor becomes
//! `w_i + a_i * p_i`, where `p_i` is the keyed Rademacher sign and
//! `a_i = strength * RMS(row of w_i)` (the last dimension is a row; a 1-D
//! tensor is one row). The sum is computed in `f64` and written back in the
//! tensor's dtype with keyed stochastic rounding ([`crate::dtype`]), so the
//! expected change is exactly `a_i * p_i` even below bf16's spacing.
//!
//! **Detection.** With `x_i` the suspect element (blind) or suspect minus
//! original (informed) and `c_i = 1 / RMS(row of x)` (never dependent on the
//! key): `S = sum c_i p_i x_i`, `V = sum (c_i x_i)^2`, `z = S / sqrt(V)`.
//! If the suspect does not depend on the key, the `p_i` are independent fair
//! signs given `x`, and Hoeffding's inequality gives `P(z >= t) <= exp(-t^2/2)`
//! exactly, whatever the weights. `S` and `V` add across rows, tensors, shards
//! and machines, so partial results merge exactly ([`Stats::merge`]).
//!
//! Unmarked, a row normalised by its RMS has unit mean square, so
//! `z ~ N(0, 1)`; marked, `S ~ strength * n`, `V ~ n`: the blind z of an
//! unattacked model is `strength * sqrt(n)`. Informed detection removes the
//! host weights, leaving `x = a p`: z is `sqrt(n)`.
//!
//! Chunks of whole rows (about 64 Ki elements) are processed in parallel and
//! their partial sums are added in chunk order, so results are identical
//! whatever the thread count. A row longer than a chunk (a `[1, N]` tensor, a
//! long 1-D one) is read in pieces of a chunk, in a few passes that carry the
//! row's sums from piece to piece in element order: the same numbers as one
//! pass over the whole row, with working memory bounded by the piece.

use rayon::prelude::*;

use crate::dtype::{decode_f64, encode_stochastic, Dtype};
use crate::model::TensorRef;
use crate::pattern::TensorStreams;

/// A mark scheme, as named in certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// Keyed spread spectrum in the weights as stored (this module).
    Ss1,
    /// A multiplicative mark in canonical coordinates with a release and a
    /// recipient component ([`crate::ss2`]).
    Ss2,
}

impl Scheme {
    /// Every scheme this version can embed and detect.
    pub const ALL: [Scheme; 2] = [Scheme::Ss1, Scheme::Ss2];

    /// The name written in certificates (`"ss1"`).
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Ss1 => "ss1",
            Scheme::Ss2 => "ss2",
        }
    }

    /// The scheme called `name`, if this version knows it.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Default strength: the mark's RMS relative to each row's RMS (0.3%).
///
/// Blind z of an unattacked model is `strength * sqrt(n)`: at 0.3% that is
/// at least 10 from n = 11.1M marked elements (13.4 at 20M, 35 at 135M). The
/// relative RMS change is 0.3%, about twice what re-rounding to bf16 does, and
/// its cost to the model grows with the square of the strength: on SmolLM2 it
/// is about 8x the KL divergence of bf16 re-rounding, and 0.001 matches bf16
/// (`docs/fidelity.md`). See `docs/scheme.md`.
pub const DEFAULT_STRENGTH: f64 = 0.003;

/// Default decision threshold on the p-value bound.
pub const DEFAULT_THRESHOLD_P: f64 = 1e-9;

/// Elements per parallel work item (rounded to whole rows).
pub(crate) const CHUNK_ELEMENTS: usize = 1 << 16;

/// The additive detection statistics of some set of elements.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// `S = sum c_i p_i x_i`.
    pub s: f64,
    /// `V = sum (c_i x_i)^2`.
    pub v: f64,
    /// Number of elements that contributed.
    pub elements: u64,
}

impl Stats {
    /// Adds two partial results.
    #[must_use]
    pub fn merge(self, other: Stats) -> Stats {
        Stats { s: self.s + other.s, v: self.v + other.v, elements: self.elements + other.elements }
    }

    /// These statistics plus another component's over the same elements:
    /// `S` and `V` add, the elements are counted once (the decision on both
    /// `ss2` components, docs/ss2.md §5).
    #[must_use]
    pub fn and_component(self, other: Stats) -> Stats {
        Stats { s: self.s + other.s, v: self.v + other.v, elements: self.elements }
    }

    /// These statistics plus another component's weighted by `weight`
    /// (`S + w S'`, `V + w^2 V'`): the decision on two components of
    /// different strengths, `weight` the ratio of the other's strength to
    /// this one's. At weight 1 exactly [`Stats::and_component`]. Any weight
    /// fixed before the signs are drawn keeps the bound: given the suspect,
    /// `S + w S'` is a sum of independent fair signs times fixed values.
    #[must_use]
    pub fn and_weighted(self, other: Stats, weight: f64) -> Stats {
        if weight == 1.0 {
            return self.and_component(other);
        }
        Stats {
            s: self.s + weight * other.s,
            v: self.v + weight * weight * other.v,
            elements: self.elements,
        }
    }

    /// `z = S / sqrt(V)` (0 when nothing contributed).
    pub fn z(&self) -> f64 {
        if self.v > 0.0 {
            self.s / self.v.sqrt()
        } else {
            0.0
        }
    }

    /// Hoeffding's bound on `P(z' >= z)` under H0: `exp(-z^2/2)` for `z > 0`.
    pub fn p_value(&self) -> f64 {
        p_value_bound(self.z())
    }
}

/// `exp(-z^2 / 2)` for positive `z`, else 1.
pub fn p_value_bound(z: f64) -> f64 {
    if z > 0.0 {
        (-z * z / 2.0).exp()
    } else {
        1.0
    }
}

/// The z at which the bound equals `p`: `sqrt(-2 ln p)`.
pub fn z_for_p(p: f64) -> f64 {
    (-2.0 * p.ln()).sqrt()
}

/// Sums describing how much marking changed the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fidelity {
    /// Sum of squared original elements.
    pub sum_sq_original: f64,
    /// Sum of squared changes.
    pub sum_sq_change: f64,
    /// Largest absolute change.
    pub max_abs_change: f64,
    /// Elements considered.
    pub elements: u64,
}

impl Fidelity {
    /// Adds two partial results.
    #[must_use]
    pub fn merge(self, o: Fidelity) -> Fidelity {
        Fidelity {
            sum_sq_original: self.sum_sq_original + o.sum_sq_original,
            sum_sq_change: self.sum_sq_change + o.sum_sq_change,
            max_abs_change: self.max_abs_change.max(o.max_abs_change),
            elements: self.elements + o.elements,
        }
    }

    /// The change from `before` to `after` (two versions of the same
    /// values), over the elements finite in both.
    pub fn between(before: &[f64], after: &[f64]) -> Fidelity {
        let mut fid = Fidelity::default();
        for (&old, &new) in before.iter().zip(after) {
            if old.is_finite() && new.is_finite() {
                let d = new - old;
                fid.sum_sq_original += old * old;
                fid.sum_sq_change += d * d;
                fid.max_abs_change = fid.max_abs_change.max(d.abs());
                fid.elements += 1;
            }
        }
        fid
    }

    /// [`Fidelity::between`] with the sums taken in eight interleaved lanes
    /// (element `k` adds to lane `k % 8`; the lanes are added in order, then
    /// the last `len % 8` elements in order), which vectorises: the same
    /// count and largest change, the same sums up to rounding. The marking
    /// of `ss2` takes each chunk's change this way.
    pub fn between_in_lanes(before: &[f64], after: &[f64]) -> Fidelity {
        fidelity_in_lanes(before, after)
    }

    /// RMS of the change relative to the RMS of the weights.
    pub fn relative_rms_change(&self) -> f64 {
        if self.sum_sq_original > 0.0 {
            (self.sum_sq_change / self.sum_sq_original).sqrt()
        } else {
            0.0
        }
    }

    /// Signal-to-noise ratio in dB: weights' energy over the change's.
    pub fn snr_db(&self) -> f64 {
        10.0 * (self.sum_sq_original / self.sum_sq_change).log10()
    }
}

/// Lanes of [`Fidelity::between_in_lanes`].
const FIDELITY_LANES: usize = 8;

#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn fidelity_in_lanes(before: &[f64], after: &[f64]) -> Fidelity {
    const L: usize = FIDELITY_LANES;
    let n = before.len().min(after.len());
    let (before, after) = (&before[..n], &after[..n]);
    let (mut so, mut sc, mut mx, mut count) = ([0.0f64; L], [0.0f64; L], [0.0f64; L], [0u64; L]);
    let (mut b, mut a) = (before.chunks_exact(L), after.chunks_exact(L));
    for (b, a) in b.by_ref().zip(a.by_ref()) {
        for k in 0..L {
            let (old, new) = (b[k], a[k]);
            // Outside the finite pairs both terms are +0.0, which changes no
            // sum of squares.
            let finite = old.is_finite() & new.is_finite();
            let (o, d) = if finite { (old, new - old) } else { (0.0, 0.0) };
            so[k] += o * o;
            sc[k] += d * d;
            // Never NaN: `d` is a difference of finite values.
            mx[k] = if d.abs() > mx[k] { d.abs() } else { mx[k] };
            count[k] += u64::from(finite);
        }
    }
    let mut fid = Fidelity::default();
    for k in 0..L {
        fid.sum_sq_original += so[k];
        fid.sum_sq_change += sc[k];
        fid.max_abs_change = fid.max_abs_change.max(mx[k]);
        fid.elements += count[k];
    }
    fid.merge(Fidelity::between(b.remainder(), a.remainder()))
}

/// The result of marking one tensor.
#[derive(Clone, Debug)]
pub struct TensorEmbedding {
    /// The marked tensor's bytes (same dtype and length as the input).
    pub data: Vec<u8>,
    /// How much it changed.
    pub fidelity: Fidelity,
    /// Blind statistics of the marked tensor under this key.
    pub blind: Stats,
    /// Informed statistics (marked minus original) under this key.
    pub informed: Stats,
}

/// Element ranges of the parallel work items: whole rows, about
/// [`CHUNK_ELEMENTS`] each.
fn chunk_len(elements: usize, row_len: usize) -> usize {
    let row_len = row_len.max(1);
    let rows = (CHUNK_ELEMENTS / row_len).max(1);
    (rows * row_len).min(elements.max(1))
}

/// Statistics of one row given its `x` values and signs; non-finite `x` are
/// left out (weight 0, which does not depend on the key).
fn row_stats(x: &[f64], p: &[f64]) -> Stats {
    let (rms, n) = finite_rms(x);
    if rms == 0.0 {
        return Stats::default();
    }
    let c = 1.0 / rms;
    let (mut s, mut v) = (0.0, 0.0);
    for (&xi, &pi) in x.iter().zip(p) {
        if xi.is_finite() {
            let cx = c * xi;
            s += cx * pi;
            v += cx * cx;
        }
    }
    Stats { s, v, elements: n }
}

/// RMS of the finite values of a row (0 for none), and how many there are.
///
/// The sum of squares is accumulated in index order; if it overflows (F64
/// elements beyond about 1e154) the row is rescaled by its largest magnitude
/// first, so one huge element cannot turn the statistics into NaN.
pub(crate) fn finite_rms(row: &[f64]) -> (f64, u64) {
    finite_rms_pieces(&|visit| visit(row))
}

/// A row given piece by piece: calls its argument on each piece, in order.
pub(crate) type Pieces<'a> = dyn Fn(&mut dyn FnMut(&[f64])) + 'a;

/// [`finite_rms`] of a row given piece by piece: `pieces` calls its argument
/// on each piece of the row, in order (it may be asked more than once). The
/// sums run in element order across pieces, so the result is exactly that
/// of [`finite_rms`] on the whole row.
pub(crate) fn finite_rms_pieces(pieces: &Pieces<'_>) -> (f64, u64) {
    let (mut sum, mut n) = (0.0, 0u64);
    pieces(&mut |row| {
        for v in row.iter().filter(|v| v.is_finite()) {
            sum += v * v;
            n += 1;
        }
    });
    if n == 0 {
        return (0.0, 0);
    }
    if sum.is_finite() {
        return ((sum / n as f64).sqrt(), n);
    }
    let mut max = 0.0f64;
    pieces(&mut |row| max = row.iter().filter(|v| v.is_finite()).fold(max, |m, v| m.max(v.abs())));
    let mut scaled = 0.0;
    pieces(&mut |row| {
        for v in row.iter().filter(|v| v.is_finite()) {
            scaled += (v / max) * (v / max);
        }
    });
    (max * (scaled / n as f64).sqrt(), n)
}

/// Element ranges of the pieces a long row is read in.
fn pieces(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..len).step_by(CHUNK_ELEMENTS).map(move |a| a..(a + CHUNK_ELEMENTS).min(len))
}

/// [`row_stats`] of a row longer than a chunk: `fill` writes the values of
/// a piece (element range of the row), `signs` its keyed signs.
fn row_stats_pieces(
    len: usize,
    fill: &dyn Fn(std::ops::Range<usize>, &mut Vec<f64>),
    signs: &dyn Fn(std::ops::Range<usize>, &mut [f64]),
) -> Stats {
    let (rms, n) = finite_rms_pieces(&|visit| {
        let mut x = Vec::new();
        for k in pieces(len) {
            fill(k, &mut x);
            visit(&x);
        }
    });
    if rms == 0.0 {
        return Stats::default();
    }
    let c = 1.0 / rms;
    let (mut s, mut v) = (0.0, 0.0);
    let (mut x, mut p) = (Vec::new(), vec![0.0; CHUNK_ELEMENTS]);
    for k in pieces(len) {
        let p = &mut p[..k.len()];
        fill(k.clone(), &mut x);
        signs(k, p);
        for (&xi, &pi) in x.iter().zip(p.iter()) {
            if xi.is_finite() {
                let cx = c * xi;
                s += cx * pi;
                v += cx * cx;
            }
        }
    }
    Stats { s, v, elements: n }
}

/// Marks one row longer than a chunk (`input` and `out` are its bytes; its
/// first element is element `start` of the tensor), in pieces: the row's
/// RMS, then the marked values piece by piece, then the blind and informed
/// statistics. Every sum runs in element order, as in [`embed_tensor`].
fn embed_long_row(
    dtype: Dtype,
    input: &[u8],
    out: &mut [u8],
    start: usize,
    streams: &TensorStreams,
    strength: f64,
) -> (Fidelity, Stats, Stats) {
    let size = dtype.size();
    let len = input.len() / size;
    let bytes = |b: &[u8], k: &std::ops::Range<usize>| -> Vec<u8> {
        b.get(k.start * size..k.end * size).unwrap_or_default().to_vec()
    };
    let decode = |b: &[u8], k: std::ops::Range<usize>, x: &mut Vec<f64>| {
        decode_f64(dtype, b.get(k.start * size..k.end * size).unwrap_or_default(), x);
    };
    let (rms, _) = finite_rms_pieces(&|visit| {
        let mut w = Vec::new();
        for k in pieces(len) {
            decode(input, k, &mut w);
            visit(&w);
        }
    });
    let a = strength * rms;
    let mut fid = Fidelity::default();
    let (mut w, mut marked, mut target) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p, mut u) = (vec![0.0; CHUNK_ELEMENTS], vec![0u32; CHUNK_ELEMENTS]);
    for k in pieces(len) {
        let (p, u) = (&mut p[..k.len()], &mut u[..k.len()]);
        decode(input, k.clone(), &mut w);
        streams.signs((start + k.start) as u64, p);
        streams.dither((start + k.start) as u64, u);
        target.clear();
        target.extend(w.iter().zip(p.iter()).map(|(&wi, &pi)| wi + a * pi));
        let piece_out = out.get_mut(k.start * size..k.end * size).unwrap_or_default();
        encode_stochastic(dtype, &target, u, piece_out);
        decode_f64(dtype, piece_out, &mut marked);
        for (&wi, &mi) in w.iter().zip(&marked) {
            let d = if wi.is_finite() && mi.is_finite() { mi - wi } else { 0.0 };
            if wi.is_finite() {
                fid.sum_sq_original += wi * wi;
                fid.sum_sq_change += d * d;
                fid.max_abs_change = fid.max_abs_change.max(d.abs());
                fid.elements += 1;
            }
        }
    }
    let out: &[u8] = out;
    let signs =
        |k: std::ops::Range<usize>, p: &mut [f64]| streams.signs((start + k.start) as u64, p);
    let blind = row_stats_pieces(len, &|k, x| decode(out, k, x), &signs);
    let informed = row_stats_pieces(
        len,
        &|k, x| {
            let (mut w, mut m) = (Vec::new(), Vec::new());
            decode_f64(dtype, &bytes(input, &k), &mut w);
            decode_f64(dtype, &bytes(out, &k), &mut m);
            x.clear();
            x.extend(w.iter().zip(&m).map(|(&wi, &mi)| {
                if wi.is_finite() && mi.is_finite() {
                    mi - wi
                } else {
                    0.0
                }
            }));
        },
        &signs,
    );
    (fid, blind, informed)
}

/// Detection statistics of one row longer than a chunk under several keys,
/// in pieces; the same numbers as [`detect_tensor_multi`]'s one pass.
fn detect_long_row(
    suspect: (Dtype, &[u8]),
    original: Option<(Dtype, &[u8])>,
    start: usize,
    streams: &[&TensorStreams],
) -> Vec<Stats> {
    let decode = |(dtype, b): (Dtype, &[u8]), k: &std::ops::Range<usize>, x: &mut Vec<f64>| {
        let size = dtype.size();
        decode_f64(dtype, b.get(k.start * size..k.end * size).unwrap_or_default(), x);
    };
    let len = suspect.1.len() / suspect.0.size();
    // The informed residual's gain, summed over the whole row first.
    let gain = original.map(|o| {
        let (mut so, mut oo) = (0.0, 0.0);
        let (mut x, mut w) = (Vec::new(), Vec::new());
        for k in pieces(len) {
            decode(suspect, &k, &mut x);
            decode(o, &k, &mut w);
            for (&s, &o) in x.iter().zip(&w) {
                if s != 0.0 && s.is_finite() && o.is_finite() {
                    so += s * o;
                    oo += o * o;
                }
            }
        }
        if oo > 0.0 && (so / oo).is_finite() {
            so / oo
        } else {
            1.0
        }
    });
    let fill = |k: std::ops::Range<usize>, x: &mut Vec<f64>| {
        decode(suspect, &k, x);
        if let (Some(o), Some(gain)) = (original, gain) {
            let mut w = Vec::new();
            decode(o, &k, &mut w);
            for (s, &o) in x.iter_mut().zip(&w) {
                *s = if *s == 0.0 { f64::NAN } else { *s - gain * o };
            }
        }
    };
    let (rms, n) = finite_rms_pieces(&|visit| {
        let mut x = Vec::new();
        for k in pieces(len) {
            fill(k, &mut x);
            visit(&x);
        }
    });
    if rms == 0.0 {
        return vec![Stats::default(); streams.len()];
    }
    let c = 1.0 / rms;
    let mut shared = Stats { elements: n, ..Stats::default() };
    let mut s = vec![0.0; streams.len()];
    let (mut x, mut p) = (Vec::new(), vec![0.0; CHUNK_ELEMENTS]);
    for k in pieces(len) {
        fill(k.clone(), &mut x);
        for v in x.iter_mut() {
            *v = if v.is_finite() { c * *v } else { 0.0 };
            shared.v += *v * *v;
        }
        let p = &mut p[..k.len()];
        for (st, s) in streams.iter().zip(s.iter_mut()) {
            st.signs((start + k.start) as u64, p);
            *s = x.iter().zip(p.iter()).fold(*s, |acc, (cx, pi)| acc + cx * pi);
        }
    }
    s.into_iter().map(|s| Stats { s, ..shared }).collect()
}

/// Turns one row of suspect values into the informed residual, in place:
/// `x_i = s_i - g * o_i`, where the gain `g` is the least-squares fit of the
/// suspect row on the original row (so a scaled, decayed or merged copy leaves
/// only what the edit added, not a multiple of the original), and elements
/// that are exactly zero in the suspect (pruned) are left out (NaN, weight 0).
/// Both choices depend only on the suspect and the original, never on the
/// key, so the Hoeffding bound stays exact.
fn informed_residual(suspect: &mut [f64], original: &[f64]) {
    let (mut so, mut oo) = (0.0, 0.0);
    for (&s, &o) in suspect.iter().zip(original) {
        if s != 0.0 && s.is_finite() && o.is_finite() {
            so += s * o;
            oo += o * o;
        }
    }
    let gain = if oo > 0.0 && (so / oo).is_finite() { so / oo } else { 1.0 };
    for (s, &o) in suspect.iter_mut().zip(original) {
        *s = if *s == 0.0 { f64::NAN } else { *s - gain * o };
    }
}

/// RMS of the finite values of a row (0 for none).
fn row_rms(row: &[f64]) -> f64 {
    finite_rms(row).0
}

/// Marks one tensor (whose dtype must be markable).
pub fn embed_tensor(t: &TensorRef<'_>, streams: &TensorStreams, strength: f64) -> TensorEmbedding {
    let size = t.dtype.size();
    let elements = t.elements();
    let row_len = t.info.row_len().max(1);
    let chunk = chunk_len(elements, row_len);
    // Decoded once (a GGUF tensor): the chunks read it, the copy is marked.
    let source = t.data();
    let mut data = source.to_vec();
    let parts: Vec<(Fidelity, Stats, Stats)> = data
        .par_chunks_mut(chunk * size)
        .enumerate()
        .map(|(ci, out)| {
            let start = ci * chunk;
            if row_len > CHUNK_ELEMENTS {
                // One long row: read it in pieces.
                let input = source.get(start * size..start * size + out.len()).unwrap_or_default();
                return embed_long_row(t.dtype, input, out, start, streams, strength);
            }
            let n = out.len() / size;
            let input = source.get(start * size..(start + n) * size).unwrap_or_default();
            let mut w = Vec::with_capacity(n);
            decode_f64(t.dtype, input, &mut w);
            let mut p = vec![0.0; n];
            let mut u = vec![0u32; n];
            streams.signs(start as u64, &mut p);
            streams.dither(start as u64, &mut u);
            let mut target = vec![0.0; n];
            for ((row_w, row_p), row_t) in
                w.chunks(row_len).zip(p.chunks(row_len)).zip(target.chunks_mut(row_len))
            {
                let a = strength * row_rms(row_w);
                for ((t, &wi), &pi) in row_t.iter_mut().zip(row_w).zip(row_p) {
                    // Non-finite elements stay NaN/inf here and are left alone.
                    *t = wi + a * pi;
                }
            }
            // On overflow or a non-finite value the original bytes stay.
            encode_stochastic(t.dtype, &target, &u, out);
            let mut marked = Vec::with_capacity(n);
            decode_f64(t.dtype, out, &mut marked);
            let mut fid = Fidelity::default();
            let mut blind = Stats::default();
            let mut informed = Stats::default();
            let mut diff = vec![0.0; row_len];
            for ((row_w, row_m), row_p) in
                w.chunks(row_len).zip(marked.chunks(row_len)).zip(p.chunks(row_len))
            {
                let diff = &mut diff[..row_w.len()];
                for ((d, &wi), &mi) in diff.iter_mut().zip(row_w).zip(row_m) {
                    *d = if wi.is_finite() && mi.is_finite() { mi - wi } else { 0.0 };
                    if wi.is_finite() {
                        fid.sum_sq_original += wi * wi;
                        fid.sum_sq_change += *d * *d;
                        fid.max_abs_change = fid.max_abs_change.max(d.abs());
                        fid.elements += 1;
                    }
                }
                blind = blind.merge(row_stats(row_m, row_p));
                informed = informed.merge(row_stats(diff, row_p));
            }
            (fid, blind, informed)
        })
        .collect();
    let (fidelity, blind, informed) = parts.into_iter().fold(
        (Fidelity::default(), Stats::default(), Stats::default()),
        |(f, b, i), (pf, pb, pi)| (f.merge(pf), b.merge(pb), i.merge(pi)),
    );
    TensorEmbedding { data, fidelity, blind, informed }
}

/// Detection statistics of one tensor: blind, or informed when `original`
/// (same shape, any readable dtype) is given.
#[cfg(test)]
pub fn detect_tensor(
    suspect: &TensorRef<'_>,
    original: Option<&TensorRef<'_>>,
    streams: &TensorStreams,
) -> Stats {
    detect_tensor_multi(suspect, original, &[streams]).first().copied().unwrap_or_default()
}

/// Detection statistics of one tensor under several keys at once, reading
/// the tensor once: `x` and the weights `c_i` do not depend on the key, so
/// `V` and the decoding are shared and only `S` is computed per key.
pub fn detect_tensor_multi(
    suspect: &TensorRef<'_>,
    original: Option<&TensorRef<'_>>,
    streams: &[&TensorStreams],
) -> Vec<Stats> {
    let elements = suspect.elements();
    let row_len = suspect.info.row_len().max(1);
    let chunk = chunk_len(elements, row_len);
    let chunks = elements.div_ceil(chunk);
    let s_size = suspect.dtype.size();
    // Each read once (decoded, for a GGUF tensor) and shared by the chunks.
    let suspect_data = suspect.data();
    let original_data = original.map(|o| (o.dtype, o.data()));
    let original = original_data.as_ref().map(|(dtype, d)| (*dtype, &d[..]));
    let parts: Vec<Vec<Stats>> = (0..chunks)
        .into_par_iter()
        .map(|ci| {
            let start = ci * chunk;
            let end = (start + chunk).min(elements);
            let bytes = suspect_data.get(start * s_size..end * s_size).unwrap_or_default();
            if row_len > CHUNK_ELEMENTS {
                // One long row: read it in pieces.
                let original = original.map(|(o_dtype, o_data)| {
                    let o_size = o_dtype.size();
                    (o_dtype, o_data.get(start * o_size..end * o_size).unwrap_or_default())
                });
                return detect_long_row((suspect.dtype, bytes), original, start, streams);
            }
            let mut x = Vec::with_capacity(end - start);
            decode_f64(suspect.dtype, bytes, &mut x);
            if let Some((o_dtype, o_data)) = original {
                let o_size = o_dtype.size();
                let mut w = Vec::with_capacity(end - start);
                decode_f64(
                    o_dtype,
                    o_data.get(start * o_size..end * o_size).unwrap_or_default(),
                    &mut w,
                );
                for (row_x, row_w) in x.chunks_mut(row_len).zip(w.chunks(row_len)) {
                    informed_residual(row_x, row_w);
                }
            }
            // Weighted values c_i x_i (0 where x_i is not finite) and the
            // shared V and element count, row by row.
            let mut weighted = vec![0.0; x.len()];
            let mut shared = Stats::default();
            for (row_x, row_cx) in x.chunks(row_len).zip(weighted.chunks_mut(row_len)) {
                let (rms, n) = finite_rms(row_x);
                if rms == 0.0 {
                    continue;
                }
                let c = 1.0 / rms;
                for (cx, &v) in row_cx.iter_mut().zip(row_x) {
                    *cx = if v.is_finite() { c * v } else { 0.0 };
                    shared.v += *cx * *cx;
                }
                shared.elements += n;
            }
            let mut p = vec![0.0; x.len()];
            streams
                .iter()
                .map(|st| {
                    st.signs(start as u64, &mut p);
                    let s: f64 = weighted.iter().zip(&p).map(|(cx, s)| cx * s).sum();
                    Stats { s, ..shared }
                })
                .collect()
        })
        .collect();
    let mut total = vec![Stats::default(); streams.len()];
    for part in parts {
        for (t, p) in total.iter_mut().zip(part) {
            *t = t.merge(p);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_components_add_as_the_bound_needs_and_weight_one_is_the_plain_sum() {
        let p = Stats { s: 12.5, v: 40.25, elements: 100 };
        let q = Stats { s: -3.75, v: 17.0, elements: 100 };
        assert_eq!(p.and_weighted(q, 1.0), p.and_component(q));
        let w = p.and_weighted(q, 2.0);
        assert_eq!((w.s, w.v, w.elements), (12.5 - 7.5, 40.25 + 68.0, 100));
    }

    #[test]
    fn a_long_row_read_in_pieces_gives_exactly_what_one_pass_over_it_gives() {
        use crate::key::MarkKey;
        use crate::synth::{gaussian_matrix, to_model, SynthTensor};
        let ok = |r: crate::Result<crate::model::Model>| r.unwrap_or_else(|e| panic!("{e}"));
        // Longer than two pieces, and not a whole number of them.
        let n = 2 * CHUNK_ELEMENTS + 1234;
        for dtype in [Dtype::F32, Dtype::BF16] {
            let original = ok(to_model(&[gaussian_matrix("w", 1, n, dtype, 7)]));
            let t = original.tensor("w").unwrap_or_else(|| panic!("w"));
            let streams = TensorStreams::new(&MarkKey::from_bytes([1; 32]), "w");
            let got = embed_tensor(&t, &streams, 0.01);
            // One pass over the whole row, as before rows were split.
            let (mut w, mut marked) = (Vec::new(), Vec::new());
            decode_f64(dtype, &t.data(), &mut w);
            let (mut p, mut u) = (vec![0.0; n], vec![0u32; n]);
            streams.signs(0, &mut p);
            streams.dither(0, &mut u);
            let a = 0.01 * row_rms(&w);
            let target: Vec<f64> = w.iter().zip(&p).map(|(wi, pi)| wi + a * pi).collect();
            let mut data = t.data().into_owned();
            encode_stochastic(dtype, &target, &u, &mut data);
            assert_eq!(got.data, data, "{dtype:?}");
            decode_f64(dtype, &data, &mut marked);
            let diff: Vec<f64> = w.iter().zip(&marked).map(|(w, m)| m - w).collect();
            assert_eq!(got.blind, row_stats(&marked, &p), "{dtype:?}");
            assert_eq!(got.informed, row_stats(&diff, &p), "{dtype:?}");
            assert_eq!(got.fidelity, Fidelity::between(&w, &marked), "{dtype:?}");
            // Detection, blind and informed.
            let shape = vec![1, n];
            let m = ok(to_model(&[SynthTensor { name: "w".into(), dtype, shape, data }]));
            let mt = m.tensor("w").unwrap_or_else(|| panic!("w"));
            assert_eq!(detect_tensor(&mt, None, &streams), row_stats(&marked, &p), "{dtype:?}");
            let mut x = marked.clone();
            informed_residual(&mut x, &w);
            assert_eq!(detect_tensor(&mt, Some(&t), &streams), row_stats(&x, &p), "{dtype:?}");
        }
    }

    #[test]
    fn p_value_bound_matches_threshold() {
        assert!((z_for_p(DEFAULT_THRESHOLD_P) - 6.4378).abs() < 1e-3);
        assert_eq!(p_value_bound(-1.0), 1.0);
        assert!((p_value_bound(z_for_p(1e-12)) - 1e-12).abs() < 1e-24);
    }

    #[test]
    fn row_stats_of_pure_signal_is_sqrt_n() {
        let p: Vec<f64> = (0..400).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
        let x: Vec<f64> = p.iter().map(|s| 0.01 * s).collect();
        let st = row_stats(&x, &p);
        assert!((st.z() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn multi_key_detection_equals_single_key_detection() {
        use crate::key::MarkKey;
        use crate::model::TensorInfo;
        let shape = vec![37usize, 300];
        let data: Vec<u8> =
            (0..37 * 300).flat_map(|i| ((i as f32 * 0.37).sin() * 0.02).to_le_bytes()).collect();
        let info = TensorInfo {
            name: "t".into(),
            dtype: crate::Dtype::F32,
            shape: shape.clone(),
            begin: 0,
            end: data.len(),
        };
        let t = TensorRef::from_parts(&info, &data);
        let keys: Vec<TensorStreams> =
            (0..3u8).map(|k| TensorStreams::new(&MarkKey::from_bytes([k; 32]), "t")).collect();
        let refs: Vec<&TensorStreams> = keys.iter().collect();
        let multi = detect_tensor_multi(&t, None, &refs);
        for (k, m) in keys.iter().zip(&multi) {
            let single = detect_tensor(&t, None, k);
            assert!(
                (single.s - m.s).abs() < 1e-9 && single.v == m.v && single.elements == m.elements
            );
        }
    }

    /// Pins the marked bytes of a small tensor in each markable dtype: a change
    /// to the pattern streams, the amplitude or the rounding rule breaks every
    /// existing mark and must be a new scheme, not a silent edit. The values
    /// were also reproduced by the independent Python implementation described
    /// in docs/formats.md.
    #[test]
    fn known_answer_marked_bytes() {
        use crate::key::MarkKey;
        use crate::model::TensorInfo;
        use sha2::{Digest, Sha256};
        let shape = vec![4usize, 64];
        let values: Vec<f64> = (0..256).map(|i| ((i as f64) * 0.731).sin() * 0.05).collect();
        let mut got = Vec::new();
        for dtype in [crate::Dtype::F64, crate::Dtype::F32, crate::Dtype::F16, crate::Dtype::BF16] {
            let mut data = vec![0u8; 256 * dtype.size()];
            for (o, &v) in data.chunks_exact_mut(dtype.size()).zip(&values) {
                crate::dtype::encode_nearest(dtype, v, o);
            }
            let info = TensorInfo {
                name: "w".into(),
                dtype,
                shape: shape.clone(),
                begin: 0,
                end: data.len(),
            };
            let t = TensorRef::from_parts(&info, &data);
            let streams = TensorStreams::new(&MarkKey::from_bytes([9; 32]), "w");
            let marked = embed_tensor(&t, &streams, 0.003);
            got.push(crate::digest::hex(&Sha256::digest(&marked.data)[..8]));
        }
        assert_eq!(got, KNOWN_MARKED);
    }

    const KNOWN_MARKED: [&str; 4] =
        ["b95c144f26cf3a61", "121c80740a30935c", "4d08f09901eb4192", "0e00d52f1639d038"];

    #[test]
    fn one_huge_element_does_not_disable_detection() {
        let p: Vec<f64> = (0..400).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
        let mut x: Vec<f64> = p.iter().map(|s| 0.01 * s).collect();
        x[7] = 1e300;
        let st = row_stats(&x, &p);
        assert!(st.v.is_finite() && st.s.is_finite() && st.elements == 400, "{st:?}");
    }

    #[test]
    fn informed_residual_removes_a_gain_and_ignores_pruned_elements() {
        let original: Vec<f64> = (0..64).map(|i| ((i as f64) * 0.7).sin()).collect();
        let mark: Vec<f64> = (0..64).map(|i| if i % 3 == 0 { 0.01 } else { -0.01 }).collect();
        // A copy scaled by 0.5 (weight decay), with every 8th element pruned.
        let mut suspect: Vec<f64> =
            original.iter().zip(&mark).map(|(o, m)| 0.5 * (o + m)).collect();
        for i in (0..64).step_by(8) {
            suspect[i] = 0.0;
        }
        informed_residual(&mut suspect, &original);
        for (i, (x, m)) in suspect.iter().zip(&mark).enumerate() {
            if i % 8 == 0 {
                assert!(x.is_nan());
            } else {
                // What is left is (close to) the scaled mark, not -0.5 x original.
                assert!((x - 0.5 * m).abs() < 0.01, "{i}: {x}");
            }
        }
    }

    #[test]
    fn the_change_in_lanes_counts_and_bounds_as_the_serial_one_and_sums_alike() {
        // Lengths around the lanes, with NaN, infinities and zeros in both.
        let specials = [0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        for n in [0usize, 1, 7, 8, 9, 65, 4099] {
            let before: Vec<f64> = (0..n)
                .map(|k| if k % 37 == 5 { specials[k % 5] } else { ((k as f64) * 0.37).sin() })
                .collect();
            let after: Vec<f64> = before
                .iter()
                .enumerate()
                .map(|(k, &x)| if k % 41 == 3 { specials[k % 5] } else { x * 1.01 + 1e-3 })
                .collect();
            let (lanes, serial) =
                (Fidelity::between_in_lanes(&before, &after), Fidelity::between(&before, &after));
            assert_eq!(lanes.elements, serial.elements, "{n}");
            assert_eq!(lanes.max_abs_change.to_bits(), serial.max_abs_change.to_bits(), "{n}");
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
            assert!(close(lanes.sum_sq_original, serial.sum_sq_original), "{n}");
            assert!(close(lanes.sum_sq_change, serial.sum_sq_change), "{n}");
            assert!(lanes.sum_sq_change.is_finite() && lanes.sum_sq_original.is_finite(), "{n}");
        }
    }

    #[test]
    fn merge_is_additive() {
        let a = Stats { s: 1.0, v: 2.0, elements: 3 };
        let b = Stats { s: 4.0, v: 5.0, elements: 6 };
        assert_eq!(a.merge(b), Stats { s: 5.0, v: 7.0, elements: 9 });
    }
}
