//! `weightmark detect`.

use anyhow::{bail, Context};
use serde_json::json;
use weightmark::provenance::envelope_to_string;
use weightmark::provenance::report::{build_report, load_report, ReportInputs};
use weightmark::{
    detect, hex, load_certificate, load_certificate_unverified, model_file_digests,
    model_tensor_digests, prepare_outputs, tensor_root, write_new, Certificate, DetectOptions,
    Detection, MarkKey, Model, Overwrite, PublicKey, SecretKey, Target,
};

use crate::cli::DetectArgs;
use crate::format::{count, p_bound};
use crate::progress::Bar;
use crate::{outln, Outcome};

/// Tests a suspect for one release's mark.
pub fn run(args: &DetectArgs) -> anyhow::Result<Outcome> {
    if !(args.threshold > 0.0 && args.threshold < 1.0) {
        bail!("--threshold {} must be a probability between 0 and 1", args.threshold);
    }
    if args.recipient.as_deref() == Some("") {
        bail!("the recipient is empty: leave -r out to test a release without one");
    }
    let overwrite = if args.force { Overwrite::Replace } else { Overwrite::Refuse };
    if let Some(report) = &args.report {
        refuse_report_collision(report, args)?;
        prepare_outputs(&[report.as_path()], overwrite).map_err(crate::force_hint)?;
    }
    let secret = args.key.as_deref().map(SecretKey::load).transpose()?;
    // Whose signature the certificate must carry.
    let owner: Option<PublicKey> = match (&args.public, &args.mark_key, &secret) {
        (Some(path), _, _) => Some(PublicKey::load(path)?),
        (None, None, Some(secret)) => Some(secret.public_key()),
        _ => None,
    };
    let cert = match (&args.cert, &owner) {
        (Some(path), Some(owner)) => Some(load_certificate(path, owner)?),
        (Some(path), None) => Some(load_certificate_unverified(path)?),
        (None, _) => None,
    };
    let (label, recipient, target) = release(args, secret.as_ref(), cert.as_ref())?;
    if cert.as_ref().is_some_and(|c| !c.signature_checked) {
        eprintln!(
            "weightmark: note: the certificate's signature was not checked (give the owner's \
             public key with --pub); its commitment does match the mark key"
        );
    }

    let suspect = Model::open(&args.suspect)?;
    for warning in &suspect.warnings {
        eprintln!("weightmark: warning: {}: {warning}", args.suspect.display());
    }
    let original = args.original.as_ref().map(Model::open).transpose()?;
    let builds_on = args.builds_on.as_deref().map(|p| load_report(p, None)).transpose()?;
    let bar = Bar::new();
    let options = DetectOptions { threshold_p: args.threshold, progress: &bar };
    let result = detect(&suspect, original.as_ref(), &target, &options)
        .with_context(|| format!("could not test {}", args.suspect.display()))?;
    if result.elements == 0 {
        let why: Vec<String> =
            result.skipped.iter().take(3).map(|s| format!("'{}' {}", s.name, s.reason)).collect();
        bail!(
            "{}: nothing could be tested ({} tensor(s) skipped: {}{})",
            args.suspect.display(),
            result.skipped.len(),
            why.join("; "),
            if result.skipped.len() > 3 { "; ..." } else { "" }
        );
    }

    if let (Some(path), Some(signer)) = (&args.report, &secret) {
        let suspect_files = model_file_digests(&suspect);
        let original_tensor_root =
            original.as_ref().map(|o| hex(&tensor_root(&model_tensor_digests(o))));
        let envelope = build_report(
            &ReportInputs {
                detection: &result,
                label: &label,
                recipient: recipient.as_deref(),
                certificate: cert.as_ref(),
                suspect_files: &suspect_files,
                original_tensor_root,
                builds_on: builds_on.as_ref(),
                created: weightmark::now_rfc3339(),
            },
            signer,
        )?;
        write_new(path, &envelope_to_string(&envelope)?, overwrite)
            .map_err(crate::force_hint)
            .with_context(|| format!("could not write the report {}", path.display()))?;
    }

    if args.json {
        let mut value = serde_json::to_value(&result)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("label".into(), json!(label));
            obj.insert("recipient".into(), json!(recipient));
            obj.insert("certificate_digest".into(), json!(cert.as_ref().map(|c| &c.digest)));
            obj.insert(
                "certificate_signature_checked".into(),
                json!(cert.as_ref().map(|c| c.signature_checked)),
            );
            obj.insert("suspect".into(), json!(args.suspect.display().to_string()));
            obj.insert(
                "report".into(),
                json!(args.report.as_ref().map(|p| p.display().to_string())),
            );
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_table(args, &label, recipient.as_deref(), &result)?;
    }
    Ok(if result.detected { Outcome::Success } else { Outcome::Negative })
}

