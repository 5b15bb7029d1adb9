//! F16 to f64 with the CPU's F16C instructions, where it has them: the one
//! other place that needs `unsafe` (unaligned vector loads and stores).
//!
//! `VCVTPH2PS` converts eight F16 values to f32 exactly (subnormals
//! included; it ignores the denormals-are-zero flag) and `VCVTPS2PD` widens
//! f32 to f64 exactly, so every finite value, infinity and zero comes out as
//! the element conversion gives it; a NaN stays a NaN. The caller falls back
//! to the portable conversion when this returns `false`; the exhaustive test
//! in `dtype` runs whichever this machine takes.

#![allow(unsafe_code)]

/// Converts the little-endian F16 values in `bytes` into `out` (as many as
/// both hold) and returns `true`, or returns `false` without touching `out`
/// when the CPU lacks AVX and F16C.
pub(crate) fn f16_to_f64(bytes: &[u8], out: &mut [f64]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: both target features were detected on this CPU just above.
            unsafe { convert(bytes, out) };
            return true;
        }
    }
    let _ = (bytes, out);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn convert(bytes: &[u8], out: &mut [f64]) {
    use std::arch::x86_64::{
        __m128i, _mm256_castps256_ps128, _mm256_cvtph_ps, _mm256_cvtps_pd, _mm256_extractf128_ps,
        _mm256_storeu_pd, _mm_loadu_si128,
    };
    let n = out.len().min(bytes.len() / 2);
    let (input, output) = (&bytes[..2 * n], &mut out[..n]);
    let mut whole_in = input.chunks_exact(16);
    let mut whole_out = output.chunks_exact_mut(8);
    for (src, dst) in whole_in.by_ref().zip(whole_out.by_ref()) {
        // SAFETY: `src` is 16 readable bytes (eight F16) and `dst` eight
        // writable f64; both intrinsics accept unaligned addresses.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().cast::<__m128i>());
            let f = _mm256_cvtph_ps(h);
            _mm256_storeu_pd(dst.as_mut_ptr(), _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
            _mm256_storeu_pd(dst.as_mut_ptr().add(4), _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
        }
    }
    for (src, dst) in whole_in.remainder().chunks_exact(2).zip(whole_out.into_remainder()) {
        *dst = f64::from(half::f16::from_le_bytes([src[0], src[1]]));
    }
}
