//! Element types of safetensors files and the conversions the mark needs.
//!
//! Marking reads elements into `f64`, adds the mark, and writes them back in
//! the tensor's own dtype with *keyed stochastic rounding*: a value `v` that
//! falls between two representable neighbours `lo < v < hi` becomes `hi` with
//! probability `(v - lo) / (hi - lo)` and `lo` otherwise. The expected result
//! is exactly `v`, so a mark much smaller than the dtype's spacing (common in
//! bf16) still shifts every element by `a * p` on average instead of vanishing
//! under round-to-nearest. The uniform numbers come from a keyed stream (see
//! [`crate::pattern`]) so the output is reproducible.

use half::{bf16, f16};

/// A safetensors element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits.
    F8E5M2,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits (no infinities).
    F8E4M3,
    /// 8-bit exponent-only scale format.
    F8E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// Complex number of two f32.
    C64,
}

impl Dtype {
    /// Every dtype, in a fixed order.
    pub const ALL: [Dtype; 17] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::F8E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
        Dtype::C64,
    ];

    /// Parses the dtype name used in safetensors headers (`"F32"`, `"BF16"`, ...).
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The dtype's name as written in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::C64 => "C64",
        }
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 | Dtype::F8E8M0 => {
                1
            }
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 | Dtype::C64 => 8,
        }
    }

    /// Whether a mark can be written into tensors of this dtype.
    pub fn is_markable(self) -> bool {
        matches!(self, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }

    /// Whether detection can read tensors of this dtype as real numbers.
    pub fn is_readable(self) -> bool {
        self.is_markable() || matches!(self, Dtype::F8E4M3 | Dtype::F8E5M2)
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes little-endian elements of a readable float dtype into `out`
/// (cleared first). Returns `false` (and leaves `out` empty) for a dtype that
/// [`Dtype::is_readable`] rejects. A trailing partial element is ignored.
pub fn decode_f64(dtype: Dtype, bytes: &[u8], out: &mut Vec<f64>) -> bool {
    match dtype {
        Dtype::F64 => {
            out.clear();
            out.extend(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
            )
        }
        Dtype::F32 => {
            out.clear();
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            )
        }
        Dtype::F16 => decode_f16(bytes, out),
        Dtype::BF16 => {
            out.clear();
            decode_bf16(bytes, out)
        }
        Dtype::F8E4M3 => {
            out.clear();
            out.extend(bytes.iter().map(|&b| f8_e4m3_to_f64(b)))
        }
        Dtype::F8E5M2 => {
            out.clear();
            out.extend(bytes.iter().map(|&b| f8_e5m2_to_f64(b)))
        }
        _ => {
            out.clear();
            return false;
        }
    }
    true
}

/// The F16 case of [`decode_f64`], from the bits (sign, exponent and
/// mantissa moved into place; subnormals as `mantissa · 2^-24`), without a
/// branch per element, so the loop vectorises. Every finite value, infinity
/// and zero converts exactly, so the result equals [`f16::to_f64`] element
/// by element (NaN stays NaN; unit test over all 65,536 patterns).
fn decode_f16(bytes: &[u8], out: &mut Vec<f64>) {
    let n = bytes.len() / 2;
    // Every element is overwritten: a buffer reused at the same length is
    // not refilled with zeros first.
    out.truncate(n);
    out.resize(n, 0.0);
    if !crate::f16c::f16_to_f64(bytes, out) {
        f16_bits_to_f64(bytes, out);
    }
}

#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn f16_bits_to_f64(bytes: &[u8], out: &mut [f64]) {
    // Through the f32 with the same value (eight lanes to a vector, not four).
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f64::from(f16_value(u16::from_le_bytes([c[0], c[1]])));
    }
}

/// Little-endian F16 `bytes` as f32 (every value exactly; NaN stays NaN).
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
pub(crate) fn f16_bits_to_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16_value(u16::from_le_bytes([c[0], c[1]]));
    }
}

