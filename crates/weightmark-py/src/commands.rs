//! The commands that work on files, with the CLI's semantics: each runs
//! without the GIL and returns the JSON text of its result, the same object
//! the CLI prints with `--json` where the CLI has that option.

use std::path::{Path, PathBuf};

use serde_json::json;
use weightmark::provenance::verify_file;
use weightmark::{
    check_release_paths, convert, default_certificate_path, embed, hex, identify, inspect_json,
    load_candidates, parse_size, prepare_outputs, resolve_output, write_new, ConvertOptions,
    Digests, Dtype, EmbedOptions, Error, IdentifyOptions, Model, Overwrite, Progress, PublicKey,
    RecipientCode, Scheme, SecretKey, Selection, TardosCode,
};

use crate::detection::check_threshold;
use crate::errors::{json_text, Failure, Outcome};
use crate::summary::{marking_summary, Marked};

/// What `keygen` wrote: the secret key, the public key, the key id.
pub fn keygen(name: &Path) -> Outcome<(String, String, String)> {
    let secret_path = with_suffix(name, "key");
    let public_path = with_suffix(name, "pub");
    let key = SecretKey::generate()?;
    key.save(&secret_path, &public_path, &weightmark::now_rfc3339())?;
    Ok((
        secret_path.display().to_string(),
        public_path.display().to_string(),
        key.public_key().key_id(),
    ))
}

/// `NAME` + `.ext` (keeps any dots already in NAME).
fn with_suffix(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The arguments of `embed`.
pub struct EmbedRequest {
    /// The model to mark.
    pub model: PathBuf,
    /// Where the marked model goes.
    pub output: PathBuf,
    /// The owner's secret key file.
    pub key: PathBuf,
    /// Release label (default: the model's name).
    pub label: Option<String>,
    /// Recipient (licensee).
    pub recipient: Option<String>,
    /// Mark strength (`None`: the library's size rule).
    pub strength: Option<f64>,
    /// Mark scheme (the library's default when absent).
    pub scheme: Option<Scheme>,
    /// Tensor globs (default selection when absent or empty).
    pub tensors: Option<Vec<String>>,
    /// How the recipient component is built.
    pub recipient_code: RecipientCode,
    /// The recipient component's share of the mark (`None`: the default).
    pub recipient_share: Option<f64>,
    /// Certificate path (default `OUT.cert.json` beside the output).
    pub cert: Option<PathBuf>,
    /// Whether an existing output file and certificate may be replaced.
    pub overwrite: Overwrite,
}

/// Embedding options: the library's defaults (scheme, creation time) with
/// these choices.
pub fn options<'p>(
    label: &str,
    recipient: Option<String>,
    strength: Option<f64>,
    scheme: Option<Scheme>,
    globs: Option<Vec<String>>,
    (recipient_code, recipient_share): (RecipientCode, Option<f64>),
    progress: &'p dyn Progress,
) -> EmbedOptions<'p> {
    let mut options = EmbedOptions::new(label).recipient_code(recipient_code).progress(progress);
    options.recipient_share = recipient_share;
    options.strength = strength;
    options.recipient = recipient;
    options.selection = selection(globs);
    if let Some(scheme) = scheme {
        options.scheme = scheme;
    }
    options
}

/// The scheme called `name` (`"ss1"`, `"ss2"`), or an input error.
pub fn parse_scheme(name: Option<&str>) -> Outcome<Option<Scheme>> {
    name.map(|n| {
        Scheme::from_name(&n.to_ascii_lowercase()).ok_or_else(|| {
            let known: Vec<String> =
                Scheme::ALL.iter().map(|s| format!("'{}'", s.name())).collect();
            Failure::Input(format!(
                "scheme '{}' is not one this version knows: use {}",
                n.escape_debug(),
                known.join(" or ")
            ))
        })
    })
    .transpose()
}

