//! Files in and out: bounded reads of small text inputs (indexes, keys,
//! certificates) and atomic output (a temporary file beside the destination,
//! renamed into place), the one place the library creates output files.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Prefix of every temporary file or directory the library creates.
pub(crate) const TEMP_PREFIX: &str = ".weightmark-";

/// Opens `path` for reading, refusing anything but a regular file (after
/// following symbolic links): a directory, a FIFO, a socket or a device where
/// a file is expected is an error, never something to wait on or read
/// forever. On Unix the file is opened non-blocking, so even a FIFO swapped
/// in after a check cannot block the open; the type is then checked on the
/// open descriptor itself.
pub(crate) fn open_regular(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_a_regular_file(path, &meta.file_type()));
    }
    Ok(file)
}

/// The error for a path that is not a regular file, naming what it is.
pub(crate) fn not_a_regular_file(path: &Path, kind: &std::fs::FileType) -> Error {
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        special_kind(kind)
    };
    Error::NotAModel { path: path.to_path_buf(), reason: format!("is {what}, not a regular file") }
}

/// What a special file is: a FIFO, a socket or a device.
#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "something other than a file"
    }
}

/// What a special file is.
#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "something other than a file"
}

/// Reads at most `cap` bytes of the regular file `path`; a longer input is
/// an error rather than an unbounded read, and anything but a regular file
/// (a FIFO, a device such as `/dev/zero`, a directory) is refused unread.
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::NotAModel {
            path: path.to_path_buf(),
            reason: format!("larger than the {cap}-byte limit for this kind of file"),
        });
    }
    Ok(bytes)
}

/// The directory a file at `path` lives in (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A file being written under a temporary name beside its destination; it
/// appears under the final name only on [`AtomicFile::commit`], and is removed
/// if dropped before that.
pub(crate) struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl AtomicFile {
    /// Starts a file that will become `dest`.
    pub(crate) fn create(dest: &Path) -> Result<AtomicFile> {
        let dir = parent_dir(dest);
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        Ok(AtomicFile { tmp, dest: dest.to_path_buf() })
    }

    /// The open file.
    pub(crate) fn file(&mut self) -> &mut std::fs::File {
        self.tmp.as_file_mut()
    }

    /// The temporary path (for error messages about the bytes being written).
    pub(crate) fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Gives the file the usual mode (temporaries are created 0600) and
    /// renames it to its destination.
    pub(crate) fn commit(self) -> Result<()> {
        set_public_mode(self.tmp.path(), 0o644)?;
        let dest = self.dest;
        self.tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        Ok(())
    }
}

/// Writes `text` to `path` atomically (temporary file beside it, then rename).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    write_atomic_bytes(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically (temporary file beside it, then rename).
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = AtomicFile::create(path)?;
    out.file().write_all(bytes).map_err(|e| Error::io(path, e))?;
    out.commit()
}

/// A private staging directory beside `dest`, renamed into place by the
/// caller once complete and removed if dropped.
pub(crate) fn staging_dir(dest: &Path) -> Result<tempfile::TempDir> {
    let dir = parent_dir(dest);
    tempfile::Builder::new().prefix(TEMP_PREFIX).tempdir_in(dir).map_err(|e| Error::io(dir, e))
}

/// Temporary files and directories are created private (0600/0700); the
/// model written through them is not a secret, so give it the usual mode.
pub(crate) fn set_public_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temporary_and_dropping_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dest = dir.path().join("a.json");
        write_atomic(&dest, "{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&dest).ok().as_deref(), Some("{}"));
        let pending =
            AtomicFile::create(&dir.path().join("b.json")).unwrap_or_else(|e| panic!("{e}"));
        drop(pending);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn capped_read_refuses_a_longer_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("x");
        std::fs::write(&p, [0u8; 100]).unwrap_or_else(|e| panic!("{e}"));
        assert!(read_capped(&p, 100).is_ok());
        let err = read_capped(&p, 99).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("99-byte limit") && err.contains('x'), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn capped_read_refuses_a_fifo_a_device_and_a_directory_without_waiting() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fifo = dir.path().join("config.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        // Nobody writes to the FIFO: a blocking open would wait forever.
        let (tx, rx) = std::sync::mpsc::channel();
        let fifo2 = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_capped(&fifo2, 100).err().map(|e| e.to_string()));
        });
        let err = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap_or_else(|_| {
            panic!("reading a FIFO blocked");
        });
        assert!(err.as_deref().is_some_and(|e| e.contains("FIFO")), "{err:?}");
        let err = read_capped(Path::new("/dev/zero"), 100).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("is a device")), "{err:?}");
        let err = read_capped(dir.path(), 100).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("is a directory")), "{err:?}");
    }
}