/// The f32 of F16 bits `h`: sign, exponent and mantissa moved into place,
/// subnormals as `mantissa · 2^-24`, with selects instead of branches.
#[inline(always)]
fn f16_value(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    let normal = sign | ((exp + 112) << 23) | (man << 13);
    let special = sign | (0xff << 23) | (man << 13);
    let subnormal = ((man as i32 as f32) * (1.0 / 16_777_216.0)).to_bits() | sign;
    let bits = if exp == 0 {
        subnormal
    } else if exp == 0x1f {
        special
    } else {
        normal
    };
    f32::from_bits(bits)
}

/// The BF16 case of [`decode_f64`]: the bits are the high half of an f32,
/// which converts to f64 exactly.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn decode_bf16(bytes: &[u8], out: &mut Vec<f64>) {
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| f64::from(f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))),
    );
}

/// Decodes an OCP FP8 E4M3 ("fn": no infinities, one NaN pattern) byte.
pub fn f8_e4m3_to_f64(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let man = f64::from(b & 0x07);
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f64::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f64.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f64.powi(exp - 7)
    }
}

/// Decodes an OCP FP8 E5M2 byte (IEEE-like, with infinities and NaNs).
pub fn f8_e5m2_to_f64(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 2) & 0x1f);
    let man = f64::from(b & 0x03);
    match exp {
        0 => sign * man / 4.0 * 2f64.powi(-14),
        0x1f if man == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        _ => sign * (1.0 + man / 4.0) * 2f64.powi(exp - 15),
    }
}

/// Rounds each `values[i]` to a markable dtype with keyed stochastic rounding
/// (uniform number `uniforms[i]`) and writes its little-endian bytes into
/// element `i` of `out`. An element whose value is not finite, or would
/// overflow the dtype, is left as it was in `out`. Other dtypes leave `out`
/// untouched.
pub fn encode_stochastic(dtype: Dtype, values: &[f64], uniforms: &[u32], out: &mut [u8]) {
    match dtype {
        Dtype::F64 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(8)) {
                if v.is_finite() {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        Dtype::F32 => encode_with::<4, 23>(values, uniforms, out, |v, u| {
            round_stochastic_bits(v, u, 23, |b| (b as f32).to_bits().into())
                .map(|bits| f32::from_bits(bits as u32))
                .or_else(|| round_stochastic(v, u))
                .map(f32::to_le_bytes)
        }),
        Dtype::F16 => encode_with::<2, 10>(values, uniforms, out, |v, u| {
            round_stochastic_f16_bits(v, u)
                .map(f16::from_bits)
                .or_else(|| round_stochastic::<f16>(v, u))
                .map(f16::to_le_bytes)
        }),
        Dtype::BF16 => encode_with::<2, 7>(values, uniforms, out, |v, u| {
            round_stochastic_bits(v, u, 7, |b| bf16::from_f64(b).to_bits().into())
                .map(|bits| bf16::from_bits(bits as u16))
                .or_else(|| round_stochastic(v, u))
                .map(bf16::to_le_bytes)
        }),
        _ => {}
    }
}

/// Elements rounded side by side by [`stochastic_lanes`] before a block is
/// written.
const LANE_BLOCK: usize = 256;

/// The loop of [`encode_stochastic`] for one narrow type of `N` bytes and
/// `M` stored mantissa bits: blocks whose every element is in the type's
/// normal range (nearly all of a model) are rounded side by side by
/// [`stochastic_lanes`]; a block with any other element goes through
/// `round` one element at a time. Both make the same choice for every
/// element (a test compares them).
fn encode_with<const N: usize, const M: u32>(
    values: &[f64],
    uniforms: &[u32],
    out: &mut [u8],
    round: impl Fn(f64, u32) -> Option<[u8; N]>,
) {
    let mut bits = [0u32; LANE_BLOCK];
    let blocks = values.chunks(LANE_BLOCK).zip(uniforms.chunks(LANE_BLOCK));
    for ((v, u), o) in blocks.zip(out.chunks_mut(LANE_BLOCK * N)) {
        let len = v.len().min(u.len()).min(o.len() / N);
        let bits = &mut bits[..len];
        if stochastic_lanes::<M>(&v[..len], &u[..len], bits) {
            for (b, o) in bits.iter().zip(o.chunks_exact_mut(N)) {
                o.copy_from_slice(&b.to_le_bytes()[..N]);
            }
            continue;
        }
        for ((&v, &u), o) in v.iter().zip(u).zip(o.chunks_exact_mut(N)) {
            if let Some(bytes) = round(v, u) {
                o.copy_from_slice(&bytes);
            }
        }
    }
}

/// Keyed stochastic rounding of each `values[k]` (uniform `uniforms[k]`)
/// to the binary type with `M` stored mantissa bits (10: f16, 7: bf16, 23:
/// f32), its bits into `bits[k]`, lane by lane without a branch: the
/// arithmetic of [`round_stochastic_f16_bits`] and
/// [`round_stochastic_bits`] (truncate the f64 mantissa to `M` bits and
/// rebase the exponent for the lower neighbour; the discarded bits `frac`
/// against the uniform for "up"). Returns whether every value was in the
/// range those fast paths take (f16: `[2^-14, 65504)`; f32 and bf16:
/// `[2^-126, 1e38)`); where one was not, `bits` is meaningless for it and
/// the caller rounds the block another way.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn stochastic_lanes<const M: u32>(values: &[f64], uniforms: &[u32], bits: &mut [u32]) -> bool {
    let (min, max, rebias, sign_bit) = if M == 10 {
        (6.103515625e-5, 65504.0, 1008u64, 15)
    } else {
        (1.1754943508222875e-38, 1.0e38, 896u64, if M == 23 { 31 } else { 15 })
    };
    let shift = 52 - M;
    let mut all = true;
    for ((&v, &u), b) in values.iter().zip(uniforms).zip(bits.iter_mut()) {
        let magnitude = v.abs();
        all &= (magnitude >= min) & (magnitude < max);
        let raw = magnitude.to_bits();
        let frac = raw & ((1u64 << shift) - 1);
        let exponent = (raw >> 52).wrapping_sub(rebias);
        let lower = (exponent << M) | ((raw >> shift) & ((1u64 << M) - 1));
        // uniform / 2^32 < frac / 2^shift, in exact integer arithmetic
        // (both sides below 2^64).
        let up = if shift >= 32 {
            (u64::from(u) << (shift - 32)) < frac
        } else {
            u64::from(u) < (frac << (32 - shift))
        };
        let sign = u64::from(v.is_sign_negative()) << sign_bit;
        *b = (lower.wrapping_add(u64::from(up)) | sign) as u32;
    }
    all
}

