//! Scheme `ss2`: a multiplicative keyed mark in canonical coordinates, and
//! its detection statistic on balanced magnitudes, one tensor at a time.
//!
//! **Embedding.** Element `(i, j)` of a selected tensor becomes
//! `w_ij * (1 + e_r * p_ij + e_c * q_ij)`, where `p` is the release
//! component's keyed Rademacher pattern and `q` the recipient's (when the
//! release has one), both indexed by the element's *canonical* position
//! ([`crate::canonical`]). A multiplicative mark travels with its element
//! through every diagonal rescaling and sign flip of rows and columns (all
//! free for the model), and canonical positions undo residual permutations.
//! Values are rounded back to the tensor's dtype with the keyed stochastic
//! rounding of `ss1`, so the expected change is exact below bf16's spacing.
//!
//! **Detection.** From the suspect alone (never the key): the mean magnitude
//! `R_i` of each row, `C_j` of each column and `T` of the tensor, over finite
//! non-zero elements, give each element's expected magnitude
//! `m_ij = R_i C_j / T`; any diagonal rescaling of rows and columns scales
//! `|x_ij|` and `m_ij` alike. Blind, `y_ij = min(|x_ij| / m_ij, 4) - 1`;
//! informed, `y_ij = min(|x_ij| / m_ij, 4) - min(|o_ij| / m^o_ij, 4)` with the
//! original `o` balanced the same way on its own (and aligned through its own
//! canonical order), so a rescaled, sign-flipped or permuted suspect still
//! lines up. Then `S = sum p_ij y_ij`, `V = sum y_ij^2`, `z = S / sqrt(V)`:
//! the `y` depend only on the suspect (and original), so under the null
//! hypothesis the keyed signs are independent fair signs given `y` and
//! Hoeffding's bound `P(z >= t) <= exp(-t^2/2)` holds exactly. Pruned (zero)
//! and non-finite elements get weight 0.
//!
//! Unmarked, `|w|/m - 1` has mean about 0 and variance about `pi/2 - 1` for
//! Gaussian weights; marked, `E[S] = e_r * sum |w|/m`, so the blind z of an
//! unattacked release is about `1.3 e_r sqrt(n)` (a third more than `ss1`
//! at the same relative change, since only the spread of magnitudes, not the
//! weights themselves, stands between the mark and the detector).

use rayon::prelude::*;

use crate::allocation::TensorWeights;
use crate::canonical::Axes;
use crate::dtype::{decode_f64, encode_stochastic};
use crate::model::TensorRef;
use crate::pattern::{SignSource, TensorStreams};
use crate::scheme::{Fidelity, Stats, CHUNK_ELEMENTS};
use crate::tardos::{CodeStream, Reading};

/// `$body` with `$k` a constant equal to `$n` (1 to 8): how a number of
/// rows known only at run time (the rest of a chunk after its groups of
/// eight) is still read side by side, one chain of additions per row.
macro_rules! side_by_side {
    ($n:expr, $k:ident => $body:expr) => {
        match $n {
            1 => {
                const $k: usize = 1;
                $body
            }
            2 => {
                const $k: usize = 2;
                $body
            }
            3 => {
                const $k: usize = 3;
                $body
            }
            4 => {
                const $k: usize = 4;
                $body
            }
            5 => {
                const $k: usize = 5;
                $body
            }
            6 => {
                const $k: usize = 6;
                $body
            }
            7 => {
                const $k: usize = 7;
                $body
            }
            _ => {
                const $k: usize = 8;
                $body
            }
        }
    };
}
pub(crate) use side_by_side;

/// Magnitude ratios above this are clipped (outliers carry no more weight
/// than a typical element four times its expected size).
const CLIP: f64 = 4.0;

/// The per-component strengths of a release.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Strengths {
    /// Relative strength of the release component (shared by every copy).
    pub release: f64,
    /// Relative strength of the recipient component (0 without a recipient).
    pub recipient: f64,
}

/// The even split of a copy's mark energy (strength squared) between its
/// recipient and release components: what every release before
/// `--recipient-share` had, what a coded recipient gets by default, and the
/// least share the default gives an independent one
/// ([`crate::strength::default_recipient_share`]).
pub const EVEN_RECIPIENT_SHARE: f64 = 0.5;

impl Strengths {
    /// Splits a total strength: everything to the release component without
    /// a recipient, equal energy to both components with one.
    pub fn split(total: f64, has_recipient: bool) -> Strengths {
        if has_recipient {
            Strengths::shared(total, EVEN_RECIPIENT_SHARE)
        } else {
            Strengths { release: total, recipient: 0.0 }
        }
    }

    /// Splits a total strength between the components of a copy for a
    /// recipient, `share` of its energy to the recipient component:
    /// `recipient = total * sqrt(share)`, `release = total * sqrt(1 - share)`,
    /// so the total relative change is the same whatever the share. At the
    /// even share (0.5) both are `total / sqrt(2)`, computed as every earlier
    /// version did (byte-identical copies). `share` is checked by
    /// [`check_recipient_share`].
    pub fn shared(total: f64, share: f64) -> Strengths {
        if share == EVEN_RECIPIENT_SHARE {
            let half = total / std::f64::consts::SQRT_2;
            Strengths { release: half, recipient: half }
        } else {
            Strengths { release: total * (1.0 - share).sqrt(), recipient: total * share.sqrt() }
        }
    }

    /// The weight of the recipient component's sums against the release
    /// component's in the decision on both (`recipient / release`): the
    /// matched filter for two patterns of these amplitudes. Exactly 1 when
    /// the strengths are equal (every copy at a share of 0.5).
    pub fn recipient_weight(&self) -> f64 {
        if self.recipient == self.release || self.release.is_nan() || self.release <= 0.0 {
            1.0
        } else {
            self.recipient / self.release
        }
    }
}

/// Refuses a recipient share outside `[0.05, 0.95]` (or not a number), with
/// the reason: each component keeps at least about a fifth of the strength,
/// so the release stays detectable through collusion and every copy stays
/// traceable.
pub(crate) fn check_recipient_share(share: f64) -> crate::Result<()> {
    if (0.05..=0.95).contains(&share) {
        Ok(())
    } else {
        Err(crate::Error::invalid(format!(
            "recipient share {share} is out of range: use a value in [0.05, 0.95] (the share of the \
             mark's energy given to the recipient component; leave it out for the default)"
        )))
    }
}

/// Rows and row length of a tensor for the mark: the last dimension is a
/// row; a 1-D tensor is one row.
fn dims(t: &TensorRef<'_>) -> (usize, usize) {
    let cols = t.info.row_len().max(1);
    (t.elements() / cols, cols)
}

/// Rows per parallel work item.
fn rows_per_chunk(cols: usize) -> usize {
    (CHUNK_ELEMENTS / cols.max(1)).max(1)
}

/// Residual channels that share one sign: a group of neighbours in the
/// canonical order. Quantization and fine-tuning move a channel's canonical
/// rank by a position or two; within a group that costs nothing. The
/// statistic loses nothing either, because `y` is centred: a sign multiplies
/// the group's sum `Y`, and `V` sums `Y^2` (Hoeffding over groups). Scrubbing
/// a group's shared sign would mean renormalising the mean magnitude of every
/// group of 8 elements, a change of about 25% of each weight's magnitude.
pub const GROUP: usize = 8;

/// How a tensor's elements map to keyed signs.
#[derive(Clone, Copy)]
enum Layout<'a> {
    /// One sign per element, in stored order.
    Plain,
    /// Columns are residual channels: one sign per (row, group of columns).
    Cols(&'a [u32]),
    /// Rows are residual channels: one sign per (group of rows, column).
    Rows(&'a [u32]),
}

impl<'a> Layout<'a> {
    fn of(axes: &Axes<'a>) -> Layout<'a> {
        match (axes.rows, axes.cols) {
            (Some(rank), _) => Layout::Rows(rank),
            (None, Some(rank)) => Layout::Cols(rank),
            (None, None) => Layout::Plain,
        }
    }
}

/// Groups of `n` channels.
fn groups(n: usize) -> usize {
    n.div_ceil(GROUP)
}

/// The sign of every element of stored row `i` (length `out.len()`).
fn row_signs(
    streams: &dyn SignSource,
    layout: Layout<'_>,
    i: usize,
    out: &mut [f64],
    buf: &mut Vec<f64>,
) {
    let cols = out.len();
    match layout {
        Layout::Plain => streams.signs((i * cols) as u64, out),
        Layout::Cols(rank) => {
            let ng = groups(cols);
            buf.resize(ng, 0.0);
            streams.signs((i * ng) as u64, buf);
            for (o, &c) in out.iter_mut().zip(rank) {
                *o = buf.get(c as usize / GROUP).copied().unwrap_or(0.0);
            }
        }
        Layout::Rows(rank) => {
            let g = rank.get(i).map_or(i, |&c| c as usize) / GROUP;
            streams.signs((g * cols) as u64, out);
        }
    }
}

/// Marks one tensor (whose dtype must be markable); returns the new bytes
/// and the change. `release` also supplies the rounding dither.
pub fn embed_tensor(
    t: &TensorRef<'_>,
    axes: &Axes<'_>,
    release: &TensorStreams,
    recipient: Option<&dyn SignSource>,
    strengths: Strengths,
    weights: Option<&TensorWeights>,
) -> (Vec<u8>, Fidelity) {
    let (data, fidelity, _) =
        mark_tensor(t, axes, release, recipient, strengths, weights, (false, false));
    (data, fidelity)
}

/// [`embed_tensor`], and the marked tensor's profiles where its rows fit in
/// a chunk: built from the original and marked values each chunk decodes
/// anyway (for the fidelity), so that the checks of the marked tensor
/// ([`detect_tensor_coded`] with [`MarkedProfiles::blind`] or
/// [`MarkedProfiles::informed`]) need not read it for them. The same
/// profiles, bit for bit, as [`Profile::of`] of the marked tensor and
/// [`Profile::of_pair`] of it and the original (the same chunks, decoded
/// the same way); the pair only when `pair` (for an informed check).
#[allow(clippy::too_many_arguments)]
pub(crate) fn embed_tensor_profiled(
    t: &TensorRef<'_>,
    axes: &Axes<'_>,
    release: &TensorStreams,
    recipient: Option<&dyn SignSource>,
    strengths: Strengths,
    weights: Option<&TensorWeights>,
    pair: bool,
) -> (Vec<u8>, Fidelity, Option<MarkedProfiles>) {
    mark_tensor(t, axes, release, recipient, strengths, weights, (true, pair))
}

/// The profiles of a marked tensor that its checks read
/// ([`embed_tensor_profiled`]).
pub(crate) struct MarkedProfiles {
    /// The marked tensor's blind profile ([`Profile::of`]).
    blind: Profile,
    /// The marked tensor's and the original's pair profiles
    /// ([`Profile::of_pair`]), if they were asked for.
    pair: Option<(Profile, Profile)>,
}

impl MarkedProfiles {
    /// What the blind check of the marked tensor reads.
    pub(crate) fn blind(&self) -> Known<'_> {
        Known { blind: Some(&self.blind), pair: None }
    }

    /// What the informed check of the marked tensor against its original
    /// (read in place) reads.
    pub(crate) fn informed(&self) -> Known<'_> {
        Known { blind: None, pair: self.pair.as_ref().map(|(x, o)| (x, o)) }
    }
}

/// Profiles of a suspect that a pass over it already gave, so that
/// detection need not read it for them. Each must be the one detection
/// would compute, bit for bit.
#[derive(Clone, Copy, Default)]
pub(crate) struct Known<'a> {
    /// Its blind profile (the allocation's pass,
    /// [`crate::allocation::ModelWeights::for_detection`], or marking's).
    pub(crate) blind: Option<&'a Profile>,
    /// Its and its original's pair profiles ([`Profile::of_pair`]), used
    /// when the original is read in place (marking's own check).
    pub(crate) pair: Option<(&'a Profile, &'a Profile)>,
}

