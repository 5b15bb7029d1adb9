//! Parsing and validating a safetensors header.
//!
//! The file layout is: an 8-byte little-endian header length `n`, `n` bytes of
//! UTF-8 JSON mapping tensor names to `{dtype, shape, data_offsets}` (plus an
//! optional `__metadata__` string map), then the data section. We parse the
//! JSON into a private raw form that keeps header order and sees duplicate
//! names, then [`Header::parse`] checks everything the `safetensors` crate
//! checks, and more, before a [`Header`] can exist: the size cap, UTF-8,
//! known dtypes, shape arithmetic without overflow, byte lengths that match
//! shape x dtype, offsets that tile the data section exactly (no overlap, no
//! gap, nothing past the end, no trailing bytes).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::dtype::Dtype;
use crate::error::FormatError;

/// Largest header accepted, as in the `safetensors` crate (100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor's entry in a validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Byte offset of the data, relative to the start of the data section.
    pub begin: usize,
    /// Byte offset one past the data, relative to the start of the data section.
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        // Validated shapes have products that fit (checked at parse time);
        // a zero dimension makes the product 0 whatever the others are.
        if self.shape.contains(&0) {
            0
        } else {
            self.shape.iter().product()
        }
    }

    /// Length of a row for the mark's amplitude: the last dimension for
    /// tensors of two or more dimensions, the whole tensor otherwise.
    pub fn row_len(&self) -> usize {
        if self.shape.len() >= 2 {
            self.shape.last().copied().unwrap_or(1)
        } else {
            self.elements()
        }
    }
}

/// A validated safetensors header.
#[derive(Clone, Debug)]
pub struct Header {
    /// Length of the JSON header in bytes (without the 8-byte prefix).
    pub header_len: usize,
    /// Tensors in header order.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, if present.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Header {
    /// Offset of the data section from the start of the file.
    pub fn data_start(&self) -> usize {
        8 + self.header_len
    }

    /// Parses and validates the header at the start of `file` (the whole file,
    /// or at least its header; `file_len` is the full length on disk).
    pub fn parse(file: &[u8], file_len: u64) -> Result<Header, FormatError> {
        let prefix: [u8; 8] = match file.get(..8).and_then(|b| b.try_into().ok()) {
            Some(p) => p,
            None => return Err(FormatError::TooShort { len: file_len }),
        };
        let n = u64::from_le_bytes(prefix);
        if n > MAX_HEADER_LEN {
            return Err(FormatError::HeaderTooLarge { len: n, cap: MAX_HEADER_LEN });
        }
        let header_end = 8u64.checked_add(n).filter(|&e| e <= file_len);
        let Some(header_end) = header_end else {
            return Err(FormatError::HeaderPastEnd { len: n, file_len });
        };
        let json = file
            .get(8..header_end as usize)
            .ok_or(FormatError::HeaderPastEnd { len: n, file_len })?;
        let text = std::str::from_utf8(json)
            .map_err(|e| FormatError::HeaderNotUtf8 { offset: e.valid_up_to() })?;
        let raw: RawHeader = serde_json::from_str(text)
            .map_err(|e| FormatError::HeaderJson { reason: e.to_string() })?;
        let data_len = file_len - header_end;
        validate(raw, n as usize, data_len)
    }
}

/// One tensor entry as it appears in the JSON, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The header as parsed, in file order, duplicates kept so they can be reported.
struct RawHeader {
    entries: Vec<(String, RawTensor)>,
    metadata: Option<BTreeMap<String, String>>,
    duplicate: Option<String>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawHeaderVisitor)
    }
}

struct RawHeaderVisitor;

impl<'de> Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensor entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        let mut metadata = None;
        let mut duplicate = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "__metadata__" {
                if metadata.is_some() {
                    return Err(de::Error::custom("__metadata__ appears twice"));
                }
                metadata = Some(map.next_value::<BTreeMap<String, String>>()?);
                continue;
            }
            let tensor = map
                .next_value::<RawTensor>()
                .map_err(|e| de::Error::custom(format!("tensor '{key}': {e}")))?;
            if !seen.insert(key.clone()) && duplicate.is_none() {
                duplicate = Some(key.clone());
            }
            entries.push((key, tensor));
        }
        Ok(RawHeader { entries, metadata, duplicate })
    }
}

