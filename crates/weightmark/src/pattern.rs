//! Keyed, random-access pseudo-random streams for one tensor.
//!
//! For each marked tensor, two ChaCha20 keys are derived from the release mark
//! key and the tensor's canonical name (HKDF-SHA256, see `docs/formats.md`):
//!
//! * the **sign stream**: element `i` takes bit `i % 32` (least significant
//!   first) of 32-bit word `i / 32` of the ChaCha20 keystream; bit 1 is `+1`,
//!   bit 0 is `-1`. This is the Rademacher pattern `p_i`.
//! * the **dither stream**: element `i` takes 32-bit word `i` as the uniform
//!   number for stochastic rounding.
//!
//! ChaCha20 can seek to any word, so any chunk of a tensor is generated on its
//! own; chunks are processed in parallel and the result never depends on the
//! thread count. Words are the little-endian 32-bit words of the original
//! ChaCha20 keystream (64-bit block counter from 0, 64-bit nonce 0), as
//! `rand_chacha::ChaCha20Rng` produces them.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroizing;

use crate::key::{hkdf32, MarkKey};

const SALT_TENSOR: &[u8] = b"weightmark/v1 ss1 tensor";
const INFO_SIGN: &[u8] = b"weightmark/v1 ss1 sign\0";
const INFO_DITHER: &[u8] = b"weightmark/v1 ss1 dither\0";

/// A source of keyed signs addressed by position: a component's pattern.
pub trait SignSource: Sync {
    /// Writes the signs of positions `start .. start + out.len()` as `+1.0`/`-1.0`.
    fn signs(&self, start: u64, out: &mut [f64]);
}

impl SignSource for TensorStreams {
    fn signs(&self, start: u64, out: &mut [f64]) {
        TensorStreams::signs(self, start, out);
    }
}

/// The two keyed streams of one tensor.
pub struct TensorStreams {
    sign_key: Zeroizing<[u8; 32]>,
    dither_key: Zeroizing<[u8; 32]>,
}

impl TensorStreams {
    /// Derives the streams of tensor `name` under `mark_key`.
    pub fn new(mark_key: &MarkKey, name: &str) -> TensorStreams {
        let ikm = mark_key.as_bytes();
        TensorStreams {
            sign_key: hkdf32(SALT_TENSOR, ikm, &[INFO_SIGN, name.as_bytes()]),
            dither_key: hkdf32(SALT_TENSOR, ikm, &[INFO_DITHER, name.as_bytes()]),
        }
    }

    /// Writes the signs of elements `start .. start + out.len()` as `+1.0`/`-1.0`.
    pub fn signs(&self, start: u64, out: &mut [f64]) {
        if out.is_empty() {
            return;
        }
        let mut rng = ChaCha20Rng::from_seed(*self.sign_key);
        rng.set_word_pos(u128::from(start / 32));
        // Sign `start + k` is bit `(start + k) % 32` of word `(start + k) / 32`,
        // low bit first: the rest of the first word, then whole words.
        let skip = (start % 32) as usize;
        let (first, rest) = out.split_at_mut((32 - skip).min(out.len()));
        expand_bits(rng.next_u32() >> skip, first);
        for chunk in rest.chunks_mut(32) {
            expand_bits(rng.next_u32(), chunk);
        }
    }

    /// Writes the dither words of elements `start .. start + out.len()`.
    pub fn dither(&self, start: u64, out: &mut [u32]) {
        let mut rng = ChaCha20Rng::from_seed(*self.dither_key);
        rng.set_word_pos(u128::from(start));
        for u in out.iter_mut() {
            *u = rng.next_u32();
        }
    }
}

/// `out[b]` = `+1.0` where bit `b` of `word` is set, else `-1.0` (at most 32
/// values): a loop without a branch per value, which the compiler vectorises.
fn expand_bits(word: u32, out: &mut [f64]) {
    for (b, s) in out.iter_mut().enumerate().take(32) {
        *s = if (word >> b) & 1 == 1 { 1.0 } else { -1.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams() -> TensorStreams {
        TensorStreams::new(&MarkKey::from_bytes([3u8; 32]), "layer.weight")
    }

    #[test]
    fn random_access_matches_sequential() {
        let s = streams();
        let mut all = vec![0.0; 1000];
        s.signs(0, &mut all);
        for start in [0usize, 1, 31, 32, 33, 500, 977] {
            let mut part = vec![0.0; 1000 - start];
            s.signs(start as u64, &mut part);
            assert_eq!(part, all[start..], "start {start}");
        }
        let mut d_all = vec![0u32; 300];
        s.dither(0, &mut d_all);
        let mut d_part = vec![0u32; 100];
        s.dither(200, &mut d_part);
        assert_eq!(d_part, d_all[200..]);
    }

    /// The signs as the first version wrote them, one bit at a time: every
    /// mark ever made depends on them, so the word-at-a-time version must
    /// give exactly these.
    fn signs_bit_by_bit(s: &TensorStreams, start: u64, out: &mut [f64]) {
        let mut rng = ChaCha20Rng::from_seed(*s.sign_key);
        rng.set_word_pos(u128::from(start / 32));
        let mut bit = (start % 32) as u32;
        let mut word = rng.next_u32() >> bit;
        for v in out.iter_mut() {
            if bit == 32 {
                word = rng.next_u32();
                bit = 0;
            }
            *v = if word & 1 == 1 { 1.0 } else { -1.0 };
            word >>= 1;
            bit += 1;
        }
    }

    #[test]
    fn signs_word_at_a_time_are_the_bit_by_bit_signs() {
        let s = streams();
        for start in [0u64, 1, 5, 31, 32, 33, 63, 64, 65, 1000, 4093, (1 << 40) + 17] {
            for len in [0usize, 1, 2, 26, 27, 31, 32, 33, 64, 100, 513, 4096] {
                let (mut got, mut want) = (vec![0.0; len], vec![0.0; len]);
                s.signs(start, &mut got);
                signs_bit_by_bit(&s, start, &mut want);
                assert_eq!(got, want, "start {start}, len {len}");
            }
        }
    }

    #[test]
    fn signs_are_balanced_and_name_dependent() {
        let mut a = vec![0.0; 100_000];
        streams().signs(0, &mut a);
        let sum: f64 = a.iter().sum();
        assert!(sum.abs() < 5.0 * (a.len() as f64).sqrt(), "sum {sum}");
        let mut b = vec![0.0; 100_000];
        TensorStreams::new(&MarkKey::from_bytes([3u8; 32]), "other.weight").signs(0, &mut b);
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(dot.abs() < 5.0 * (a.len() as f64).sqrt(), "dot {dot}");
    }
}
