//! `weightmark keygen -o NAME`.

use std::path::PathBuf;

use anyhow::Context;
use weightmark::SecretKey;

use crate::cli::KeygenArgs;
use crate::{outln, Outcome};

/// Writes NAME.key and NAME.pub.
pub fn run(args: &KeygenArgs) -> anyhow::Result<Outcome> {
    let secret_path = with_suffix(&args.output, "key");
    let public_path = with_suffix(&args.output, "pub");
    let key = SecretKey::generate()?;
    key.save(&secret_path, &public_path, &weightmark::now_rfc3339())
        .context("could not write the key pair")?;
    let public = key.public_key();
    outln!(
        "secret key: {} (keep it private: it marks and signs your releases)",
        crate::format::path(&secret_path)
    );
    outln!(
        "public key: {} (share it: anyone can check your certificates with it)",
        crate::format::path(&public_path)
    );
    outln!("key id:     {}", public.key_id());
    Ok(Outcome::Success)
}

/// `NAME` + `.ext` (keeps any dots already in NAME).
fn with_suffix(base: &std::path::Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}