/// [`embed_tensor`], with the profiles of [`embed_tensor_profiled`] only
/// when `profiled` (blind, pair) asks for them (the other callers do not
/// pay for them).
fn mark_tensor(
    t: &TensorRef<'_>,
    axes: &Axes<'_>,
    release: &TensorStreams,
    recipient: Option<&dyn SignSource>,
    strengths: Strengths,
    weights: Option<&TensorWeights>,
    (profiled, pair): (bool, bool),
) -> (Vec<u8>, Fidelity, Option<MarkedProfiles>) {
    let size = t.dtype.size();
    let (_, cols) = dims(t);
    let layout = Layout::of(axes);
    let block = rows_per_chunk(cols);
    // Decoded once (a GGUF tensor): the chunks read it and copy their part
    // into the output (in parallel, while it is in cache), then mark it.
    let source = t.data();
    let mut data = vec![0u8; source.len()];
    let chunk = (block * cols * size).max(1);
    type Shares = (ChunkProfile, Option<(ChunkProfile, ChunkProfile)>);
    let mark_chunk = |bufs: &mut ChunkBuffers, ci: usize, out: &mut [u8]| {
        let first_row = ci * block;
        let n = out.len() / size;
        let start = first_row * cols;
        let input = source.get(start * size..(start + n) * size).unwrap_or_default();
        // The original bytes first: an element marking leaves alone (not
        // finite, or overflowing) keeps them.
        let held = input.len().min(out.len());
        out[..held].copy_from_slice(&input[..held]);
        if cols > CHUNK_ELEMENTS {
            // One long row (block is 1): read it in pieces.
            let row = LongRow { dtype: t.dtype, i: first_row, cols, layout, weights };
            return (row.embed(input, out, release, recipient, strengths), None);
        }
        // Every value of the buffers is written before it is read (a
        // buffer reused from the last chunk only keeps its allocation).
        let ChunkBuffers { w, u, target, marked, scratch } = bufs;
        decode_f64(t.dtype, input, w);
        u.resize(n, 0);
        let u = &mut u[..n];
        release.dither(start as u64, u);
        let (mut p, mut q, mut buf) = (vec![0.0; cols], vec![0.0; cols], Vec::new());
        target.resize(n, 0.0);
        let target = &mut target[..n];
        let mut a = vec![0.0; if weights.is_some() { cols } else { 0 }];
        for (r, (row_w, row_t)) in w.chunks(cols).zip(target.chunks_mut(cols)).enumerate() {
            let i = first_row + r;
            let len = row_w.len();
            row_signs(release, layout, i, &mut p[..len], &mut buf);
            match recipient {
                Some(rs) => row_signs(rs, layout, i, &mut q[..len], &mut buf),
                None => q[..len].iter_mut().for_each(|v| *v = 0.0),
            }
            let a = weights.map(|weights| {
                let a = &mut a[..len];
                weights.multipliers(i, 0, a);
                &*a
            });
            mark_piece(row_t, row_w, (&p[..len], &q[..len]), a, strengths);
        }
        encode_stochastic(t.dtype, target, u, out);
        decode_f64(t.dtype, out, marked);
        let profile: Option<Shares> = profiled.then(|| {
            let blind = chunk_profile(marked, cols, scratch);
            (blind, pair.then(|| pair_chunk_profiles(marked, w, n, cols, scratch)))
        });
        (Fidelity::between_in_lanes(w, marked), profile)
    };
    // The chunks in parallel a batch at a time; their changes and profile
    // shares are merged in chunk order.
    let mut fidelity = Fidelity::default();
    let builder = || ProfileBuilder::any(cols);
    let mut profiles = profiled.then(|| (builder(), pair.then(|| [builder(), builder()])));
    for (b, batch) in data.chunks_mut(PROFILE_BATCH * chunk).enumerate() {
        let parts: Vec<(Fidelity, Option<Shares>)> = batch
            .par_chunks_mut(chunk)
            .enumerate()
            .map_init(ChunkBuffers::default, |bufs, (k, out)| {
                mark_chunk(bufs, b * PROFILE_BATCH + k, out)
            })
            .collect();
        for (f, p) in parts {
            fidelity = fidelity.merge(f);
            match (profiles.as_mut(), p) {
                (Some((blind, pairs)), Some((pb, shares))) => {
                    blind.add_part(pb);
                    if let (Some([x, o]), Some((px, po))) = (pairs.as_mut(), shares) {
                        x.add_part(px);
                        o.add_part(po);
                    }
                }
                // A chunk without a share (a row longer than a chunk): no
                // profiles.
                (Some(_), None) => profiles = None,
                (None, _) => {}
            }
        }
    }
    let profiles = profiles.map(|(blind, pairs)| MarkedProfiles {
        blind: blind.finish(),
        pair: pairs.map(|[x, o]| (x.finish(), o.finish())),
    });
    (data, fidelity, profiles)
}

/// The work buffers of marking one chunk, kept from chunk to chunk.
#[derive(Default)]
struct ChunkBuffers {
    /// The original values.
    w: Vec<f64>,
    /// The rounding dither.
    u: Vec<u32>,
    /// The marked values before rounding.
    target: Vec<f64>,
    /// The marked values after rounding.
    marked: Vec<f64>,
    /// For the profiles.
    scratch: Vec<f64>,
}

/// One row longer than a chunk, worked on in pieces of [`CHUNK_ELEMENTS`]
/// so that working memory stays bounded whatever the row's length; every
/// value is the one a whole-row pass gives (signs and dither are addressed
/// by element index).
#[derive(Clone, Copy)]
struct LongRow<'a> {
    dtype: crate::Dtype,
    /// Stored row index.
    i: usize,
    cols: usize,
    layout: Layout<'a>,
    weights: Option<&'a TensorWeights>,
}

impl LongRow<'_> {
    /// Column ranges of the pieces.
    fn pieces(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let cols = self.cols;
        (0..cols).step_by(CHUNK_ELEMENTS).map(move |a| a..(a + CHUNK_ELEMENTS).min(cols))
    }

    /// The group signs of the row where columns are residual channels (an
    /// eighth of the row), else nothing.
    fn group_signs(&self, streams: &dyn SignSource) -> Vec<f64> {
        match self.layout {
            Layout::Cols(_) => {
                let mut g = vec![0.0; groups(self.cols)];
                streams.signs((self.i * g.len()) as u64, &mut g);
                g
            }
            _ => Vec::new(),
        }
    }

    /// The signs of columns `k` of the row: what [`row_signs`] gives there.
    fn signs(
        &self,
        streams: &dyn SignSource,
        group: &[f64],
        k: &std::ops::Range<usize>,
        out: &mut [f64],
    ) {
        let (i, cols) = (self.i, self.cols);
        match self.layout {
            Layout::Plain => streams.signs((i * cols + k.start) as u64, out),
            Layout::Cols(rank) => {
                out.iter_mut().for_each(|o| *o = 0.0);
                for (o, &c) in out.iter_mut().zip(rank.get(k.clone()).unwrap_or_default()) {
                    *o = group.get(c as usize / GROUP).copied().unwrap_or(0.0);
                }
            }
            Layout::Rows(rank) => {
                let g = rank.get(i).map_or(i, |&c| c as usize) / GROUP;
                streams.signs((g * cols + k.start) as u64, out);
            }
        }
    }

    /// Marks the row (`input`, `out`: its bytes).
    fn embed(
        &self,
        input: &[u8],
        out: &mut [u8],
        release: &TensorStreams,
        recipient: Option<&dyn SignSource>,
        strengths: Strengths,
    ) -> Fidelity {
        let size = self.dtype.size();
        let start = self.i * self.cols;
        let (gp, gq) = (self.group_signs(release), recipient.map(|r| self.group_signs(r)));
        let (mut w, mut marked, mut target) = (Vec::new(), Vec::new(), Vec::new());
        let (mut p, mut q) = (vec![0.0; CHUNK_ELEMENTS], vec![0.0; CHUNK_ELEMENTS]);
        let mut u = vec![0u32; CHUNK_ELEMENTS];
        let mut fidelity = Fidelity::default();
        for k in self.pieces() {
            let (p, q, u) = (&mut p[..k.len()], &mut q[..k.len()], &mut u[..k.len()]);
            let bytes = k.start * size..k.end * size;
            decode_f64(self.dtype, input.get(bytes.clone()).unwrap_or_default(), &mut w);
            release.dither((start + k.start) as u64, u);
            self.signs(release, &gp, &k, p);
            match (recipient, &gq) {
                (Some(rs), Some(g)) => self.signs(rs, g, &k, q),
                _ => q.iter_mut().for_each(|v| *v = 0.0),
            }
            target.clear();
            target.extend(w.iter().zip(p.iter().zip(q.iter())).enumerate().map(
                |(j, (&wi, (&pk, &qk)))| {
                    let (er, ec) = match self.weights {
                        None => (strengths.release, strengths.recipient),
                        Some(a) => scaled(strengths, a.at(self.i, k.start + j)),
                    };
                    wi * (1.0 + er * pk + ec * qk)
                },
            ));
            let piece = out.get_mut(bytes).unwrap_or_default();
            encode_stochastic(self.dtype, &target, u, piece);
            decode_f64(self.dtype, piece, &mut marked);
            fidelity = fidelity.merge(Fidelity::between(&w, &marked));
        }
        fidelity
    }
}

/// The marked values `w_k (1 + e_r p_k + e_c q_k)` of a piece of a row,
/// each component's strength times the element's multiplier `a_k` when the
/// allocation has them.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn mark_piece(
    target: &mut [f64],
    w: &[f64],
    (p, q): (&[f64], &[f64]),
    a: Option<&[f64]>,
    strengths: Strengths,
) {
    match a {
        None => {
            for (((t, &wi), &pk), &qk) in target.iter_mut().zip(w).zip(p).zip(q) {
                *t = wi * (1.0 + strengths.release * pk + strengths.recipient * qk);
            }
        }
        Some(a) => {
            for ((((t, &wi), &pk), &qk), &ak) in target.iter_mut().zip(w).zip(p).zip(q).zip(a) {
                let (er, ec) = scaled(strengths, ak);
                *t = wi * (1.0 + er * pk + ec * qk);
            }
        }
    }
}

/// Both components' strengths times an element's allocation multiplier.
fn scaled(strengths: Strengths, a: f64) -> (f64, f64) {
    (strengths.release * a, strengths.recipient * a)
}

/// Adds the magnitudes of the finite non-zero elements of `K` rows (of equal
/// length) to their row sums (returned with their counts) and to the column
/// sums, row after row for each column, so every sum is in element order.
/// Elements without weight add `0.0` and count 0: a sum of magnitudes is
/// never `-0.0`, so adding `+0.0` changes nothing and no branch is needed.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn add_rows<const K: usize>(
    rows: [&[f64]; K],
    col_sum: &mut [f64],
    col_n: &mut [u64],
    scratch: &mut Vec<f64>,
) -> [(f64, u64); K] {
    let len = rows.iter().map(|r| r.len()).min().unwrap_or(0).min(col_sum.len()).min(col_n.len());
    let (col_sum, col_n) = (&mut col_sum[..len], &mut col_n[..len]);
    scratch.resize(K * len, 0.0);
    // Each row's magnitudes (zero without weight) and count, added to the
    // column sums one row after another: each column still adds its rows in
    // order, and the columns are independent (the loop vectorises).
    let mut counts = [0u64; K];
    for ((row, m), count) in rows.iter().zip(scratch.chunks_exact_mut(len.max(1))).zip(&mut counts)
    {
        let mut n = 0u64;
        for (((m, s), c), &x) in
            m.iter_mut().zip(col_sum.iter_mut()).zip(col_n.iter_mut()).zip(*row)
        {
            let weighted = x.is_finite() & (x != 0.0);
            let a = if weighted { x.abs() } else { 0.0 };
            *m = a;
            *s += a;
            *c += u64::from(weighted);
            n += u64::from(weighted);
        }
        *count = n;
    }
    let m: [&[f64]; K] =
        std::array::from_fn(|r| scratch.get(r * len..(r + 1) * len).unwrap_or(&[]));
    let sums = sums_side_by_side(m);
    std::array::from_fn(|r| (sums[r], counts[r]))
}

/// The sum of each of `K` rows of equal length, in element order, the `K`
/// sums side by side (independent chains of additions instead of one long
/// one); a row longer than the shortest adds the rest of its elements
/// after, still in order.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
pub(crate) fn sums_side_by_side<const K: usize>(rows: [&[f64]; K]) -> [f64; K] {
    let len = rows.iter().map(|r| r.len()).min().unwrap_or(0);
    let mut sums = [0.0f64; K];
    let heads = rows.map(|r| &r[..len]);
    for j in 0..len {
        for (s, row) in sums.iter_mut().zip(&heads) {
            *s += row[j];
        }
    }
    for (s, row) in sums.iter_mut().zip(rows) {
        *s = row[len..].iter().fold(*s, |a, &x| a + x);
    }
    sums
}

/// Keys whose signed sums [`signed_sums`] takes side by side.
const KEYS_SIDE_BY_SIDE: usize = 8;

/// For each key of `keys`, `Σ_j values[j] · s_j`, where `s_j` is the key's
/// sign at position `start + map[j]` (`start + j` without a map) among its
/// `len` signs from `start`, and `0.0` where the map points past them; into
/// `out` (one per key). Each key's terms are added in `j` order from `-0.0`,
/// as `Iterator::sum` adds them, so every sum is the one a key-at-a-time
/// loop gives, bit for bit; eight keys' chains of additions run side by
/// side instead of one after another (one chain waits on each addition, and
/// `identify` tests one recipient key per certificate). `own` and `lanes`
/// are buffers reused between calls.
#[allow(clippy::too_many_arguments)]
fn signed_sums(
    values: &[f64],
    start: u64,
    len: usize,
    map: Option<&[u32]>,
    keys: &[&TensorStreams],
    own: &mut Vec<f64>,
    lanes: &mut Vec<f64>,
    out: &mut [f64],
) {
    const K: usize = KEYS_SIDE_BY_SIDE;
    // The terms a key-at-a-time sum adds (its `zip` stops at the shorter).
    let n = values.len().min(map.map_or(len, <[u32]>::len));
    let values = &values[..n];
    // Key q of a block reads its n signs at lanes[q n ..]. Not cleared:
    // every lane of a key in use is written below (lanes of the unused keys
    // of a last block go into sums that are dropped).
    lanes.resize(n * K, 0.0);
    for (block, sums) in keys.chunks(K).zip(out.chunks_mut(K)) {
        for (key, lane) in block.iter().zip(lanes.chunks_exact_mut(n.max(1))) {
            match map {
                None => key.signs(start, lane),
                Some(m) => {
                    own.resize(len, 0.0);
                    key.signs(start, own);
                    for (l, &c) in lane.iter_mut().zip(m) {
                        *l = own.get(c as usize).copied().unwrap_or(0.0);
                    }
                }
            }
        }
        let acc = side_by_side_dots(values, lanes);
        sums.iter_mut().zip(acc).for_each(|(s, a)| *s = a);
    }
}

