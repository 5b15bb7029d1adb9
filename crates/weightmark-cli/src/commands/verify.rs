//! `weightmark verify`: is this certificate or report genuine, and is this
//! model the one it is about?

use serde_json::json;
use weightmark::provenance::{
    check_chain, verify_file, ChainLink, IdentificationPredicate, ModelCheck, Verified,
    VerifiedKind,
};
use weightmark::{load_certificate, Error, Model, PublicKey};

use crate::cli::VerifyArgs;
use crate::format::safe;
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
                outln!("INVALID: {}: {e}", crate::format::path(&args.file));
            }
            return Ok(Outcome::Negative);
        }
        Err(e) => return Err(e.into()),
    };
    let model_ok = verified.model_matches();
    let chain = chain(args, &verified, &public)?;
    if args.json {
        let mut v = verified.to_json(&args.file);
        if let Some(c) = &chain {
            v["chain"] = match c {
                Ok(links) => json!({"valid": true, "certificates": links.iter().map(|l| json!({
                    "file": l.path.display().to_string(),
                    "sha256": l.sha256,
                    "mark": l.mark,
                    "fingerprint": l.fingerprint,
                })).collect::<Vec<_>>()}),
                Err(reason) => json!({"valid": false, "reason": reason}),
            };
            if c.is_err() {
                v["valid"] = json!(false);
            }
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print(args, &verified)?;
        match &chain {
            Some(Ok(links)) => {
                outln!("CHAIN VALID: {} certificates, newest first:", links.len());
                for l in links {
                    outln!(
                        "  {} (sha256 {}): {}",
                        crate::format::path(&l.path),
                        l.sha256,
                        match (&l.mark, l.fingerprint) {
                            (Some(m), true) => format!("mark {}, fingerprint", safe(m)),
                            (Some(m), false) => format!("mark {}", safe(m)),
                            (None, true) => "fingerprint".into(),
                            (None, false) => "nothing certified".into(),
                        }
                    );
                }
            }
            Some(Err(reason)) => outln!("CHAIN INVALID: {reason}"),
            None => {}
        }
    }
    let chain_ok = !matches!(chain, Some(Err(_)));
    Ok(if model_ok && chain_ok { Outcome::Success } else { Outcome::Negative })
}

/// With `--chain`: the chain of the certificate `verified` is, checked
/// (`Ok(Err(reason))` when it is broken: exit 1); `None` without `--chain`.
/// Chain files that cannot be read or are not signed by `public` are input
/// errors (exit 2).
fn chain(
    args: &VerifyArgs,
    verified: &Verified,
    public: &PublicKey,
) -> anyhow::Result<Option<Result<Vec<ChainLink>, String>>> {
    if args.chain.is_empty() {
        return Ok(None);
    }
    if !matches!(verified.kind, VerifiedKind::Certificate(_)) {
        anyhow::bail!(
            "{}: only a release certificate has a chain (--chain)",
            crate::format::path(&args.file)
        );
    }
    let newest = load_certificate(&args.file, public)?;
    let earlier =
        args.chain.iter().map(|p| load_certificate(p, public)).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(check_chain(&newest, &earlier).map_err(|e| e.to_string())))
}

