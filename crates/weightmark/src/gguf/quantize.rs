//! Quantization to ggml block formats, for writing GGUF files the way
//! llama.cpp does (`attack gguf`).
//!
//! Q8_0, Q4_0 and Q5_0 follow ggml's reference quantizers
//! (`quantize_row_*_ref`) exactly. Q4_K and Q6_K use the same block layouts
//! but a simpler choice of the sub-block scales than ggml's iterative search
//! (`make_qkx2_quants`, `make_qx_quants`): each sub-block's scale and minimum
//! come straight from its range, then are quantized to 6 (Q4_K) or 8 (Q6_K)
//! bits against the super-block scale. The files are valid and read by any
//! GGUF reader; the rounding error is somewhat larger than llama.cpp's.

use half::f16;

use super::quant::GgmlType;

/// Quantizes `x` (a whole number of blocks of `ty`) and appends the bytes.
/// Returns `false` for a type it cannot write.
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> bool {
    let (per, _) = ty.block();
    match ty {
        GgmlType::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => {
            x.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes()))
        }
        GgmlType::Q8_0 => x.chunks_exact(per).for_each(|b| q8_0(b, out)),
        GgmlType::Q4_0 => x.chunks_exact(per).for_each(|b| q4_0(b, out)),
        GgmlType::Q5_0 => x.chunks_exact(per).for_each(|b| q5_0(b, out)),
        GgmlType::Q4K => x.chunks_exact(per).for_each(|b| q4_k(b, out)),
        GgmlType::Q6K => x.chunks_exact(per).for_each(|b| q6_k(b, out)),
        _ => return false,
    }
    true
}

/// The element with the largest magnitude, with its sign.
fn signed_absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..16 {
        let a = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let b = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        out.push(a | (b << 4));
    }
}

fn q5_0(x: &[f32], out: &mut Vec<u8>) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let a = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let b = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        qs[j] = (a & 0x0f) | ((b & 0x0f) << 4);
        qh |= u32::from((a & 0x10) >> 4) << j;
        qh |= u32::from((b & 0x10) >> 4) << (j + 16);
    }
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend_from_slice(&qs);
}

/// Packs eight 6-bit scales and eight 6-bit minimums the way
/// `get_scale_min_k4` unpacks them.
fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    // Sub-blocks of 32: value = d*ls*q - dmin*lm, q in 0..=15.
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let lo = sub.iter().fold(f32::INFINITY, |m, &v| m.min(v)).min(0.0);
        let hi = sub.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        scales[j] = (hi - lo) / 15.0;
        mins[j] = -lo;
    }
    let max_scale = scales.iter().fold(0f32, |m, &v| m.max(v));
    let max_min = mins.iter().fold(0f32, |m, &v| m.max(v));
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = if df > 0.0 { (scales[j] / df).round().clamp(0.0, 63.0) as u8 } else { 0 };
        lm[j] = if dminf > 0.0 { (mins[j] / dminf).round().clamp(0.0, 63.0) as u8 } else { 0 };
    }
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&pack_scales_k4(&ls, &lm));
    let mut q = [0u8; 256];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let s = df * f32::from(ls[j]);
        let m = dminf * f32::from(lm[j]);
        for (k, &v) in sub.iter().enumerate() {
            q[32 * j + k] = if s > 0.0 { ((v + m) / s).round().clamp(0.0, 15.0) as u8 } else { 0 };
        }
    }
    // Pairs of sub-blocks share bytes: low nibbles the first, high the second.
    for pair in 0..4 {
        for l in 0..32 {
            out.push(q[64 * pair + l] | (q[64 * pair + 32 + l] << 4));
        }
    }
}

fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    // Sub-blocks of 16: value = d*sc*(q-32), q in 0..=63, sc a signed byte.
    let mut scales = [0f32; 16];
    for (j, sub) in x.chunks_exact(16).enumerate() {
        scales[j] = signed_absmax(sub) / -32.0;
    }
    let max = signed_absmax(&scales);
    let d = f16::from_f32(max / -128.0);
    let df = d.to_f32();
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = if df != 0.0 { (scales[j] / df).round().clamp(-128.0, 127.0) as i8 } else { 0 };
    }
    let mut q = [0u8; 256];
    for (j, sub) in x.chunks_exact(16).enumerate() {
        let s = df * f32::from(sc[j]);
        for (k, &v) in sub.iter().enumerate() {
            q[16 * j + k] =
                if s != 0.0 { ((v / s).round() + 32.0).clamp(0.0, 63.0) as u8 } else { 32 };
        }
    }
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for n in 0..2 {
        for l in 0..32 {
            let base = 128 * n;
            let (q1, q2, q3, q4) =
                (q[base + l], q[base + l + 32], q[base + l + 64], q[base + l + 96]);
            ql[64 * n + l] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
            ql[64 * n + l + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
            qh[32 * n + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::quant::dequantize;
    use super::*;

    fn round_trip_error(ty: GgmlType) -> f32 {
        let x: Vec<f32> = (0..1024).map(|i| ((i as f32) * 0.377).sin() * 0.05 - 0.003).collect();
        let mut bytes = Vec::new();
        assert!(quantize(ty, &x, &mut bytes));
        assert_eq!(Some(bytes.len() as u64), ty.byte_len(1024));
        let mut y = Vec::new();
        dequantize(ty, &bytes, &mut y);
        let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
        let pow: f32 = x.iter().map(|a| a * a).sum();
        (err / pow).sqrt()
    }

    #[test]
    fn quantizers_round_trip_through_the_dequantizers() {
        for (ty, limit) in [
            (GgmlType::Q8_0, 0.01),
            (GgmlType::Q6K, 0.03),
            (GgmlType::Q5_0, 0.06),
            (GgmlType::Q4_0, 0.12),
            (GgmlType::Q4K, 0.12),
            (GgmlType::F16, 0.001),
        ] {
            let e = round_trip_error(ty);
            assert!(e < limit, "{}: relative error {e}", ty.name());
        }
    }
}