/// Fast path of keyed stochastic rounding for a binary float type with f32's
/// exponent range (f32, bf16) and `mantissa` stored bits, on the bits of `v`:
/// truncating the magnitude to `mantissa` bits gives the lower neighbour,
/// the truncated bits `frac` give `P(up) = frac / 2^shift` exactly, and
/// "up" is the next magnitude (bits + 1). Returns the result's bits, or
/// `None` outside the normal range (the caller falls back to
/// [`round_stochastic`], which makes the same choice for every `uniform`).
#[inline]
fn round_stochastic_bits(
    v: f64,
    uniform: u32,
    mantissa: u32,
    to_bits: impl Fn(f64) -> u64,
) -> Option<u64> {
    const MIN_NORMAL: f64 = 1.1754943508222875e-38; // f32::MIN_POSITIVE
    const MAX_SAFE: f64 = 1.0e38; // well inside the range of f32 and bf16
    let magnitude = v.abs();
    if !(MIN_NORMAL..MAX_SAFE).contains(&magnitude) {
        return None;
    }
    let shift = 52 - mantissa;
    let bits = magnitude.to_bits();
    let frac = bits & ((1u64 << shift) - 1);
    // Exactly representable in the target type: the conversion is exact.
    let lower = to_bits(f64::from_bits(bits - frac));
    // uniform / 2^32 < frac / 2^shift, in exact integer arithmetic.
    let up = (u128::from(uniform) << shift) < (u128::from(frac) << 32);
    let sign = if v.is_sign_negative() { 1u64 << (8 * byte_width(mantissa) - 1) } else { 0 };
    Some((lower + u64::from(up)) | sign)
}

