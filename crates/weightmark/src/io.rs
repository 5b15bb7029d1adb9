//! Files in and out: bounded reads of small text inputs (indexes, keys,
//! certificates) and atomic output (a temporary file beside the destination,
//! renamed into place), the one place the library creates output files.
//!
//! Every temporary file or directory is named `.weightmark-p<PID>-h<HOST>-…`
//! (the writing process and a short hash of its host name) and recorded in a
//! process-wide registry until it is renamed into place or dropped. A signal
//! handler calls [`remove_temporaries`] so that an interrupted run leaves
//! nothing behind; a later run calls [`prepare_outputs`], which also removes
//! temporaries whose writing process on this host no longer exists.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Prefix of every temporary file or directory the library creates.
pub(crate) const TEMP_PREFIX: &str = ".weightmark-";

/// Whether an output that already exists may be replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Refuse with [`Error::OutputExists`] (the default).
    #[default]
    Refuse,
    /// Replace an existing file atomically. A non-empty output directory is
    /// never replaced.
    Replace,
}

/// Temporaries of this process not yet renamed into place or removed.
struct Registry {
    /// Set by [`remove_temporaries`]: no new temporary may start.
    closed: bool,
    next: u64,
    live: BTreeMap<u64, PathBuf>,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { closed: false, next: 0, live: BTreeMap::new() });

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// Refuses new temporaries once the process is shutting down.
    fn check_open(&self, dir: &Path) -> Result<()> {
        if self.closed {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"),
            ));
        }
        Ok(())
    }

    fn add(&mut self, path: PathBuf) -> u64 {
        self.next += 1;
        self.live.insert(self.next, path);
        self.next
    }
}

/// Removes every temporary file and staging directory this process has not
/// yet renamed into place, and refuses new ones from then on. For a signal
/// handler (SIGINT, SIGTERM) to call just before the process exits; files
/// already under their final names are never touched. Returns how many
/// temporaries were removed.
pub fn remove_temporaries() -> usize {
    let mut reg = registry();
    reg.closed = true;
    let mut removed = 0;
    for path in std::mem::take(&mut reg.live).into_values() {
        if remove_path(&path) {
            removed += 1;
        }
    }
    // The guard is held until here so that no rename into place can run
    // half-way through the removal; the caller exits right after.
    drop(reg);
    removed
}

/// Removes a file or a directory tree; a writer thread may still be adding
/// files to a staging directory, so a few attempts are made.
fn remove_path(path: &Path) -> bool {
    for _ in 0..5 {
        let gone = match std::fs::symlink_metadata(path) {
            Err(_) => return false,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).is_ok(),
            Ok(_) => std::fs::remove_file(path).is_ok(),
        };
        if gone {
            return true;
        }
    }
    false
}

/// `.weightmark-p<PID>-h<HOST>-`: the prefix of this process's temporaries.
fn process_prefix() -> String {
    format!("{TEMP_PREFIX}p{}-h{}-", std::process::id(), host_tag())
}

/// Eight hex digits of SHA-256 of the host name, so temporaries of jobs on
/// other machines sharing a file system are told apart from ours.
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        let digest = <sha2::Sha256 as sha2::Digest>::digest(name.trim().as_bytes());
        crate::digest::hex(digest.get(..4).unwrap_or_default())
    })
}

/// The process id a temporary's name records, when it was written by a
/// process on this host.
fn temporary_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?.strip_prefix('p')?;
    let (pid, rest) = rest.split_once("-h")?;
    let (host, _) = rest.split_once('-')?;
    (host == host_tag()).then(|| pid.parse().ok()).flatten()
}

/// Whether process `pid` exists. Only Linux is asked (through `/proc`);
/// elsewhere every process is assumed alive, so nothing is removed.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_fs = Path::new("/proc/self");
    if cfg!(target_os = "linux") && proc_fs.exists() {
        return Path::new("/proc").join(pid.to_string()).exists();
    }
    true
}

/// Removes from `dir` the temporaries left by weightmark processes of this
/// host that no longer exist (killed, or crashed); those of running processes
/// (concurrent jobs) and every other file are left alone. Returns the paths
/// removed.
pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_owner) else { continue };
        if !process_alive(pid) && remove_path(&entry.path()) {
            removed.push(entry.path());
        }
    }
    removed
}

/// Checks, before any work, that each of `outputs` can be written: its
/// directory exists and accepts a new file, and the output does not exist
/// (unless `overwrite` is [`Overwrite::Replace`] and it is a file). Removes
/// stale temporaries (see [`remove_stale_temporaries`]) from those
/// directories on the way; returns the paths removed.
pub fn prepare_outputs(outputs: &[&Path], overwrite: Overwrite) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for output in outputs {
        check_output(output, overwrite)?;
        removed.extend(remove_stale_temporaries(parent_dir(output)));
    }
    Ok(removed)
}

