//! Seeded, random-access Gaussian numbers for synthetic models and attacks
//! (not for the mark itself, which uses [`crate::pattern`]).

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// A ChaCha20 stream derived from a seed and a name.
pub(crate) fn stream(seed: u64, name: &str) -> ChaCha20Rng {
    let mut h = Sha256::new();
    h.update(b"weightmark/v1 synthetic\0");
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    ChaCha20Rng::from_seed(h.finalize().into())
}

/// Fills `out` with standard normal numbers; element `i` of the stream uses
/// words `2i` and `2i + 1` (Box-Muller), so chunks can be filled separately.
pub(crate) fn fill_normal(rng: &mut ChaCha20Rng, start: u64, out: &mut [f64]) {
    rng.set_word_pos(u128::from(start) * 2);
    for x in out.iter_mut() {
        let u1 = (f64::from(rng.next_u32()) + 0.5) / 4_294_967_296.0;
        let u2 = f64::from(rng.next_u32()) / 4_294_967_296.0;
        *x = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_moments_and_random_access() {
        let mut rng = stream(1, "t");
        let mut a = vec![0.0; 200_000];
        fill_normal(&mut rng, 0, &mut a);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "{mean} {var}");
        let mut b = vec![0.0; 10];
        fill_normal(&mut rng, 1000, &mut b);
        assert_eq!(b, a[1000..1010]);
    }
}