fn print(args: &VerifyArgs, v: &Verified) -> anyhow::Result<()> {
    match &v.kind {
        VerifiedKind::Certificate(s) => {
            let p = &s.predicate;
            outln!(
                "VALID certificate {}, signed by key {}",
                crate::format::path(&args.file),
                safe(&v.signer)
            );
            outln!(
                "  release '{}', recipient {}, created {}; scheme {} at strength {}, {} marked tensors",
                crate::format::safe(&p.label),
                p.recipient.as_deref().map(|r| format!("'{}'", crate::format::safe(r))).unwrap_or_else(|| "none".into()),
                safe(&p.created),
                safe(&p.scheme.to_string()),
                p.strength,
                p.tensors.len()
            );
            if let Some(f) = &p.fingerprint {
                outln!(
                    "  backdoor fingerprint: scheme {}, {} pairs, key commitment {}",
                    safe(&f.scheme),
                    f.count,
                    safe(&f.key_commitment)
                );
            }
            if let Some(old) = &p.supersedes {
                outln!("  supersedes the certificate with SHA-256 {}", safe(old));
                if args.chain.is_empty() {
                    outln!("  (give the earlier certificate with --chain to check the chain)");
                }
            }
        }
        VerifiedKind::FingerprintCheck(s) => {
            let p = &s.predicate;
            outln!(
                "VALID fingerprint check report {}, signed by key {}",
                crate::format::path(&args.file),
                safe(&v.signer)
            );
            let suspect = match &p.suspect.endpoint {
                Some(e) => format!(
                    "endpoint {} ({} API, model {})",
                    safe(&e.url),
                    safe(&e.api),
                    e.model.as_deref().map(safe).unwrap_or_else(|| "-".into())
                ),
                None => format!(
                    "model with tensor root {}",
                    safe(p.suspect.tensor_root.as_deref().unwrap_or("-"))
                ),
            };
            let suspect = match &p.system {
                Some(system) => format!("{suspect} after the system prompt '{}'", safe(system)),
                None => suspect,
            };
            outln!(
                "  release '{}' (certificate sha256 {}), {suspect}, created {}: {} of {} \
                 triggers answered (round {}), {}; {}",
                safe(&p.label),
                safe(&p.certificate.sha256),
                safe(&p.created),
                p.matches,
                p.asked.len(),
                p.round,
                crate::format::p_bound(p.p_value),
                if p.detected { "fingerprint found" } else { "no fingerprint found" }
            );
            if !p.refused.is_empty() {
                outln!("  {} triggers refused by the endpoint", p.refused.len());
            }
            if let Some(st) = &p.stopped {
                outln!(
                    "  the endpoint stopped answering at pair {} ({}); {} more not asked",
                    st.index,
                    safe(&st.reason),
                    st.not_asked
                );
            }
        }
        VerifiedKind::Report(s) => {
            let p = &s.predicate;
            outln!(
                "VALID detection report {}, signed by key {}",
                crate::format::path(&args.file),
                safe(&v.signer)
            );
            outln!(
                "  {} detection of release '{}' (recipient {}): z = {:.2}, {}, {}; created {}",
                match p.mode {
                    weightmark::Mode::Blind => "blind",
                    weightmark::Mode::Informed => "informed",
                },
                crate::format::safe(&p.label),
                p.recipient
                    .as_deref()
                    .map(|r| format!("'{}'", crate::format::safe(r)))
                    .unwrap_or_else(|| "none".into()),
                p.z,
                crate::format::p_bound(p.p_value),
                if p.detected { "mark found" } else { "no mark found" },
                safe(&p.created)
            );
            if p.certificates_tested > 1 {
                outln!(
                    "  {} certificates tested: adjusted bound min(1, {} x p) = {}",
                    p.certificates_tested,
                    p.certificates_tested,
                    crate::format::p_bound(p.adjusted_p_value.unwrap_or(1.0))
                );
            }
            if let Some(c) = &p.certificate {
                outln!(
                    "  tested certificate sha256 {} ({} key {})",
                    safe(&c.sha256),
                    if c.signature_checked {
                        "signature checked against"
                    } else {
                        "signature NOT checked; claims"
                    },
                    safe(&c.signer)
                );
            }
            if let Some(b) = &p.builds_on {
                outln!(
                    "  builds on report sha256 {} ({} key {})",
                    safe(&b.sha256),
                    if b.signature_checked {
                        "signature checked against"
                    } else {
                        "signature NOT checked; claims"
                    },
                    safe(&b.signer)
                );
            }
            match &p.dispute {
                Some(d) if d.committed => outln!(
                    "  with a revealed key (reveal sha256 {}): the suspect was committed to by the \
                     owner's report {} before the reveal",
                    safe(&d.reveal_sha256),
                    safe(d.report_sha256.as_deref().unwrap_or_default())
                ),
                Some(d) => outln!(
                    "  with a bare revealed key (sha256 {}) NOT committed to this suspect: the \
                     result does not show who marked it",
                    safe(&d.reveal_sha256)
                ),
                None => {}
            }
        }
        VerifiedKind::Reveal(s) => {
            let p = &s.predicate;
            outln!(
                "VALID reveal {}, signed by key {}",
                crate::format::path(&args.file),
                safe(&v.signer)
            );
            outln!(
                "  {} key of release '{}' (recipient {}), revealed {}, for the suspect with \
                 tensor root {} committed to by report sha256 {} (dated {}); check that this \
                 report was published before the reveal",
                safe(&p.component),
                safe(&p.label),
                p.recipient
                    .as_deref()
                    .map(|r| format!("'{}'", safe(r)))
                    .unwrap_or_else(|| "none".into()),
                safe(&p.created),
                safe(&p.report.suspect_tensor_root),
                safe(&p.report.sha256),
                safe(&p.report.created)
            );
        }
        VerifiedKind::Identification(s) => print_identification(args, v, &s.predicate)?,
    }
    if let (Some(check), Some(path)) = (&v.model, &args.model) {
        let certificate = matches!(v.kind, VerifiedKind::Certificate(_));
        print_model_check(check, &crate::format::path(path), certificate)?;
    }
    Ok(())
}