/// `KEYS_SIDE_BY_SIDE` sums `Σ_j values[j] · lanes[q n + j]` (`n` values),
/// each from `-0.0` in `j` order, side by side.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn side_by_side_dots(values: &[f64], lanes: &[f64]) -> [f64; KEYS_SIDE_BY_SIDE] {
    let n = values.len();
    let mut acc = [-0.0f64; KEYS_SIDE_BY_SIDE];
    let rows: [&[f64]; KEYS_SIDE_BY_SIDE] =
        std::array::from_fn(|q| lanes.get(q * n..(q + 1) * n).unwrap_or(&[]));
    if rows.iter().any(|r| r.len() < n) {
        return acc;
    }
    for (j, &v) in values.iter().enumerate() {
        for (a, row) in acc.iter_mut().zip(&rows) {
            *a += v * row[j];
        }
    }
    acc
}

/// Mean magnitudes of a tensor's rows and columns and of the whole, over
/// finite non-zero elements: each element's expected magnitude is
/// `rows[i] * cols[j] / total`.
#[derive(Clone, Debug)]
pub(crate) struct Profile {
    rows: Vec<f64>,
    total: f64,
    /// `1 / C_j` of each column, or 0 for a column without weight: `y`
    /// multiplies by it rather than dividing by the column's mean.
    inverse_cols: Vec<f64>,
}

/// One chunk's share of a [`Profile`]: its rows' means and its columns' sums
/// and counts.
type ChunkProfile = (Vec<f64>, Vec<f64>, Vec<u64>);

/// The share of a chunk of whole rows of `cols` columns (decoded to `v`; the
/// last row may be short) in a [`Profile`]: eight rows side by side (each
/// row's and each column's sum still adds in element order), then one at a
/// time.
fn chunk_profile(v: &[f64], cols: usize, scratch: &mut Vec<f64>) -> ChunkProfile {
    let cols = cols.max(1);
    let mut row_means = Vec::with_capacity(v.len().div_ceil(cols));
    let (mut col_sum, mut col_n) = (vec![0.0; cols], vec![0u64; cols]);
    add_chunk_profile(v, cols, scratch, &mut row_means, &mut col_sum, &mut col_n);
    (row_means, col_sum, col_n)
}

/// [`chunk_profile`] into given buffers: the rows' means are appended to
/// `row_means`, and the columns' magnitudes and counts added to `col_sum`
/// and `col_n` (`cols` long, zero for the chunk's own share).
fn add_chunk_profile(
    v: &[f64],
    cols: usize,
    scratch: &mut Vec<f64>,
    row_means: &mut Vec<f64>,
    col_sum: &mut [f64],
    col_n: &mut [u64],
) {
    let cols = cols.max(1);
    let mean = |(s, n): (f64, u64)| if n > 0 { s / n as f64 } else { 0.0 };
    let mut eight = v.chunks_exact(8 * cols);
    for group in eight.by_ref() {
        let mut r = group.chunks_exact(cols);
        let rows: [&[f64]; 8] = std::array::from_fn(|_| r.next().unwrap_or(&[]));
        let sums = add_rows(rows, col_sum, col_n, scratch);
        row_means.extend(sums.map(mean));
    }
    // The rest side by side too (each row's sum and each column's still in
    // element order), a short last row alone.
    let rest: Vec<&[f64]> = eight.remainder().chunks(cols).collect();
    let full = rest.iter().take_while(|r| r.len() == cols).count();
    if full > 0 {
        side_by_side!(full, K => {
            let rows: [&[f64]; K] = std::array::from_fn(|i| rest[i]);
            row_means.extend(add_rows(rows, col_sum, col_n, scratch).map(mean));
        });
    }
    for &row in &rest[full..] {
        let [sum] = add_rows([row], col_sum, col_n, scratch);
        row_means.push(mean(sum));
    }
}

/// The shares of a chunk of whole rows of two tensors of `cols` columns in
/// their pair profiles ([`Profile::of_pair`]): the chunk has `len`
/// elements, of which `xs` and `os` hold the first (an element past either
/// has no weight). The same shares, bit for bit, as [`chunk_profile`] of
/// each tensor's magnitudes where both have weight (`+0.0` elsewhere): rows
/// eight side by side where both hold all eight, else one at a time (each
/// row's sum and each column's still add in element order).
fn pair_chunk_profiles<T: Copy>(
    xs: &[f64],
    os: &[T],
    len: usize,
    cols: usize,
    scratch: &mut Vec<f64>,
) -> (ChunkProfile, ChunkProfile)
where
    f64: From<T>,
{
    let cols = cols.max(1);
    let rows = len.div_ceil(cols);
    let held = xs.len().min(os.len()).min(len);
    let (mut x_means, mut y_means) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    let (mut sx, mut sy, mut sn) = (vec![0.0; cols], vec![0.0; cols], vec![0u64; cols]);
    let mean = |s: f64, n: u64| if n > 0 { s / n as f64 } else { 0.0 };
    let piece = |r: usize| {
        let k = (r * cols).min(held)..((r + 1) * cols).min(held);
        (&xs[k.clone()], &os[k])
    };
    let mut r = 0;
    while r < rows {
        // Up to eight rows both hold whole side by side, else one.
        let whole = (held / cols).saturating_sub(r).min(8).min(rows - r);
        let sums: Vec<(f64, f64, u64)> = if whole > 0 {
            side_by_side!(whole, K => {
                let x: [&[f64]; K] = std::array::from_fn(|k| piece(r + k).0);
                let o: [&[T]; K] = std::array::from_fn(|k| piece(r + k).1);
                add_pair_rows(x, o, &mut sx, &mut sy, &mut sn, scratch).to_vec()
            })
        } else {
            let (x, o) = piece(r);
            add_pair_rows([x], [o], &mut sx, &mut sy, &mut sn, scratch).to_vec()
        };
        for (a, b, n) in sums {
            x_means.push(mean(a, n));
            y_means.push(mean(b, n));
            r += 1;
        }
    }
    ((x_means, sx, sn.clone()), (y_means, sy, sn))
}

/// Adds `K` rows of two tensors side by side (`xs[r]` and `os[r]`, as long
/// as the shortest) to the columns' sums of magnitudes `sx`, `sy` and counts
/// `sn`, where both have weight (finite and non-zero; `+0.0` elsewhere,
/// which changes no sum); returns each row's two sums and its count. Each
/// column adds its rows in order and each row its elements in order.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn add_pair_rows<T: Copy, const K: usize>(
    xs: [&[f64]; K],
    os: [&[T]; K],
    sx: &mut [f64],
    sy: &mut [f64],
    sn: &mut [u64],
    scratch: &mut Vec<f64>,
) -> [(f64, f64, u64); K]
where
    f64: From<T>,
{
    let len = xs.iter().map(|r| r.len()).chain(os.iter().map(|r| r.len())).min().unwrap_or(0);
    let len = len.min(sx.len()).min(sy.len()).min(sn.len());
    let (sx, sy, sn) = (&mut sx[..len], &mut sy[..len], &mut sn[..len]);
    // Every value read below is written first: a longer buffer is not
    // refilled.
    if scratch.len() < 2 * K * len {
        scratch.resize(2 * K * len, 0.0);
    }
    let (mxs, mys) = scratch.split_at_mut(K * len);
    let mut counts = [0u64; K];
    for r in 0..K {
        let (mx, my) = (&mut mxs[r * len..(r + 1) * len], &mut mys[r * len..(r + 1) * len]);
        let (x, o) = (&xs[r][..len], &os[r][..len]);
        let mut n = 0u64;
        for j in 0..len {
            let (x, y) = (x[j], f64::from(o[j]));
            let both = x.is_finite() & y.is_finite() & (x != 0.0) & (y != 0.0);
            let (a, b) = if both { (x.abs(), y.abs()) } else { (0.0, 0.0) };
            mx[j] = a;
            my[j] = b;
            sx[j] += a;
            sy[j] += b;
            sn[j] += u64::from(both);
            n += u64::from(both);
        }
        counts[r] = n;
    }
    let rx = sums_side_by_side::<K>(std::array::from_fn(|r| &mxs[r * len..(r + 1) * len]));
    let ry = sums_side_by_side::<K>(std::array::from_fn(|r| &mys[r * len..(r + 1) * len]));
    std::array::from_fn(|r| (rx[r], ry[r], counts[r]))
}

/// A tensor's [`Profile`] built from its chunks of [`rows_per_chunk`] rows
/// in order, by whoever reads the tensor anyway (the allocation's pass):
/// the same profile, bit for bit, as [`Profile::of`]. Each chunk's column
/// sums are added to the running ones as the chunk comes, in chunk order,
/// so the builder holds one chunk's sums, not every chunk's.
pub(crate) struct ProfileBuilder {
    cols: usize,
    row_means: Vec<f64>,
    /// The columns' sums and counts of the chunks so far (empty before the
    /// first).
    col_sum: Vec<f64>,
    col_n: Vec<u64>,
    /// The current chunk's own column sums and counts.
    chunk_sum: Vec<f64>,
    chunk_n: Vec<u64>,
    scratch: Vec<f64>,
}

impl ProfileBuilder {
    /// A builder for a tensor whose rows have `cols` columns, if its profile
    /// is built from whole-row chunks (rows of at most [`CHUNK_ELEMENTS`]).
    pub(crate) fn new(cols: usize) -> Option<ProfileBuilder> {
        (cols <= CHUNK_ELEMENTS).then(|| ProfileBuilder::any(cols))
    }