/// The fast path of keyed stochastic rounding for f16 (10 stored mantissa
/// bits, exponents -14 to 15), as [`round_stochastic_bits`] is for f32 and
/// bf16: for a magnitude in f16's normal range below its largest finite
/// value, truncating the f64 mantissa to 10 bits gives the lower neighbour,
/// whose f16 bits are the rebased exponent and the kept mantissa bits; the
/// 42 discarded bits give `P(up)` exactly and "up" is the next magnitude
/// (bits + 1, at most the largest finite f16). Returns the bits, or `None`
/// for subnormal, zero, huge or non-finite values (the caller falls back to
/// [`round_stochastic`], which makes the same choice for every `uniform`).
#[inline]
fn round_stochastic_f16_bits(v: f64, uniform: u32) -> Option<u16> {
    const MIN_NORMAL: f64 = 6.103515625e-5; // 2^-14
    const MAX_FINITE: f64 = 65504.0;
    let magnitude = v.abs();
    if !(MIN_NORMAL..MAX_FINITE).contains(&magnitude) {
        return None;
    }
    const SHIFT: u32 = 52 - 10;
    let bits = magnitude.to_bits();
    let frac = bits & ((1u64 << SHIFT) - 1);
    // f64 exponent e + 1023 becomes f16 exponent e + 15: subtract 1008.
    let exponent = (bits >> 52) - 1008;
    let lower = (exponent << 10) | ((bits >> SHIFT) & 0x3ff);
    let up = (u128::from(uniform) << SHIFT) < (u128::from(frac) << 32);
    let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
    u16::try_from(lower + u64::from(up)).ok().map(|b| b | sign)
}

/// Width in bytes of the type with `mantissa` stored bits (f32 or bf16).
const fn byte_width(mantissa: u32) -> u32 {
    if mantissa == 23 {
        4
    } else {
        2
    }
}

/// Rounds `v` to a markable dtype (round to nearest, ties to even) and writes
/// the little-endian bytes into `out`. Returns `false`, writing nothing, when
/// the result would not be finite.
pub fn encode_nearest(dtype: Dtype, v: f64, out: &mut [u8]) -> bool {
    if !v.is_finite() {
        return false;
    }
    match dtype {
        Dtype::F64 => out.copy_from_slice(&v.to_le_bytes()),
        Dtype::F32 if (v as f32).is_finite() => out.copy_from_slice(&(v as f32).to_le_bytes()),
        Dtype::F16 if f16::from_f64(v).is_finite() => {
            out.copy_from_slice(&f16::from_f64(v).to_le_bytes())
        }
        Dtype::BF16 if bf16::from_f64(v).is_finite() => {
            out.copy_from_slice(&bf16::from_f64(v).to_le_bytes())
        }
        _ => return false,
    }
    true
}

