//! Collusion-secure recipient codes for `ss2` (`tardos1`): a symmetric
//! Tardos code over keyed groups of sign positions, its soft reading, the
//! accusation score and its exact false-accusation bound.
//!
//! **Code.** The release's code key (derived from the release component
//! key, so shared by every copy of the release and independent of every
//! recipient) gives, for each marked tensor, a keyed word per sign position
//! `s` of the recipient component ([`crate::ss2`]): bit 0 is a Rademacher
//! sign `r_s`, the other 31 bits put `s` in one of `G` groups. It also gives
//! each group a bias `p_g = sin^2(theta)` with `theta` uniform in
//! `[asin(sqrt(t)), pi/2 - asin(sqrt(t))]` (the arcsine density cut off at
//! `t`), rounded to a multiple of `2^-32`. A recipient's key gives each group
//! a uniform 32-bit word `u`; its bit is `x_g = [u < p_g 2^32]`, so
//! `P(x_g = 1) = p_g` exactly. The recipient component's sign at `s` is
//! `(2 x_g(s) - 1) r_s`: two copies agree exactly on every group where their
//! bits agree, so a coalition sees nothing where all its bits agree (the
//! marking assumption holds there by construction).
//!
//! **Reading.** Detection sums, per group, `T_g = sum r_s Y_s` and
//! `U_g = sum Y_s^2` over the group's sign positions (`Y_s`: the sum of the
//! detection values `y` sharing sign `s`, blind or informed, exactly what
//! the release component's statistic uses); the group's soft value is
//! `y_g = clip(T_g / sqrt(U_g), -CLIP, CLIP)`, a function of the suspect,
//! the original and the release's code key only.
//!
//! **Score.** Recipient `j`: `S_j = sum_g y_g f(x_jg, p_g)` with the
//! symmetric Tardos weights `f(1, p) = sqrt((1-p)/p)`,
//! `f(0, p) = -sqrt(p/(1-p))`; `z_j = S_j / sigma`, `sigma^2 = sum y_g^2`.
//!
//! **Bound.** For a recipient whose key the suspect does not depend on,
//! the bits `x_jg` are independent `Bernoulli(p_g)` given `y` and `p`, so the
//! terms `y_g f(x_jg, p_g)` are independent, have mean 0 and variance
//! exactly `y_g^2`, and are at most `M_g` (`y_g sqrt((1-p)/p)` for `y_g > 0`,
//! `|y_g| sqrt(p/(1-p))` otherwise). Bernstein's inequality with
//! `M = max_g M_g` gives `P(z_j >= u) <= exp(-u^2 / (2 (1 + rho u / 3)))`,
//! `rho = M / sigma`, whatever the suspect is (coalition edits included):
//! the attack can lower the colluders' scores, never raise an innocent's
//! bound. `rho <= CLIP sqrt((1-t)/t) / sigma` by the cutoff.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::key::{hkdf32, MarkKey};

/// Name of the code in certificates.
pub const TARDOS1: &str = "tardos1";
/// Group readings are clipped to `[-CLIP, CLIP]` (standard units).
pub const CLIP: f64 = 3.0;
/// Default number of groups `G`.
pub const DEFAULT_GROUPS: u32 = 16384;
/// Default bias cutoff `t`.
pub const DEFAULT_CUTOFF: f64 = 0.01;
/// Largest number of groups accepted.
pub const MAX_GROUPS: u32 = 1 << 24;

const SALT: &[u8] = b"weightmark/v2 tardos1";
const INFO_CODE: &[u8] = b"weightmark/v2 tardos1 release code\0";
const INFO_TENSOR: &[u8] = b"weightmark/v2 tardos1 tensor\0";
const INFO_BIAS: &[u8] = b"weightmark/v2 tardos1 bias\0";
const INFO_BITS: &[u8] = b"weightmark/v2 tardos1 recipient bits\0";

/// The parameters of a `tardos1` code.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TardosCode {
    /// Number of groups `G` (code length).
    pub groups: u32,
    /// Bias cutoff `t`: every `p_g` lies in `[t, 1 - t]`.
    pub cutoff: f64,
}

