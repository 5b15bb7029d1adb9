//! `weightmark identify`: which licensee's copy is this?
//!
//! Every certificate in a directory (one per recipient) is tested in a single
//! read pass over the suspect, and the candidates are ranked by their
//! Bonferroni-adjusted p-value bound: with m certificates tested, a candidate
//! is named only when m x p is at most the threshold, so testing many
//! licensees does not raise the chance of accusing an innocent one.

use anyhow::{bail, Context};
use serde_json::json;
use weightmark::detect::log10_p_bound;
use weightmark::provenance::{load_certificate, Certificate};
use weightmark::{detect_many, DetectOptions, MarkKey, Model, SecretKey, Target};

use crate::cli::IdentifyArgs;
use crate::format::p_bound;
use crate::progress::Bar;
use crate::{outln, Outcome};

/// One certificate under test.
struct Candidate {
    file: String,
    cert: Certificate,
    mark_key: MarkKey,
}

/// Tests every certificate in `--certs` against the suspect.
pub fn run(args: &IdentifyArgs) -> anyhow::Result<Outcome> {
    if !(args.threshold > 0.0 && args.threshold < 1.0) {
        bail!("--threshold {} must be a probability between 0 and 1", args.threshold);
    }
    let secret = SecretKey::load(&args.key)?;
    let candidates = load_candidates(args, &secret)?;
    let suspect = Model::open(&args.suspect)?;
    for warning in &suspect.warnings {
        eprintln!("weightmark: warning: {}: {warning}", args.suspect.display());
    }
    let original = args.original.as_ref().map(Model::open).transpose()?;
    let targets: Vec<Target<'_>> = candidates
        .iter()
        .map(|c| Target {
            mark_key: &c.mark_key,
            tensors: Some(
                c.cert
                    .predicate()
                    .tensors
                    .iter()
                    .map(|t| (t.name.clone(), t.shape.clone()))
                    .collect(),
            ),
        })
        .collect();
    let bar = Bar::new();
    let detections = detect_many(
        &suspect,
        original.as_ref(),
        &targets,
        &DetectOptions { threshold_p: args.threshold, progress: &bar },
    )
    .with_context(|| format!("could not test {}", args.suspect.display()))?;

    let m = candidates.len() as f64;
    let mut ranked: Vec<(usize, f64, f64, f64)> = detections
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let log10_p = log10_p_bound(d.z);
            let log10_adjusted = (log10_p + m.log10()).min(0.0);
            (i, d.z, log10_p, log10_adjusted)
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let threshold_log10 = args.threshold.log10();
    let identified = ranked.iter().filter(|r| r.3 <= threshold_log10).count();
    let mode = if original.is_some() { "informed" } else { "blind" };

    if args.json {
        let list: Vec<_> = ranked
            .iter()
            .map(|&(i, z, lp, la)| {
                let p = candidates[i].cert.predicate();
                json!({
                    "certificate": candidates[i].file,
                    "label": p.label,
                    "recipient": p.recipient,
                    "z": z,
                    "elements": detections[i].elements,
                    "p_value": 10f64.powf(lp),
                    "log10_p_value": lp,
                    "adjusted_p_value": 10f64.powf(la),
                    "log10_adjusted_p_value": la,
                    "identified": la <= threshold_log10,
                    "skipped": detections[i].skipped,
                })
            })
            .collect();
        let out = json!({
            "mode": mode,
            "certificates": candidates.len(),
            "threshold_p": args.threshold,
            "identified": identified,
            "suspect_digest": detections.first().map(|d| d.suspect_digest.clone()),
            "candidates": list,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!(
            "suspect: {} ({mode}); {} certificates tested in one pass; p-values Bonferroni-adjusted \
             for {} tests",
            args.suspect.display(),
            candidates.len(),
            candidates.len()
        );
        outln!(
            "  {:>4}  {:<20} {:<16} {:>9}  {:<16} {:<16}",
            "rank",
            "recipient",
            "label",
            "z",
            "p bound",
            "adjusted"
        );
        for (rank, &(i, z, lp, la)) in ranked.iter().enumerate() {
            let p = candidates[i].cert.predicate();
            outln!(
                "  {:>4}  {:<20} {:<16} {:>9.2}  {:<16} {:<16} {}",
                rank + 1,
                p.recipient.as_deref().unwrap_or("(none)"),
                p.label,
                z,
                p_bound(10f64.powf(lp)),
                p_bound(10f64.powf(la)),
                if la <= threshold_log10 { "IDENTIFIED" } else { "" }
            );
        }
        if identified == 0 {
            outln!("no certificate's mark found at adjusted p <= {:.0e}", args.threshold);
        } else {
            outln!("{identified} candidate(s) identified at adjusted p <= {:.0e}", args.threshold);
        }
    }
    Ok(if identified > 0 { Outcome::Success } else { Outcome::Negative })
}

/// Certificates in the directory signed by this key and made with it.
fn load_candidates(args: &IdentifyArgs, secret: &SecretKey) -> anyhow::Result<Vec<Candidate>> {
    let public = secret.public_key();
    let mut paths: Vec<_> = std::fs::read_dir(&args.certs)
        .with_context(|| {
            format!("{}: cannot read the certificate directory", args.certs.display())
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut candidates = Vec::new();
    for path in paths {
        let cert = match load_certificate(&path, &public) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("weightmark: note: skipping {e}");
                continue;
            }
        };
        let p = cert.predicate();
        let mark_key = secret.mark_key(&p.label, p.recipient.as_deref());
        if cert.check_mark_key(&mark_key).is_err() {
            eprintln!(
                "weightmark: note: skipping {}: signed by this key but not made with it",
                path.display()
            );
            continue;
        }
        candidates.push(Candidate { file: path.display().to_string(), cert, mark_key });
    }
    if candidates.is_empty() {
        bail!(
            "{}: no certificate signed by key {} in this directory",
            args.certs.display(),
            public.key_id()
        );
    }
    Ok(candidates)
}
