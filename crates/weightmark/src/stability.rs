//! How stable `ss2`'s canonical coordinates are under an edit that moves
//! nothing on purpose (the mark itself, drift, fine-tuning): a measurement
//! for docs/ss2.md, not part of detection.
//!
//! For such an edit the right answer is known: stored channel, neuron or
//! head `i` of the suspect is stored channel, neuron or head `i` of the
//! original. Every index that the suspect's canonical coordinates put
//! anywhere else is a position that moved, and its marked weights meet other
//! signs (lost signal, never a false detection: the coordinates do not
//! depend on the key).

use crate::canonical::{Canonical, NeuronSketch, ResidualSketch};
use crate::heads::HeadSketch;
use crate::model::Model;

/// Positions of the suspect's canonical coordinates that moved from the
/// original's (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CanonicalMoves {
    /// Residual channels (0 without a Llama-layout embedding).
    pub residual_channels: usize,
    /// Channels whose canonical rank by embedding-column magnitude alone
    /// (what a certificate without a sketch gives) differs from the
    /// original's.
    pub residual_moved_by_magnitude: usize,
    /// Channels whose rank found through the original's residual sketch
    /// differs from the original's.
    pub residual_moved_by_sketch: usize,
    /// Channels the sketch found sign-flipped.
    pub residual_flipped: usize,
    /// MLP neurons over all layers.
    pub neurons: usize,
    /// Neurons the neuron sketch mapped to another original neuron.
    pub neurons_moved: usize,
    /// Query heads over all layers.
    pub heads: usize,
    /// Query heads the head sketch mapped to another original head.
    pub heads_moved: usize,
}

/// How far `suspect`'s canonical coordinates, found blind through the
/// sketches a certificate of `original` would carry, moved from
/// `original`'s own.
pub fn canonical_moves(original: &Model, suspect: &Model) -> CanonicalMoves {
    let co = Canonical::of(original);
    let mut moves = CanonicalMoves { residual_channels: co.hidden(), ..Default::default() };
    let differ = |a: &[u32], b: &[u32]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let by_magnitude = Canonical::of(suspect);
    moves.residual_moved_by_magnitude = differ(&by_magnitude.rank, &co.rank);
    let found = ResidualSketch::of(original, &co).and_then(|s| s.order_of(suspect));
    let (canonical, flipped) = match found {
        Some(found) => found,
        None => (by_magnitude, Vec::new()),
    };
    moves.residual_moved_by_sketch = differ(&canonical.rank, &co.rank);
    moves.residual_flipped = flipped.iter().filter(|&&f| f).count();
    let moved = |map: &[u32]| map.iter().enumerate().filter(|&(i, &m)| m as usize != i).count();
    if let Some(sketch) = NeuronSketch::of(original, &co) {
        for map in sketch.neuron_maps(suspect, &canonical, &flipped).into_iter().flatten() {
            moves.neurons += map.len();
            moves.neurons_moved += moved(&map);
        }
    }
    if let Some(sketch) = HeadSketch::of(original, &co) {
        for map in sketch.head_maps(suspect, &canonical, &flipped).into_iter().flatten() {
            moves.heads += map.q.len();
            moves.heads_moved += moved(&map.q);
        }
    }
    moves
}