impl Default for TardosCode {
    fn default() -> Self {
        TardosCode { groups: DEFAULT_GROUPS, cutoff: DEFAULT_CUTOFF }
    }
}

impl TardosCode {
    /// A checked code: `1 <= groups <= MAX_GROUPS`, `0 < cutoff <= 0.25`.
    pub fn new(groups: u32, cutoff: f64) -> Result<TardosCode> {
        if groups == 0 || groups > MAX_GROUPS {
            return Err(Error::invalid(format!(
                "{groups} code groups is out of range: use 1 to {MAX_GROUPS} (default {DEFAULT_GROUPS})"
            )));
        }
        if !(cutoff > 0.0 && cutoff <= 0.25) {
            return Err(Error::invalid(format!(
                "code cutoff {cutoff} is out of range: use a value in (0, 0.25] (default {DEFAULT_CUTOFF})"
            )));
        }
        Ok(TardosCode { groups, cutoff })
    }

    /// The group of a keyed word (its upper 31 bits, scaled to `G`).
    fn group(self, word: u32) -> usize {
        ((u64::from(word >> 1) * u64::from(self.groups)) >> 31) as usize
    }
}

/// How the recipient component of an `ss2` release is built.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum RecipientCode {
    /// An independent Rademacher pattern per recipient (certificates
    /// without the field).
    #[default]
    Independent,
    /// A `tardos1` code.
    Tardos(TardosCode),
}

/// The certificate's `recipient_code` field.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecipientCodeRecord {
    /// `"tardos1"`.
    pub code: String,
    /// Number of groups `G`.
    pub groups: u32,
    /// Bias cutoff `t`.
    pub cutoff: f64,
}

impl RecipientCode {
    /// The certificate field: `None` for [`RecipientCode::Independent`].
    pub fn to_record(self) -> Option<RecipientCodeRecord> {
        match self {
            RecipientCode::Independent => None,
            RecipientCode::Tardos(c) => Some(RecipientCodeRecord {
                code: TARDOS1.to_string(),
                groups: c.groups,
                cutoff: c.cutoff,
            }),
        }
    }

    /// The code a certificate records (absent: independent), checked.
    pub fn from_record(record: Option<&RecipientCodeRecord>) -> Result<RecipientCode> {
        match record {
            None => Ok(RecipientCode::Independent),
            Some(r) if r.code == TARDOS1 => {
                Ok(RecipientCode::Tardos(TardosCode::new(r.groups, r.cutoff)?))
            }
            Some(r) => Err(Error::invalid(format!(
                "unknown recipient code '{}' (this version knows {TARDOS1})",
                r.code.escape_debug()
            ))),
        }
    }
}

/// A release's code key, derived from its release component key.
pub struct CodeKey {
    key: Zeroizing<[u8; 32]>,
}

impl CodeKey {
    /// The code key of the release whose release component key is `release`.
    pub fn of_release(release: &MarkKey) -> CodeKey {
        CodeKey { key: hkdf32(SALT, release.as_bytes(), &[INFO_CODE]) }
    }

    /// Whether two code keys are the same (the same release).
    pub fn same(&self, other: &CodeKey) -> bool {
        *self.key == *other.key
    }

    /// The keyed words of tensor `name`.
    pub fn tensor(&self, name: &str, code: TardosCode) -> CodeStream {
        CodeStream { key: hkdf32(SALT, self.key.as_ref(), &[INFO_TENSOR, name.as_bytes()]), code }
    }

    /// The biases of the `G` groups.
    pub fn biases(&self, code: TardosCode) -> Vec<Bias> {
        let key = hkdf32(SALT, self.key.as_ref(), &[INFO_BIAS]);
        let mut rng = ChaCha20Rng::from_seed(*key);
        let lo = code.cutoff.sqrt().asin();
        let hi = std::f64::consts::FRAC_PI_2 - lo;
        (0..code.groups)
            .map(|_| {
                // 53 uniform bits from two words.
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let p = (lo + u * (hi - lo)).sin().powi(2);
                Bias::new(p)
            })
            .collect()
    }
}

/// One group's bias, a multiple of `2^-32` strictly between 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bias {
    /// `p_g * 2^32`.
    threshold: u64,
}