/// Refuses an output that exists (unless it is a file and `overwrite`
/// allows replacing it; an empty directory counts as absent) or whose
/// directory is missing or not writable.
pub(crate) fn check_output(output: &Path, overwrite: Overwrite) -> Result<()> {
    match std::fs::symlink_metadata(output) {
        Ok(m) if m.is_dir() => refuse_non_empty_dir(output)?,
        Ok(_) if overwrite == Overwrite::Refuse => {
            return Err(Error::OutputExists { path: output.to_path_buf() });
        }
        _ => {}
    }
    let dir = parent_dir(output);
    if !dir.is_dir() {
        return Err(Error::io(
            output,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("its directory {} does not exist", dir.display()),
            ),
        ));
    }
    // The only sure test of writability is writing: a probe, removed at once.
    tempfile::Builder::new()
        .prefix(&process_prefix())
        .suffix(".probe")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| Error::io(output, e))
}

/// Refuses an output directory that holds anything: replacing it could leave
/// a stale file (an unmarked copy, another licensee's) beside the new output.
pub(crate) fn refuse_non_empty_dir(out: &Path) -> Result<()> {
    let not_empty = std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false);
    if not_empty {
        return Err(Error::invalid(format!(
            "{}: exists and is not empty; write to a new directory so no stale file (an unmarked \
             copy, another licensee's) ends up beside the marked model",
            out.display()
        )));
    }
    Ok(())
}

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
/// if dropped before that (or by [`remove_temporaries`]).
pub(crate) struct AtomicFile {
    tmp: Option<tempfile::NamedTempFile>,
    dest: PathBuf,
    id: u64,
}

impl AtomicFile {
    /// Starts a file that will become `dest`.
    pub(crate) fn create(dest: &Path) -> Result<AtomicFile> {
        let dir = parent_dir(dest);
        let mut reg = registry();
        reg.check_open(dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(&process_prefix())
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let id = reg.add(tmp.path().to_path_buf());
        Ok(AtomicFile { tmp: Some(tmp), dest: dest.to_path_buf(), id })
    }

    fn tmp(&self) -> Result<&tempfile::NamedTempFile> {
        self.tmp.as_ref().ok_or_else(|| Error::internal("temporary file already committed"))
    }

    /// The open file.
    pub(crate) fn file(&mut self) -> Result<&mut std::fs::File> {
        self.tmp
            .as_mut()
            .map(tempfile::NamedTempFile::as_file_mut)
            .ok_or_else(|| Error::internal("temporary file already committed"))
    }

    /// The temporary path (for error messages about the bytes being written).
    pub(crate) fn temp_path(&self) -> Result<&Path> {
        Ok(self.tmp()?.path())
    }

    /// Gives the file the usual mode (temporaries are created 0600) and
    /// renames it to its destination, replacing a file there only when
    /// `overwrite` allows it.
    pub(crate) fn commit(mut self, overwrite: Overwrite) -> Result<()> {
        let dest = self.dest.clone();
        set_public_mode(self.tmp()?.path(), 0o644)?;
        let mut reg = registry();
        reg.check_open(&dest)?;
        let tmp =
            self.tmp.take().ok_or_else(|| Error::internal("temporary file committed twice"))?;
        let persisted = match overwrite {
            Overwrite::Replace => tmp.persist(&dest),
            Overwrite::Refuse => tmp.persist_noclobber(&dest),
        };
        reg.live.remove(&self.id);
        match persisted {
            Ok(_) => Ok(()),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::OutputExists { path: dest })
            }
            Err(e) => Err(Error::io(&dest, e.error)),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        let mut reg = registry();
        reg.live.remove(&self.id);
        // The temporary (if not committed) is removed by its own drop.
        drop(self.tmp.take());
    }
}

/// Writes `text` to `path` atomically (temporary file beside it, then
/// rename), replacing any file already there.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    write_atomic_bytes(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically (temporary file beside it, then
/// rename), replacing any file already there.
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_output(path, bytes, Overwrite::Replace)
}

