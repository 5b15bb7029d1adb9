//! Parsing a GGUF file (versions 2 and 3): header, metadata, tensor infos.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/value pairs, the tensor infos (name, dims, ggml type,
//! offset), padding to `general.alignment` (default 32), then the tensor
//! data. Every count, length and offset is checked against the file before it
//! is used; nothing is allocated from an unchecked count.

use std::collections::BTreeMap;

use super::quant::GgmlType;
use crate::error::FormatError;

/// Magic bytes at the start of a GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Largest string accepted in metadata or names (1 MiB).
const MAX_STRING: u64 = 1 << 20;
/// Largest number of dimensions of a tensor.
const MAX_DIMS: u32 = 8;
/// Largest single dimension accepted (2^40).
const MAX_DIM: u64 = 1 << 40;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An unsigned integer of any width.
    U64(u64),
    /// A signed integer of any width.
    I64(i64),
    /// A float of any width.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array.
    Array(Array),
}

/// A metadata array. Arrays read from a file keep the file's own bytes and
/// decode their elements on demand, so an array costs what it takes on disk
/// (a vocabulary of 30 M one-byte values is 30 MB, not 30 M [`Value`]s).
#[derive(Clone)]
pub struct Array(ArrayItems);

#[derive(Clone)]
enum ArrayItems {
    /// Validated GGUF bytes of `count` elements of type `ty`.
    Encoded { ty: u32, count: usize, bytes: Vec<u8> },
    /// Values built in memory.
    Values(Vec<Value>),
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.0 {
            ArrayItems::Encoded { count, .. } => *count,
            ArrayItems::Values(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements, decoded one at a time.
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        let (encoded, values) = match &self.0 {
            ArrayItems::Encoded { ty, count, bytes } => {
                let mut c = Cursor { bytes, pos: 0 };
                // The bytes were read by the same decoder when the file was
                // parsed, so decoding them again cannot fail.
                (Some((0..*count).map_while(move |_| c.value(*ty, 1).ok())), None)
            }
            ArrayItems::Values(v) => (None, Some(v.iter().cloned())),
        };
        encoded.into_iter().flatten().chain(values.into_iter().flatten())
    }
}

impl From<Vec<Value>> for Array {
    fn from(values: Vec<Value>) -> Array {
        Array(ArrayItems::Values(values))
    }
}

impl PartialEq for Array {
    fn eq(&self, other: &Array) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array({} elements)", self.len())
    }
}

impl Value {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// As a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Name as stored (llama.cpp naming).
    pub name: String,
    /// Dimensions as stored: `dims[0]` varies fastest.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub start: usize,
    /// Byte length of the data.
    pub len: usize,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed, validated GGUF header.
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors in file order.
    pub tensors: Vec<GgufTensorInfo>,
}

impl GgufFile {
    /// A metadata value as an unsigned integer.
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        self.metadata.get(key).and_then(Value::as_u64)
    }

    /// A metadata value as a string.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// The model architecture (`general.architecture`).
    pub fn architecture(&self) -> Option<&str> {
        self.meta_str("general.architecture")
    }

    /// Parses and validates the GGUF file in `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<GgufFile, FormatError> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.take(4)? != MAGIC {
            return Err(bad("does not start with the GGUF magic bytes"));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(bad(&format!("GGUF version {version} is not supported (only 2 and 3)")));
        }
        let tensor_count = c.u64()?;
        let kv_count = c.u64()?;
        // Each entry needs at least 8 (tensor) or 12 (kv) bytes: reject counts the
        // file cannot hold before allocating anything.
        let remaining = (bytes.len() - c.pos) as u64;
        if tensor_count > remaining / 8 || kv_count > remaining / 12 {
            return Err(bad(&format!(
                "counts ({tensor_count} tensors, {kv_count} metadata entries) run past the end of the file"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(&format!("metadata key '{}' appears twice", key.escape_debug())));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two() && *a <= 1 << 16)
                .ok_or_else(|| bad("general.alignment is not a power of two up to 65536"))?,
        } as usize;
        let mut raw = Vec::new();
        for _ in 0..tensor_count {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad(&format!("tensor '{}': {n_dims} dimensions", name.escape_debug())));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64()?;
                if d > MAX_DIM {
                    return Err(bad(&format!(
                        "tensor '{}': dimension {d} overflows the 2^40 limit",
                        name.escape_debug()
                    )));
                }
                dims.push(d);
            }
            let type_id = c.u32()?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                bad(&format!(
                    "tensor '{}': tensor type id {type_id} does not exist or is not supported",
                    name.escape_debug()
                ))
            })?;
            let offset = c.u64()?;
            raw.push((name, dims, ggml_type, offset));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = std::collections::HashSet::new();
        for (name, dims, ggml_type, offset) in raw {
            if !seen.insert(name.clone()) {
                return Err(FormatError::DuplicateName { name });
            }
            // Every product of dimensions must fit, not only the whole: a zero
            // dimension early on would hide an overflow of the others, which
            // readers multiply (rows x columns).
            let fits = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d.max(1))).is_some();
            let elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|_| fits);
            // Rows (the first, fastest dimension) must be whole blocks, as llama.cpp requires.
            let whole_rows = dims.first().is_some_and(|&d| d % ggml_type.block().0 as u64 == 0);
            let len = elements.filter(|_| whole_rows).and_then(|e| ggml_type.byte_len(e));
            let Some(len) = len else {
                return Err(bad(&format!(
                    "tensor '{}': {dims:?} elements of {} overflow or are not whole blocks",
                    name.escape_debug(),
                    ggml_type.name()
                )));
            };
            let start = (data_start as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(s), Some(e)) if e <= bytes.len() as u64 && offset % alignment as u64 == 0 => {
                    tensors.push(GgufTensorInfo { name, dims, ggml_type, start: s as usize, len: len as usize });
                }
                _ => {
                    return Err(bad(&format!(
                        "tensor '{}': data at offset {offset} ({len} bytes) lies outside the file or is misaligned",
                        name.escape_debug()
                    )))
                }
            }
        }
        // Tensors may not share bytes: otherwise a small file could describe
        // unbounded amounts of data to dequantize.
        let mut spans: Vec<(usize, usize, &str)> =
            tensors.iter().map(|t| (t.start, t.start + t.len, t.name.as_str())).collect();
        spans.sort_unstable();
        for pair in spans.windows(2) {
            if pair[1].0 < pair[0].1 {
                return Err(bad(&format!(
                    "tensors '{}' and '{}' overlap in the file",
                    pair[0].2.escape_debug(),
                    pair[1].2.escape_debug()
                )));
            }
        }
        Ok(GgufFile { version, metadata, tensors })
    }
}