/// The recipient code called `name` (`"independent"`, the default, or
/// `"tardos1"`) with its parameters, checked: `groups` and `cutoff` (the
/// library's defaults when absent) belong to `"tardos1"` only.
pub fn parse_recipient_code(
    name: Option<&str>,
    groups: Option<u32>,
    cutoff: Option<f64>,
) -> Outcome<RecipientCode> {
    match name.map(str::to_ascii_lowercase).as_deref() {
        None | Some("independent") => {
            if groups.is_some() || cutoff.is_some() {
                return Err(Failure::Input(
                    "code_groups and code_cutoff belong to recipient_code='tardos1'".into(),
                ));
            }
            Ok(RecipientCode::Independent)
        }
        Some(weightmark::tardos::TARDOS1) => {
            let code = TardosCode::new(
                groups.unwrap_or(weightmark::tardos::DEFAULT_GROUPS),
                cutoff.unwrap_or(weightmark::tardos::DEFAULT_CUTOFF),
            )
            .map_err(|e| Failure::Input(e.to_string()))?;
            Ok(RecipientCode::Tardos(code))
        }
        Some(_) => Err(Failure::Input(format!(
            "recipient code '{}' is not one this version knows: use 'independent' or 'tardos1'",
            name.unwrap_or_default().escape_debug()
        ))),
    }
}

/// Tensor selection from optional globs: none (or an empty list) is the
/// default selection, as with the CLI's `--tensors`.
pub fn selection(globs: Option<Vec<String>>) -> Selection {
    match globs {
        Some(globs) if !globs.is_empty() => Selection::Globs(globs),
        _ => Selection::Default,
    }
}

/// Marks a model file, writes it and its certificate.
pub fn embed_files(r: EmbedRequest, progress: &dyn Progress) -> Outcome<String> {
    let key = SecretKey::load(&r.key)?;
    let model = Model::open(&r.model)?;
    let destination = resolve_output(&model, &r.output)?;
    let cert_path = r.cert.clone().unwrap_or_else(|| default_certificate_path(&destination));
    check_release_paths(&model, &r.key, &destination, &cert_path)?;
    prepare_outputs(&[&destination, &cert_path], r.overwrite)?;
    let label = r.label.clone().unwrap_or_else(|| model.display_name());
    let options = options(
        &label,
        r.recipient.clone(),
        r.strength,
        r.scheme,
        r.tensors,
        (r.recipient_code, r.recipient_share),
        progress,
    )
    .overwrite(r.overwrite);
    let report = embed(&model, &r.output, &key, &options)?;
    write_new(&cert_path, &report.certificate_text()?, r.overwrite)?;
    let mut out = marking_summary(&Marked {
        scheme: options.scheme,
        label: &label,
        recipient: r.recipient.as_deref(),
        strength: report.strength.strength,
        signer: &key.public_key().key_id(),
        tensors: &report.tensors,
        fidelity: &report.fidelity,
        blind: &report.blind,
        informed: report.informed.as_ref(),
    });
    out.insert("model".into(), json!(r.model.display().to_string()));
    out.insert("output".into(), json!(report.written.path.display().to_string()));
    out.insert("certificate".into(), json!(cert_path.display().to_string()));
    out.insert(
        "files".into(),
        json!(report
            .written
            .files
            .iter()
            .map(|f| json!({"name": f.name, "sha256": hex(&f.sha256), "size": f.size}))
            .collect::<Vec<_>>()),
    );
    let copied: Vec<&str> = report.written.copied.iter().map(|f| f.name.as_str()).collect();
    let skipped: Vec<String> = report.written.skipped.iter().map(ToString::to_string).collect();
    out.insert("copied".into(), json!(copied));
    out.insert("skipped".into(), json!(skipped));
    out.insert("warnings".into(), json!(model.warnings));
    json_text(&serde_json::Value::Object(out))
}