/// Writes the file `path` through `write` atomically: into a temporary file
/// beside it (registered, so that [`remove_temporaries`] removes it on a
/// handled signal, and [`remove_stale_temporaries`] once its process is
/// gone), buffered, synced, then renamed to `path` (replacing a file there
/// only when `overwrite` allows it), and the directory synced. For large
/// files made piece by piece, such as a training checkpoint; an error from
/// `write` is reported against `path`.
pub fn write_atomic_with(
    path: &Path,
    overwrite: Overwrite,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    if overwrite == Overwrite::Refuse && std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::OutputExists { path: path.to_path_buf() });
    }
    let mut out = AtomicFile::create(path)?;
    {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, out.file()?);
        write(&mut buffered).map_err(|e| Error::io(path, e))?;
        buffered.flush().map_err(|e| Error::io(path, e))?;
    }
    out.file()?.sync_all().map_err(|e| Error::io(path, e))?;
    out.commit(overwrite)?;
    // The rename itself made durable (best effort: not every file system
    // lets a directory be opened for syncing).
    if let Ok(dir) = std::fs::File::open(parent_dir(path)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Writes `text` to `path` atomically, refusing to replace an existing file
/// unless `overwrite` is [`Overwrite::Replace`] ([`Error::OutputExists`]):
/// for evidence (certificates, reports) that must not be lost silently.
pub fn write_new(path: &Path, text: &str, overwrite: Overwrite) -> Result<()> {
    write_output(path, text.as_bytes(), overwrite)
}

/// [`write_new`] for bytes.
pub(crate) fn write_new_bytes(path: &Path, bytes: &[u8], overwrite: Overwrite) -> Result<()> {
    write_output(path, bytes, overwrite)
}

fn write_output(path: &Path, bytes: &[u8], overwrite: Overwrite) -> Result<()> {
    if overwrite == Overwrite::Refuse && std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::OutputExists { path: path.to_path_buf() });
    }
    let mut out = AtomicFile::create(path)?;
    out.file()?.write_all(bytes).map_err(|e| Error::io(path, e))?;
    out.commit(overwrite)
}

/// A private staging directory beside its destination, renamed into place
/// by [`StagingDir::commit`] once complete and removed if dropped before
/// (or by [`remove_temporaries`]).
pub(crate) struct StagingDir {
    dir: Option<tempfile::TempDir>,
    id: u64,
}

impl StagingDir {
    /// Starts a staging directory for the output directory `dest`.
    pub(crate) fn create(dest: &Path) -> Result<StagingDir> {
        let dir = parent_dir(dest);
        let mut reg = registry();
        reg.check_open(dir)?;
        let staging = tempfile::Builder::new()
            .prefix(&process_prefix())
            .tempdir_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let id = reg.add(staging.path().to_path_buf());
        Ok(StagingDir { dir: Some(staging), id })
    }

    /// The staging directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.as_ref().map(tempfile::TempDir::path).unwrap_or(Path::new(""))
    }

    /// Renames the staged tree to `out`, which does not exist or is an empty
    /// directory (replaced).
    pub(crate) fn commit(mut self, out: &Path) -> Result<()> {
        let mut reg = registry();
        reg.check_open(out)?;
        let staging = self.dir.take().ok_or_else(|| Error::internal("staging committed twice"))?;
        if out.is_dir() {
            std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
        }
        let staged = staging.keep();
        reg.live.remove(&self.id);
        std::fs::rename(&staged, out).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staged);
            Error::io(out, e)
        })
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let mut reg = registry();
        reg.live.remove(&self.id);
        drop(self.dir.take());
    }
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
    fn new_evidence_is_never_written_over_an_existing_file_unless_asked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dest = dir.path().join("r.json");
        write_new(&dest, "first", Overwrite::Refuse).unwrap_or_else(|e| panic!("{e}"));
        let err = write_new(&dest, "second", Overwrite::Refuse).err();
        assert!(matches!(err, Some(Error::OutputExists { .. })), "{err:?}");
        assert_eq!(std::fs::read_to_string(&dest).ok().as_deref(), Some("first"));
        write_new(&dest, "third", Overwrite::Replace).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&dest).ok().as_deref(), Some("third"));
        let missing = dir.path().join("no/such/dir/c.json");
        let err = prepare_outputs(&[&missing], Overwrite::Refuse).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("does not exist")), "{err:?}");
    }

    #[test]
    fn only_temporaries_of_dead_processes_of_this_host_are_removed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut child =
            std::process::Command::new("true").spawn().unwrap_or_else(|e| panic!("{e}"));
        let dead = child.id();
        child.wait().unwrap_or_else(|e| panic!("{e}"));
        let tag = host_tag();
        let names = [
            format!("{TEMP_PREFIX}p{dead}-h{tag}-abc.tmp"),
            format!("{TEMP_PREFIX}p{}-h{tag}-def.tmp", std::process::id()),
            format!("{TEMP_PREFIX}p{dead}-h0000ffff-ghi.tmp"),
            format!("{TEMP_PREFIX}oldstyle.tmp"),
            "marked.safetensors".to_string(),
        ];
        for n in &names {
            std::fs::write(dir.path().join(n), "x").unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::create_dir(dir.path().join(format!("{TEMP_PREFIX}p{dead}-h{tag}-stage")))
            .unwrap_or_else(|e| panic!("{e}"));
        let removed = remove_stale_temporaries(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
            .collect();
        left.sort();
        let mut expected: Vec<String> = names.iter().skip(1).cloned().collect();
        expected.sort();
        if cfg!(target_os = "linux") {
            assert_eq!(removed.len(), 2, "{removed:?}");
            assert_eq!(left, expected);
        } else {
            assert!(removed.is_empty());
        }
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
