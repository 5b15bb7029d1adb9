//! `weightmark identify`: which licensee's copy is this? The ranking and the
//! Bonferroni correction are the library's ([`weightmark::identify`]); this
//! prints them.

use anyhow::{bail, Context};
use weightmark::{identify, load_candidates, IdentifyOptions, Mode, Model, SecretKey};

use crate::cli::IdentifyArgs;
use crate::format::{p_bound, safe};
use crate::progress::Bar;
use crate::{outln, Outcome};

/// Tests every certificate in `--certs` against the suspect.
pub fn run(args: &IdentifyArgs) -> anyhow::Result<Outcome> {
    if !(args.threshold > 0.0 && args.threshold < 1.0) {
        bail!("--threshold {} must be a probability between 0 and 1", args.threshold);
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
    Ok(if found.identified > 0 { Outcome::Success } else { Outcome::Negative })
}
