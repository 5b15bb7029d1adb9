//! `weightmark inspect`.

use serde_json::json;
use weightmark::is_default_selected;
use weightmark::Model;
use weightmark::{hex, model_tensor_digests, tensor_root};

use crate::cli::InspectArgs;
use crate::format::{bytes, count};
use crate::{outln, Outcome};

/// Prints a model's tensors.
pub fn run(args: &InspectArgs) -> anyhow::Result<Outcome> {
    let model = Model::open(&args.model)?;
    for warning in &model.warnings {
        eprintln!("weightmark: warning: {}: {warning}", args.model.display());
    }
    let tensor_digests = if args.no_digests { None } else { Some(model_tensor_digests(&model)) };
    if args.json {
        let tensors: Vec<_> = model
            .tensors()
            .enumerate()
            .map(|(i, t)| {
                json!({
                    "name": t.name,
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "elements": t.elements(),
                    "bytes": t.data.len(),
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
            files.push(json!({"name": raw.file_name, "bytes": raw.bytes().len(), "tensors": model.tensor_count(), "gguf_version": raw.gguf.version}));
        }
        let metadata: Vec<_> = model.files.iter().map(|f| json!(f.header.metadata)).collect();
        let out = json!({
            "path": args.model.display().to_string(),
            "layout": format!("{:?}", model.layout),
            "files": files,
            "metadata": metadata,
            "tensors": tensors,
            "tensor_root": tensor_digests.as_ref().map(|d| hex(&tensor_root(d))),
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Outcome::Success);
    }
    let elements: u64 = model.tensors().map(|t| t.elements() as u64).sum();
    let marked: u64 =
        model.tensors().filter(is_default_selected).map(|t| t.elements() as u64).sum();
    outln!(
        "{}: {:?}, {} file(s), {} tensors, {} elements ({} marked by default), {}",
        args.model.display(),
        model.layout,
        model.files.len(),
        model.tensor_count(),
        count(elements),
        count(marked),
        bytes(model.data_bytes())
    );
    let width = model.tensors().map(|t| t.name.len()).max().unwrap_or(4);
    for (i, t) in model.tensors().enumerate() {
        let digest = tensor_digests
            .as_ref()
            .and_then(|d| d.get(i))
            .map(|(_, d)| hex(&d[..8]))
            .unwrap_or_default();
        outln!(
            "  {}{:<width$}  {:<7} {:<16} {:>10}  {}",
            if is_default_selected(&t) { "*" } else { " " },
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            bytes(t.data.len() as u64),
            digest
        );
    }
    if let Some(d) = &tensor_digests {
        outln!("tensor root: {}", hex(&tensor_root(d)));
    }
    outln!("(* = marked by default)");
    Ok(Outcome::Success)
}