/// Label, recipient and target of the release under test. A mark key that
/// does not match the certificate's commitment, or a scheme this version does
/// not know, is refused here, before any detection runs.
fn release(
    args: &DetectArgs,
    secret: Option<&SecretKey>,
    cert: Option<&Certificate>,
) -> anyhow::Result<(String, Option<String>, Target)> {
    if let Some(path) = &args.mark_key {
        let cert = cert.context("--mark-key needs --cert")?;
        let mark_key = MarkKey::load(path)?;
        let target = Target::from_revealed(cert, mark_key)
            .with_context(|| format!("{} does not open the certificate", path.display()))?;
        let p = cert.predicate();
        return Ok((p.label.clone(), p.recipient.clone(), target));
    }
    let secret = secret.context("give -k KEY or --mark-key FILE")?;
    let Some(cert) = cert else {
        let label = args.label.clone().context("give --cert CERT or --label LABEL")?;
        let target = Target::from_label(secret, &label, args.recipient.as_deref());
        return Ok((label, args.recipient.clone(), target));
    };
    let target = Target::from_certificate(cert, secret)?;
    let p = cert.predicate();
    Ok((p.label.clone(), p.recipient.clone(), target))
}

/// Refuses a report path that would replace one of the inputs.
fn refuse_report_collision(report: &std::path::Path, args: &DetectArgs) -> anyhow::Result<()> {
    let target = std::path::absolute(report)?;
    let target = target.canonicalize().unwrap_or(target);
    let mut inputs: Vec<&std::path::Path> = vec![&args.suspect];
    inputs.extend(args.key.as_deref());
    inputs.extend(args.mark_key.as_deref());
    inputs.extend(args.public.as_deref());
    inputs.extend(args.cert.as_deref());
    inputs.extend(args.original.as_deref());
    inputs.extend(args.builds_on.as_deref());
    for input in inputs {
        let Ok(input) = input.canonicalize() else { continue };
        if target == input || (input.is_dir() && target.starts_with(&input)) {
            bail!(
                "{}: the report would replace or land inside an input; choose another --report",
                report.display()
            );
        }
    }
    Ok(())
}

fn print_table(
    args: &DetectArgs,
    label: &str,
    recipient: Option<&str>,
    r: &Detection,
) -> anyhow::Result<()> {
    let mode = match r.mode {
        weightmark::Mode::Blind => "blind (no original)",
        weightmark::Mode::Informed => "informed (suspect minus original)",
    };
    outln!("suspect:  {} (tensor root {})", args.suspect.display(), &r.suspect_digest[..16]);
    outln!(
        "release:  label '{label}', recipient {}",
        recipient.map(|r| format!("'{r}'")).unwrap_or_else(|| "none".into())
    );
    outln!("mode:     {mode}, scheme {}", r.scheme);
    for r in &r.realigned {
        outln!("re-aligned: {r}");
    }
    let width = r.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6).max(6);
    outln!("  {:<width$}  {:>9}  {:>10}", "tensor", "z", "elements");
    for t in &r.tensors {
        outln!("  {:<width$}  {:>9.2}  {:>10}", t.name, t.z, count(t.elements));
    }
    for s in &r.skipped {
        outln!("  {:<width$}  not tested: {}", s.name, s.reason);
    }
    outln!(
        "global z = {:.2} over {} elements; {} (threshold p <= {:.0e}); two-sided {}",
        r.z,
        count(r.elements),
        p_bound(r.p_value),
        r.threshold_p,
        p_bound(r.p_value_two_sided)
    );
    if let Some(c) = &r.recipient_component {
        outln!("recipient component (whose copy): z = {:.2}; {}", c.z, p_bound(c.p_value));
    }
    if r.detected {
        outln!("MARK FOUND: this model carries the mark of this release.");
    } else {
        outln!("no mark found at this threshold.");
    }
    if let Some(report) = &args.report {
        outln!("signed report: {}", report.display());
    }
    Ok(())
}
