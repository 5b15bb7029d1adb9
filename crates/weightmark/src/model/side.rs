//! The side files of a model directory (config, tokenizer, chat template,
//! code): which of them a release carries, found in one walk that visits each
//! directory entry once.
//!
//! The rules (docs/threat-model.md, "What a release carries"):
//!
//! * only regular files are taken; FIFOs, sockets and devices are skipped;
//! * a symbolic link is followed only to a file inside the model directory
//!   or, for a Hugging Face cache snapshot (`…/models--ORG--NAME/snapshots/REV`),
//!   inside that repository's cache directory (`…/models--ORG--NAME`, whose
//!   `blobs/` the snapshot links into); a link to a directory is never
//!   followed, so no link can lead the walk back into the tree;
//! * hidden entries (`.git/`, `.env`, `.cache/`, `.weightmark-*`) are not part
//!   of a release;
//! * for a release, also never: a file holding a weightmark secret key or
//!   mark key (recognised by content), a name on the deny list ([`DENY_SUFFIXES`],
//!   [`DENY_PREFIXES`]), weights in another format.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::key::{MARK_KEY_HEADER, SECRET_KEY_HEADER};

/// Files in a model directory that hold weights in some other format. They
/// are never copied into an output directory: they would carry the unmarked
/// weights along with the marked ones.
const WEIGHT_EXTENSIONS: &[&str] =
    &["bin", "pt", "pth", "ckpt", "h5", "msgpack", "onnx", "gguf", "npz", "tflite", "ot"];

/// Name endings never copied into a release: private keys and certificates.
pub const DENY_SUFFIXES: &[&str] = &[".key", ".pem", ".p12", ".pfx"];

/// Name beginnings never copied into a release: SSH keys.
pub const DENY_PREFIXES: &[&str] = &["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"];

/// The reason given for a hidden entry.
pub(crate) const HIDDEN: &str = "hidden";

/// How deep the walk goes into sub-directories.
const MAX_DEPTH: usize = 8;

/// A directory entry left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedFile {
    /// Path relative to the model directory, `/`-separated.
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}

impl std::fmt::Display for SkippedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.reason)
    }
}

/// What the walk is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Files to copy into a release: the deny rules apply.
    Release,
    /// Every file a consumer of the directory would see, to compare with a
    /// certificate.
    Inventory,
}

/// A side file found by [`walk`].
pub(crate) struct Found {
    /// Path relative to the model directory, `/`-separated.
    pub(crate) name: String,
    /// Where to read it (a link's target, resolved).
    pub(crate) source: PathBuf,
}

/// What [`walk`] found.
pub(crate) struct Walk {
    /// Files taken, in name order within each directory.
    pub(crate) files: Vec<Found>,
    /// Entries left out, with the reason.
    pub(crate) skipped: Vec<SkippedFile>,
    /// Directory entries visited (each at most once).
    pub(crate) entries_visited: u64,
}

/// Walks the model directory `dir`, leaving out the names in `exclude` (the
/// model's own weight files and index, relative names).
pub(crate) fn walk(dir: &Path, exclude: &[&str], purpose: Purpose) -> Result<Walk> {
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let roots = allowed_roots(&root);
    let mut out = Walk { files: Vec::new(), skipped: Vec::new(), entries_visited: 0 };
    let mut visited: HashSet<PathBuf> = HashSet::from([root.clone()]);
    let mut stack: Vec<(String, PathBuf)> = vec![(String::new(), root)];
    while let Some((rel, real)) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&real)
            .map_err(|e| Error::io(&real, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(&real, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            out.entries_visited += 1;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                let name = format!("{rel}{}", file_name.to_string_lossy());
                out.skipped.push(skip(name, "its name is not UTF-8"));
                continue;
            };
            let name = format!("{rel}{file_name}");
            if exclude.contains(&name.as_str()) {
                continue;
            }
            if file_name.starts_with('.') {
                out.skipped.push(skip(name, HIDDEN));
                continue;
            }
            if purpose == Purpose::Release {
                if let Some(reason) = denied(file_name) {
                    out.skipped.push(skip(name, reason));
                    continue;
                }
            }
            let path = entry.path();
            let link = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            let (source, meta) = if link.file_type().is_symlink() {
                let Ok(target) = path.canonicalize() else {
                    out.skipped.push(skip(name, "a broken link"));
                    continue;
                };
                if !roots.iter().any(|r| target.starts_with(r)) {
                    let reason =
                        format!("a link to {} outside the model directory", target.display());
                    out.skipped.push(SkippedFile { name, reason });
                    continue;
                }
                let meta = fs::metadata(&target).map_err(|e| Error::io(&target, e))?;
                if meta.is_dir() {
                    out.skipped.push(skip(name, "a link to a directory, not followed"));
                    continue;
                }
                (target, meta)
            } else {
                (path, link)
            };
            if meta.is_dir() {
                if rel.matches('/').count() >= MAX_DEPTH {
                    out.skipped.push(skip(name, "nested too deep"));
                } else if visited.insert(source.canonicalize().unwrap_or_else(|_| source.clone())) {
                    stack.push((format!("{name}/"), source));
                }
            } else if !meta.is_file() {
                out.skipped.push(skip(name, "not a regular file"));
            } else if purpose == Purpose::Release && is_weights(file_name) {
                out.skipped
                    .push(skip(name, "weights in another format would carry the unmarked model"));
            } else {
                out.files.push(Found { name, source });
            }
        }
    }
    Ok(out)
}

