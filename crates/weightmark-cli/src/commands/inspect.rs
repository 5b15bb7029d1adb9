//! `weightmark inspect`.

use weightmark::is_default_selected;
use weightmark::{hex, model_tensor_digests, tensor_root};
use weightmark::{inspect_json, Digests, Model};

use crate::cli::InspectArgs;
use crate::format::{bytes, count, safe};
use crate::{outln, Outcome};

/// Prints a model's tensors.
pub fn run(args: &InspectArgs) -> anyhow::Result<Outcome> {
    let model = Model::open(&args.model)?;
    for warning in &model.warnings {
        eprintln!(
            "weightmark: warning: {}: {}",
            crate::format::path(&args.model),
            crate::format::safe(warning)
        );
    }
    if args.json {
        let digests = if args.no_digests { Digests::Skip } else { Digests::Compute };
        let out = inspect_json(&model, &args.model.display().to_string(), digests);
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Outcome::Success);
    }
    let tensor_digests = if args.no_digests { None } else { Some(model_tensor_digests(&model)) };
    let elements: u64 = model.tensors().map(|t| t.elements() as u64).sum();
    let marked: u64 =
        model.tensors().filter(is_default_selected).map(|t| t.elements() as u64).sum();
    outln!(
        "{}: {:?}, {} file(s), {} tensors, {} elements ({} marked by default), {}",
        crate::format::path(&args.model),
        model.layout,
        model.files.len(),
        model.tensor_count(),
        count(elements),
        count(marked),
        bytes(model.data_bytes())
    );
    let width = model.tensors().map(|t| safe(t.name).len()).max().unwrap_or(4);
    for (i, t) in model.tensors().enumerate() {
        let digest = tensor_digests
            .as_ref()
            .and_then(|d| d.get(i))
            .map(|(_, d)| hex(&d[..8]))
            .unwrap_or_default();
        outln!(
            "  {}{:<width$}  {:<7} {:<16} {:>10}  {}",
            if is_default_selected(&t) { "*" } else { " " },
            safe(t.name),
            t.dtype.name(),
            format!("{:?}", t.shape),
            bytes(t.byte_len() as u64),
            digest
        );
    }
    if let Some(d) = &tensor_digests {
        outln!("tensor root: {}", hex(&tensor_root(d)));
    }
    outln!("(* = marked by default)");
    Ok(Outcome::Success)
}