/// Ranks every certificate of `certs` against the suspect: the CLI's
/// `identify --json` object, and the files left out with the reason.
pub fn identify_files(
    suspect: &Path,
    key: &Path,
    certs: &Path,
    original: Option<&Path>,
    threshold: f64,
    progress: &dyn Progress,
) -> Outcome<(String, Vec<(String, String)>)> {
    check_threshold(threshold)?;
    let secret = SecretKey::load(key)?;
    let loaded = load_candidates(certs, &secret)?;
    let skipped =
        loaded.skipped.iter().map(|(p, why)| (p.display().to_string(), why.clone())).collect();
    let suspect = Model::open(suspect)?;
    let original = original.map(Model::open).transpose()?;
    let options = IdentifyOptions { threshold_p: threshold, progress };
    let found = identify(&suspect, original.as_ref(), &loaded.candidates, &options)?;
    let value = serde_json::to_value(&found)
        .map_err(|e| Failure::Library(Error::internal(format!("cannot write JSON: {e}"))))?;
    Ok((json_text(&value)?, skipped))
}

/// Checks a certificate's or report's signature (and a model against it):
/// the CLI's `verify --json` object. A signature that does not verify, or
/// another key's, is a result with `valid` false, not an error.
pub fn verify_files(file: &Path, public: &Path, model: Option<&Path>) -> Outcome<String> {
    let public = PublicKey::load(public)?;
    let model = model.map(Model::open).transpose()?;
    let verified = match verify_file(file, &public, model.as_ref()) {
        Ok(v) => v,
        Err(e @ (Error::BadSignature { .. } | Error::WrongKey { .. })) => {
            return json_text(&json!({
                "valid": false,
                "file": file.display().to_string(),
                "reason": e.to_string(),
            }));
        }
        Err(e) => return Err(e.into()),
    };
    json_text(&verified.to_json(file))
}

/// A model's tensors, files and digests: the CLI's `inspect --json` object
/// (`digests` false leaves the digests out, as `--no-digests` does).
pub fn inspect_model(path: &Path, digests: bool) -> Outcome<(String, Vec<String>)> {
    let model = Model::open(path)?;
    let which = if digests { Digests::Compute } else { Digests::Skip };
    let out = inspect_json(&model, &path.display().to_string(), which);
    Ok((json_text(&out)?, model.warnings.clone()))
}

/// The output dtype of `convert`, from `f32`, `f16` or `bf16` (any case;
/// `float32`, `float16` and `bfloat16` too).
fn float_dtype(name: &str) -> Outcome<Dtype> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(Dtype::F32),
        "f16" | "float16" => Ok(Dtype::F16),
        "bf16" | "bfloat16" => Ok(Dtype::BF16),
        _ => Err(Failure::Input(format!(
            "dtype '{}' is not one convert writes: use f32, f16 or bf16",
            name.escape_debug()
        ))),
    }
}

/// Writes a GGUF (or any readable) model as Hugging Face-layout safetensors.
pub fn convert_model(
    model: &Path,
    output: &Path,
    dtype: &str,
    max_shard_size: Option<&str>,
) -> Outcome<String> {
    let dtype = float_dtype(dtype)?;
    let max_shard_bytes = match max_shard_size {
        None => None,
        Some(s) => Some(parse_size(s).ok_or_else(|| {
            Failure::Input(format!(
                "max_shard_size '{}' is not a size such as 500MB, 2GB, 1GiB or a number of bytes",
                s.escape_debug()
            ))
        })?),
    };
    let opened = Model::open(model)?;
    let report = convert(&opened, output, &ConvertOptions { dtype, max_shard_bytes })?;
    let mut warnings = opened.warnings.clone();
    warnings.extend(report.warnings.iter().cloned());
    json_text(&json!({
        "model": model.display().to_string(),
        "output": output.display().to_string(),
        "dtype": dtype.name(),
        "files": report.files,
        "tensors": report.tensors,
        "config": report.config,
        "tokenizer": report.tokenizer,
        "warnings": warnings,
    }))
}