    /// A builder for rows of `cols` columns, given its chunks' shares
    /// ([`ProfileBuilder::add_part`]) if the rows are longer than a chunk.
    fn any(cols: usize) -> ProfileBuilder {
        ProfileBuilder {
            cols: cols.max(1),
            row_means: Vec::new(),
            col_sum: Vec::new(),
            col_n: Vec::new(),
            chunk_sum: Vec::new(),
            chunk_n: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Rows per chunk: the chunks given to [`ProfileBuilder::add_chunk`]
    /// must be these, in order.
    pub(crate) fn rows_per_chunk(&self) -> usize {
        rows_per_chunk(self.cols)
    }

    /// Adds the next chunk of rows (decoded).
    pub(crate) fn add_chunk(&mut self, v: &[f64]) {
        let cols = self.cols;
        self.chunk_sum.clear();
        self.chunk_sum.resize(cols, 0.0);
        self.chunk_n.clear();
        self.chunk_n.resize(cols, 0);
        let (rows, scratch) = (&mut self.row_means, &mut self.scratch);
        add_chunk_profile(v, cols, scratch, rows, &mut self.chunk_sum, &mut self.chunk_n);
        self.merge_chunk();
    }

    /// Adds the next chunk's share, worked out apart ([`chunk_profile`]).
    fn add_part(&mut self, (rows, sum, n): ChunkProfile) {
        self.row_means.extend(rows);
        (self.chunk_sum, self.chunk_n) = (sum, n);
        self.merge_chunk();
    }

    /// Adds the current chunk's column sums and counts to the running ones;
    /// the first chunk's become the running ones.
    fn merge_chunk(&mut self) {
        if self.col_sum.is_empty() {
            std::mem::swap(&mut self.col_sum, &mut self.chunk_sum);
            std::mem::swap(&mut self.col_n, &mut self.chunk_n);
            return;
        }
        self.col_sum.iter_mut().zip(&self.chunk_sum).for_each(|(a, b)| *a += b);
        self.col_n.iter_mut().zip(&self.chunk_n).for_each(|(a, b)| *a += b);
    }

    /// The profile.
    pub(crate) fn finish(self) -> Profile {
        Profile::from_sums(self.row_means, self.col_sum, &self.col_n)
    }
}

/// Chunks worked on in parallel whose shares of a profile are held at once
/// before they are added in order.
const PROFILE_BATCH: usize = 32;

impl Profile {
    fn of(t: &TensorRef<'_>) -> Profile {
        let size = t.dtype.size();
        let (_, cols) = dims(t);
        let cols = cols.max(1);
        let block = rows_per_chunk(cols);
        let data = t.data();
        let chunk = (block * cols * size).max(1);
        // Built as the chunks come, in order (a row longer than a chunk is
        // one chunk).
        let mut builder = ProfileBuilder::any(cols);
        let part = |c: usize| -> ChunkProfile {
            let bytes = data.get(c * chunk..((c + 1) * chunk).min(data.len())).unwrap_or_default();
            let (mut v, mut scratch) = (Vec::new(), Vec::new());
            if cols <= CHUNK_ELEMENTS {
                decode_f64(t.dtype, bytes, &mut v);
                return chunk_profile(&v, cols, &mut scratch);
            }
            let mut row_means = Vec::with_capacity(block);
            let (mut col_sum, mut col_n) = (vec![0.0; cols], vec![0u64; cols]);
            // A row longer than a chunk is read in pieces of a chunk.
            for row in bytes.chunks(cols * size) {
                let (mut s, mut n) = (0.0, 0u64);
                for (p, piece) in row.chunks(CHUNK_ELEMENTS * size).enumerate() {
                    decode_f64(t.dtype, piece, &mut v);
                    for (jp, x) in v.iter().enumerate() {
                        let j = p * CHUNK_ELEMENTS + jp;
                        if x.is_finite() && *x != 0.0 {
                            s += x.abs();
                            n += 1;
                            col_sum[j] += x.abs();
                            col_n[j] += 1;
                        }
                    }
                }
                row_means.push(if n > 0 { s / n as f64 } else { 0.0 });
            }
            (row_means, col_sum, col_n)
        };
        in_batches(data.len().div_ceil(chunk), PROFILE_BATCH, part, |p| builder.add_part(p));
        builder.finish()
    }

    /// The profile from its rows' means and its columns' sums and counts.
    fn from_sums(row_means: Vec<f64>, col_sum: Vec<f64>, col_n: &[u64]) -> Profile {
        let (sum, n) = (col_sum.iter().sum::<f64>(), col_n.iter().sum::<u64>());
        let total = if n > 0 { sum / n as f64 } else { 0.0 };
        // The means replace the sums in place: one column-sized vector less.
        let mut col_means = col_sum;
        for (s, &n) in col_means.iter_mut().zip(col_n) {
            *s = if n > 0 { *s / n as f64 } else { 0.0 };
        }
        Profile::new(row_means, col_means, total)
    }

    /// The profile of the given means (the columns' replaced by their
    /// inverses in place).
    fn new(rows: Vec<f64>, mut cols: Vec<f64>, total: f64) -> Profile {
        cols.iter_mut().for_each(|c| *c = if *c > 0.0 { 1.0 / *c } else { 0.0 });
        Profile { rows, total, inverse_cols: cols }
    }

    /// `T / R_i`, the scale of row `i`'s elements: 0 where the row or the
    /// tensor has no weight, `None` past the last row.
    fn row_scale(&self, i: usize) -> Option<f64> {
        let (r, t) = (*self.rows.get(i)?, self.total);
        Some(if r > 0.0 && t > 0.0 { t / r } else { 0.0 })
    }

    /// The profiles of two tensors of the same shape (`cols` columns), both
    /// over the elements that are finite and non-zero in **both**: an
    /// informed comparison must not balance the suspect over the weights an
    /// edit left (pruning keeps the large ones) and the original over all.
    ///
    /// One pass over both, in the chunks of [`Profile::of`] and added in the
    /// same order ([`ProfileBuilder`]): each chunk's magnitudes where both
    /// have weight (`+0.0` elsewhere, which changes no sum of magnitudes)
    /// are profiled as a tensor of their own would be. So the result does
    /// not depend on the thread count, and whoever holds both tensors' chunks
    /// anyway (marking, [`pair_chunk_profiles`]) builds the same profiles bit
    /// for bit.
    fn of_pair<P: Pieces + ?Sized>(a: &TensorRef<'_>, b: &P, cols: usize) -> (Profile, Profile)
    where
        f64: From<P::T>,
    {
        let cols = cols.max(1);
        let size = a.dtype.size().max(1);
        let data = a.data();
        // The elements present in both, and the rows they cover (the last
        // may be short).
        let n = (data.len() / size).min(b.count());
        let rows = b.count() / cols;
        let data = &data[..n * size];
        let block = rows_per_chunk(cols);
        let (mut px, mut py) = (ProfileBuilder::any(cols), ProfileBuilder::any(cols));
        let part = |c: usize| -> (ChunkProfile, ChunkProfile) {
            let (first, end) = (c * block, ((c + 1) * block).min(rows));
            let (mut xs, mut os, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
            // Elements `k` of both (nothing past the end), and their
            // magnitudes where both have weight.
            let magnitudes = |k: std::ops::Range<usize>,
                              (xs, os): (&mut Vec<f64>, &mut Vec<f64>),
                              mx: &mut Vec<f64>,
                              my: &mut Vec<f64>| {
                let (a0, b0) = (k.start.min(n), k.end.min(n));
                decode_f64(a.dtype, &data[a0 * size..b0 * size], xs);
                mx.clear();
                mx.resize(k.len(), 0.0);
                my.clear();
                my.resize(k.len(), 0.0);
                pair_magnitudes(xs, b.piece(a0..b0, os), mx, my);
            };
            let (mut mx, mut my) = (Vec::new(), Vec::new());
            if cols <= CHUNK_ELEMENTS {
                let k = (first * cols).min(n)..(end * cols).min(n);
                decode_f64(a.dtype, &data[k.start * size..k.end * size], &mut xs);
                let o = b.piece(k, &mut os);
                return pair_chunk_profiles(&xs, o, (end - first) * cols, cols, &mut scratch);
            }
            // A row longer than a chunk (the chunk's only row), read in
            // pieces of a chunk; each column has this one element.
            let i = first;
            let share = |m: &[f64], (s, n): &mut (f64, u64), col_sum: &mut Vec<f64>| {
                *s = m.iter().fold(*s, |a, &x| a + x);
                *n += m.iter().map(|&x| u64::from(x != 0.0)).sum::<u64>();
                col_sum.extend(m.iter().map(|&x| 0.0 + x));
            };
            let (mut sx, mut sy) = ((0.0, 0u64), (0.0, 0u64));
            let (mut cx, mut cy) = (Vec::with_capacity(cols), Vec::with_capacity(cols));
            for p in (0..cols).step_by(CHUNK_ELEMENTS) {
                let k = i * cols + p..i * cols + (p + CHUNK_ELEMENTS).min(cols);
                magnitudes(k, (&mut xs, &mut os), &mut mx, &mut my);
                share(&mx, &mut sx, &mut cx);
                share(&my, &mut sy, &mut cy);
            }
            let col_n: Vec<u64> = cx.iter().map(|&x| u64::from(x != 0.0)).collect();
            let mean = |(s, n): (f64, u64)| if n > 0 { s / n as f64 } else { 0.0 };
            ((vec![mean(sx)], cx, col_n.clone()), (vec![mean(sy)], cy, col_n))
        };
        in_batches(rows.div_ceil(block), PROFILE_BATCH, part, |(x, y)| {
            px.add_part(x);
            py.add_part(y);
        });
        (px.finish(), py.finish())
    }

    /// `min(|x| / m, CLIP)` for element `(i, j)`, or `None` where it has no
    /// weight (zero, non-finite, or an all-zero row or column).
    ///
    /// `|x| / m` is taken as `|x| · (T / R_i) · (1 / C_j)`: one division
    /// per row and one per column rather than two per element (the same
    /// number up to rounding; every path takes it this way).
    fn ratio(&self, i: usize, j: usize, x: f64) -> Option<f64> {
        if !x.is_finite() || x == 0.0 {
            return None;
        }
        let (s, c) = (self.row_scale(i)?, *self.inverse_cols.get(j)?);
        (s > 0.0 && c > 0.0).then(|| (x.abs() * s * c).min(CLIP))
    }
}

/// The magnitudes of the elements of `xs` and `ys` (side by side) where
/// both are finite and non-zero, `+0.0` where either is not, into `mx` and
/// `my`; returns how many are. Positions past the shortest are left as
/// they are.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn pair_magnitudes<T: Copy>(xs: &[f64], ys: &[T], mx: &mut [f64], my: &mut [f64]) -> u64
where
    f64: From<T>,
{
    let mut count = 0u64;
    for (((&x, &y), a), b) in xs.iter().zip(ys).zip(mx.iter_mut()).zip(my.iter_mut()) {
        let y = f64::from(y);
        let both = x.is_finite() & y.is_finite() & (x != 0.0) & (y != 0.0);
        *a = if both { x.abs() } else { 0.0 };
        *b = if both { y.abs() } else { 0.0 };
        count += u64::from(both);
    }
    count
}

/// `out[k] = row[k] as f32` where both have element `k` (the values are
/// f32 numbers decoded to f64, so nothing is rounded).
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn narrow_to_f32(out: &mut [f32], row: &[f64]) {
    for (v, &x) in out.iter_mut().zip(row) {
        *v = x as f32;
    }
}

/// The original tensor aligned with a suspect: its values, its own axes, and
/// for each stored suspect row and column the stored original index holding
/// the same canonical position.
pub struct Aligned<'a> {
    /// The original tensor.
    pub tensor: TensorRef<'a>,
    /// Its canonical axes.
    pub axes: Axes<'a>,
    /// For each stored residual channel of the suspect, the original's
    /// stored channel it was matched to ([`crate::canonical::match_residual`]);
    /// `None` pairs channels of equal canonical rank.
    pub residual: Option<&'a [usize]>,
}

/// For each stored index of one axis of the suspect, the stored index of the
/// original at the same canonical position.
fn axis_map(suspect: Option<&[u32]>, original: Option<&[u32]>, len: usize) -> Vec<usize> {
    match (suspect, original) {
        (Some(s), Some(o)) if s.len() == len && o.len() == len => {
            let mut inverse = vec![0usize; len];
            for (stored, &c) in o.iter().enumerate() {
                if let Some(slot) = inverse.get_mut(c as usize) {
                    *slot = stored;
                }
            }
            s.iter().map(|&c| inverse.get(c as usize).copied().unwrap_or(0)).collect()
        }
        _ => (0..len).collect(),
    }
}

/// The original, decoded at the suspect's positions (element `(i, j)` of
/// `values` is the original's counterpart of suspect element `(i, j)`), and
/// balanced.
struct Reference<'a> {
    profile: Profile,
    values: ReferenceValues<'a>,
}

/// The original's values at the suspect's positions (NaN where it has none):
/// as f32 when the original's dtype converts to f32 exactly (F32, F16, BF16,
/// FP8, so every value is the same number as in f64, at half the memory: the
/// embedding of a 7B model is 131M elements), else as f64; or, when every
/// element is at the suspect's position already (the same number of
/// elements, no row or column moved: an unpermuted copy, `embed`'s own
/// check), the original's stored bytes, decoded a piece at a time when
/// read: the same numbers without a copy of the tensor.
enum ReferenceValues<'a> {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Stored(Stored<'a>),
}

impl ReferenceValues<'_> {
    /// Element `k`, or NaN outside.
    fn get(&self, k: usize) -> f64 {
        match self {
            ReferenceValues::F32(v) => v.get(k).map_or(f64::NAN, |&x| f64::from(x)),
            ReferenceValues::F64(v) => v.get(k).copied().unwrap_or(f64::NAN),
            ReferenceValues::Stored(v) => {
                let mut one = Vec::with_capacity(1);
                v.piece(k..k + 1, &mut one).first().copied().unwrap_or(f64::NAN)
            }
        }
    }
}

/// A readable tensor's stored bytes, read as f64 values a piece at a time.
struct Stored<'a> {
    dtype: crate::dtype::Dtype,
    bytes: std::borrow::Cow<'a, [u8]>,
}

/// Values read a piece at a time: a slice of them, or [`Stored`] bytes.
trait Pieces: Sync {
    /// The values' type.
    type T: Copy;
    /// Number of values.
    fn count(&self) -> usize;
    /// Values `k` (the caller keeps `k` within [`Pieces::count`]), in
    /// `scratch` if they must be decoded.
    fn piece<'s>(&'s self, k: std::ops::Range<usize>, scratch: &'s mut Vec<f64>) -> &'s [Self::T];
}

impl<T: Copy + Sync> Pieces for [T] {
    type T = T;
    fn count(&self) -> usize {
        self.len()
    }
    fn piece<'s>(&'s self, k: std::ops::Range<usize>, _: &'s mut Vec<f64>) -> &'s [T] {
        self.get(k).unwrap_or_default()
    }
}

impl Pieces for Stored<'_> {
    type T = f64;
    fn count(&self) -> usize {
        self.bytes.len() / self.dtype.size().max(1)
    }
    fn piece<'s>(&'s self, k: std::ops::Range<usize>, scratch: &'s mut Vec<f64>) -> &'s [f64] {
        let size = self.dtype.size();
        let len = k.len();
        let bytes = self.bytes.get(k.start * size..k.end * size).unwrap_or_default();
        if !decode_f64(self.dtype, bytes, scratch) {
            scratch.clear();
        }
        // Values it could not give read as NaN (no weight).
        scratch.resize(len, f64::NAN);
        scratch
    }
}

/// The original's values at the suspect's positions: suspect element
/// `(i, j)` of a `(rows, cols)` suspect reads original row `row_map[i]`,
/// column `col_map[j]` (NaN where the original has none); `o_bytes` are
/// the original's `o`'s bytes.
fn gathered(
    o: &TensorRef<'_>,
    o_bytes: &[u8],
    (rows, cols): (usize, usize),
    row_map: &[usize],
    col_map: &[usize],
) -> ReferenceValues<'static> {
    // Row by row (in parallel: each element is set on its own): the
    // original's row that suspect row `i` maps to is decoded once, then
    // gathered by the column map; a position outside the original reads as
    // NaN (no weight).
    let o_row = cols * o.dtype.size();
    let gather = |i: usize, row: &mut Vec<f64>| -> bool {
        let at = row_map.get(i).map_or(usize::MAX, |&r| r);
        let bytes = at.checked_mul(o_row).and_then(|a| o_bytes.get(a..a.checked_add(o_row)?));
        let Some(bytes) = bytes else { return false };
        decode_f64(o.dtype, bytes, row);
        true
    };
    // Columns in the same order in both (the common case: a copy not
    // permuted) are copied without looking each one up.
    let same_columns = col_map.iter().enumerate().all(|(k, &j)| k == j);
    if exact_in_f32(o.dtype) {
        let mut values = vec![f32::NAN; rows * cols];
        values.par_chunks_mut(cols.max(1)).enumerate().for_each_init(Vec::new, |row, (i, out)| {
            if gather(i, row) {
                if same_columns {
                    narrow_to_f32(out, row);
                } else {
                    for (v, &j) in out.iter_mut().zip(col_map) {
                        *v = row.get(j).map_or(f32::NAN, |&x| x as f32);
                    }
                }
            }
        });
        ReferenceValues::F32(values)
    } else {
        let mut values = vec![f64::NAN; rows * cols];
        values.par_chunks_mut(cols.max(1)).enumerate().for_each_init(Vec::new, |row, (i, out)| {
            if gather(i, row) {
                for (v, &j) in out.iter_mut().zip(col_map) {
                    *v = row.get(j).copied().unwrap_or(f64::NAN);
                }
            }
        });
        ReferenceValues::F64(values)
    }
}