impl Bias {
    /// The bias nearest `p` on the `2^-32` grid (at least one step from 0 and 1).
    pub fn new(p: f64) -> Bias {
        let scaled = (p * 4_294_967_296.0).round();
        Bias { threshold: (scaled.max(1.0) as u64).min((1u64 << 32) - 1) }
    }

    /// `p_g`.
    pub fn p(self) -> f64 {
        self.threshold as f64 / 4_294_967_296.0
    }

    /// The symmetric Tardos weight of bit `x`.
    pub fn weight(self, x: bool) -> f64 {
        let p = self.p();
        if x {
            ((1.0 - p) / p).sqrt()
        } else {
            -(p / (1.0 - p)).sqrt()
        }
    }
}

/// A recipient's bits, one per group: `x_g = 1` with probability `p_g`.
pub fn recipient_bits(recipient: &MarkKey, biases: &[Bias]) -> Vec<bool> {
    let key = hkdf32(SALT, recipient.as_bytes(), &[INFO_BITS]);
    let mut rng = ChaCha20Rng::from_seed(*key);
    biases.iter().map(|b| u64::from(rng.next_u32()) < b.threshold).collect()
}

/// The keyed words of one tensor: sign and group of each sign position.
pub struct CodeStream {
    key: Zeroizing<[u8; 32]>,
    code: TardosCode,
}

impl CodeStream {
    /// The number of groups.
    pub fn groups(&self) -> u32 {
        self.code.groups
    }

    /// Words of positions `start .. start + out.len()`.
    fn words(&self, start: u64, out: &mut [u32]) {
        let mut rng = ChaCha20Rng::from_seed(*self.key);
        rng.set_word_pos(u128::from(start));
        for w in out.iter_mut() {
            *w = rng.next_u32();
        }
    }

    /// Adds `Y` to the reading: `y[k]` sits at sign position
    /// `start + map[k]` (`start + k` without a map); NaN values are skipped.
    pub fn add(&self, start: u64, y: &[f64], map: Option<&[u32]>, reading: &mut Reading) {
        let len = match map {
            Some(m) => m.iter().map(|&c| c as usize + 1).max().unwrap_or(0),
            None => y.len(),
        };
        let mut words = vec![0u32; len];
        self.words(start, &mut words);
        let groups = reading.t.len();
        for (k, &v) in y.iter().enumerate() {
            let at = map.map_or(Some(k), |m| m.get(k).map(|&c| c as usize));
            let Some(&w) = at.and_then(|a| words.get(a)) else { continue };
            let g = self.code.group(w);
            if !v.is_finite() || g >= groups {
                continue;
            }
            let r = if w & 1 == 1 { v } else { -v };
            reading.t[g] += r;
            reading.u[g] += v * v;
        }
    }
}

/// The recipient component's signs of one tensor for one recipient:
/// `(2 x_g(s) - 1) r_s`.
pub struct CodedSigns<'a> {
    stream: CodeStream,
    /// `2 x_g - 1` per group.
    bits: &'a [f64],
}

impl<'a> CodedSigns<'a> {
    /// The signs of tensor `name` for the recipient whose `±1` per group are `bits`.
    pub fn new(key: &CodeKey, name: &str, code: TardosCode, bits: &'a [f64]) -> CodedSigns<'a> {
        CodedSigns { stream: key.tensor(name, code), bits }
    }
}

impl crate::pattern::SignSource for CodedSigns<'_> {
    fn signs(&self, start: u64, out: &mut [f64]) {
        let mut words = vec![0u32; out.len()];
        self.stream.words(start, &mut words);
        for (o, &w) in out.iter_mut().zip(&words) {
            let b = self.bits.get(self.stream.code.group(w)).copied().unwrap_or(0.0);
            *o = if w & 1 == 1 { b } else { -b };
        }
    }
}

/// `±1` per group from a recipient's bits.
pub fn bit_signs(bits: &[bool]) -> Vec<f64> {
    bits.iter().map(|&x| if x { 1.0 } else { -1.0 }).collect()
}

