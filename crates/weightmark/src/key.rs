//! Owner keys, release mark keys, and their files.
//!
//! One 32-byte *master seed* per owner. HKDF-SHA256 with domain-separation
//! strings derives from it the ed25519 signing key and the *mark master key*;
//! a *release mark key* is derived from the mark master key, the release label
//! and the recipient, so the owner can always re-derive it and each licensee's
//! copy gets an independent mark. Certificates publish only a commitment
//! (a hash) of the release mark key.
//!
//! Secret types implement neither `Debug` nor `Display`, and zeroize on drop.
//!
//! Key files are text, like minisign's and age's:
//!
//! ```text
//! weightmark secret key v1
//! # created: 2026-11-28T13:20:55Z
//! # key id: 3f1c0a9b7d2e4f60
//! # public key: 8Bq3...=
//! <base64 of the 32-byte master seed>
//! ```
//!
//! and the public key file has the header `weightmark public key v1`, the
//! same comment lines, and the base64 of the 32-byte ed25519 public key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::digest::hex;
use crate::error::{Error, Result};

/// Header line of a secret key file.
pub const SECRET_KEY_HEADER: &str = "weightmark secret key v1";
/// Header line of a public key file.
pub const PUBLIC_KEY_HEADER: &str = "weightmark public key v1";
/// Header line of a release mark key file (see `weightmark reveal`).
pub const MARK_KEY_HEADER: &str = "weightmark mark key v1";
/// Key files larger than this are rejected before parsing.
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

const SALT_MASTER: &[u8] = b"weightmark/v1 master";
const INFO_SIGNING: &[u8] = b"weightmark/v1 ed25519 signing key";
const INFO_MARK_MASTER: &[u8] = b"weightmark/v1 mark master key";
const SALT_RELEASE: &[u8] = b"weightmark/v1 release";
const INFO_RELEASE: &[u8] = b"weightmark/v1 release mark key";
const SALT_SS2: &[u8] = b"weightmark/v1 ss2";
const INFO_SS2_RELEASE: &[u8] = b"weightmark/v1 ss2 release component key";
const INFO_SS2_RECIPIENT: &[u8] = b"weightmark/v1 ss2 recipient component key";
const SALT_FP1: &[u8] = b"weightmark/fp1";
const INFO_FP1: &[u8] = b"weightmark/fp1 fingerprint key";
const COMMITMENT_DOMAIN: &[u8] = b"weightmark/v1 mark key commitment\0";
const KEY_ID_DOMAIN: &[u8] = b"weightmark/v1 key id\0";

/// HKDF-SHA256 expand of 32 bytes; `info` parts are concatenated.
pub(crate) fn hkdf32(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    if hk.expand_multi_info(info, out.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 can always expand 32 bytes");
    }
    out
}

/// An owner's secret key: the 32-byte master seed.
pub struct SecretKey {
    seed: Zeroizing<[u8; 32]>,
}