fn bad(reason: &str) -> FormatError {
    FormatError::Gguf { reason: reason.to_string() }
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(bad(&format!("truncated: needs {n} more bytes at offset {}", self.pos)));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, FormatError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(bad(&format!(
                "a string of {len} bytes at offset {} is too long",
                self.pos
            )));
        }
        let raw = self.take(len as usize)?;
        String::from_utf8(raw.to_vec()).map_err(|_| bad("a string is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, FormatError> {
        Ok(match ty {
            0 => Value::U64(u64::from(self.array::<1>()?[0])),
            1 => Value::I64(i64::from(self.array::<1>()?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.array()?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.array()?))),
            4 => Value::U64(u64::from(self.u32()?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.array()?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.array()?))),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(bad("metadata arrays nested too deep"));
                }
                let inner = self.u32()?;
                let count = self.u64()?;
                let remaining = (self.bytes.len() - self.pos) as u64;
                if count > remaining {
                    return Err(bad(&format!(
                        "an array of {count} values runs past the end of the file"
                    )));
                }
                // Validate every element now, keep only their bytes.
                let start = self.pos;
                for _ in 0..count {
                    self.skip_value(inner, depth + 1)?;
                }
                let bytes = self.bytes.get(start..self.pos).unwrap_or_default().to_vec();
                Value::Array(Array(ArrayItems::Encoded { ty: inner, count: count as usize, bytes }))
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(bad(&format!("metadata value type {other} does not exist"))),
        })
    }

    /// Checks one value of type `ty` and moves past it, allocating nothing
    /// (strings are checked for UTF-8 in place).
    fn skip_value(&mut self, ty: u32, depth: u32) -> Result<(), FormatError> {
        let fixed = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                let len = self.u64()?;
                if len > MAX_STRING {
                    return Err(bad(&format!(
                        "a string of {len} bytes at offset {} is too long",
                        self.pos
                    )));
                }
                let raw = self.take(len as usize)?;
                std::str::from_utf8(raw).map_err(|_| bad("a string is not valid UTF-8"))?;
                return Ok(());
            }
            9 => {
                if depth > 2 {
                    return Err(bad("metadata arrays nested too deep"));
                }
                let inner = self.u32()?;
                let count = self.u64()?;
                if count > (self.bytes.len() - self.pos) as u64 {
                    return Err(bad(&format!(
                        "an array of {count} values runs past the end of the file"
                    )));
                }
                for _ in 0..count {
                    self.skip_value(inner, depth + 1)?;
                }
                return Ok(());
            }
            other => return Err(bad(&format!("metadata value type {other} does not exist"))),
        };
        self.take(fixed).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A valid file: one metadata string, one Q8_0 tensor of 64 elements.
    fn valid() -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let key = "general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key.as_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'w');
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(std::iter::repeat_n(1u8, 68));
        b
    }

    #[test]
    fn valid_file_parses() {
        let f = GgufFile::parse(&valid()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.tensors[0].dims, [32, 2]);
        assert_eq!(f.tensors[0].len, 68);
    }

    #[test]
    fn a_zero_dimension_cannot_hide_an_overflow() {
        // One tensor, dims [0, 2^40, 2^40, 1]: zero elements, but the other
        // dimensions multiply past u64 (found by the gguf_reader fuzz target).
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'w');
        b.extend_from_slice(&4u32.to_le_bytes());
        for d in [0u64, 1 << 40, 1 << 40, 1] {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32, 0);
        let r = GgufFile::parse(&b);
        assert!(
            matches!(&r, Err(FormatError::Gguf { reason }) if reason.contains("overflow")),
            "{r:?}"
        );
    }

    proptest! {
        #[test]
        fn corrupted_files_never_panic(at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
            let mut b = valid();
            let i = at % b.len();
            b[i] = byte;
            b.truncate(cut % (b.len() + 1));
            if let Ok(f) = GgufFile::parse(&b) {
                let _ = crate::gguf::canonical_tensors(&f, &b);
            }
        }
    }
}
