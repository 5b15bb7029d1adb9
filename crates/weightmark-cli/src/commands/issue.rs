//! `weightmark issue`: a licensee's certificate without the marked copy
//! ([`weightmark::issue`]); `embed` with the same options writes the copy.

use anyhow::Context;
use weightmark::provenance::envelope_to_string;
use weightmark::{check_release_paths, issue, prepare_outputs, write_new};
use weightmark::{Model, Overwrite, SecretKey};

use crate::cli::IssueArgs;
use crate::format::{count, path, safe};
use crate::progress::Bar;
use crate::{outln, Outcome};

/// Signs the certificate of the copy `embed` would write, writing nothing else.
pub fn run(args: &IssueArgs) -> anyhow::Result<Outcome> {
    let created = super::embed::created(args.release.created.as_deref())?;
    let key = SecretKey::load(&args.release.key)?;
    let model = Model::open(&args.model)?;
    // Where embed would put the copy: only a single file's name is recorded.
    let destination = match &args.output {
        Some(out) => out.clone(),
        None => model.files.first().map(|f| f.file_name.clone().into()).unwrap_or_default(),
    };
    // The certificate must not replace the key or an input file, nor land
    // inside the input directory (the copy's path is not written, so the
    // input stands in for it).
    check_release_paths(&model, &args.release.key, &model.path, &args.cert)?;
    let overwrite = if args.force { Overwrite::Replace } else { Overwrite::Refuse };
    prepare_outputs(&[&args.cert], overwrite).map_err(crate::force_hint)?;
    let bar = Bar::new();
    let options = super::embed::options(&args.release, &model, created.clone(), &bar, overwrite)?;
    let label = options.label.clone();
    let report = issue(&model, &destination, &key, &options)
        .with_context(|| format!("could not issue a certificate for {}", path(&args.model)))?;
    write_new(&args.cert, &envelope_to_string(&report.certificate)?, overwrite)
        .map_err(crate::force_hint)
        .with_context(|| format!("could not write the certificate {}", path(&args.cert)))?;

    let files = report.written.all_files();
    outln!(
        "issued the certificate of a copy of {} marked in {} tensors ({} elements); nothing else \
         written",
        path(&args.model),
        report.tensors.len(),
        count(report.blind.elements)
    );
    outln!(
        "  release: label '{}', recipient {}, strength {}, created {}",
        safe(&label),
        args.release
            .recipient
            .as_deref()
            .map(|r| format!("'{}'", safe(r)))
            .unwrap_or_else(|| "none".into()),
        report.strength.strength,
        created
    );
    let coded = args.release.recipient.is_some()
        && args.release.recipient_code()? != weightmark::RecipientCode::Independent;
    outln!("  {}", crate::commands::embed::strength_line(&report.strength, coded));
    if let Some(share) = report.recipient_share {
        let given = args.release.recipient_share.is_some();
        outln!("  {}", crate::commands::embed::share_line(share, given, coded));
    }
    outln!(
        "  the copy's {} files ({} bytes) are hashed in the certificate; blind z of the copy {:.1}",
        files.len(),
        count(files.iter().map(|f| f.size).sum()),
        report.blind.z()
    );
    outln!("  certificate: {} (signed by key {})", path(&args.cert), key.public_key().key_id());
    let scheme: weightmark::Scheme = args.release.scheme.into();
    let mut again = format!(
        "  to write the copy: weightmark embed -k KEY --scheme {} --label '{}'{} --strength {} \
         --created {}",
        scheme.name(),
        safe(&label),
        args.release.recipient.as_deref().map(|r| format!(" -r '{}'", safe(r))).unwrap_or_default(),
        report.strength.strength,
        created
    );
    if let Some(name) = args.release.allocation.certificate_field() {
        again.push_str(&format!(" --allocation {name}"));
    }
    if let weightmark::RecipientCode::Tardos(c) = args.release.recipient_code()? {
        again.push_str(&format!(
            " --recipient-code tardos1 --code-groups {} --code-cutoff {}",
            c.groups, c.cutoff
        ));
    }
    // The share the copy got, given or the default's: the default would
    // choose it again from the same strength, but written out the command
    // does not depend on that.
    if let Some(share) = report.recipient_share {
        if args.release.recipient_share.is_some() || share != weightmark::EVEN_RECIPIENT_SHARE {
            again.push_str(&format!(" --recipient-share {share}"));
        }
    }
    for glob in &args.release.tensors {
        again.push_str(&format!(" --tensors '{}'", safe(glob)));
    }
    outln!("{again} {} -o OUT", path(&args.model));
    Ok(Outcome::Success)
}