impl SecretKey {
    /// Generates a new key from the operating system's random source.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut())
            .map_err(|e| Error::invalid(format!("no randomness from the operating system: {e}")))?;
        Ok(SecretKey { seed })
    }

    /// Builds a key from a known seed (tests, the demo).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey { seed: Zeroizing::new(seed) }
    }

    fn signing_key(&self) -> SigningKey {
        let bytes = hkdf32(SALT_MASTER, self.seed.as_ref(), &[INFO_SIGNING]);
        SigningKey::from_bytes(&bytes)
    }

    /// The owner's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey { key: self.signing_key().verifying_key() }
    }

    /// Signs `message` with the owner's ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing_key().sign(message).to_bytes()
    }

    /// The release mark key for a label and an optional recipient.
    pub fn mark_key(&self, label: &str, recipient: Option<&str>) -> MarkKey {
        let master = hkdf32(SALT_MASTER, self.seed.as_ref(), &[INFO_MARK_MASTER]);
        let recipient = recipient.unwrap_or("");
        let label_len = (label.len() as u64).to_le_bytes();
        let recipient_len = (recipient.len() as u64).to_le_bytes();
        let key = hkdf32(
            SALT_RELEASE,
            master.as_ref(),
            &[INFO_RELEASE, &label_len, label.as_bytes(), &recipient_len, recipient.as_bytes()],
        );
        MarkKey { key }
    }

    /// The two component keys of an `ss2` release, bound to the owner, the
    /// label and the original model (its tensor root): the release component,
    /// shared by every copy of the release, and, with a recipient, the
    /// recipient's own component. Two models marked under one label get
    /// unrelated patterns because their roots differ.
    pub fn ss2_keys(
        &self,
        label: &str,
        recipient: Option<&str>,
        original_root: &[u8; 32],
    ) -> (MarkKey, Option<MarkKey>) {
        let master = hkdf32(SALT_MASTER, self.seed.as_ref(), &[INFO_MARK_MASTER]);
        let label_len = (label.len() as u64).to_le_bytes();
        let release = hkdf32(
            SALT_SS2,
            master.as_ref(),
            &[INFO_SS2_RELEASE, &label_len, label.as_bytes(), original_root],
        );
        let recipient = recipient.map(|r| {
            let r_len = (r.len() as u64).to_le_bytes();
            let key = hkdf32(
                SALT_SS2,
                master.as_ref(),
                &[
                    INFO_SS2_RECIPIENT,
                    &label_len,
                    label.as_bytes(),
                    original_root,
                    &r_len,
                    r.as_bytes(),
                ],
            );
            MarkKey { key }
        });
        (MarkKey { key: release }, recipient)
    }

    /// The `fp1` fingerprint key of a release, bound like `ss2`'s keys to the
    /// owner, the label, the original's tensor root and the recipient
    /// (docs/fingerprint.md): each licensee's copy gets its own fingerprints.
    pub fn fingerprint_key(
        &self,
        label: &str,
        recipient: Option<&str>,
        original_root: &[u8; 32],
    ) -> crate::fingerprint::FingerprintKey {
        let master = hkdf32(SALT_MASTER, self.seed.as_ref(), &[INFO_MARK_MASTER]);
        let label_len = (label.len() as u64).to_le_bytes();
        let (tag, r) = match recipient {
            Some(r) => ([1u8], r),
            None => ([0u8], ""),
        };
        let r_len = (r.len() as u64).to_le_bytes();
        let key = hkdf32(
            SALT_FP1,
            master.as_ref(),
            &[
                INFO_FP1,
                crate::fingerprint::words::LISTS_VERSION.as_bytes(),
                &label_len,
                label.as_bytes(),
                original_root,
                &tag,
                &r_len,
                r.as_bytes(),
            ],
        );
        crate::fingerprint::FingerprintKey::from_bytes(*key)
    }

    /// The secret key file's text (zeroized when dropped).
    pub fn to_file_string(&self, created: &str) -> Zeroizing<String> {
        let public = self.public_key();
        let mut encoded = Zeroizing::new(BASE64.encode(self.seed.as_ref()));
        let text = format!(
            "{SECRET_KEY_HEADER}\n# created: {created}\n# key id: {}\n# public key: {}\n{}\n",
            public.key_id(),
            public.to_base64(),
            encoded.as_str()
        );
        encoded.zeroize();
        Zeroizing::new(text)
    }

    /// Parses a secret key file's text. Errors give line numbers, never contents.
    pub fn from_file_str(text: &str, path: &Path) -> Result<SecretKey> {
        let payload = parse_key_text(text, SECRET_KEY_HEADER, path)?;
        let mut bytes = Zeroizing::new(
            BASE64
                .decode(payload.text)
                .map_err(|_| key_error(path, payload.line, "is not base64"))?,
        );
        let mut seed = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(key_error(path, payload.line, "does not hold 32 bytes"));
        }
        seed.copy_from_slice(&bytes);
        bytes.zeroize();
        Ok(SecretKey { seed })
    }

    /// Reads a secret key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<SecretKey> {
        check_private(path)?;
        let text = Zeroizing::new(read_small(path)?);
        Self::from_file_str(&text, path)
    }

    /// Writes `NAME.key` (mode 0600, never overwriting) and `NAME.pub`.
    pub fn save(&self, secret_path: &Path, public_path: &Path, created: &str) -> Result<()> {
        for p in [secret_path, public_path] {
            if p.exists() {
                return Err(Error::KeyExists { path: p.to_path_buf() });
            }
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(secret_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                Error::KeyExists { path: secret_path.to_path_buf() }
            }
            _ => Error::io(secret_path, e),
        })?;
        let text = self.to_file_string(created);
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(secret_path, e))?;
        let public = self.public_key().to_file_string(created);
        let mut pub_file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(public_path)
            .map_err(|e| Error::io(public_path, e))?;
        pub_file.write_all(public.as_bytes()).map_err(|e| Error::io(public_path, e))
    }
}

