//! `weightmark reveal`: one release's mark key, for a dispute about one
//! suspect that a signed report fixed first.

use weightmark::provenance::{
    build_reveal, load_certificate, save_reveal, Disclosed, RevealInputs,
};
use weightmark::SecretKey;

use crate::cli::RevealArgs;
use crate::{outln, Outcome};

/// Writes the reveal statement of the release a certificate describes.
pub fn run(args: &RevealArgs) -> anyhow::Result<Outcome> {
    let secret = SecretKey::load(&args.key)?;
    let cert = load_certificate(&args.cert, &secret.public_key())?;
    // ss1: the release's mark key. ss2: the recipient's own component when
    // the release has one (revealing the shared release component would let
    // anyone strip it from every copy), else the release component; with a
    // recipient code, both (the code derives from the release key). The
    // library derives them, checks them against the certificate and checks
    // that the report is the owner's, about this release, and earlier.
    let inputs = RevealInputs {
        disclosed: if args.fingerprint { Disclosed::Fingerprint } else { Disclosed::Mark },
        certificate: &cert,
        report: &args.report,
        created: weightmark::now_rfc3339(),
    };
    let envelope = build_reveal(&inputs, &secret)?;
    save_reveal(&args.output, &envelope)?;
    let p = cert.predicate();
    let coded = p.recipient.is_some()
        && p.recipient_code().is_ok_and(|c| c != weightmark::RecipientCode::Independent);
    let what = match (args.fingerprint, coded) {
        (true, _) => "fingerprint key",
        // The code's groups, signs and biases derive from the release key.
        (false, true) => "recipient and release component keys (a coded release)",
        (false, false) => "mark key",
    };
    outln!(
        "wrote the {what} of release '{}' (recipient {}) to {}, signed, citing report {}",
        crate::format::safe(&p.label),
        p.recipient
            .as_deref()
            .map(|r| format!("'{}'", crate::format::safe(r)))
            .unwrap_or_else(|| "none".into()),
        crate::format::path(&args.output),
        crate::format::path(&args.report)
    );
    let how = if args.fingerprint { "fingerprint check --fp-key" } else { "detect --mark-key" };
    outln!(
        "it settles the suspect of that report only; anyone can check it with `weightmark \
         {how} {} --cert {} --pub OWNER.pub SUSPECT` (and should check that the report was \
         published before this reveal)",
        crate::format::path(&args.output),
        crate::format::path(&args.cert)
    );
    Ok(Outcome::Success)
}