fn skip(name: String, reason: &str) -> SkippedFile {
    SkippedFile { name, reason: reason.to_string() }
}

/// The model directory itself and, for a Hugging Face cache snapshot
/// (`…/models--ORG--NAME/snapshots/REV`), the repository's cache directory.
fn allowed_roots(root: &Path) -> Vec<PathBuf> {
    let mut roots = vec![root.to_path_buf()];
    let snapshots = root.parent();
    let repo = snapshots.and_then(Path::parent);
    if let (Some(snapshots), Some(repo)) = (snapshots, repo) {
        let is_snapshot = snapshots.file_name().is_some_and(|n| n == "snapshots")
            && repo.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("models--"));
        if is_snapshot {
            roots.push(repo.to_path_buf());
        }
    }
    roots
}

/// Why a name is on the deny list, if it is.
fn denied(file_name: &str) -> Option<&'static str> {
    let lower = file_name.to_ascii_lowercase();
    let on_list = DENY_SUFFIXES.iter().any(|s| lower.ends_with(s))
        || DENY_PREFIXES.iter().any(|p| lower.starts_with(p));
    on_list.then_some("a key file by its name (deny list)")
}

/// Safetensors files not part of the model, their indexes, and weights in
/// other formats.
fn is_weights(file_name: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    let ext = Path::new(&lower).extension().and_then(|e| e.to_str()).unwrap_or_default();
    ext == "safetensors"
        || WEIGHT_EXTENSIONS.contains(&ext)
        || lower.ends_with(".safetensors.index.json")
}

/// What [`copy_checked`] found in a file.
pub(crate) enum Content {
    /// An ordinary file: its SHA-256 and size.
    Plain(Sha256Digest, u64),
    /// The file holds a weightmark secret key or mark key.
    Key(&'static str),
}

/// Reads `source` once, hashing it, copying it to `dest` when given, and
/// looking for a weightmark key header anywhere in it. A file holding a key
/// is not left at `dest`.
pub(crate) fn copy_checked(source: &Path, dest: Option<&Path>) -> Result<Content> {
    const NEEDLES: [(&str, &str); 2] = [
        (SECRET_KEY_HEADER, "holds a weightmark secret key"),
        (MARK_KEY_HEADER, "holds a weightmark mark key"),
    ];
    let keep = NEEDLES.iter().map(|(n, _)| n.len()).max().unwrap_or(0) - 1;
    let mut file = File::open(source).map_err(|e| Error::io(source, e))?;
    let meta = file.metadata().map_err(|e| Error::io(source, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            source,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let mut out = match dest {
        Some(d) => Some(File::create(d).map_err(|e| Error::io(d, e))?),
        None => None,
    };
    let mut hash = Sha256::new();
    let mut size = 0u64;
    // The last bytes of the previous chunk, so a header split across two
    // reads is still seen.
    let mut window: Vec<u8> = Vec::with_capacity(keep + (1 << 20));
    let mut buf = vec![0u8; 1 << 20];
    let mut found = None;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(source, e))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hash.update(chunk);
        size += n as u64;
        if let (Some(o), Some(d)) = (out.as_mut(), dest) {
            o.write_all(chunk).map_err(|e| Error::io(d, e))?;
        }
        window.extend_from_slice(chunk);
        if found.is_none() {
            found = NEEDLES
                .iter()
                .find(|(needle, _)| window.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .map(|(_, why)| *why);
        }
        let drop_to = window.len().saturating_sub(keep);
        window.drain(..drop_to);
    }
    if let Some(why) = found {
        drop(out);
        if let Some(d) = dest {
            fs::remove_file(d).map_err(|e| Error::io(d, e))?;
        }
        return Ok(Content::Key(why));
    }
    if let (Some(o), Some(d)) = (out, dest) {
        o.sync_all().map_err(|e| Error::io(d, e))?;
    }
    Ok(Content::Plain(hash.finalize().into(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_header_split_across_reads_is_found() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("notes.txt");
        let mut bytes = vec![b'x'; (1 << 20) - 5];
        bytes.extend_from_slice(SECRET_KEY_HEADER.as_bytes());
        std::fs::write(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let dest = dir.path().join("copy");
        let got = copy_checked(&p, Some(&dest)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(got, Content::Key(_)));
        assert!(!dest.exists(), "a file holding a key must not stay in the release");
    }

    #[test]
    fn deny_list_and_snapshot_roots() {
        assert!(denied("owner.KEY").is_some() && denied("id_ed25519.pub").is_some());
        assert!(denied("tokenizer.json").is_none() && denied("id2label.json").is_none());
        let roots = allowed_roots(Path::new("/c/models--org--m/snapshots/abc"));
        assert_eq!(roots.len(), 2);
        assert_eq!(roots.get(1).map(PathBuf::as_path), Some(Path::new("/c/models--org--m")));
        assert_eq!(allowed_roots(Path::new("/c/x/snapshots/abc")).len(), 1);
    }
}