/// An owner's ed25519 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// Builds a public key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        VerifyingKey::from_bytes(bytes).ok().map(|key| PublicKey { key })
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Base64 of the 32 raw bytes.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.key.as_bytes())
    }

    /// The key id: hex of the first 8 bytes of SHA-256(domain || public key).
    pub fn key_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(KEY_ID_DOMAIN);
        h.update(self.key.as_bytes());
        hex(&h.finalize()[..8])
    }

    /// Verifies an ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        let sig: [u8; 64] = signature.try_into().map_err(|_| Error::BadSignature {
            reason: format!("signature is {} bytes, expected 64", signature.len()),
        })?;
        self.key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| {
            Error::BadSignature { reason: format!("not made by key {}", self.key_id()) }
        })
    }

    /// The public key file's text.
    pub fn to_file_string(&self, created: &str) -> String {
        format!(
            "{PUBLIC_KEY_HEADER}\n# created: {created}\n# key id: {}\n{}\n",
            self.key_id(),
            self.to_base64()
        )
    }

    /// Parses a public key file's text.
    pub fn from_file_str(text: &str, path: &Path) -> Result<PublicKey> {
        let payload = parse_key_text(text, PUBLIC_KEY_HEADER, path)?;
        let bytes = BASE64
            .decode(payload.text)
            .map_err(|_| key_error(path, payload.line, "is not base64"))?;
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| key_error(path, payload.line, "does not hold 32 bytes"))?;
        PublicKey::from_bytes(&bytes)
            .ok_or_else(|| key_error(path, payload.line, "is not a valid ed25519 public key"))
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<PublicKey> {
        Self::from_file_str(&read_small(path)?, path)
    }
}

/// One release's mark key (label + recipient). Revealing it exposes that
/// release's mark only, never the master seed.
#[derive(Clone)]
pub struct MarkKey {
    key: Zeroizing<[u8; 32]>,
}