/// Turns a raw header into a validated one.
fn validate(raw: RawHeader, header_len: usize, data_len: u64) -> Result<Header, FormatError> {
    if let Some(name) = raw.duplicate {
        return Err(FormatError::DuplicateName { name });
    }
    let mut tensors = Vec::with_capacity(raw.entries.len());
    for (name, t) in raw.entries {
        let Some(dtype) = Dtype::from_name(&t.dtype) else {
            return Err(FormatError::UnknownDtype { name, dtype: t.dtype });
        };
        // Every product of dimensions must fit, not only the whole: a zero
        // dimension early on would hide an overflow of the others, which
        // readers multiply (rows x columns).
        let fits = t.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1))).is_some();
        let elements = t.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|_| fits);
        let bytes = elements.and_then(|e| e.checked_mul(dtype.size() as u64));
        let (begin, end) = t.data_offsets;
        let Some(bytes) = bytes.filter(|&b| usize::try_from(b).is_ok()) else {
            return Err(FormatError::ShapeOverflow { name, shape: t.shape });
        };
        if end < begin {
            return Err(FormatError::OffsetsReversed { name, begin, end });
        }
        if end - begin != bytes {
            return Err(FormatError::SizeMismatch {
                name,
                shape: t.shape,
                dtype: dtype.name(),
                expected: bytes,
                actual: end - begin,
            });
        }
        if end > data_len {
            return Err(FormatError::OffsetsOutOfBounds { name, end, data_len });
        }
        let Ok(shape) = t.shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>()
        else {
            return Err(FormatError::ShapeOverflow { name, shape: t.shape });
        };
        tensors.push(TensorInfo { name, dtype, shape, begin: begin as usize, end: end as usize });
    }
    // Offsets must tile [0, data_len) exactly, as the safetensors crate requires.
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.begin, t.end));
    let mut cursor = 0u64;
    for t in order {
        if t.begin as u64 != cursor {
            return Err(FormatError::OffsetsNotContiguous {
                name: t.name.clone(),
                begin: t.begin as u64,
                end: t.end as u64,
                expected_begin: cursor,
            });
        }
        cursor = t.end as u64;
    }
    if cursor != data_len {
        return Err(FormatError::TrailingBytes { extra: data_len - cursor });
    }
    Ok(Header { header_len, tensors, metadata: raw.metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data_len: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    fn parse(json: &str, data_len: usize) -> Result<Header, FormatError> {
        let f = file(json, data_len);
        Header::parse(&f, f.len() as u64)
    }

    #[test]
    fn valid_header_keeps_order_and_metadata() {
        let h = parse(
            r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"},"a":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}"#,
            16,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(
            h.metadata.as_ref().and_then(|m| m.get("format")).map(String::as_str),
            Some("pt")
        );
    }

    #[test]
    fn rejects_each_problem() {
        let t = |dt: &str, shape: &str, b: u64, e: u64| {
            format!(r#""x":{{"dtype":"{dt}","shape":{shape},"data_offsets":[{b},{e}]}}"#)
        };
        type Check = fn(&FormatError) -> bool;
        let cases: Vec<(String, usize, Check)> = vec![
            (format!("{{{}}}", t("F32", "[2]", 0, 4)), 4, |e| {
                matches!(e, FormatError::SizeMismatch { .. })
            }),
            (format!("{{{}}}", t("Q4", "[2]", 0, 8)), 8, |e| {
                matches!(e, FormatError::UnknownDtype { .. })
            }),
            (format!("{{{}}}", t("F32", "[2]", 0, 8)), 4, |e| {
                matches!(e, FormatError::OffsetsOutOfBounds { .. })
            }),
            (format!("{{{}}}", t("F32", "[2]", 0, 8)), 12, |e| {
                matches!(e, FormatError::TrailingBytes { .. })
            }),
            (format!("{{{}}}", t("F32", "[4294967296,4294967296,16]", 0, 8)), 8, |e| {
                matches!(e, FormatError::ShapeOverflow { .. })
            }),
            (format!("{{{}}}", t("F32", "[0,4294967296,4294967296]", 0, 0)), 0, |e| {
                matches!(e, FormatError::ShapeOverflow { .. })
            }),
            (
                format!(
                    r#"{{{},"y":{{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}}}"#,
                    t("F32", "[2]", 0, 8)
                ),
                12,
                |e| matches!(e, FormatError::OffsetsNotContiguous { .. }),
            ),
            (format!("{{{},{}}}", t("F32", "[2]", 0, 8), t("F32", "[2]", 8, 16)), 16, |e| {
                matches!(e, FormatError::DuplicateName { .. })
            }),
            ("[1,2]".to_string(), 0, |e| matches!(e, FormatError::HeaderJson { .. })),
        ];
        for (json, data_len, check) in cases {
            let err = parse(&json, data_len).err();
            assert!(err.as_ref().is_some_and(check), "{json}: got {err:?}");
        }
    }

    #[test]
    fn rejects_bad_prefix_and_utf8() {
        assert!(matches!(Header::parse(&[1, 2, 3], 3), Err(FormatError::TooShort { .. })));
        let mut f = 1000u64.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(
            Header::parse(&f, f.len() as u64),
            Err(FormatError::HeaderPastEnd { .. })
        ));
        let f = u64::MAX.to_le_bytes();
        assert!(matches!(Header::parse(&f, 8), Err(FormatError::HeaderTooLarge { .. })));
        let mut f = 4u64.to_le_bytes().to_vec();
        f.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
        assert!(matches!(
            Header::parse(&f, f.len() as u64),
            Err(FormatError::HeaderNotUtf8 { offset: 1 })
        ));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::Header;
        use crate::dtype::Dtype;
        use crate::synth::{to_safetensors, SynthTensor};

        fn tensor() -> impl Strategy<Value = SynthTensor> {
            ("[a-z.]{1,12}", 0..Dtype::ALL.len(), proptest::collection::vec(0usize..5, 0..4))
                .prop_map(|(name, d, shape)| {
                    let dtype = Dtype::ALL[d];
                    let len = shape.iter().product::<usize>() * dtype.size();
                    SynthTensor { name, dtype, shape, data: vec![7u8; len] }
                })
        }

        proptest! {
            #[test]
            fn written_headers_parse_back(tensors in proptest::collection::vec(tensor(), 0..6)) {
                let mut seen = std::collections::HashSet::new();
                let tensors: Vec<SynthTensor> =
                    tensors.into_iter().filter(|t| seen.insert(t.name.clone())).collect();
                let bytes = to_safetensors(&tensors, None);
                let header = Header::parse(&bytes, bytes.len() as u64);
                prop_assert!(header.is_ok(), "{:?}", header.err());
                let header = header.unwrap_or_else(|_| unreachable!());
                prop_assert_eq!(header.tensors.len(), tensors.len());
                for (t, info) in tensors.iter().zip(&header.tensors) {
                    prop_assert_eq!(&t.name, &info.name);
                    prop_assert_eq!(t.dtype, info.dtype);
                    prop_assert_eq!(&t.shape, &info.shape);
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(header_len in 0u64..300, body in proptest::collection::vec(any::<u8>(), 0..256)) {
                // A small length prefix, so the JSON and offset checks are reached.
                let mut bytes = header_len.to_le_bytes().to_vec();
                bytes.extend_from_slice(&body);
                let _ = Header::parse(&bytes, bytes.len() as u64);
            }

            #[test]
            fn corrupted_headers_never_panic(tensors in proptest::collection::vec(tensor(), 1..4), at in any::<usize>(), byte in any::<u8>()) {
                let mut bytes = to_safetensors(&tensors, None);
                let i = at % bytes.len();
                bytes[i] = byte;
                let _ = Header::parse(&bytes, bytes.len() as u64);
            }
        }
    }
}
