//! `weightmark detect`.

use anyhow::{bail, Context};
use serde_json::json;
use weightmark::provenance::report::{build_report, ReportInputs};
use weightmark::provenance::{envelope_to_string, load_cited_report, load_reveal, Dispute, Reveal};
use weightmark::{
    detect, hex, load_certificate, model_file_digests, model_tensor_digests, prepare_outputs,
    tensor_root, write_new, Certificate, DetectOptions, Detection, Model, Overwrite, PublicKey,
    SecretKey, Target,
};

use std::path::PathBuf;

use weightmark::split::{self, detect::DetectPart, detect::DetectPlan};

use crate::cli::DetectArgs;
use crate::format::{count, p_bound, safe};
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
    for output in [&args.report, &args.plan_out, &args.part_out].into_iter().flatten() {
        refuse_report_collision(output, args)?;
        prepare_outputs(&[output.as_path()], overwrite).map_err(crate::force_hint)?;
    }
    let secret = args.key.as_deref().map(SecretKey::load).transpose()?;
    // Whose signature the certificate (and a reveal) must carry: --pub, else
    // the owner's own key. With --mark-key, clap requires --pub.
    let owner: Option<PublicKey> = match (&args.public, &secret) {
        (Some(path), _) => Some(PublicKey::load(path)?),
        (None, Some(secret)) if args.mark_key.is_none() => Some(secret.public_key()),
        _ => None,
    };
    let cert = match (&args.cert, &owner) {
        (Some(path), Some(owner)) => Some(load_certificate(path, owner)?),
        (Some(_), None) => bail!("the certificate needs the owner's public key (--pub)"),
        (None, _) => None,
    };
    // A revealed key is read with the owner's public key (clap requires --pub).
    let reveal = match (&args.mark_key, &owner) {
        (Some(path), Some(owner)) => Some(load_reveal(path, owner)?),
        (Some(_), None) => bail!("--mark-key needs the owner's public key (--pub)"),
        (None, _) => None,
    };
    let (label, recipient, target) =
        release(args, secret.as_ref(), cert.as_ref(), reveal.as_ref())?;
    // The cited report is checked with whichever key we hold signed it.
    let mut keys: Vec<PublicKey> = Vec::new();
    keys.extend(secret.as_ref().map(SecretKey::public_key));
    keys.extend(owner);
    keys.extend(args.builds_on_public.as_deref().map(PublicKey::load).transpose()?);
    let builds_on = args.builds_on.as_deref().map(|p| load_cited_report(p, &keys)).transpose()?;

    let plan = args.plan.as_deref().map(DetectPlan::load).transpose()?;
    if let (Some(plan), Some(cert)) = (&plan, &cert) {
        plan.check_certificate(cert)?;
    }
    // Split detection, step 3: no suspect is read.
    let combined = match &plan {
        Some(plan) if !args.combine.is_empty() => {
            let parts: Vec<DetectPart> =
                args.combine.iter().map(|p| DetectPart::load(p)).collect::<Result<_, _>>()?;
            Some(split::detect::combine(plan, &parts, args.threshold)?)
        }
        _ => None,
    };
    let suspect_path: PathBuf = match (&args.suspect, &plan) {
        (Some(path), _) => path.clone(),
        (None, Some(plan)) => PathBuf::from(plan.suspect()),
        (None, None) => bail!("give the SUSPECT model"),
    };
    let suspect = match &combined {
        Some(_) => None,
        None => Some(Model::open(&suspect_path)?),
    };
    for warning in suspect.iter().flat_map(|s| &s.warnings) {
        eprintln!(
            "weightmark: warning: {}: {}",
            crate::format::path(&suspect_path),
            crate::format::safe(warning)
        );
    }
    let original = args.original.as_ref().map(Model::open).transpose()?;
    let bar = Bar::new();
    let options = DetectOptions { threshold_p: args.threshold, progress: &bar };
    // Split detection, steps 1 and 2: write the plan or the part and stop.
    if let (Some(out), Some(suspect), Some(cert)) = (&args.plan_out, &suspect, &cert) {
        let name = suspect_path.display().to_string();
        let plan = DetectPlan::new(suspect, &name, cert, &target)?;
        write_new(out, &plan.to_text()?, overwrite).map_err(crate::force_hint)?;
        outln!(
            "plan: {} ({} file(s), {} tensor(s) tested); run parts I/N for I = 0..N-1 (N at most \
             {}) with --plan, then --combine their files",
            crate::format::path(out),
            plan.files(),
            plan.tested(),
            plan.files()
        );
        return Ok(Outcome::Success);
    }
    if let (Some(part), Some(out), Some(plan), Some(suspect)) =
        (args.part, &args.part_out, &plan, &suspect)
    {
        let result = DetectPart::run(suspect, plan, &target, part, &options)?;
        write_new(out, &result.to_text()?, overwrite).map_err(crate::force_hint)?;
        outln!("part {part}: {}", crate::format::path(out));
        return Ok(Outcome::Success);
    }
    if plan.is_some() && combined.is_none() {
        bail!("with --plan, give --part I/N (a part) or --combine PART... (the combine step)");
    }
    let result = match (&combined, &suspect) {
        (Some(c), _) => Ok(c.detection.clone()),
        (None, Some(suspect)) => detect(suspect, original.as_ref(), &target, &options),
        (None, None) => bail!("give the SUSPECT model"),
    };
    let result = result
        .and_then(|d| d.adjusted_for(args.tested))
        .with_context(|| format!("could not test {}", crate::format::path(&suspect_path)))?;
    if result.nothing_tested() {
        let why: Vec<String> =
            result.skipped.iter().take(3).map(|s| format!("'{}' {}", s.name, s.reason)).collect();
        bail!(
            "{}: nothing could be tested ({} tensor(s) skipped: {}{})",
            crate::format::path(&suspect_path),
            result.skipped.len(),
            why.join("; "),
            if result.skipped.len() > 3 { "; ..." } else { "" }
        );
    }
    // A revealed key settles only the suspect committed to before the reveal.
    let dispute = match (&reveal, &cert) {
        (Some(r), Some(c)) => Some(r.dispute_for(&result.suspect_digest, c)?),
        _ => None,
    };
    if dispute.as_ref().is_some_and(|d| !d.committed) {
        eprintln!("weightmark: warning: {}", UNCOMMITTED);
    }

    if let (Some(path), Some(signer)) = (&args.report, &secret) {
        let suspect_files = match (&combined, &suspect) {
            (Some(c), _) => c.suspect_files.clone(),
            (None, Some(suspect)) => model_file_digests(suspect),
            (None, None) => Vec::new(),
        };
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
                dispute: dispute.as_ref(),
                created: weightmark::now_rfc3339(),
            },
            signer,
        )?;
        write_new(path, &envelope_to_string(&envelope)?, overwrite)
            .map_err(crate::force_hint)
            .with_context(|| format!("could not write the report {}", crate::format::path(path)))?;
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
            obj.insert("suspect".into(), json!(suspect_path.display().to_string()));
            obj.insert("dispute".into(), json!(dispute));
            obj.insert(
                "builds_on_signature_checked".into(),
                json!(builds_on.as_ref().map(|r| r.signature_checked)),
            );
            obj.insert(
                "report".into(),
                json!(args.report.as_ref().map(|p| p.display().to_string())),
            );
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_table(args, &suspect_path, &label, recipient.as_deref(), &result, dispute.as_ref())?;
        if let (Some(path), Some(r)) = (&args.builds_on, &builds_on) {
            outln!(
                "builds on: {} ({})",
                crate::format::path(path),
                if r.signature_checked {
                    format!("signature checked against key {}", crate::format::safe(&r.signer))
                } else {
                    format!(
                        "signature NOT checked: no public key of its signer {}",
                        crate::format::safe(&r.signer)
                    )
                }
            );
        }
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
    reveal: Option<&Reveal>,
) -> anyhow::Result<(String, Option<String>, Target)> {
    if let Some(reveal) = reveal {
        let cert = cert.context("--mark-key needs --cert")?;
        let target = reveal.target(cert).with_context(|| {
            format!("{} does not open the certificate", crate::format::path(&reveal.path))
        })?;
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

/// Said on stdout and stderr for a bare mark key file.
const UNCOMMITTED: &str = "the mark key is NOT committed to this suspect (a bare mark key file, \
     not a reveal statement citing a report made before the reveal): anyone holding a revealed \
     key can plant its mark, so this result does not show who marked the model";

/// Refuses a report path that would replace one of the inputs.
fn refuse_report_collision(report: &std::path::Path, args: &DetectArgs) -> anyhow::Result<()> {
    let target = std::path::absolute(report)?;
    let target = target.canonicalize().unwrap_or(target);
    let mut inputs: Vec<&std::path::Path> = Vec::new();
    inputs.extend(args.suspect.as_deref());
    inputs.extend(args.plan.as_deref());
    inputs.extend(args.combine.iter().map(PathBuf::as_path));
    inputs.extend(args.key.as_deref());
    inputs.extend(args.mark_key.as_deref());
    inputs.extend(args.public.as_deref());
    inputs.extend(args.cert.as_deref());
    inputs.extend(args.original.as_deref());
    inputs.extend(args.builds_on.as_deref());
    inputs.extend(args.builds_on_public.as_deref());
    for input in inputs {
        let Ok(input) = input.canonicalize() else { continue };
        if target == input || (input.is_dir() && target.starts_with(&input)) {
            bail!(
                "{}: this output would replace or land inside an input; choose another path",
                crate::format::path(report)
            );
        }
    }
    Ok(())
}

fn print_table(
    args: &DetectArgs,
    suspect: &std::path::Path,
    label: &str,
    recipient: Option<&str>,
    r: &Detection,
    dispute: Option<&Dispute>,
) -> anyhow::Result<()> {
    let mode = match r.mode {
        weightmark::Mode::Blind => "blind (no original)",
        weightmark::Mode::Informed => "informed (suspect minus original)",
    };
    outln!("suspect:  {} (tensor root {})", crate::format::path(suspect), &r.suspect_digest[..16]);
    outln!(
        "release:  label '{}', recipient {}",
        safe(label),
        recipient.map(|r| format!("'{}'", safe(r))).unwrap_or_else(|| "none".into())
    );
    outln!("mode:     {mode}, scheme {}", r.scheme);
    for r in &r.realigned {
        outln!("re-aligned: {}", safe(r));
    }
    let width = r.tensors.iter().map(|t| safe(&t.name).len()).max().unwrap_or(6).max(6);
    outln!("  {:<width$}  {:>9}  {:>10}", "tensor", "z", "elements");
    for t in &r.tensors {
        outln!("  {:<width$}  {:>9.2}  {:>10}", safe(&t.name), t.z, count(t.elements));
    }
    for s in &r.skipped {
        outln!("  {:<width$}  not tested: {}", safe(&s.name), safe(&s.reason));
    }
    outln!(
        "global z{} = {:.2} over {} elements; {} (threshold p <= {:.0e}); two-sided {}",
        if r.release_component.is_some() { " (release and recipient components)" } else { "" },
        r.z,
        count(r.elements),
        p_bound(r.p_value),
        r.threshold_p,
        p_bound(r.p_value_two_sided)
    );
    if r.certificates_tested > 1 {
        outln!(
            "{} certificates tested: adjusted bound min(1, {} x p) = {}; the decision is taken \
             on it",
            r.certificates_tested,
            r.certificates_tested,
            p_bound(r.adjusted_p_value)
        );
    }
    if let Some(c) = &r.release_component {
        outln!("release component (every copy): z = {:.2}; {}", c.z, p_bound(c.p_value));
        outln!(
            "two tests of one hypothesis (both components; the release component alone): the \
             decision's bound is twice the smaller, {}, from the {}",
            p_bound(r.p_value),
            if c.z > r.z {
                "release component (another licensee's copy, or copies mixed?)"
            } else {
                "two components"
            }
        );
    }
    if let Some(c) = &r.recipient_component {
        match c.range {
            Some(rho) => outln!(
                "recipient component (whose copy, tardos1 code): z = {:.2}; {} (Bernstein, \
                 range {rho:.3})",
                c.z,
                p_bound(c.p_value)
            ),
            None => {
                outln!("recipient component (whose copy): z = {:.2}; {}", c.z, p_bound(c.p_value))
            }
        }
    }
    if r.elements == 0 && r.mode == weightmark::Mode::Informed {
        outln!(
            "every tested element equals the original's: the suspect carries no change, so no mark"
        );
    }
    if r.detected {
        outln!("MARK FOUND: this model carries the mark of this release.");
    } else {
        outln!("no mark found at this threshold.");
    }
    match dispute {
        Some(d) if d.committed => outln!(
            "dispute:  this suspect was committed to by the owner's report {} (dated {}) before \
             the reveal (dated {}); check that the report was published before the reveal",
            d.report_sha256.as_deref().unwrap_or_default(),
            d.report_created.as_deref().unwrap_or_default(),
            d.revealed.as_deref().unwrap_or_default()
        ),
        Some(_) => outln!("WARNING: {UNCOMMITTED}"),
        None => {}
    }
    if let Some(report) = &args.report {
        outln!("signed report: {}", crate::format::path(report));
    }
    Ok(())
}