impl MarkKey {
    /// Builds a mark key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MarkKey {
        MarkKey { key: Zeroizing::new(bytes) }
    }

    /// Whether two mark keys are the same key.
    pub(crate) fn same(&self, other: &MarkKey) -> bool {
        *self.key == *other.key
    }

    /// The raw key bytes (for key derivation inside the library).
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The commitment published in certificates: SHA-256(domain || key).
    pub fn commitment(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(COMMITMENT_DOMAIN);
        h.update(self.key.as_ref());
        h.finalize().into()
    }

    /// The mark key file's text (`weightmark reveal`). The comment lines say
    /// which release it opens; only the key line is trusted on reading, and
    /// the commitment is always recomputed from it.
    pub fn to_file_string(&self, release: &RevealedRelease<'_>) -> String {
        let mut encoded = Zeroizing::new(BASE64.encode(self.key.as_ref()));
        let text = format!(
            "{MARK_KEY_HEADER}\n# one release's mark key: it detects this release's mark and nothing else\n\
             # label: {}\n# recipient: {}\n# commitment: {}\n# certificate sha256: {}\n{}\n",
            quoted(release.label),
            release.recipient.map(quoted).unwrap_or_else(|| "none".into()),
            hex(&self.commitment()),
            release.certificate_sha256,
            encoded.as_str()
        );
        encoded.zeroize();
        text
    }

    /// Parses a mark key file's text.
    pub fn from_file_str(text: &str, path: &Path) -> Result<MarkKey> {
        let payload = parse_key_text(text, MARK_KEY_HEADER, path)?;
        let mut bytes = Zeroizing::new(
            BASE64
                .decode(payload.text)
                .map_err(|_| key_error(path, payload.line, "is not base64"))?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| key_error(path, payload.line, "does not hold 32 bytes"))?;
        bytes.zeroize();
        Ok(MarkKey::from_bytes(key))
    }

    /// The key as base64 (for a reveal statement, which discloses it).
    pub(crate) fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.key.as_ref()))
    }

    /// A key from its base64 (a reveal statement's), if it is 32 bytes.
    pub(crate) fn from_base64(text: &str) -> Option<MarkKey> {
        let bytes = Zeroizing::new(BASE64.decode(text).ok()?);
        let key: [u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(MarkKey::from_bytes(key))
    }

    /// Reads a mark key file.
    pub fn load(path: &Path) -> Result<MarkKey> {
        let text = Zeroizing::new(read_small(path)?);
        Self::from_file_str(&text, path)
    }

    /// Writes a mark key file (mode 0600, never overwriting).
    pub fn save(&self, path: &Path, release: &RevealedRelease<'_>) -> Result<()> {
        let text = Zeroizing::new(self.to_file_string(release));
        write_private_new(path, text.as_bytes())
    }
}

/// A label or recipient in a comment line: quoted, control characters escaped.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.escape_debug())
}

/// Which release a revealed mark key opens (comments of the mark key file).
pub struct RevealedRelease<'a> {
    /// Release label.
    pub label: &'a str,
    /// Recipient, if any.
    pub recipient: Option<&'a str>,
    /// SHA-256 (hex) of the certificate.
    pub certificate_sha256: &'a str,
}

/// Creates `path` with mode 0600 (refusing to overwrite) and writes `bytes`.
pub(crate) fn write_private_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::KeyExists { path: path.to_path_buf() },
        _ => Error::io(path, e),
    })?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| Error::io(path, e))
}

/// The base64 line of a key file and its 1-based line number.
struct KeyPayload<'a> {
    text: &'a str,
    line: usize,
}

fn parse_key_text<'a>(text: &'a str, header: &str, path: &Path) -> Result<KeyPayload<'a>> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    match lines.next() {
        Some((_, first)) if first == header => {}
        Some((_, first)) if first.starts_with("weightmark ") => {
            return Err(key_error(
                path,
                1,
                &format!("is not a '{header}' header (wrong kind of key file?)"),
            ));
        }
        _ => return Err(key_error(path, 1, &format!("should be '{header}'"))),
    }
    let mut payload = None;
    for (n, line) in lines {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if payload.is_some() {
            return Err(key_error(path, n, "is unexpected: the key file holds one key line"));
        }
        payload = Some(KeyPayload { text: line, line: n });
    }
    payload.ok_or_else(|| key_error(path, 1, "is a header with no key line after it"))
}

fn key_error(path: &Path, line: usize, what: &str) -> Error {
    Error::KeyFile { path: path.to_path_buf(), reason: format!("line {line} {what}") }
}