/// The operations stochastic rounding needs from a narrow float type.
trait NarrowFloat: Copy {
    fn from_f64_nearest(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn next_up(self) -> Self;
    fn next_down(self) -> Self;
}

impl NarrowFloat for f32 {
    fn from_f64_nearest(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn next_up(self) -> Self {
        f32::next_up(self)
    }
    fn next_down(self) -> Self {
        f32::next_down(self)
    }
}

/// Next representable value above or below a 16-bit float given by its bits,
/// for finite inputs (sign-magnitude encoding, as for every IEEE-like type).
fn step_bits16(bits: u16, up: bool) -> u16 {
    let negative = bits & 0x8000 != 0;
    let magnitude = bits & 0x7fff;
    match (magnitude == 0, negative == up) {
        // +-0 stepping away from zero: smallest subnormal of the right sign.
        (true, _) => {
            if up {
                0x0001
            } else {
                0x8001
            }
        }
        // Moving toward zero: magnitude shrinks.
        (false, true) => bits - 1,
        // Moving away from zero: magnitude grows.
        (false, false) => bits + 1,
    }
}

macro_rules! narrow_half {
    ($t:ty) => {
        impl NarrowFloat for $t {
            fn from_f64_nearest(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn next_up(self) -> Self {
                <$t>::from_bits(step_bits16(self.to_bits(), true))
            }
            fn next_down(self) -> Self {
                <$t>::from_bits(step_bits16(self.to_bits(), false))
            }
        }
    };
}
narrow_half!(f16);
narrow_half!(bf16);

/// Keyed stochastic rounding of `v` to `T`; `None` when `v` or the result
/// would not be finite.
///
/// Works on the magnitude (IEEE grids are symmetric about zero): with `lo`
/// and `hi` the representable magnitudes around `|v|`, the result has
/// magnitude `hi` iff `uniform / 2^32 < (|v| - lo) / (hi - lo)`, then takes
/// the sign of `v`. Both comparisons are exact in `f64` (`hi - lo` is a power
/// of two), so [`round_stochastic_bits`] makes the very same choice.
#[inline]
fn round_stochastic<T: NarrowFloat>(v: f64, uniform: u32) -> Option<T> {
    let magnitude = v.abs();
    let nearest = T::from_f64_nearest(magnitude);
    let nv = nearest.to_f64();
    if !nv.is_finite() || !magnitude.is_finite() {
        return None;
    }
    let signed = |x: T| if v.is_sign_negative() { T::from_f64_nearest(-x.to_f64()) } else { x };
    if nv == magnitude {
        return Some(signed(nearest));
    }
    let (lo, hi) =
        if nv < magnitude { (nearest, nearest.next_up()) } else { (nearest.next_down(), nearest) };
    let (lo_v, hi_v) = (lo.to_f64(), hi.to_f64());
    if !hi_v.is_finite() {
        return None;
    }
    let take_hi = f64::from(uniform) * (hi_v - lo_v) < (magnitude - lo_v) * 4_294_967_296.0;
    Some(signed(if take_hi { hi } else { lo }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
        }
        assert_eq!(Dtype::from_name("F4"), None);
    }

    #[test]
    fn f8_known_values() {
        assert_eq!(f8_e4m3_to_f64(0x38), 1.0);
        assert_eq!(f8_e4m3_to_f64(0x7e), 448.0);
        assert!(f8_e4m3_to_f64(0x7f).is_nan());
        assert_eq!(f8_e4m3_to_f64(0x01), 2f64.powi(-9));
        assert_eq!(f8_e5m2_to_f64(0x3c), 1.0);
        assert_eq!(f8_e5m2_to_f64(0x7b), 57344.0);
        assert_eq!(f8_e5m2_to_f64(0x7c), f64::INFINITY);
        assert_eq!(f8_e5m2_to_f64(0xbc), -1.0);
    }

    #[test]
    fn stochastic_rounding_is_unbiased_in_bf16() {
        // 1.0 + a quarter of bf16's spacing at 1.0 (2^-7): P(up) must be 1/4.
        let spacing = 2f64.powi(-7);
        let v = 1.0 + spacing / 4.0;
        let n = 100_000u32;
        let mut sum = 0.0;
        for i in 0..n {
            let u = i.wrapping_mul(2_654_435_761); // a well-spread sequence of u32
            let x = round_stochastic::<bf16>(v, u).map(|x| x.to_f64()).unwrap_or(f64::NAN);
            assert!(x == 1.0 || x == 1.0 + spacing);
            sum += x;
        }
        let mean = sum / f64::from(n);
        assert!((mean - v).abs() < spacing * 0.01, "mean {mean} vs {v}");
    }

    #[test]
    fn stochastic_rounding_handles_negative_and_zero() {
        for u in [0u32, u32::MAX / 2, u32::MAX] {
            let x = round_stochastic::<f16>(-1e-9, u).map(|x| x.to_f64()).unwrap_or(f64::NAN);
            assert!((-6e-8..=0.0).contains(&x), "{x}");
            let y = round_stochastic::<bf16>(-0.3, u).map(|x| x.to_f64()).unwrap_or(f64::NAN);
            assert!((y + 0.3).abs() < 0.002, "{y}");
        }
        assert!(round_stochastic::<f16>(1e6, 0).is_none());
    }

    #[test]
    fn fast_path_makes_the_same_choice_as_the_generic_rounding() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        for _ in 0..200_000 {
            let r = next();
            let v = ((r >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 10f64.powi((r % 9) as i32 - 6);
            let u = next() as u32;
            let fast32 = round_stochastic_bits(v, u, 23, |b| (b as f32).to_bits().into())
                .map(|b| f32::from_bits(b as u32));
            assert_eq!(fast32, round_stochastic::<f32>(v, u), "f32 v={v} u={u}");
            let fast16 = round_stochastic_bits(v, u, 7, |b| bf16::from_f64(b).to_bits().into())
                .map(|b| bf16::from_bits(b as u16));
            let slow16 = round_stochastic::<bf16>(v, u);
            assert_eq!(fast16.map(bf16::to_bits), slow16.map(bf16::to_bits), "bf16 v={v} u={u}");
        }
    }

    /// A xorshift64 generator from `state`: test inputs, not keys.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Each element through the per-element fast paths and their
    /// fallback, as `encode_stochastic` rounded before it worked in lanes.
    fn encode_one_at_a_time(dtype: Dtype, values: &[f64], uniforms: &[u32], out: &mut [u8]) {
        for (k, (&v, &u)) in values.iter().zip(uniforms).enumerate() {
            let bytes: Option<Vec<u8>> = match dtype {
                Dtype::F16 => round_stochastic_f16_bits(v, u)
                    .map(f16::from_bits)
                    .or_else(|| round_stochastic::<f16>(v, u))
                    .map(|x| x.to_le_bytes().to_vec()),
                Dtype::BF16 => {
                    round_stochastic_bits(v, u, 7, |b| bf16::from_f64(b).to_bits().into())
                        .map(|b| bf16::from_bits(b as u16))
                        .or_else(|| round_stochastic(v, u))
                        .map(|x: bf16| x.to_le_bytes().to_vec())
                }
                _ => round_stochastic_bits(v, u, 23, |b| (b as f32).to_bits().into())
                    .map(|b| f32::from_bits(b as u32))
                    .or_else(|| round_stochastic(v, u))
                    .map(|x: f32| x.to_le_bytes().to_vec()),
            };
            if let Some(b) = bytes {
                let n = b.len();
                out[k * n..(k + 1) * n].copy_from_slice(&b);
            }
        }
    }

    #[test]
    fn rounding_in_lanes_writes_what_rounding_one_element_at_a_time_writes() {
        let mut next = xorshift(0x5851_f42d_4c95_7f2du64);
        // Weights of every scale a model has, with edge uniforms; then
        // blocks salted with zeros, subnormals, huge values, infinities and
        // NaN (rounded one at a time), and every f16 value with midpoints.
        let mut values: Vec<f64> = (0..300_000)
            .map(|_| {
                let r = next();
                let m = 1.0 + (r >> 12) as f64 / (1u64 << 52) as f64;
                let m = if r & 1 == 1 { -m } else { m };
                m * 2f64.powi((r % 29) as i32 - 14)
            })
            .collect();
        let mut bits = [0u32; LANE_BLOCK];
        assert!(stochastic_lanes::<10>(&values[..LANE_BLOCK], &[7; LANE_BLOCK], &mut bits));
        let specials = [0.0, -0.0, 1e-45, -3e-8, 65504.0, 65519.0, -70000.0, 1e38, 3.3e38, 1e300];
        for (k, s) in specials.into_iter().chain([f64::INFINITY, f64::NAN]).enumerate() {
            values[100_000 + 997 * k] = s;
        }
        for b in 0..0x7c00u16 {
            let (x, y) = (f16::from_bits(b).to_f64(), f16::from_bits(b + 1).to_f64());
            values.extend([x, -(x + y) / 2.0, x + (y - x) / 3.0]);
        }
        let uniforms: Vec<u32> = (0..values.len())
            .map(|k| match k % 7 {
                0 => 0,
                1 => u32::MAX,
                2 => 1 << 31,
                _ => next() as u32,
            })
            .collect();
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32] {
            let n = dtype.size();
            let mut lanes = vec![0xa5u8; values.len() * n];
            let mut one = lanes.clone();
            encode_stochastic(dtype, &values, &uniforms, &mut lanes);
            encode_one_at_a_time(dtype, &values, &uniforms, &mut one);
            let first = lanes.chunks(n).zip(one.chunks(n)).position(|(a, b)| a != b);
            assert_eq!(first, None, "{dtype:?}: first difference at element {first:?}");
        }
    }

    #[test]
    fn the_f16_fast_path_makes_the_same_choice_as_the_generic_rounding() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        // Random magnitudes from below f16's subnormals to past its largest
        // value, and every f16 value itself with its neighbours' midpoints.
        let mut cases: Vec<f64> = (0..400_000)
            .map(|_| {
                let r = next();
                let m = (r >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                m * 2f64.powi((r % 40) as i32 - 24)
            })
            .collect();
        for b in 0..0x7c00u16 {
            let x = f16::from_bits(b).to_f64();
            let y = f16::from_bits(b + 1).to_f64();
            cases.extend([x, -x, (x + y) / 2.0, -(x + y) / 2.0, x + (y - x) / 3.0]);
        }
        cases.extend([65504.0, 65505.0, 65519.0, 6.103515625e-5, 6.1035e-5, 0.0, -0.0]);
        for (k, &v) in cases.iter().enumerate() {
            for u in [next() as u32, 0, u32::MAX, 1 << 31] {
                let fast = round_stochastic_f16_bits(v, u);
                let slow = round_stochastic::<f16>(v, u).map(f16::to_bits);
                if fast.is_some() {
                    assert_eq!(fast, slow, "case {k}: v={v} u={u}");
                }
            }
        }
        // The fast path covers the normal range, not only a corner of it.
        assert!(round_stochastic_f16_bits(1.0 + 1e-4, 7).is_some());
        assert!(round_stochastic_f16_bits(-65000.0, 7).is_some());
    }

    /// Asserts that `decoded` (the values of the 65,536 16-bit patterns in
    /// order) equals `want` of each pattern, bit for bit (any NaN for a NaN).
    fn every_pattern(decoded: &[f64], want: impl Fn(u16) -> f64) {
        assert_eq!(decoded.len(), 65536);
        for (b, x) in (0..=u16::MAX).zip(decoded) {
            let want = want(b);
            assert!(
                x.to_bits() == want.to_bits() || (x.is_nan() && want.is_nan()),
                "{b:#06x}: {x} vs {want}"
            );
        }
    }

    /// The 65,536 16-bit patterns, little-endian.
    fn all_patterns() -> Vec<u8> {
        (0..=u16::MAX).flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn f16_decodes_as_the_element_conversion_for_every_bit_pattern() {
        let mut out = Vec::new();
        assert!(decode_f64(Dtype::F16, &all_patterns(), &mut out));
        every_pattern(&out, |b| f16::from_bits(b).to_f64());
        // A trailing partial element is ignored; the output is cleared first.
        assert!(decode_f64(Dtype::F16, &[0, 0x3c, 7], &mut out));
        assert_eq!(out, vec![1.0]);
    }

    #[test]
    fn the_portable_f16_conversion_is_the_element_conversion_for_every_bit_pattern() {
        // decode_f64 takes F16C where the CPU has it: the portable path is
        // checked here on its own.
        let mut out = vec![0.0; 65536];
        f16_bits_to_f64(&all_patterns(), &mut out);
        every_pattern(&out, |b| f16::from_bits(b).to_f64());
    }

    #[test]
    fn f16_to_f32_is_the_element_conversion_for_every_bit_pattern() {
        let mut out = vec![0.0f32; 65536];
        f16_bits_to_f32(&all_patterns(), &mut out);
        // f32 to f64 is exact and keeps NaN a NaN.
        let wide: Vec<f64> = out.iter().map(|&x| f64::from(x)).collect();
        every_pattern(&wide, |b| f64::from(f16::from_bits(b).to_f32()));
    }

    #[test]
    fn bf16_decodes_as_the_element_conversion_for_every_bit_pattern() {
        let mut out = vec![7.0; 3];
        assert!(decode_f64(Dtype::BF16, &all_patterns(), &mut out));
        every_pattern(&out, |b| bf16::from_bits(b).to_f64());
    }

    #[test]
    fn exact_values_are_kept() {
        let mut out = [0u8; 2];
        encode_stochastic(Dtype::BF16, &[0.5], &[12345], &mut out);
        assert_eq!(bf16::from_le_bytes(out).to_f64(), 0.5);
        // Non-finite values leave the element alone.
        let mut out = 1.5f32.to_le_bytes();
        encode_stochastic(Dtype::F32, &[f64::NAN], &[0], &mut out);
        assert_eq!(f32::from_le_bytes(out), 1.5);
    }
}
