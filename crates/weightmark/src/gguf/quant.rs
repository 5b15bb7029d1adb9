//! ggml element types and their dequantization to f32.
//!
//! Written from the block layouts of ggml (`ggml-common.h`,
//! `dequantize_row_*` in `ggml-quants.c`) and tested against the `gguf`
//! Python package's numpy dequantizers (tests/python/gguf_compare.py).

use half::{bf16, f16};

/// Elements in a k-quant super-block.
const QK_K: usize = 256;

/// A ggml tensor type this tool can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// f32.
    F32,
    /// f16.
    F16,
    /// bf16.
    BF16,
    /// 4-bit, blocks of 32, scale.
    Q4_0,
    /// 4-bit, blocks of 32, scale and minimum.
    Q4_1,
    /// 5-bit, blocks of 32, scale.
    Q5_0,
    /// 5-bit, blocks of 32, scale and minimum.
    Q5_1,
    /// 8-bit, blocks of 32, scale.
    Q8_0,
    /// 2-bit k-quant.
    Q2K,
    /// 3-bit k-quant.
    Q3K,
    /// 4-bit k-quant.
    Q4K,
    /// 5-bit k-quant.
    Q5K,
    /// 6-bit k-quant.
    Q6K,
}

impl GgmlType {
    /// The type for a ggml type id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The type's name as llama.cpp writes it.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (QK_K, 84),
            GgmlType::Q3K => (QK_K, 110),
            GgmlType::Q4K => (QK_K, 144),
            GgmlType::Q5K => (QK_K, 176),
            GgmlType::Q6K => (QK_K, 210),
        }
    }

    /// Bytes of `elements` elements; `None` if not whole blocks or overflowing.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        let (per, bytes) = self.block();
        if elements % per as u64 != 0 {
            return None;
        }
        (elements / per as u64).checked_mul(bytes as u64)
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `data` (whole blocks of `ty`) into `out`.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut Vec<f32>) {
    out.clear();
    let (per, bytes) = ty.block();
    out.reserve(data.len() / bytes * per);
    match ty {
        GgmlType::F32 => {
            out.extend(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        }
        GgmlType::F16 => {
            out.resize(data.len() / 2, 0.0);
            crate::dtype::f16_bits_to_f32(data, out);
        }
        GgmlType::BF16 => {
            out.extend(data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        _ => {
            let mut y = vec![0f32; per];
            for b in data.chunks_exact(bytes) {
                dequantize_block(ty, b, &mut y);
                out.extend_from_slice(&y);
            }
        }
    }
}

/// Dequantizes one block into `y` (`y.len()` = elements per block).
fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => {
            let d = half_at(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = (i32::from(qs[j] & 0x0f) - 8) as f32 * d;
                y[j + 16] = (i32::from(qs[j] >> 4) - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half_at(b, 0), half_at(b, 2));
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = f32::from(qs[j] & 0x0f) * d + m;
                y[j + 16] = f32::from(qs[j] >> 4) * d + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (d, m, qh, qs) = if ty == GgmlType::Q5_0 {
                (half_at(b, 0), 0.0, u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22])
            } else {
                (
                    half_at(b, 0),
                    half_at(b, 2),
                    u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    &b[8..24],
                )
            };
            let offset = if ty == GgmlType::Q5_0 { 16 } else { 0 };
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                let x0 = (u32::from(qs[j] & 0x0f) | h0) as i32 - offset;
                let x1 = (u32::from(qs[j] >> 4) | h1) as i32 - offset;
                y[j] = x0 as f32 * d + m;
                y[j + 16] = x1 as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = half_at(b, 0);
            for (yi, &q) in y.iter_mut().zip(&b[2..34]) {
                *yi = f32::from(q as i8) * d;
            }
        }
        GgmlType::Q2K => dequantize_q2k(b, y),
        GgmlType::Q3K => dequantize_q3k(b, y),
        GgmlType::Q4K | GgmlType::Q5K => dequantize_q45k(ty, b, y),
        GgmlType::Q6K => dequantize_q6k(b, y),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {}
    }
}

fn dequantize_q2k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = half_at(b, 80);
    let min = half_at(b, 82);
    let mut out = 0;
    let mut is = 0;
    for n in 0..2 {
        let q = &qs[n * 32..n * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0f);
                let ml = min * f32::from(sc >> 4);
                for l in 0..16 {
                    y[out] = dl * f32::from((q[l + 16 * half] >> shift) & 3) - ml;
                    out += 1;
                }
            }
        }
    }
}

fn dequantize_q3k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let raw = &b[96..108];
    let d_all = half_at(b, 108);
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word =
        |i: usize| u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let scales: Vec<i8> = aux.iter().flat_map(|w| w.to_le_bytes()).map(|x| x as i8).collect();
    let mut out = 0;
    let mut is = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &qs[n * 32..n * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d_all * f32::from(i16::from(scales[is]) - 32);
                is += 1;
                for l in 0..16 {
                    let k = l + 16 * half;
                    let low = i32::from((q[k] >> shift) & 3);
                    let high = if hmask[k] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - high) as f32;
                    out += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// The 6-bit scale and minimum number `j` of a Q4_K/Q5_K super-block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn dequantize_q45k(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let min = half_at(b, 2);
    let scales = &b[4..16];
    let (qh, ql) =
        if ty == GgmlType::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
    let mut out = 0;
    let (mut u1, mut u2) = (1u8, 2u8);
    for (chunk, is) in (0..4).map(|c| (c, 2 * c)) {
        let q = &ql[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = scale_min_k4(is, scales);
        let (sc2, m2) = scale_min_k4(is + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        for l in 0..32 {
            let high = qh.map_or(0, |h| if h[l] & u1 != 0 { 16 } else { 0 });
            y[out] = d1 * f32::from((q[l] & 0x0f) + high) - m1;
            out += 1;
        }
        for l in 0..32 {
            let high = qh.map_or(0, |h| if h[l] & u2 != 0 { 16 } else { 0 });
            y[out] = d2 * f32::from((q[l] >> 4) + high) - m2;
            out += 1;
        }
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

fn dequantize_q6k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = half_at(b, 208);
    for n in 0..2 {
        let ql = &ql_all[n * 64..n * 64 + 64];
        let qh = &qh_all[n * 32..n * 32 + 32];
        let sc = &sc_all[n * 8..n * 8 + 8];
        let yb = &mut y[n * 128..n * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| f32::from(sc[is + k] as i8);
            yb[l] = d * s(0) * q1 as f32;
            yb[l + 32] = d * s(2) * q2 as f32;
            yb[l + 64] = d * s(4) * q3 as f32;
            yb[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_0_known_blocks() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for (i, q) in b[2..].iter_mut().enumerate() {
            *q = (i as i8 - 16) as u8;
        }
        let mut out = Vec::new();
        dequantize(GgmlType::Q8_0, &b, &mut out);
        assert_eq!(out[0], -8.0);
        assert_eq!(out[31], 7.5);
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2] = 0x9f; // low nibble 15 -> +7, high nibble 9 -> +1
        dequantize(GgmlType::Q4_0, &b, &mut out);
        assert_eq!((out[0], out[16], out[1]), (14.0, 2.0, -16.0));
    }

    #[test]
    fn ids_round_trip_and_sizes() {
        for id in 0..40 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
            }
        }
        assert_eq!(GgmlType::Q4K.byte_len(512), Some(288));
        assert_eq!(GgmlType::Q4_0.byte_len(33), None);
    }
}