fn print_identification(
    args: &VerifyArgs,
    v: &Verified,
    p: &IdentificationPredicate,
) -> anyhow::Result<()> {
    outln!(
        "VALID identification report {}, signed by key {}; its bounds and decisions recomputed \
         and agree",
        crate::format::path(&args.file),
        safe(&v.signer)
    );
    let releases: Vec<String> = p
        .releases
        .iter()
        .map(|r| format!("'{}' ({} certificates)", safe(&r.label), r.certificates))
        .collect();
    outln!(
        "  {} identification of the suspect with tensor root {}: {} certificates tested, \
         p-values Bonferroni-adjusted for {} tests, threshold {:.0e}; release(s) {}; created {}",
        match p.mode {
            weightmark::Mode::Blind => "blind",
            weightmark::Mode::Informed => "informed",
        },
        safe(&p.suspect_tensor_root),
        p.certificates_tested,
        p.certificates_tested,
        p.threshold_p,
        releases.join(", "),
        safe(&p.created)
    );
    for c in p.candidates.iter().filter(|c| c.identified) {
        outln!(
            "  identified: recipient {} of '{}', z = {:.2}, adjusted {} (certificate sha256 {})",
            c.recipient
                .as_deref()
                .map(|r| format!("'{}'", safe(r)))
                .unwrap_or_else(|| "none".into()),
            safe(&c.label),
            c.z,
            crate::format::p_bound(c.adjusted_p_value),
            safe(&c.certificate.sha256)
        );
    }
    if p.identified == 0 {
        outln!("  no candidate identified");
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
        outln!("  weight file not found in the model (no file with its SHA-256): {}", safe(name));
    }
    for name in &c.files_unrecorded {
        outln!("  weight file of the model not recorded: {}", safe(name));
    }
    for name in &c.tensors_changed {
        outln!("  tensor changed: {}", safe(name));
    }
    for name in &c.tensors_missing {
        outln!("  tensor missing from the model: {}", safe(name));
    }
    for name in &c.tensors_extra {
        outln!("  tensor not recorded: {}", safe(name));
    }
    for name in &c.side_files_added {
        outln!("  side file added: {}", safe(name));
    }
    for name in &c.side_files_removed {
        outln!("  side file removed: {}", safe(name));
    }
    for name in &c.side_files_changed {
        outln!("  side file changed: {}", safe(name));
    }
    for entry in &c.side_files_refused {
        outln!("  not part of a release: {}", safe(entry));
    }
    if !c.not_compared.is_empty() {
        outln!("  not compared (hidden): {}", safe(&c.not_compared.join(", ")));
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
