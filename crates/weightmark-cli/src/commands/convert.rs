//! `weightmark convert`: GGUF to Hugging Face-layout safetensors.

use anyhow::Context;
use weightmark::{convert, parse_size, ConvertOptions, Dtype, Model};

use crate::cli::ConvertArgs;
use crate::{outln, Outcome};

/// Converts a model.
pub fn run(args: &ConvertArgs) -> anyhow::Result<Outcome> {
    let dtype = Dtype::from(args.dtype);
    let max_shard_bytes = match &args.max_shard_size {
        None => None,
        Some(s) => Some(parse_size(s).with_context(|| {
            format!("--max-shard-size '{s}' is not a size such as 500MB, 2GB or 1GiB")
        })?),
    };
    let model = Model::open(&args.model)?;
    for warning in &model.warnings {
        eprintln!(
            "weightmark: warning: {}: {}",
            crate::format::path(&args.model),
            crate::format::safe(warning)
        );
    }
    let report = convert(&model, &args.output, &ConvertOptions { dtype, max_shard_bytes })
        .with_context(|| format!("could not convert {}", crate::format::path(&args.model)))?;
    for warning in &report.warnings {
        eprintln!(
            "weightmark: warning: {}: {}",
            crate::format::path(&args.model),
            crate::format::safe(warning)
        );
    }
    outln!(
        "converted {} tensors of {} to {} ({} file(s) in {}{}{})",
        report.tensors,
        crate::format::path(&args.model),
        crate::format::path(&args.output),
        report.files.len(),
        dtype,
        if report.config { ", with config.json" } else { "" },
        if report.tokenizer { ", tokenizer.json and tokenizer_config.json" } else { "" }
    );
    Ok(Outcome::Success)
}
