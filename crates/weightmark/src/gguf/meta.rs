//! GGUF metadata values as written by weightmark (`attack gguf`): the
//! subset of GGUF's value types its files use, encoded little-endian as the
//! GGUF v3 specification lays them out.

/// A metadata value to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Kv {
    /// `UINT32` (type 4).
    U32(u32),
    /// `FLOAT32` (type 6).
    F32(f32),
    /// `BOOL` (type 7).
    Bool(bool),
    /// `STRING` (type 8).
    Str(String),
    /// `ARRAY` (type 9) of `STRING`.
    Strings(Vec<String>),
    /// `ARRAY` (type 9) of `INT32` (type 5).
    I32s(Vec<i32>),
}

impl Kv {
    /// Appends the value's type and bytes.
    pub fn put(&self, out: &mut Vec<u8>) {
        match self {
            Kv::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Kv::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Kv::Bool(v) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*v));
            }
            Kv::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                put_str(out, s);
            }
            Kv::Strings(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(out, s);
                }
            }
            Kv::I32s(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// Appends a GGUF string: its length as a `u64`, then its bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}
