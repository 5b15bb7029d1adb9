//! Exact text forms of numbers in plan and part files: an `f64` as the 16
//! hex digits of its bits, vectors as base64 of their little-endian bytes.
//! JSON's decimal numbers are not guaranteed to read back to the same bits,
//! and split results must add bit for bit.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// `x` as the 16 hex digits of its bits.
pub(crate) fn f64_to_hex(x: f64) -> String {
    format!("{:016x}", x.to_bits())
}

/// The `f64` whose bits `text` gives in 16 hex digits.
pub(crate) fn f64_from_hex(text: &str) -> Option<f64> {
    (text.len() == 16).then(|| u64::from_str_radix(text, 16).ok().map(f64::from_bits))?
}

/// `v` as base64 of its little-endian bytes.
pub(crate) fn f64s_to_base64(v: &[f64]) -> String {
    BASE64.encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

/// The `f64`s that [`f64s_to_base64`] wrote.
pub(crate) fn f64s_from_base64(text: &str) -> Option<Vec<f64>> {
    let bytes = BASE64.decode(text).ok()?;
    (bytes.len() % 8 == 0).then(|| {
        bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
    })
}

/// `v` as base64 of its little-endian bytes.
pub(crate) fn u32s_to_base64(v: &[u32]) -> String {
    BASE64.encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

/// The `u32`s that [`u32s_to_base64`] wrote.
pub(crate) fn u32s_from_base64(text: &str) -> Option<Vec<u32>> {
    let bytes = BASE64.decode(text).ok()?;
    (bytes.len() % 4 == 0).then(|| {
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4]))).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_bit_for_bit() {
        let xs = [0.1 + 0.2, -0.0, f64::MIN_POSITIVE / 3.0, 1e308, f64::INFINITY, 123.456];
        for x in xs {
            assert_eq!(f64_from_hex(&f64_to_hex(x)).map(f64::to_bits), Some(x.to_bits()));
        }
        let back = f64s_from_base64(&f64s_to_base64(&xs)).unwrap();
        assert_eq!(
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        let us = [0u32, 1, u32::MAX, 77];
        assert_eq!(u32s_from_base64(&u32s_to_base64(&us)).unwrap(), us);
        assert_eq!(f64_from_hex("123"), None);
        assert_eq!(f64s_from_base64("AAA="), None);
    }
}