/// Whether every value of `dtype` is exactly an f32.
fn exact_in_f32(dtype: crate::dtype::Dtype) -> bool {
    use crate::dtype::Dtype;
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F8E4M3 | Dtype::F8E5M2)
}

/// `y` of each element of a piece of a row against the original's piece `o`
/// (the common case of [`row_y`]): the suspect's and the original's ratios,
/// each from its own profile (the columns' inverse means `c`, `co` and the
/// rows' scales `s`, `so`, as in [`blind_piece`]).
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn informed_piece<T: Copy>(
    y: &mut [f64],
    row: &[f64],
    o: &[T],
    (c, co): (&[f64], &[f64]),
    (s, so): (f64, f64),
) where
    f64: From<T>,
{
    for ((yj, (&x, &o)), (&c, &co)) in y.iter_mut().zip(row.iter().zip(o)).zip(c.iter().zip(co)) {
        let o = f64::from(o);
        let ratio = (x.abs() * s * c).min(CLIP);
        let valid = x.is_finite() && x != 0.0 && s > 0.0 && c > 0.0;
        let ratio_o = (o.abs() * so * co).min(CLIP);
        let valid_o = o.is_finite() && o != 0.0 && so > 0.0 && co > 0.0;
        *yj = if valid && valid_o { ratio - ratio_o } else { f64::NAN };
    }
}

/// `y` of every element of a piece of stored suspect row `i` (NaN where it
/// has no weight): `row` holds the row's columns from `j0` on, of `cols` in
/// all. Returns the number of weighted elements.
///
/// The common case (the row's profile and reference at hand) runs as plain
/// element-wise arithmetic without branches, which the compiler vectorises;
/// every element gets exactly the operations of [`Profile::ratio`], so the
/// values are the same as element by element.
#[allow(clippy::too_many_arguments)]
fn row_y(
    i: usize,
    j0: usize,
    cols: usize,
    row: &[f64],
    profile: &Profile,
    reference: Option<&Reference<'_>>,
    y: &mut [f64],
    scratch: &mut Vec<f64>,
) -> u64 {
    let len = row.len().min(y.len());
    let (row, y) = (&row[..len], &mut y[..len]);
    fn whole(p: &Profile, i: usize, j: std::ops::Range<usize>) -> Option<(f64, &[f64])> {
        Some((p.row_scale(i)?, p.inverse_cols.get(j)?))
    }
    match (whole(profile, i, j0..j0 + len), reference) {
        (Some((r, c)), None) => blind_piece(y, row, c, r),
        (Some((r, c)), Some(reference)) => {
            let at = i * cols + j0;
            let whole_o = whole(&reference.profile, i, j0..j0 + len);
            match (whole_o, &reference.values) {
                (Some((ro, co)), ReferenceValues::F32(v)) if v.len() >= at + len => {
                    informed_piece(y, row, &v[at..at + len], (c, co), (r, ro));
                }
                (Some((ro, co)), ReferenceValues::F64(v)) if v.len() >= at + len => {
                    informed_piece(y, row, &v[at..at + len], (c, co), (r, ro));
                }
                (Some((ro, co)), ReferenceValues::Stored(v)) if v.count() >= at + len => {
                    let o = v.piece(at..at + len, scratch);
                    informed_piece(y, row, o, (c, co), (r, ro));
                }
                _ => row_y_each(i, j0, cols, row, profile, Some(reference), y),
            }
        }
        (None, _) => row_y_each(i, j0, cols, row, profile, reference, y),
    }
    count_finite(y)
}

/// `y` of each element of a piece of a row, blind (the common case of
/// [`row_y`]): the ratio to the expected magnitude, `|x| · s · c_j` with the
/// row's scale `s` and the columns' inverse means `c` ([`Profile::ratio`]).
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn blind_piece(y: &mut [f64], row: &[f64], c: &[f64], s: f64) {
    for ((yj, &x), &c) in y.iter_mut().zip(row).zip(c) {
        let ratio = (x.abs() * s * c).min(CLIP);
        let valid = x.is_finite() && x != 0.0 && s > 0.0 && c > 0.0;
        *yj = if valid { ratio - 1.0 } else { f64::NAN };
    }
}

/// The number of finite values of `y`.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn count_finite(y: &[f64]) -> u64 {
    y.iter().map(|v| u64::from(v.is_finite())).sum()
}

/// [`row_y`] element by element, for a row whose profile or reference is
/// not whole (an index out of range gives NaN).
fn row_y_each(
    i: usize,
    j0: usize,
    cols: usize,
    row: &[f64],
    profile: &Profile,
    reference: Option<&Reference<'_>>,
    y: &mut [f64],
) {
    for (jp, (&xi, yj)) in row.iter().zip(y.iter_mut()).enumerate() {
        let j = j0 + jp;
        let blind = profile.ratio(i, j, xi);
        *yj = match (reference, blind) {
            (_, None) => f64::NAN,
            (None, Some(b)) => b - 1.0,
            (Some(r), Some(b)) => {
                let o = r.values.get(i * cols + j);
                r.profile.ratio(i, j, o).map_or(f64::NAN, |a| b - a)
            }
        };
    }
}

/// `acc` plus the sum of `y^2` over the weighted elements, in element order.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn sum_squares(y: &[f64], acc: f64) -> f64 {
    y.iter().filter(|v| v.is_finite()).fold(acc, |a, v| a + v * v)
}

/// Adds each finite `y_j` to the sum of its column's group (`rank[j] /
/// GROUP`), in element order.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn add_by_group(y: &[f64], rank: &[u32], sums: &mut [f64]) {
    for (&yj, &c) in y.iter().zip(rank) {
        if yj.is_finite() {
            if let Some(s) = sums.get_mut(c as usize / GROUP) {
                *s += yj;
            }
        }
    }
}

/// For each group of residual channels ([`GROUP`] consecutive canonical
/// ranks), the stored columns in it, in stored order, padded with `cols`
/// (one past the row); `None` unless `rank` holds `cols` ranks and no group
/// has more than [`GROUP`] columns (as in any permutation).
fn group_members(rank: &[u32], cols: usize) -> Option<Vec<[u32; GROUP]>> {
    let pad = u32::try_from(cols).ok()?;
    if rank.len() != cols {
        return None;
    }
    let mut members = vec![[pad; GROUP]; groups(cols)];
    let mut filled = vec![0usize; members.len()];
    for (j, &c) in rank.iter().enumerate() {
        let g = c as usize / GROUP;
        let slot = members.get_mut(g)?.get_mut(*filled.get(g)?)?;
        *slot = u32::try_from(j).ok()?;
        filled[g] += 1;
    }
    Some(members)
}

/// Each group's sum of its finite `y` ([`group_members`]; `y` one longer
/// than the row, NaN last), in stored order from `0.0`: what
/// [`add_by_group`] adds up element by element, group by group instead.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn group_sums(y: &[f64], members: &[[u32; GROUP]], sums: &mut [f64]) {
    let Some(last) = y.len().checked_sub(1) else { return };
    // Four groups side by side (four independent chains of additions),
    // each still adding its columns in stored order.
    let mut four = sums.chunks_exact_mut(4).zip(members.chunks_exact(4));
    for (s, m) in four.by_ref() {
        let mut acc = [0.0f64; 4];
        for k in 0..GROUP {
            for (a, m) in acc.iter_mut().zip(m) {
                let v = y[(m[k] as usize).min(last)];
                *a = if v.is_finite() { *a + v } else { *a };
            }
        }
        s.copy_from_slice(&acc);
    }
    let done = sums.len() / 4 * 4;
    for (s, m) in sums.iter_mut().zip(members).skip(done) {
        let mut acc = 0.0;
        for &j in m {
            let v = y[(j as usize).min(last)];
            acc = if v.is_finite() { acc + v } else { acc };
        }
        *s = acc;
    }
}

/// `acc` plus `Σ y_j p_j` over the finite `y_j`, in element order.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn add_products(y: &[f64], p: &[f64], acc: f64) -> f64 {
    y.iter().zip(p).filter(|(yj, _)| yj.is_finite()).fold(acc, |a, (yj, pj)| a + yj * pj)
}

/// Adds each finite `y_j` to `sums[j]`.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn add_finite(sums: &mut [f64], y: &[f64]) {
    for (s, &yj) in sums.iter_mut().zip(y) {
        if yj.is_finite() {
            *s += yj;
        }
    }
}

/// [`detect_tensor_coded`] without codes or known profiles.
#[cfg(test)]
fn detect_tensor(
    suspect: &TensorRef<'_>,
    axes: &Axes<'_>,
    original: Option<&Aligned<'_>>,
    keys: &[&TensorStreams],
    weights: Option<&TensorWeights>,
) -> Vec<Stats> {
    detect_tensor_coded(suspect, axes, original, keys, weights, Known::default(), &[]).0
}

/// Items of a parallel pass whose results are held at once when recipient
/// codes are read (each holds a reading of `G` groups per code).
const CODED_BATCH: usize = 32;

/// Runs `f` on `0..n` in parallel, in batches of `batch` items, and hands
/// the results to `merge` in index order: the order of the sums (so every
/// bit of the result) does not depend on the thread count, and only one
/// batch of results is held at a time.
pub(crate) fn in_batches<T: Send>(
    n: usize,
    batch: usize,
    f: impl Fn(usize) -> T + Sync + Send,
    mut merge: impl FnMut(T),
) {
    let batch = batch.max(1);
    for a in (0..n).step_by(batch) {
        let part: Vec<T> = (a..(a + batch).min(n)).into_par_iter().map(&f).collect();
        part.into_iter().for_each(&mut merge);
    }
}

