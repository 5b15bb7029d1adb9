//! `weightmark verify`: is this certificate or report genuine, and is this
//! model the one it is about?

use serde_json::json;
use weightmark::provenance::{verify_file, ModelCheck, Verified, VerifiedKind};
use weightmark::{Error, Model, PublicKey};

use crate::cli::VerifyArgs;
use crate::{outln, Outcome};

/// Exit 0 valid (and the model matches), 1 invalid or mismatch, 2 unusable input.
pub fn run(args: &VerifyArgs) -> anyhow::Result<Outcome> {
    let public = PublicKey::load(&args.public)?;
    let model = args.model.as_ref().map(Model::open).transpose()?;
    let verified = match verify_file(&args.file, &public, model.as_ref()) {
        Ok(v) => v,
        Err(e @ (Error::BadSignature { .. } | Error::WrongKey { .. })) => {
            if args.json {
                outln!(
                    "{}",
                    json!({"valid": false, "file": args.file.display().to_string(), "reason": e.to_string()})
                );
            } else {
                outln!("INVALID: {}: {e}", args.file.display());
            }
            return Ok(Outcome::Negative);
        }
        Err(e) => return Err(e.into()),
    };
    let model_ok = verified.model_matches();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&verified.to_json(&args.file))?);
    } else {
        print(args, &verified)?;
    }
    Ok(if model_ok { Outcome::Success } else { Outcome::Negative })
}

fn print(args: &VerifyArgs, v: &Verified) -> anyhow::Result<()> {
    match &v.kind {
        VerifiedKind::Certificate(s) => {
            let p = &s.predicate;
            outln!("VALID certificate {}, signed by key {}", args.file.display(), v.signer);
            outln!(
                "  release '{}', recipient {}, created {}; scheme {} at strength {}, {} marked tensors",
                p.label,
                p.recipient.as_deref().map(|r| format!("'{r}'")).unwrap_or_else(|| "none".into()),
                p.created,
                p.scheme,
                p.strength,
                p.tensors.len()
            );
        }
        VerifiedKind::Report(s) => {
            let p = &s.predicate;
            outln!("VALID detection report {}, signed by key {}", args.file.display(), v.signer);
            outln!(
                "  {} detection of release '{}' (recipient {}): z = {:.2}, {}, {}; created {}",
                match p.mode {
                    weightmark::Mode::Blind => "blind",
                    weightmark::Mode::Informed => "informed",
                },
                p.label,
                p.recipient.as_deref().map(|r| format!("'{r}'")).unwrap_or_else(|| "none".into()),
                p.z,
                crate::format::p_bound(p.p_value),
                if p.detected { "mark found" } else { "no mark found" },
                p.created
            );
            if let Some(c) = &p.certificate {
                outln!(
                    "  tested certificate sha256 {} ({} key {})",
                    c.sha256,
                    if c.signature_checked {
                        "signature checked against"
                    } else {
                        "signature NOT checked; claims"
                    },
                    c.signer
                );
            }
            if let Some(b) = &p.builds_on {
                outln!("  builds on report sha256 {} (signed by key {})", b.sha256, b.signer);
            }
        }
    }
    if let (Some(check), Some(path)) = (&v.model, &args.model) {
        let certificate = matches!(v.kind, VerifiedKind::Certificate(_));
        print_model_check(check, &path.display().to_string(), certificate)?;
    }
    Ok(())
}

fn print_model_check(c: &ModelCheck, model: &str, certificate: bool) -> anyhow::Result<()> {
    let side = c.side_files_compared;
    if c.tensors_match() && c.files_match() && c.side_files_match() {
        if side {
            outln!(
                "MODEL MATCHES: every file of {model} (weight files and side files) is byte for \
                 byte the release this certificate describes"
            );
        } else {
            outln!(
                "MODEL MATCHES: the tensors and weight files of {model} are byte for byte those \
                 this file records"
            );
        }
    } else if c.tensors_match() && c.side_files_match() {
        outln!(
            "MODEL MATCHES AT TENSOR LEVEL: every tensor of {model} is identical, but the weight \
             files differ (re-saved or re-sharded){}",
            if side { "; the side files match" } else { "" }
        );
    } else if c.tensors_match() {
        outln!(
            "MODEL DIFFERS: every tensor is identical, but the side files of {model} are not \
             those of the release"
        );
    } else {
        outln!("MODEL DIFFERS: {model} is not the model this file is about");
    }
    for name in &c.files_not_found {
        outln!("  weight file not found in the model (no file with its SHA-256): {name}");
    }
    for name in &c.files_unrecorded {
        outln!("  weight file of the model not recorded: {name}");
    }
    for name in &c.tensors_changed {
        outln!("  tensor changed: {name}");
    }
    for name in &c.tensors_missing {
        outln!("  tensor missing from the model: {name}");
    }
    for name in &c.tensors_extra {
        outln!("  tensor not recorded: {name}");
    }
    for name in &c.side_files_added {
        outln!("  side file added: {name}");
    }
    for name in &c.side_files_removed {
        outln!("  side file removed: {name}");
    }
    for name in &c.side_files_changed {
        outln!("  side file changed: {name}");
    }
    for entry in &c.side_files_refused {
        outln!("  not part of a release: {entry}");
    }
    if !c.not_compared.is_empty() {
        outln!("  not compared (hidden): {}", c.not_compared.join(", "));
    }
    if !side && certificate {
        outln!(
            "  note: side files (config, tokenizer, chat template, code) were not compared: {}",
            if c.certificate_lists_files {
                "the model given is a single file"
            } else {
                "this certificate predates side-file coverage and does not list them"
            }
        );
    }
    Ok(())
}
