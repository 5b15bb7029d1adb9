//! What a model holds: tensors, dtypes, shapes, sizes, files, metadata and
//! digests, as the `inspect --json` object (docs/formats.md), shared by the
//! CLI and the Python package.

use serde_json::json;

use crate::digest::{hex, model_tensor_digests, tensor_root};
use crate::model::Model;
use crate::select::is_default_selected;

/// Whether [`inspect_json`] computes tensor digests (a pass over every byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digests {
    /// Compute each tensor's digest and the tensor root.
    Compute,
    /// Leave them out (`null`).
    Skip,
}

/// The `inspect --json` object of `model`, reported under `path`.
pub fn inspect_json(model: &Model, path: &str, digests: Digests) -> serde_json::Value {
    let tensor_digests = (digests == Digests::Compute).then(|| model_tensor_digests(model));
    let tensors: Vec<_> = model
        .tensors()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "name": t.name,
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "elements": t.elements(),
                "bytes": t.byte_len(),
                "marked_by_default": is_default_selected(&t),
                "digest": tensor_digests.as_ref().and_then(|d| d.get(i)).map(|(_, d)| hex(d)),
            })
        })
        .collect();
    let mut files: Vec<_> = model
        .files
        .iter()
        .map(|f| json!({"name": f.file_name, "bytes": f.bytes().len(), "tensors": f.header.tensors.len()}))
        .collect();
    if let Some(raw) = &model.raw {
        files.push(json!({
            "name": raw.file_name,
            "bytes": raw.bytes().len(),
            "tensors": model.tensor_count(),
            "gguf_version": raw.gguf.version,
        }));
    }
    let metadata: Vec<_> = model.files.iter().map(|f| json!(f.header.metadata)).collect();
    json!({
        "path": path,
        "layout": format!("{:?}", model.layout),
        "files": files,
        "metadata": metadata,
        "tensors": tensors,
        "tensor_root": tensor_digests.as_ref().map(|d| hex(&tensor_root(d))),
    })
}