/// Detection statistics of one tensor under several keys at once, reading it
/// twice (the magnitude profile, then the sums): blind, or informed when
/// `original` is given (same shape). Each keyed sign multiplies the sum of
/// `y` over its group ([`GROUP`]); `V` is the sum of the groups' squares.
/// With the statistics, the per-group reading of each recipient code in
/// `codes` ([`crate::tardos`]): each code's signs multiply the same sums
/// `Y` (per sign position) that the keys' signs do. `known` holds the
/// suspect's profiles that a pass over it already gave ([`Known`]).
#[allow(clippy::too_many_arguments)]
pub fn detect_tensor_coded(
    suspect: &TensorRef<'_>,
    axes: &Axes<'_>,
    original: Option<&Aligned<'_>>,
    keys: &[&TensorStreams],
    weights: Option<&TensorWeights>,
    known: Known<'_>,
    codes: &[&CodeStream],
) -> (Vec<Stats>, Vec<Reading>) {
    let (rows, cols) = dims(suspect);
    let layout = Layout::of(axes);
    // Each tensor read once (decoded, for a GGUF tensor) for all the passes
    // below.
    let suspect_data = suspect.data();
    let suspect = &suspect.with_data(&suspect_data);
    let suspect_bytes: &[u8] = &suspect_data;
    let computed;
    let (profile, reference) = match original {
        None => match known.blind {
            Some(p) => (p, None),
            None => {
                computed = Profile::of(suspect);
                (&computed, None)
            }
        },
        Some(o) => {
            // The original read at the suspect's positions, then both
            // balanced over the elements present in both.
            // A matched neuron is read against the original neuron it
            // matched (its canonical index is the original's stored index).
            let neurons = |len: usize| {
                axes.neurons
                    .filter(|m| m.len() == len)
                    .map(|m| m.iter().map(|&c| c as usize).collect::<Vec<usize>>())
            };
            let (row_map, col_map) = (
                match (axes.rows, o.residual) {
                    (Some(_), Some(m)) if m.len() == rows => m.to_vec(),
                    (None, _) if axes.cols.is_some() => {
                        neurons(rows).unwrap_or_else(|| axis_map(None, None, rows))
                    }
                    _ => axis_map(axes.rows, o.axes.rows, rows),
                },
                match (axes.cols, o.residual) {
                    (Some(_), Some(m)) if m.len() == cols => m.to_vec(),
                    (None, _) if axes.rows.is_some() => {
                        neurons(cols).unwrap_or_else(|| axis_map(None, None, cols))
                    }
                    _ => axis_map(axes.cols, o.axes.cols, cols),
                },
            );
            let o_row = cols * o.tensor.dtype.size();
            let o_data = o.tensor.data();
            // Every original element at the suspect's position already:
            // read the original's bytes as they are stored.
            let in_place = row_map.iter().enumerate().all(|(k, &i)| k == i)
                && col_map.iter().enumerate().all(|(k, &j)| k == j)
                && o.tensor.dtype.is_readable()
                && rows.checked_mul(o_row) == Some(o_data.len());
            let values = if in_place {
                ReferenceValues::Stored(Stored { dtype: o.tensor.dtype, bytes: o_data })
            } else {
                let values = gathered(&o.tensor, &o_data, (rows, cols), &row_map, &col_map);
                drop(o_data);
                values
            };
            drop((row_map, col_map));
            let (ps, po) = match (&values, known.pair) {
                // Read in place: the pair profiles marking built, if given.
                (ReferenceValues::Stored(_), Some((ps, po))) => (ps.clone(), po.clone()),
                (ReferenceValues::F32(v), _) => Profile::of_pair(suspect, v.as_slice(), cols),
                (ReferenceValues::F64(v), _) => Profile::of_pair(suspect, v.as_slice(), cols),
                (ReferenceValues::Stored(v), _) => Profile::of_pair(suspect, v, cols),
            };
            computed = ps;
            (&computed, Some(Reference { profile: po, values }))
        }
    };
    let reference = reference.as_ref();
    let size = suspect.dtype.size();
    let decode_row = |i: usize, out: &mut Vec<f64>| {
        let bytes = suspect_bytes.get(i * cols * size..(i + 1) * cols * size).unwrap_or_default();
        decode_f64(suspect.dtype, bytes, out);
    };
    // Columns `k` of row `i`.
    let decode_piece = |i: usize, k: &std::ops::Range<usize>, out: &mut Vec<f64>| {
        let (a, b) = ((i * cols + k.start) * size, (i * cols + k.end) * size);
        decode_f64(suspect.dtype, suspect_bytes.get(a..b).unwrap_or_default(), out);
    };
    // A row is read in pieces of at most a chunk (one piece unless it is longer).
    let pieces = || (0..cols).step_by(CHUNK_ELEMENTS).map(|a| a..(a + CHUNK_ELEMENTS).min(cols));
    let width = cols.min(CHUNK_ELEMENTS);
    let new_readings = || codes.iter().map(|c| Reading::new(c.groups())).collect::<Vec<_>>();
    let batch = if codes.is_empty() { usize::MAX } else { CODED_BATCH };
    let mut total = vec![Stats::default(); keys.len()];
    let mut readings = new_readings();
    let mut merge = |(part, coded): (Vec<Stats>, Vec<Reading>)| {
        for (t, s) in total.iter_mut().zip(part) {
            *t = t.merge(s);
        }
        for (r, c) in readings.iter_mut().zip(&coded) {
            r.merge(c);
        }
    };
    match layout {
        Layout::Plain | Layout::Cols(_) => {
            let block = rows_per_chunk(cols);
            // A row read in one piece sums its groups by gathering each
            // group's columns ([`group_sums`]), else by adding each element
            // to its group ([`add_by_group`]): the same sums.
            let members = match layout {
                Layout::Cols(rank) if cols <= CHUNK_ELEMENTS => group_members(rank, cols),
                _ => None,
            };
            in_batches(
                rows.div_ceil(block),
                batch,
                |ci| {
                    let mut coded = new_readings();
                    let mut stats = vec![Stats::default(); keys.len()];
                    // One more `y` than a piece: NaN, the column a group
                    // short of members reads.
                    let (mut x, mut ys, mut p, mut buf) =
                        (Vec::new(), vec![f64::NAN; width + 1], vec![0.0; width], Vec::new());
                    let mut scratch = Vec::new();
                    let mut sums = vec![0.0; groups(cols)];
                    let mut s_plain = vec![0.0; keys.len()];
                    let (mut s_keys, mut lanes) = (vec![0.0; keys.len()], Vec::new());
                    for i in ci * block..((ci + 1) * block).min(rows) {
                        // Weighted elements and, without a residual axis,
                        // the sum of their y^2 (V), in element order.
                        let mut acc = (0u64, 0.0);
                        sums.iter_mut().for_each(|s| *s = 0.0);
                        s_plain.iter_mut().for_each(|s| *s = 0.0);
                        for k in pieces() {
                            let y = &mut ys[..k.len()];
                            decode_piece(i, &k, &mut x);
                            acc.0 +=
                                row_y(i, k.start, cols, &x, profile, reference, y, &mut scratch);
                            if let Some(a) = weights {
                                a.weigh(i, k.start, y);
                            }
                            match (layout, &members) {
                                (Layout::Cols(_), Some(m)) => group_sums(&ys, m, &mut sums),
                                (Layout::Cols(rank), None) => {
                                    let rank = rank.get(k.clone()).unwrap_or_default();
                                    add_by_group(y, rank, &mut sums);
                                }
                                _ => {
                                    acc.1 = sum_squares(y, acc.1);
                                    let at = (i * cols + k.start) as u64;
                                    for (code, r) in codes.iter().zip(coded.iter_mut()) {
                                        code.add(at, y, None, r);
                                    }
                                    let p = &mut p[..k.len()];
                                    for (streams, s) in keys.iter().zip(s_plain.iter_mut()) {
                                        streams.signs((i * cols + k.start) as u64, p);
                                        *s = add_products(y, p, *s);
                                    }
                                }
                            }
                        }
                        let (n, v_elements) = acc;
                        let v = match layout {
                            Layout::Cols(_) => sums.iter().map(|s| s * s).sum(),
                            _ => v_elements,
                        };
                        if let Layout::Cols(_) = layout {
                            let at = axes.neurons.and_then(|m| m.get(i)).map_or(i, |&c| c as usize);
                            for (code, r) in codes.iter().zip(coded.iter_mut()) {
                                code.add((at * sums.len()) as u64, &sums, None, r);
                            }
                        }
                        match layout {
                            Layout::Cols(_) => {
                                // A matched neuron takes its original's signs.
                                let at =
                                    axes.neurons.and_then(|m| m.get(i)).map_or(i, |&c| c as usize);
                                let g = sums.len();
                                let start = (at * g) as u64;
                                signed_sums(
                                    &sums,
                                    start,
                                    g,
                                    None,
                                    keys,
                                    &mut buf,
                                    &mut lanes,
                                    &mut s_keys,
                                );
                            }
                            _ => s_keys.copy_from_slice(&s_plain),
                        }
                        for (st, &s) in stats.iter_mut().zip(&s_keys) {
                            *st = st.merge(Stats { s, v, elements: n });
                        }
                    }
                    (stats, coded)
                },
                &mut merge,
            );
        }
        Layout::Rows(rank) => {
            // Rows of one group are scattered in stored order: gather each
            // group's rows, then test the group's column sums.
            let mut members: Vec<Vec<usize>> = vec![Vec::new(); groups(rows)];
            for (i, &c) in rank.iter().enumerate().take(rows) {
                if let Some(m) = members.get_mut(c as usize / GROUP) {
                    m.push(i);
                }
            }
            in_batches(
                members.len(),
                batch,
                |g| {
                    let group_rows = members.get(g).map(Vec::as_slice).unwrap_or_default();
                    let mut coded = new_readings();
                    let mut stats = vec![Stats::default(); keys.len()];
                    let (mut x, mut y, mut p) = (Vec::new(), vec![0.0; cols], vec![0.0; cols]);
                    let (mut lanes, mut scratch) = (Vec::new(), Vec::new());
                    let mut sums = vec![0.0; cols];
                    let mut n = 0u64;
                    for &i in group_rows {
                        decode_row(i, &mut x);
                        n += row_y(i, 0, cols, &x, profile, reference, &mut y, &mut scratch);
                        if let Some(a) = weights {
                            a.weigh(i, 0, &mut y);
                        }
                        add_finite(&mut sums, &y);
                    }
                    let v: f64 = sums.iter().map(|s| s * s).sum();
                    let map = axes.neurons.filter(|m| m.len() == cols);
                    for (code, r) in codes.iter().zip(coded.iter_mut()) {
                        code.add((g * cols) as u64, &sums, map, r);
                    }
                    // Columns that are matched neurons take their original's signs.
                    let mut s_keys = vec![0.0; keys.len()];
                    let start = (g * cols) as u64;
                    signed_sums(&sums, start, cols, map, keys, &mut p, &mut lanes, &mut s_keys);
                    for (st, &s) in stats.iter_mut().zip(&s_keys) {
                        *st = Stats { s, v, elements: n };
                    }
                    (stats, coded)
                },
                &mut merge,
            );
        }
    }
    (total, readings)
}

