//! `weightmark identify`: which licensee's copy is this? The ranking and the
//! Bonferroni correction are the library's ([`weightmark::identify`]); this
//! prints them.

use anyhow::{bail, Context};
use weightmark::provenance::{
    build_identification_report, envelope_to_string, IdentificationInputs,
};
use weightmark::{
    hex, identify, load_candidates, model_file_digests, model_tensor_digests, prepare_outputs,
    tensor_root, write_new, IdentifyOptions, Mode, Model, Overwrite, SecretKey,
};

use crate::cli::IdentifyArgs;
use crate::format::{p_bound, safe};
use crate::progress::Bar;
use crate::{outln, Outcome};

/// Tests every certificate in `--certs` against the suspect.
pub fn run(args: &IdentifyArgs) -> anyhow::Result<Outcome> {
    if !(args.threshold > 0.0 && args.threshold < 1.0) {
        bail!("--threshold {} must be a probability between 0 and 1", args.threshold);
    }
    let overwrite = if args.force { Overwrite::Replace } else { Overwrite::Refuse };
    if let Some(report) = &args.report {
        refuse_report_collision(report, args)?;
        prepare_outputs(&[report.as_path()], overwrite).map_err(crate::force_hint)?;
    }
    let secret = SecretKey::load(&args.key)?;
    let loaded = load_candidates(&args.certs, &secret)?;
    for (path, why) in &loaded.skipped {
        eprintln!(
            "weightmark: note: skipping {}: {}",
            crate::format::path(path),
            crate::format::safe(&why.to_string())
        );
    }
    let suspect = Model::open(&args.suspect)?;
    for warning in &suspect.warnings {
        eprintln!(
            "weightmark: warning: {}: {}",
            crate::format::path(&args.suspect),
            crate::format::safe(warning)
        );
    }
    let original = args.original.as_ref().map(Model::open).transpose()?;
    let bar = Bar::new();
    let options = IdentifyOptions { threshold_p: args.threshold, progress: &bar };
    let found = identify(&suspect, original.as_ref(), &loaded.candidates, &options)
        .with_context(|| format!("could not test {}", crate::format::path(&args.suspect)))?;
    if let Some(path) = &args.report {
        let envelope = build_identification_report(
            &IdentificationInputs {
                identification: &found,
                candidates: &loaded.candidates,
                suspect_files: &model_file_digests(&suspect),
                original_tensor_root: original
                    .as_ref()
                    .map(|o| hex(&tensor_root(&model_tensor_digests(o)))),
                created: weightmark::now_rfc3339(),
            },
            &secret,
        )?;
        write_new(path, &envelope_to_string(&envelope)?, overwrite)
            .map_err(crate::force_hint)
            .with_context(|| format!("could not write the report {}", crate::format::path(path)))?;
    }

    if args.json {
        outln!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        let mode = match found.mode {
            Mode::Blind => "blind",
            Mode::Informed => "informed",
        };
        outln!(
            "suspect: {} ({mode}); {} certificates tested in one pass; p-values Bonferroni-adjusted \
             for {} tests",
            crate::format::path(&args.suspect),
            found.certificates,
            found.certificates
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
        for (rank, c) in found.candidates.iter().enumerate() {
            outln!(
                "  {:>4}  {:<20} {:<16} {:>9.2}  {:<16} {:<16} {}",
                rank + 1,
                safe(c.recipient.as_deref().unwrap_or("(none)")),
                safe(&c.label),
                c.z,
                p_bound(c.p_value),
                p_bound(c.adjusted_p_value),
                if c.identified { "IDENTIFIED" } else { "" }
            );
        }
        let releases = found.releases();
        for r in &releases {
            outln!(
                "release '{}', its shared component alone: z {:.2}, {} adjusted for {} \
                 release(s): {}",
                safe(&r.label),
                r.z,
                p_bound(10f64.powf(r.log10_adjusted_p_value)),
                releases.len(),
                if r.found {
                    "FOUND (a copy of this release, or copies mixed, whoever's)"
                } else {
                    "not found"
                }
            );
        }
        if found.identified == 0 {
            outln!("no certificate's mark found at adjusted p <= {:.0e}", args.threshold);
        } else {
            outln!(
                "{} candidate(s) identified at adjusted p <= {:.0e}",
                found.identified,
                args.threshold
            );
        }
    }
    if let (Some(path), false) = (&args.report, args.json) {
        outln!("signed report: {}", crate::format::path(path));
    }
    Ok(if found.identified > 0 { Outcome::Success } else { Outcome::Negative })
}

/// Refuses a report path that would replace an input or land inside the
/// certificate directory (where the next `identify` would read it).
fn refuse_report_collision(report: &std::path::Path, args: &IdentifyArgs) -> anyhow::Result<()> {
    let target = std::path::absolute(report)?;
    let target = target.canonicalize().unwrap_or(target);
    let mut inputs: Vec<&std::path::Path> = vec![&args.suspect, &args.key, &args.certs];
    inputs.extend(args.original.as_deref());
    for input in inputs {
        let Ok(input) = input.canonicalize() else { continue };
        if target == input || (input.is_dir() && target.starts_with(&input)) {
            bail!(
                "{}: the report would replace or land inside an input (the suspect, the key, \
                 the original or the certificate directory); choose another --report",
                crate::format::path(report)
            );
        }
    }
    Ok(())
}
