//! The shard index of a sharded model (`model.safetensors.index.json`).
//!
//! Hugging Face writes `{"metadata": {...}, "weight_map": {tensor: shard}}`.
//! We keep the file's bytes so an output with the same tensors can reuse it
//! verbatim, and we check every shard name before it is joined to the model
//! directory: plain relative names only, nothing that can climb out of it.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;

use crate::error::FormatError;

/// The conventional name of the index file.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";

/// A validated shard index.
#[derive(Clone, Debug)]
pub struct ShardIndex {
    /// File name of the index inside the model directory.
    pub file_name: String,
    /// The index file's bytes, as read.
    pub bytes: Vec<u8>,
    /// Tensor name to shard file name.
    pub weight_map: BTreeMap<String, String>,
    /// Distinct shard file names, sorted.
    pub shards: Vec<String>,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_json::Value>,
    weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Parses and validates an index's bytes.
    pub fn parse(file_name: &str, bytes: Vec<u8>) -> Result<ShardIndex, FormatError> {
        let raw: RawIndex = serde_json::from_slice(&bytes)
            .map_err(|e| FormatError::Index { reason: e.to_string() })?;
        if raw.weight_map.is_empty() {
            return Err(FormatError::Index { reason: "weight_map is empty".into() });
        }
        for (name, file) in &raw.weight_map {
            if !is_plain_relative(file) {
                return Err(FormatError::IndexEscapes { name: name.clone(), file: file.clone() });
            }
        }
        let mut shards: Vec<String> = raw.weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        Ok(ShardIndex {
            file_name: file_name.to_string(),
            bytes,
            weight_map: raw.weight_map,
            shards,
        })
    }
}

/// True for a relative path made only of normal components (no `..`, no root,
/// no drive prefix, no backslashes that another OS would read as separators).
fn is_plain_relative(file: &str) -> bool {
    !file.is_empty()
        && !file.contains('\\')
        && Path::new(file).components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escaping_names() {
        for bad in ["../x.safetensors", "/etc/passwd", "a/../../b", "a\\..\\b", ""] {
            let json = format!(r#"{{"weight_map":{{"t":"{}"}}}}"#, bad.replace('\\', "\\\\"));
            let r = ShardIndex::parse("i.json", json.into_bytes());
            assert!(matches!(r, Err(FormatError::IndexEscapes { .. })), "{bad}: {r:?}");
        }
    }

    #[test]
    fn lists_shards_once() {
        let json = r#"{"metadata":{"total_size":8},"weight_map":{"a":"s2.safetensors","b":"s1.safetensors","c":"s2.safetensors"}}"#;
        let idx =
            ShardIndex::parse("i.json", json.as_bytes().to_vec()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(idx.shards, ["s1.safetensors", "s2.safetensors"]);
    }
}
