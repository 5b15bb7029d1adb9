//! `weightmark detect`.

use anyhow::{bail, Context};
use serde_json::json;
use weightmark::{
    detect, load_certificate, Certificate, DetectOptions, Detection, MarkKey, Model, SecretKey,
    Target,
};

use crate::cli::DetectArgs;
use crate::format::{count, p_bound};
use crate::progress::Bar;
use crate::Outcome;

/// Tests a suspect for one release's mark.
pub fn run(args: &DetectArgs) -> anyhow::Result<Outcome> {
    if !(args.threshold > 0.0 && args.threshold < 1.0) {
        bail!("--threshold {} must be a probability between 0 and 1", args.threshold);
    }
    let key = SecretKey::load(&args.key)?;
    let cert = match &args.cert {
        Some(path) => Some(load_certificate(path, &key.public_key())?),
        None => None,
    };
    let (label, recipient, mark_key) = release(&key, cert.as_ref(), args)?;
    let suspect = Model::open(&args.suspect)?;
    let original = args.original.as_ref().map(Model::open).transpose()?;
    let tensors = cert
        .as_ref()
        .map(|c| c.predicate().tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect());
    let target = Target { mark_key: &mark_key, tensors };
    let bar = Bar::new();
    let options = DetectOptions { threshold_p: args.threshold, progress: &bar };
    let result = detect(&suspect, original.as_ref(), &target, &options)
        .with_context(|| format!("could not test {}", args.suspect.display()))?;

    if args.json {
        let mut value = serde_json::to_value(&result)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("label".into(), json!(label));
            obj.insert("recipient".into(), json!(recipient));
            obj.insert("certificate_digest".into(), json!(cert.as_ref().map(|c| &c.digest)));
            obj.insert("suspect".into(), json!(args.suspect.display().to_string()));
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_table(args, &label, recipient.as_deref(), &result);
    }
    Ok(if result.detected { Outcome::Success } else { Outcome::Negative })
}

/// Label, recipient and mark key of the release under test; with a
/// certificate, checks that this key made it.
fn release(
    key: &SecretKey,
    cert: Option<&Certificate>,
    args: &DetectArgs,
) -> anyhow::Result<(String, Option<String>, MarkKey)> {
    let Some(cert) = cert else {
        let label = args.label.clone().context("give --cert CERT or --label LABEL")?;
        let mark_key = key.mark_key(&label, args.recipient.as_deref());
        return Ok((label, args.recipient.clone(), mark_key));
    };
    let p = cert.predicate();
    let mark_key = key.mark_key(&p.label, p.recipient.as_deref());
    if weightmark::digest::hex(&mark_key.commitment()) != p.mark_key_commitment {
        bail!(
            "the mark key derived from this secret key does not match the certificate's commitment \
             (was the release marked with another key?)"
        );
    }
    if p.scheme != "ss1" {
        bail!("the certificate uses scheme '{}'; this version knows 'ss1'", p.scheme);
    }
    Ok((p.label.clone(), p.recipient.clone(), mark_key))
}

fn print_table(args: &DetectArgs, label: &str, recipient: Option<&str>, r: &Detection) {
    let mode = match r.mode {
        weightmark::Mode::Blind => "blind (no original)",
        weightmark::Mode::Informed => "informed (suspect minus original)",
    };
    println!("suspect:  {} (tensor root {})", args.suspect.display(), &r.suspect_digest[..16]);
    println!(
        "release:  label '{label}', recipient {}",
        recipient.map(|r| format!("'{r}'")).unwrap_or_else(|| "none".into())
    );
    println!("mode:     {mode}");
    let width = r.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6).max(6);
    println!("  {:<width$}  {:>9}  {:>10}", "tensor", "z", "elements");
    for t in &r.tensors {
        println!("  {:<width$}  {:>9.2}  {:>10}", t.name, t.z, count(t.elements));
    }
    for s in &r.skipped {
        println!("  {:<width$}  not tested: {}", s.name, s.reason);
    }
    println!(
        "global z = {:.2} over {} elements; {} (threshold p <= {:.0e})",
        r.z,
        count(r.elements),
        p_bound(r.p_value),
        r.threshold_p
    );
    if r.detected {
        println!("MARK FOUND: this model carries the mark of this release.");
    } else {
        println!("no mark found at this threshold.");
    }
}