fn read_small(path: &Path) -> Result<String> {
    let bytes = crate::io::read_capped(path, MAX_KEY_FILE_LEN)?;
    String::from_utf8(bytes).map_err(|e| {
        let mut bytes = e.into_bytes();
        bytes.zeroize();
        Error::KeyFile { path: path.to_path_buf(), reason: "is not UTF-8 text".into() }
    })
}

/// Refuses a secret key file that its group or others can read, like ssh.
fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(|e| Error::io(path, e))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::KeyFile {
                path: path.to_path_buf(),
                reason: format!(
                    "permissions {:o} let others read this secret key; run `chmod 600 {}`",
                    mode & 0o777,
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_file_round_trips() {
        let k = SecretKey::from_seed([7u8; 32]);
        let text = k.to_file_string("2026-01-01T00:00:00Z");
        let back =
            SecretKey::from_file_str(&text, Path::new("k.key")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.public_key(), k.public_key());
        assert!(text.starts_with(SECRET_KEY_HEADER));
    }

    #[test]
    fn public_key_file_round_trips() {
        let p = SecretKey::from_seed([9u8; 32]).public_key();
        let text = p.to_file_string("2026-01-01T00:00:00Z");
        let back =
            PublicKey::from_file_str(&text, Path::new("k.pub")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, p);
        assert!(text.contains(&p.key_id()));
    }

    #[test]
    fn known_answers() {
        // Pins the KDF chain: a change here silently breaks every existing key.
        let k = SecretKey::from_seed([0u8; 32]);
        assert_eq!(k.public_key().key_id(), KNOWN_KEY_ID);
        assert_eq!(hex(&k.mark_key("release", Some("alice")).commitment()), KNOWN_COMMITMENT);
        let sig = k.sign(b"weightmark");
        assert!(k.public_key().verify(b"weightmark", &sig).is_ok());
        assert!(k.public_key().verify(b"weightmarK", &sig).is_err());
    }

    // Computed independently with Python (hmac, hashlib, cryptography), see docs/formats.md.
    const KNOWN_KEY_ID: &str = "9e856a046beaffd9";
    const KNOWN_COMMITMENT: &str =
        "8adccce8a7b545ea5a83f04836bc1d472f617604c4cf9166a0f41b9425d9ea94";

    #[test]
    fn mark_key_file_round_trips() {
        let mk = SecretKey::from_seed([4u8; 32]).mark_key("r", Some("bob"));
        let release =
            RevealedRelease { label: "r", recipient: Some("bob"), certificate_sha256: "00" };
        let text = mk.to_file_string(&release);
        assert!(text.starts_with(MARK_KEY_HEADER) && text.contains("# recipient: \"bob\""));
        let back =
            MarkKey::from_file_str(&text, Path::new("m.markkey")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.commitment(), mk.commitment());
        let err =
            SecretKey::from_file_str(&text, Path::new("m.markkey")).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("wrong kind of key file"));
    }

    #[test]
    fn mark_keys_differ_by_label_and_recipient() {
        let k = SecretKey::from_seed([1u8; 32]);
        let a = k.mark_key("r1", Some("alice")).commitment();
        let b = k.mark_key("r1", Some("bob")).commitment();
        let c = k.mark_key("r1", None).commitment();
        // Length prefixes keep ("ab", "c") apart from ("a", "bc").
        let d = k.mark_key("ab", Some("c")).commitment();
        let e = k.mark_key("a", Some("bc")).commitment();
        assert!(a != b && a != c && b != c && d != e);
    }

    #[test]
    fn errors_name_lines_not_contents() {
        let p = Path::new("k.key");
        let bad = format!("{SECRET_KEY_HEADER}\nnot-base64-secret!!\n");
        let err =
            SecretKey::from_file_str(&bad, p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("line 2") && !err.contains("not-base64-secret"), "{err}");
        let pub_text = SecretKey::from_seed([1; 32]).public_key().to_file_string("t");
        let err =
            SecretKey::from_file_str(&pub_text, p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("wrong kind of key file"), "{err}");
    }
}