#[cfg(test)]
impl Profile {
    /// [`Profile::of_pair`] one element at a time: the reference the faster
    /// one must equal bit for bit. Each row's sums add along the row; each
    /// column's add down the rows of a chunk of [`rows_per_chunk`] rows,
    /// from zero, and the chunks' sums are added to the running ones in
    /// chunk order (the first's becoming them); the total adds the columns'
    /// sums in column order.
    ///
    /// The profiles of two tensors of the same shape (`cols` columns), both
    /// over the elements that are finite and non-zero in **both**: an
    /// informed comparison must not balance the suspect over the weights an
    /// edit left (pruning keeps the large ones) and the original over all.
    fn of_pair_element_by_element<T: Copy>(
        a: &TensorRef<'_>,
        b: &[T],
        cols: usize,
    ) -> (Profile, Profile)
    where
        f64: From<T>,
    {
        let cols = cols.max(1);
        let rows = b.len() / cols;
        let block = rows_per_chunk(cols);
        let mut xs = Vec::new();
        decode_f64(a.dtype, &a.data(), &mut xs);
        let mut row_sums = [vec![0.0; rows], vec![0.0; rows]];
        let mut row_n = vec![0u64; rows];
        let mut running: [Option<Vec<f64>>; 2] = [None, None];
        let mut col_n = vec![0u64; cols];
        for first in (0..rows).step_by(block) {
            let mut chunk = [vec![0.0; cols], vec![0.0; cols]];
            for i in first..(first + block).min(rows) {
                for j in 0..cols {
                    let k = i * cols + j;
                    let (Some(&x), Some(&y)) = (xs.get(k), b.get(k)) else { continue };
                    let y = f64::from(y);
                    if x.is_finite() && y.is_finite() && x != 0.0 && y != 0.0 {
                        for (t, m) in [x.abs(), y.abs()].into_iter().enumerate() {
                            row_sums[t][i] += m;
                            chunk[t][j] += m;
                        }
                        row_n[i] += 1;
                        col_n[j] += 1;
                    }
                }
            }
            for (r, c) in running.iter_mut().zip(chunk) {
                match r {
                    None => *r = Some(c),
                    Some(r) => r.iter_mut().zip(&c).for_each(|(a, b)| *a += b),
                }
            }
        }
        let n: u64 = col_n.iter().sum();
        let make = |r: &[f64], c: Option<Vec<f64>>| {
            let c = c.unwrap_or_default();
            let mean = |s: f64, n: u64| if n > 0 { s / n as f64 } else { 0.0 };
            let total = mean(c.iter().fold(0.0, |a, &s| a + s), n);
            Profile::new(
                r.iter().zip(&row_n).map(|(&s, &n)| mean(s, n)).collect(),
                c.iter().zip(&col_n).map(|(&s, &n)| mean(s, n)).collect(),
                total,
            )
        };
        let [rx, ry] = running;
        (make(&row_sums[0], rx), make(&row_sums[1], ry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Canonical;
    use crate::key::MarkKey;
    use crate::model::Model;
    use crate::synth::{gaussian_matrix, to_model};
    use crate::Dtype;

    /// Signed sums one key at a time, as detection took them before
    /// [`signed_sums`]: the reference it must equal bit for bit.
    fn signed_sums_one_by_one(
        values: &[f64],
        start: u64,
        len: usize,
        map: Option<&[u32]>,
        keys: &[&TensorStreams],
    ) -> Vec<f64> {
        keys.iter()
            .map(|k| {
                let mut p = vec![0.0; len];
                k.signs(start, &mut p);
                match map {
                    Some(m) => values
                        .iter()
                        .zip(m)
                        .map(|(a, &c)| a * p.get(c as usize).copied().unwrap_or(0.0))
                        .sum(),
                    None => values.iter().zip(&p).map(|(a, b)| a * b).sum(),
                }
            })
            .collect()
    }

    #[test]
    fn signed_sums_side_by_side_are_the_one_key_at_a_time_sums_bit_for_bit() {
        let streams: Vec<TensorStreams> =
            (0u8..19).map(|i| TensorStreams::new(&MarkKey::from_bytes([i; 32]), "w")).collect();
        let (mut own, mut lanes) = (Vec::new(), Vec::new());
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for len in [0usize, 1, 7, 64, 513] {
            // Values of every magnitude, with signed zeros, infinities and NaN.
            let values: Vec<f64> = (0..len)
                .map(|j| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    match j % 37 {
                        5 => -0.0,
                        6 => 0.0,
                        11 if len > 100 => f64::INFINITY,
                        _ => {
                            ((rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
                                * 10f64.powi((j % 9) as i32 - 4)
                        }
                    }
                })
                .collect();
            let all_negative_zero = vec![-0.0; len];
            let nan = {
                let mut v = values.clone();
                if let Some(x) = v.get_mut(len / 2) {
                    *x = f64::NAN;
                }
                v
            };
            // A map into the signs, with indices past them (sign 0.0).
            let map: Vec<u32> = (0..len).map(|j| ((j * 7 + 3) % (len + 5)) as u32).collect();
            for values in [&values, &all_negative_zero, &nan] {
                for keys in [1usize, 3, 8, 9, 17, 19] {
                    let keys: Vec<&TensorStreams> = streams.iter().take(keys).collect();
                    for (start, map) in [(0u64, None), (77, None), (1000, Some(&map[..]))] {
                        let want = signed_sums_one_by_one(values, start, len, map, &keys);
                        let mut got = vec![f64::NAN; keys.len()];
                        signed_sums(values, start, len, map, &keys, &mut own, &mut lanes, &mut got);
                        // A NaN's sign and payload are left to the compiler
                        // (IEEE and LLVM do not fix which operand's NaN an
                        // addition keeps): a NaN must stay a NaN.
                        let bits = |v: &[f64]| {
                            v.iter()
                                .map(|x| if x.is_nan() { u64::MAX } else { x.to_bits() })
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(bits(&got), bits(&want), "len {len}, {} keys", keys.len());
                    }
                }
            }
        }
    }

    #[test]
    fn a_recipient_share_splits_the_energy_and_the_default_is_the_old_split() {
        // The size rule's factor for a coded release at the default share is
        // the constant it always was.
        assert_eq!((1.0 - EVEN_RECIPIENT_SHARE).sqrt(), std::f64::consts::FRAC_1_SQRT_2);
        for total in [0.00141, 0.003, 0.0123, 0.1] {
            // The default share is computed as before the share existed.
            let half = total / std::f64::consts::SQRT_2;
            let d = Strengths::shared(total, EVEN_RECIPIENT_SHARE);
            assert_eq!((d.release, d.recipient), (half, half));
            assert_eq!(Strengths::split(total, true), d);
            assert_eq!(d.recipient_weight(), 1.0);
            for share in [0.05, 0.2, 0.8, 0.95] {
                let s = Strengths::shared(total, share);
                let energy = s.release * s.release + s.recipient * s.recipient;
                assert!((energy / (total * total) - 1.0).abs() < 1e-12, "{share}: {energy}");
                assert!((s.recipient * s.recipient / (total * total) - share).abs() < 1e-12);
                let w = s.recipient_weight();
                assert!((w - (share / (1.0 - share)).sqrt()).abs() < 1e-12, "{share}: {w}");
            }
        }
        for bad in [0.0, 0.04, 0.96, 1.0, -0.5, f64::NAN, f64::INFINITY] {
            let e = check_recipient_share(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("out of range"), "{bad}: {e}");
        }
        for good in [0.05, 0.5, 0.8, 0.95] {
            assert!(check_recipient_share(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_long_row_read_in_pieces_gives_exactly_what_one_pass_over_it_gives() {
        let n = 2 * CHUNK_ELEMENTS + 1234;
        let m = to_model(&[gaussian_matrix("w", 1, n, Dtype::BF16, 7)])
            .unwrap_or_else(|e| panic!("{e}"));
        let t = m.tensor("w").unwrap_or_else(|| panic!("w"));
        let release = TensorStreams::new(&MarkKey::from_bytes([1; 32]), "w");
        let recipient = TensorStreams::new(&MarkKey::from_bytes([2; 32]), "w");
        // Columns as residual channels in a scrambled canonical order, and plain.
        let rank: Vec<u32> = (0..n as u32).map(|j| (j * 7919) % n as u32).collect();
        for axes in [Axes::default(), Axes { rows: None, cols: Some(&rank), neurons: None }] {
            let layout = Layout::of(&axes);
            let strengths = Strengths::split(0.05, true);
            let (got, _) = embed_tensor(
                &t,
                &axes,
                &release,
                Some(&recipient as &dyn SignSource),
                strengths,
                None,
            );
            // One pass over the whole row.
            let mut w = Vec::new();
            decode_f64(t.dtype, &t.data(), &mut w);
            let (mut p, mut q, mut buf) = (vec![0.0; n], vec![0.0; n], Vec::new());
            row_signs(&release, layout, 0, &mut p, &mut buf);
            row_signs(&recipient, layout, 0, &mut q, &mut buf);
            let mut u = vec![0u32; n];
            release.dither(0, &mut u);
            let target: Vec<f64> = (0..n)
                .map(|k| w[k] * (1.0 + strengths.release * p[k] + strengths.recipient * q[k]))
                .collect();
            let mut want = t.data().into_owned();
            encode_stochastic(t.dtype, &target, &u, &mut want);
            assert!(got == want, "marked bytes differ");
            // Blind detection of the marked row against one pass over it.
            let marked = to_model(&[crate::synth::SynthTensor {
                name: "w".into(),
                dtype: t.dtype,
                shape: vec![1, n],
                data: got,
            }])
            .unwrap_or_else(|e| panic!("{e}"));
            let mt = marked.tensor("w").unwrap_or_else(|| panic!("w"));
            let stats = detect_tensor(&mt, &axes, None, &[&release, &recipient], None);
            let profile = Profile::of(&mt);
            let mut x = Vec::new();
            decode_f64(mt.dtype, &mt.data(), &mut x);
            let mut y = vec![0.0; n];
            let count = row_y(0, 0, n, &x, &profile, None, &mut y, &mut Vec::new());
            let v_elements = sum_squares(&y, 0.0);
            // The vectorised y are those of the element-by-element rule.
            let mut each = vec![0.0; n];
            row_y_each(0, 0, n, &x, &profile, None, &mut each);
            assert!(y
                .iter()
                .zip(&each)
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
            for (st, streams) in stats.iter().zip([&release, &recipient]) {
                let want = match layout {
                    Layout::Cols(rank) => {
                        let mut sums = vec![0.0; groups(n)];
                        for (&yj, &c) in y.iter().zip(rank) {
                            if yj.is_finite() {
                                sums[c as usize / GROUP] += yj;
                            }
                        }
                        let mut g = vec![0.0; sums.len()];
                        streams.signs(0, &mut g);
                        let s = sums.iter().zip(&g).map(|(a, b)| a * b).sum();
                        Stats { s, v: sums.iter().map(|s| s * s).sum(), elements: count }
                    }
                    _ => {
                        streams.signs(0, &mut p);
                        let s = y
                            .iter()
                            .zip(&p)
                            .filter(|(yj, _)| yj.is_finite())
                            .fold(0.0, |a, (yj, pj)| a + yj * pj);
                        Stats { s, v: v_elements, elements: count }
                    }
                };
                assert_eq!(*st, want);
            }
        }
    }

    #[test]
    fn the_pair_profiles_equal_the_element_by_element_ones_bit_for_bit() {
        // Shapes around the eight rows side by side, the row blocks and the
        // column stripes (one column, not a multiple of 8 rows, wider than a
        // stripe, one long row), with zeros, NaN and infinities in both.
        let specials = [0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let bits = |p: &Profile| {
            let mut v: Vec<u64> =
                p.rows.iter().chain(&p.inverse_cols).map(|x| x.to_bits()).collect();
            v.push(p.total.to_bits());
            v
        };
        for (seed, (rows, cols), dtype) in [
            (1, (203, 1000), Dtype::F16),
            (2, (17, 1), Dtype::BF16),
            (3, (300, 515), Dtype::F32),
            (4, (1, 70_000), Dtype::BF16),
            (5, (8, 1536), Dtype::F16),
            (6, (1100, 64), Dtype::F32),
            // Five rows to a chunk (a Llama down projection's width): every
            // chunk is a rest of fewer than eight rows.
            (7, (23, 11008), Dtype::BF16),
        ] {
            let mut t = gaussian_matrix("w", rows, cols, dtype, seed);
            let size = dtype.size();
            for k in (0..rows * cols).step_by(89) {
                let x = specials[k % specials.len()];
                let bytes = match dtype {
                    Dtype::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                    Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
                    _ => x.to_le_bytes().to_vec(),
                };
                t.data[size * k..size * (k + 1)].copy_from_slice(&bytes);
            }
            let m = to_model(&[t]).unwrap_or_else(|e| panic!("{e}"));
            let t = m.tensor("w").unwrap_or_else(|| panic!("w"));
            // The other tensor: values of its own, specials elsewhere.
            let other: Vec<f64> = (0..rows * cols)
                .map(|k| match k % 61 {
                    0 => f64::from(specials[(k / 61) % specials.len()]),
                    _ => ((k as f64) * 0.618).sin() * 0.02,
                })
                .collect();
            let other32: Vec<f32> = other.iter().map(|&x| x as f32).collect();
            let (a, b) = Profile::of_pair(&t, other.as_slice(), cols);
            let (c, d) = Profile::of_pair_element_by_element(&t, &other, cols);
            assert_eq!((bits(&a), bits(&b)), (bits(&c), bits(&d)), "{rows} x {cols} f64");
            let (a, b) = Profile::of_pair(&t, other32.as_slice(), cols);
            let (c, d) = Profile::of_pair_element_by_element(&t, &other32, cols);
            assert_eq!((bits(&a), bits(&b)), (bits(&c), bits(&d)), "{rows} x {cols} f32");
            // The same values read from stored F32 bytes, a piece at a time.
            let bytes: Vec<u8> = other32.iter().flat_map(|x| x.to_le_bytes()).collect();
            let stored = Stored { dtype: Dtype::F32, bytes: bytes.into() };
            let (a, b) = Profile::of_pair(&t, &stored, cols);
            assert_eq!((bits(&a), bits(&b)), (bits(&c), bits(&d)), "{rows} x {cols} stored");
            // At any thread count.
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build();
            let one = one.unwrap_or_else(|e| panic!("{e}"));
            let (e, f) = one.install(|| Profile::of_pair(&t, other32.as_slice(), cols));
            assert_eq!((bits(&e), bits(&f)), (bits(&c), bits(&d)), "{rows} x {cols} one thread");
        }
    }

    #[test]
    fn blind_y_of_every_row_is_the_element_by_element_rule_bit_for_bit() {
        // Rows of different means (so each row's scale is not 1), with
        // zeros, NaN and infinities, and an all-zero column.
        let (rows, cols) = (97usize, 300usize);
        let mut t = gaussian_matrix("w", rows, cols, Dtype::F32, 21);
        let specials = [0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for k in 0..rows * cols {
            let (i, j) = (k / cols, k % cols);
            let x = f32::from_le_bytes([
                t.data[4 * k],
                t.data[4 * k + 1],
                t.data[4 * k + 2],
                t.data[4 * k + 3],
            ]);
            let x = match (j, k % 61) {
                (7, _) => 0.0,
                (_, 0) => specials[(k / 61) % specials.len()],
                _ => x * (1.0 + i as f32 * 0.37),
            };
            t.data[4 * k..4 * k + 4].copy_from_slice(&x.to_le_bytes());
        }
        let m = to_model(&[t]).unwrap_or_else(|e| panic!("{e}"));
        let t = m.tensor("w").unwrap_or_else(|| panic!("w"));
        let profile = Profile::of(&t);
        let mut x = Vec::new();
        decode_f64(t.dtype, &t.data(), &mut x);
        let (mut y, mut each) = (vec![0.0; cols], vec![0.0; cols]);
        for (i, row) in x.chunks(cols).enumerate() {
            row_y(i, 0, cols, row, &profile, None, &mut y, &mut Vec::new());
            row_y_each(i, 0, cols, row, &profile, None, &mut each);
            let bits = |v: &[f64]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&each), "row {i}");
            assert!(y[7].is_nan() && y.iter().filter(|v| v.is_finite()).count() > cols / 2);
        }
    }

    #[test]
    fn an_original_read_in_place_gives_the_gathered_originals_profiles_and_y_bit_for_bit() {
        // Suspect and original of the same shape (an unpermuted copy, or
        // `embed`'s own check), with zeros, NaN and infinities in both; the
        // original in every readable dtype class (exact in f32 or not).
        let specials = [0.0f64, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
        let profile_bits = |p: &Profile| {
            let mut v = bits(&p.rows);
            v.extend(bits(&p.inverse_cols));
            v.push(p.total.to_bits());
            v
        };
        for (seed, (rows, cols), (ds, d_o)) in [
            (1, (97, 300), (Dtype::BF16, Dtype::BF16)),
            (2, (5, CHUNK_ELEMENTS + 77), (Dtype::F16, Dtype::F32)),
            (3, (64, 33), (Dtype::F32, Dtype::F64)),
            (4, (1, 1), (Dtype::BF16, Dtype::F16)),
        ] {
            let with_specials = |mut t: crate::synth::SynthTensor, every: usize| {
                let size = t.dtype.size();
                for k in (0..rows * cols).step_by(every) {
                    let x = specials[(k / every) % specials.len()];
                    let mut one = vec![0u8; size];
                    crate::dtype::encode_nearest(t.dtype, x, &mut one);
                    t.data[size * k..size * (k + 1)].copy_from_slice(&one);
                }
                t
            };
            let suspect = with_specials(gaussian_matrix("s", rows, cols, ds, seed), 53);
            let original = with_specials(gaussian_matrix("o", rows, cols, d_o, seed + 10), 71);
            let m = to_model(&[suspect, original]).unwrap_or_else(|e| panic!("{e}"));
            let (s, o) = (
                m.tensor("s").unwrap_or_else(|| panic!("s")),
                m.tensor("o").unwrap_or_else(|| panic!("o")),
            );
            let identity = |n: usize| (0..n).collect::<Vec<usize>>();
            let o_data = o.data();
            let gathered = gathered(&o, &o_data, (rows, cols), &identity(rows), &identity(cols));
            let stored = ReferenceValues::Stored(Stored { dtype: o.dtype, bytes: o.data() });
            let mut refs = Vec::new();
            for values in [gathered, stored] {
                let (ps, po) = match &values {
                    ReferenceValues::F32(v) => Profile::of_pair(&s, v.as_slice(), cols),
                    ReferenceValues::F64(v) => Profile::of_pair(&s, v.as_slice(), cols),
                    ReferenceValues::Stored(v) => Profile::of_pair(&s, v, cols),
                };
                refs.push((ps, Reference { profile: po, values }));
            }
            let [(ps_g, ref_g), (ps_s, ref_s)] = &refs[..] else { panic!("two references") };
            assert_eq!(profile_bits(ps_g), profile_bits(ps_s), "seed {seed}: suspect profile");
            let (pg, pst) = (&ref_g.profile, &ref_s.profile);
            assert_eq!(profile_bits(pg), profile_bits(pst), "seed {seed}: original profile");
            let mut x = Vec::new();
            let (mut yg, mut ys) = (vec![0.0; cols], vec![0.0; cols]);
            let mut scratch = Vec::new();
            let size = s.dtype.size();
            let data = s.data();
            for i in 0..rows {
                decode_f64(s.dtype, &data[i * cols * size..(i + 1) * cols * size], &mut x);
                let ng = row_y(i, 0, cols, &x, ps_g, Some(ref_g), &mut yg, &mut scratch);
                let ns = row_y(i, 0, cols, &x, ps_s, Some(ref_s), &mut ys, &mut scratch);
                assert_eq!((ng, bits(&yg)), (ns, bits(&ys)), "seed {seed}: row {i}");
                // And element by element (the path of a row without a whole profile).
                row_y_each(i, 0, cols, &x, ps_s, Some(ref_s), &mut ys);
                assert_eq!(bits(&yg), bits(&ys), "seed {seed}: row {i}, element by element");
            }
        }
    }

    #[test]
    fn the_profiles_marking_builds_are_those_of_the_marked_tensor_bit_for_bit() {
        let bits = |p: &Profile| {
            let mut b: Vec<u64> =
                p.rows.iter().chain(&p.inverse_cols).map(|x| x.to_bits()).collect();
            b.push(p.total.to_bits());
            b
        };
        // Rows of one chunk and of several, chunks of more than one batch,
        // a short last chunk, f16 and bf16; a row longer than a chunk gives
        // no profile.
        for (rows, cols, dtype) in [
            (300, 576, Dtype::F16),
            (7, 1000, Dtype::BF16),
            (2203, 1000, Dtype::BF16),
            (23, 11008, Dtype::BF16),
            (1, CHUNK_ELEMENTS + 5, Dtype::F16),
        ] {
            let m = to_model(&[gaussian_matrix("w", rows, cols, dtype, 5)])
                .unwrap_or_else(|e| panic!("{e}"));
            let t = m.tensor("w").unwrap_or_else(|| panic!("w"));
            let release = TensorStreams::new(&MarkKey::from_bytes([3; 32]), "w");
            let strengths = Strengths::split(0.01, false);
            let (data, _, profile) =
                embed_tensor_profiled(&t, &Axes::default(), &release, None, strengths, None, true);
            let marked = t.with_data(&data);
            let Some(p) = profile else {
                assert!(cols > CHUNK_ELEMENTS, "{rows}x{cols}: no profile");
                continue;
            };
            assert_eq!(bits(&p.blind), bits(&Profile::of(&marked)), "{rows}x{cols}");
            let stored = Stored { dtype: t.dtype, bytes: t.data() };
            let (x, o) = Profile::of_pair(&marked, &stored, cols);
            let Some(pair) = &p.pair else { panic!("{rows}x{cols}: pair profiles asked for") };
            assert_eq!(bits(&pair.0), bits(&x), "{rows}x{cols}: the marked tensor pair profile");
            assert_eq!(bits(&pair.1), bits(&o), "{rows}x{cols}: the original pair profile");
            // The checks read them instead of computing them: the same
            // statistics.
            let axes = Axes::default();
            let aligned = Aligned { tensor: t, axes, residual: None };
            let keys = [&release];
            let check = |original: Option<&Aligned<'_>>, known| {
                detect_tensor_coded(&marked, &axes, original, &keys, None, known, &[]).0
            };
            assert_eq!(check(None, p.blind()), check(None, Known::default()), "{rows}x{cols}");
            let informed = check(Some(&aligned), p.informed());
            assert_eq!(informed, check(Some(&aligned), Known::default()), "{rows}x{cols}");
            assert!(informed[0].z() > 5.0, "{rows}x{cols}: informed z {}", informed[0].z());
        }
    }

    #[test]
    fn gathering_each_group_gives_the_sums_of_adding_each_element_to_its_group() {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for cols in [8usize, 13, 64, 576, 1003] {
            // A keyed-looking permutation of the ranks.
            let mut rank: Vec<u32> = (0..cols as u32).collect();
            for k in (1..cols).rev() {
                rank.swap(k, (next() % (k as u64 + 1)) as usize);
            }
            let members = group_members(&rank, cols).unwrap_or_else(|| panic!("{cols}"));
            for _ in 0..20 {
                let mut y: Vec<f64> = (0..cols)
                    .map(|_| match next() % 10 {
                        0 => f64::NAN,
                        1 => f64::INFINITY,
                        2 => 0.0,
                        _ => (next() >> 11) as f64 / (1u64 << 50) as f64 - 4.0,
                    })
                    .collect();
                let mut scattered = vec![0.0; groups(cols)];
                add_by_group(&y, &rank, &mut scattered);
                y.push(f64::NAN);
                let mut gathered = vec![7.0; groups(cols)];
                group_sums(&y, &members, &mut gathered);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&gathered), bits(&scattered), "{cols} columns");
            }
        }
        // Not a permutation: a group with nine columns is left to
        // `add_by_group`.
        assert!(group_members(&[0; 9], 9).is_none());
        assert!(group_members(&[0, 1], 3).is_none());
    }

    #[test]
    fn the_profile_sums_every_row_and_column_in_element_order() {
        // 2203 rows (not a multiple of the eight read side by side) of 1000
        // columns (65 rows to a chunk: 34 chunks, more than a batch), and 23
        // rows of 11008 (five rows to a chunk, none a group of eight), with
        // zeros, NaN and infinities.
        assert!(2203usize.div_ceil(rows_per_chunk(1000)) > PROFILE_BATCH);
        for (rows, cols) in [(2203usize, 1000usize), (23, 11008)] {
            let mut t = gaussian_matrix("w", rows, cols, Dtype::F16, 11);
            let specials = [0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
            for k in (0..rows * cols).step_by(97) {
                let x = half::f16::from_f32(specials[k % specials.len()]);
                t.data[2 * k..2 * k + 2].copy_from_slice(&x.to_le_bytes());
            }
            let m = to_model(&[t]).unwrap_or_else(|e| panic!("{e}"));
            let t = m.tensor("w").unwrap_or_else(|| panic!("w"));
            let got = Profile::of(&t);
            // Element by element: rows in column order, columns in row order
            // within each chunk of rows, chunks added in order.
            let mut x = Vec::new();
            decode_f64(t.dtype, &t.data(), &mut x);
            let block = rows_per_chunk(cols);
            let (mut col_sum, mut col_n) = (vec![0.0; cols], vec![0u64; cols]);
            let mut row_means = Vec::new();
            for chunk in x.chunks(block * cols) {
                let (mut cs, mut cn) = (vec![0.0; cols], vec![0u64; cols]);
                for row in chunk.chunks(cols) {
                    let (mut s, mut n) = (0.0, 0u64);
                    for (j, v) in row.iter().enumerate() {
                        if v.is_finite() && *v != 0.0 {
                            s += v.abs();
                            n += 1;
                            cs[j] += v.abs();
                            cn[j] += 1;
                        }
                    }
                    row_means.push(if n > 0 { s / n as f64 } else { 0.0 });
                }
                col_sum.iter_mut().zip(&cs).for_each(|(a, b)| *a += b);
                col_n.iter_mut().zip(&cn).for_each(|(a, b)| *a += b);
            }
            let total = col_sum.iter().sum::<f64>() / col_n.iter().sum::<u64>() as f64;
            let col_means: Vec<f64> =
                col_sum.iter().zip(&col_n).map(|(s, &n)| s / n as f64).collect();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
            // The builder the allocation's pass feeds, one chunk at a time,
            // gives the same profile.
            let mut builder = ProfileBuilder::new(cols).unwrap_or_else(|| panic!("a builder"));
            for chunk in x.chunks(builder.rows_per_chunk() * cols) {
                builder.add_chunk(chunk);
            }
            for p in [got, builder.finish()] {
                assert_eq!(bits(&p.rows), bits(&row_means));
                let inverse: Vec<f64> =
                    col_means.iter().map(|&c| if c > 0.0 { 1.0 / c } else { 0.0 }).collect();
                assert_eq!(bits(&p.inverse_cols), bits(&inverse));
                assert_eq!(p.total.to_bits(), total.to_bits());
            }
        }
        // A builder given no chunk gives the empty tensor's profile.
        let empty = ProfileBuilder::new(1000).unwrap_or_else(|| panic!("a builder")).finish();
        assert!(empty.rows.is_empty() && empty.inverse_cols.is_empty() && empty.total == 0.0);
    }

    fn one(dtype: Dtype) -> Model {
        to_model(&[gaussian_matrix("w", 512, 768, dtype, 4)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn mark(m: &Model, eps: f64) -> Model {
        let t = m.tensor("w").unwrap_or_else(|| panic!("w"));
        let streams = TensorStreams::new(&MarkKey::from_bytes([1; 32]), "w");
        let (data, fid) =
            embed_tensor(&t, &Axes::default(), &streams, None, Strengths::split(eps, false), None);
        assert!(
            (fid.relative_rms_change() - eps).abs() < 0.2 * eps,
            "{}",
            fid.relative_rms_change()
        );
        to_model(&[crate::synth::SynthTensor {
            name: "w".into(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            data,
        }])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn z(m: &Model, original: Option<&Model>, key: [u8; 32]) -> f64 {
        let t = m.tensor("w").unwrap_or_else(|| panic!("w"));
        let streams = TensorStreams::new(&MarkKey::from_bytes(key), "w");
        let aligned = original.map(|o| Aligned {
            tensor: o.tensor("w").unwrap_or_else(|| panic!("w")),
            axes: Axes::default(),
            residual: None,
        });
        detect_tensor(&t, &Axes::default(), aligned.as_ref(), &[&streams], None)[0].z()
    }

    #[test]
    fn blind_z_is_about_1_3_eps_sqrt_n_and_a_wrong_key_finds_nothing() {
        for dtype in [Dtype::F32, Dtype::BF16] {
            let m = one(dtype);
            let marked = mark(&m, 0.01);
            let expected = 1.3 * 0.01 * (512.0f64 * 768.0).sqrt();
            let got = z(&marked, None, [1; 32]);
            assert!(
                (got - expected).abs() < 0.25 * expected,
                "{dtype}: z {got}, expected {expected}"
            );
            assert!(z(&marked, None, [2; 32]).abs() < 5.0);
            assert!(z(&m, None, [1; 32]).abs() < 5.0);
            let informed = z(&marked, Some(&m), [1; 32]);
            assert!(informed > 10.0 * got, "{dtype}: informed {informed}");
        }
    }

    #[test]
    fn an_original_held_as_f32_gives_the_informed_z_of_one_held_as_f64_bit_for_bit() {
        // The same original values as BF16 (held as f32) and as F64 (held
        // as f64), with zeros and NaN among them.
        let mut bf = gaussian_matrix("w", 512, 768, Dtype::BF16, 4);
        for k in (0..512 * 768).step_by(89) {
            let x = if k % 2 == 0 { 0.0 } else { f32::NAN };
            bf.data[2 * k..2 * k + 2].copy_from_slice(&half::bf16::from_f32(x).to_le_bytes());
        }
        let as_f64 = |t: &crate::synth::SynthTensor| {
            let mut v = Vec::new();
            decode_f64(t.dtype, &t.data, &mut v);
            crate::synth::SynthTensor {
                dtype: Dtype::F64,
                data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ..t.clone()
            }
        };
        let original = to_model(&[bf.clone()]).unwrap_or_else(|e| panic!("{e}"));
        let wide = to_model(&[as_f64(&bf)]).unwrap_or_else(|e| panic!("{e}"));
        let marked = mark(&original, 0.01);
        let (narrow_z, wide_z) =
            (z(&marked, Some(&original), [1; 32]), z(&marked, Some(&wide), [1; 32]));
        assert!(narrow_z > 100.0, "{narrow_z}");
        assert_eq!(narrow_z.to_bits(), wide_z.to_bits(), "{narrow_z} {wide_z}");
    }

    #[test]
    fn diagonal_rescaling_and_sign_flips_leave_the_blind_z_unchanged() {
        let m = one(Dtype::F32);
        let marked = mark(&m, 0.01);
        let t = marked.tensor("w").unwrap_or_else(|| panic!("w"));
        let mut v = Vec::new();
        decode_f64(t.dtype, &t.data(), &mut v);
        for (k, x) in v.iter_mut().enumerate() {
            let (i, j) = (k / 768, k % 768);
            let a = ((i as f64) * 0.37).sin() * 2.0;
            let b = ((j as f64) * 0.11).cos() * 2.0;
            let sign = if (i + 3 * j) % 5 == 0 { -1.0 } else { 1.0 };
            *x *= a.exp() * b.exp() * sign;
        }
        let data: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
        let edited = to_model(&[crate::synth::SynthTensor {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![512, 768],
            data,
        }])
        .unwrap_or_else(|e| panic!("{e}"));
        let (before, after) = (z(&marked, None, [1; 32]), z(&edited, None, [1; 32]));
        assert!((after - before).abs() < 0.05 * before, "{before} -> {after}");
        assert!(z(&edited, Some(&m), [1; 32]) > 10.0 * before);
        let _ = Canonical::default();
    }
}
