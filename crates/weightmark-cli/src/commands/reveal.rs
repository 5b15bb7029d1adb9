//! `weightmark reveal`: one release's mark key, for a dispute.

use anyhow::Context;
use weightmark::provenance::load_certificate;
use weightmark::RevealedRelease;
use weightmark::SecretKey;

use crate::cli::RevealArgs;
use crate::{outln, Outcome};

/// Writes the mark key of the release a certificate describes.
pub fn run(args: &RevealArgs) -> anyhow::Result<Outcome> {
    let secret = SecretKey::load(&args.key)?;
    let cert = load_certificate(&args.cert, &secret.public_key())?;
    let p = cert.predicate();
    // ss1: the release's mark key. ss2: the recipient's own component when
    // the release has one (revealing the shared release component would let
    // anyone strip it from every copy), else the release component. The
    // library derives them and checks them against the certificate.
    let target = weightmark::Target::from_certificate(&cert, &secret).with_context(|| {
        format!("{}: this secret key did not make this release", crate::format::path(&args.cert))
    })?;
    let mark_key = target.recipient_key.unwrap_or(target.mark_key);
    let release = RevealedRelease {
        label: &p.label,
        recipient: p.recipient.as_deref(),
        certificate_sha256: &cert.digest,
    };
    mark_key.save(&args.output, &release)?;
    outln!(
        "wrote the mark key of release '{}' (recipient {}) to {}",
        crate::format::safe(&p.label),
        p.recipient
            .as_deref()
            .map(|r| format!("'{}'", crate::format::safe(r)))
            .unwrap_or_else(|| "none".into()),
        crate::format::path(&args.output)
    );
    outln!(
        "it opens this release's mark only; anyone can check it against the certificate and run \
         `weightmark detect --mark-key {} --cert {} --pub OWNER.pub SUSPECT`",
        crate::format::path(&args.output),
        crate::format::path(&args.cert)
    );
    Ok(Outcome::Success)
}