/// Per-group sums of one release's code over some tensors: they add up
/// across tensors, shards and machines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// `T_g = sum r_s Y_s`.
    pub t: Vec<f64>,
    /// `U_g = sum Y_s^2`.
    pub u: Vec<f64>,
}

impl Reading {
    /// An empty reading of `groups` groups.
    pub fn new(groups: u32) -> Reading {
        Reading { t: vec![0.0; groups as usize], u: vec![0.0; groups as usize] }
    }

    /// Adds another reading of the same code, group by group.
    pub fn merge(&mut self, other: &Reading) {
        if self.t.is_empty() {
            self.clone_from(other);
            return;
        }
        self.t.iter_mut().zip(&other.t).for_each(|(a, b)| *a += b);
        self.u.iter_mut().zip(&other.u).for_each(|(a, b)| *a += b);
    }

    /// The soft values `y_g = clip(T_g / sqrt(U_g))` (0 for an empty group).
    pub fn values(&self) -> Vec<f64> {
        self.t
            .iter()
            .zip(&self.u)
            .map(|(&t, &u)| if u > 0.0 { (t / u.sqrt()).clamp(-CLIP, CLIP) } else { 0.0 })
            .collect()
    }
}

/// One recipient's accusation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accusation {
    /// `S_j / sigma`.
    pub z: f64,
    /// Bernstein's `rho = M / sigma` for this reading.
    pub range: f64,
    /// `log10` of the bound on `P(z_j >= z)` for an innocent recipient.
    pub log10_p_value: f64,
}

/// `sigma` and `rho` of a reading under given biases: the same for every
/// recipient of the release.
pub fn scale(y: &[f64], biases: &[Bias]) -> (f64, f64) {
    let sigma = y.iter().map(|v| v * v).sum::<f64>().sqrt();
    let m = y
        .iter()
        .zip(biases)
        .map(|(&v, &b)| if v > 0.0 { v * b.weight(true) } else { v * b.weight(false) })
        .fold(0.0, f64::max);
    (sigma, if sigma > 0.0 { m / sigma } else { 0.0 })
}

/// The accusation score of the recipient with `bits` (see the module
/// documentation); `scale` is [`scale`]`(y, biases)`.
pub fn accuse(y: &[f64], biases: &[Bias], bits: &[bool], scale: (f64, f64)) -> Accusation {
    let (sigma, range) = scale;
    let s: f64 = y.iter().zip(biases.iter().zip(bits)).map(|(&v, (&b, &x))| v * b.weight(x)).sum();
    let z = if sigma > 0.0 { s / sigma } else { 0.0 };
    Accusation { z, range, log10_p_value: log10_bernstein(z, range) }
}

/// `log10` of Bernstein's bound `exp(-z^2 / (2 (1 + range z / 3)))` for
/// `z > 0` (0 otherwise); `range = 0` is Hoeffding's `exp(-z^2/2)`.
pub fn log10_bernstein(z: f64, range: f64) -> f64 {
    if z > 0.0 && range >= 0.0 {
        -z * z / (2.0 * (1.0 + range * z / 3.0)) / std::f64::consts::LN_10
    } else {
        0.0
    }
}

/// The smallest `z` whose bound is at most `10^log10_p` for this `range`.
pub fn z_threshold(log10_p: f64, range: f64) -> f64 {
    // z^2 / 2 = L (1 + range z / 3), L = -log10_p ln 10.
    let l = -log10_p * std::f64::consts::LN_10;
    let b = 2.0 * l * range / 3.0;
    (b + (b * b + 8.0 * l).sqrt()) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::SignSource;

    fn key(b: u8) -> MarkKey {
        MarkKey::from_bytes([b; 32])
    }

    fn recipient(j: u32) -> MarkKey {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&j.to_le_bytes());
        b[31] = 0xaa;
        MarkKey::from_bytes(b)
    }

    #[test]
    fn biases_follow_the_cut_arcsine_and_bits_follow_the_biases() {
        let code = TardosCode::new(20_000, 0.01).unwrap_or_else(|e| panic!("{e}"));
        let biases = CodeKey::of_release(&key(1)).biases(code);
        let ps: Vec<f64> = biases.iter().map(|b| b.p()).collect();
        assert!(ps.iter().all(|&p| (0.01 - 1e-9..=0.99 + 1e-9).contains(&p)));
        // Arcsine: P(p < 0.1) = (asin(sqrt .1) - asin(.1)) / (pi/2 - 2 asin(.1)).
        let lo = 0.1f64.asin();
        let want = (0.1f64.sqrt().asin() - lo) / (std::f64::consts::FRAC_PI_2 - 2.0 * lo);
        let got = ps.iter().filter(|&&p| p < 0.1).count() as f64 / ps.len() as f64;
        assert!((got - want).abs() < 0.01, "{got} vs {want}");
        // Another release, other biases.
        assert_ne!(CodeKey::of_release(&key(2)).biases(code)[..10], biases[..10]);
        // Bits: sum over recipients and groups of (x - p) is centred.
        let (mut dev, mut var) = (0.0, 0.0);
        for j in 0..20 {
            for (x, p) in recipient_bits(&recipient(j), &biases).iter().zip(&ps) {
                dev += f64::from(u8::from(*x)) - p;
                var += p * (1.0 - p);
            }
        }
        assert!(dev.abs() < 5.0 * var.sqrt(), "dev {dev}, sd {}", var.sqrt());
    }

    #[test]
    fn tardos_weights_have_mean_zero_and_variance_one() {
        for p in [0.01, 0.2, 0.5, 0.93] {
            let b = Bias::new(p);
            let q = b.p();
            let mean = q * b.weight(true) + (1.0 - q) * b.weight(false);
            let var = q * b.weight(true).powi(2) + (1.0 - q) * b.weight(false).powi(2);
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12, "p {p}: {mean} {var}");
        }
    }

    #[test]
    fn coded_signs_agree_between_copies_exactly_where_their_bits_agree() {
        let code = TardosCode::new(64, 0.05).unwrap_or_else(|e| panic!("{e}"));
        let ck = CodeKey::of_release(&key(3));
        let biases = ck.biases(code);
        let (a, b) =
            (recipient_bits(&recipient(1), &biases), recipient_bits(&recipient(2), &biases));
        let (sa, sb) = (bit_signs(&a), bit_signs(&b));
        let (ca, cb) = (CodedSigns::new(&ck, "w", code, &sa), CodedSigns::new(&ck, "w", code, &sb));
        let n = 5000;
        let (mut xa, mut xb) = (vec![0.0; n], vec![0.0; n]);
        ca.signs(0, &mut xa);
        cb.signs(0, &mut xb);
        let stream = ck.tensor("w", code);
        let mut words = vec![0u32; n];
        stream.words(0, &mut words);
        for (k, w) in words.iter().enumerate() {
            let g = code.group(*w);
            assert_eq!(xa[k] == xb[k], a[g] == b[g], "position {k}");
        }
        // Random access.
        let mut part = vec![0.0; 100];
        ca.signs(1234, &mut part);
        assert_eq!(part, xa[1234..1334]);
    }

    /// Reads a simulated suspect: each position's `Y` is the sum of the
    /// given copies' signs times `amp` plus unit noise.
    fn simulate(
        code: TardosCode,
        ck: &CodeKey,
        copies: &[Vec<f64>],
        combine: impl Fn(&[f64]) -> f64,
        n: usize,
        noise_seed: u64,
    ) -> Reading {
        let stream = ck.tensor("w", code);
        let signs: Vec<Vec<f64>> = copies
            .iter()
            .map(|bits| {
                let mut s = vec![0.0; n];
                CodedSigns::new(ck, "w", code, bits).signs(0, &mut s);
                s
            })
            .collect();
        let mut rng = crate::rng::stream(noise_seed, "noise");
        let y: Vec<f64> = (0..n)
            .map(|k| {
                let v: Vec<f64> = signs.iter().map(|s| s[k]).collect();
                let u1 = (rng.next_u32() as f64 + 0.5) / 4_294_967_296.0;
                let u2 = (rng.next_u32() as f64 + 0.5) / 4_294_967_296.0;
                combine(&v) + (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            })
            .collect();
        let mut reading = Reading::new(code.groups);
        stream.add(0, &y, None, &mut reading);
        reading
    }

    #[test]
    fn colluders_are_accused_and_innocents_stay_under_the_bound() {
        let code = TardosCode::new(4096, 0.01).unwrap_or_else(|e| panic!("{e}"));
        let ck = CodeKey::of_release(&key(5));
        let biases = ck.biases(code);
        let bits: Vec<Vec<bool>> =
            (0..40).map(|j| recipient_bits(&recipient(j), &biases)).collect();
        let signs: Vec<Vec<f64>> = bits.iter().map(|b| bit_signs(b)).collect();
        let amp = 0.6;
        // Midpoint of 3 copies: where they differ, nothing; else the mark.
        let midpoint = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            amp * (lo + hi) / 2.0
        };
        let reading = simulate(code, &ck, &signs[..3], midpoint, 200_000, 7);
        let y = reading.values();
        let sc = scale(&y, &biases);
        let log10_p_threshold = (1e-9f64 / 40.0).log10();
        let threshold = z_threshold(log10_p_threshold, sc.1);
        let acc: Vec<Accusation> = bits.iter().map(|b| accuse(&y, &biases, b, sc)).collect();
        for (j, a) in acc.iter().enumerate() {
            let accused = a.log10_p_value <= log10_p_threshold;
            assert_eq!(accused, a.z >= threshold, "threshold and bound agree");
            if j < 3 {
                assert!(accused, "colluder {j}: z {} (threshold {threshold})", a.z);
            } else {
                assert!(!accused && a.z < 5.0, "innocent {j}: z {}", a.z);
            }
        }
    }

    #[test]
    fn the_bound_holds_for_innocents_over_many_keys() {
        // A fixed reading with extreme groups; 4000 innocent recipients.
        let code = TardosCode::new(256, 0.01).unwrap_or_else(|e| panic!("{e}"));
        let ck = CodeKey::of_release(&key(6));
        let biases = ck.biases(code);
        let y: Vec<f64> = (0..256).map(|g| ((g * 37 % 101) as f64 / 50.0 - 1.0) * CLIP).collect();
        let sc = scale(&y, &biases);
        let zs: Vec<f64> = (0..4000)
            .map(|j| accuse(&y, &biases, &recipient_bits(&recipient(j), &biases), sc).z)
            .collect();
        let mean = zs.iter().sum::<f64>() / zs.len() as f64;
        let var = zs.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / zs.len() as f64;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "mean {mean}, var {var}");
        // Empirical tail against the bound, at a few levels.
        for u in [1.5, 2.0, 2.5, 3.0] {
            let tail = zs.iter().filter(|&&z| z >= u).count() as f64 / zs.len() as f64;
            let bound = 10f64.powf(log10_bernstein(u, sc.1));
            assert!(tail <= bound, "P(z >= {u}) = {tail} above the bound {bound}");
        }
    }

    #[test]
    fn bernstein_reduces_to_hoeffding_and_its_threshold_inverts_it() {
        let z = 6.0;
        assert!((log10_bernstein(z, 0.0) - crate::detect::log10_p_bound(z)).abs() < 1e-12);
        assert_eq!(log10_bernstein(-1.0, 0.3), 0.0);
        for range in [0.0, 0.05, 0.3] {
            let t = z_threshold(-11.0, range);
            assert!((log10_bernstein(t, range) + 11.0).abs() < 1e-9, "range {range}");
        }
        assert!(log10_bernstein(8.0, 0.2) > log10_bernstein(8.0, 0.0));
    }

    #[test]
    fn the_certificate_record_round_trips_and_unknown_codes_are_refused() {
        let code = RecipientCode::Tardos(TardosCode::default());
        assert_eq!(RecipientCode::from_record(code.to_record().as_ref()).ok(), Some(code));
        assert_eq!(RecipientCode::Independent.to_record(), None);
        let bad = RecipientCodeRecord { code: "boneh-shaw".into(), groups: 4, cutoff: 0.1 };
        assert!(RecipientCode::from_record(Some(&bad)).is_err());
        assert!(TardosCode::new(0, 0.01).is_err() && TardosCode::new(16, 0.5).is_err());
    }
}
