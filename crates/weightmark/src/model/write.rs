//! Writing a model with some tensors replaced, mirroring the input's layout.
//!
//! Only tensor data changes: dtypes, shapes and offsets stay, so each output
//! file reuses its input's header bytes verbatim (metadata, order and all) and
//! a sharded model reuses its index verbatim. Tensors go out one at a time in
//! file order; a producer thread computes the next tensor while this one is
//! hashed and written, so memory holds about two tensors whatever the model's
//! size. Everything is written under temporary names beside the destination
//! and renamed into place at the end; on error nothing is left behind.
//! A directory model's side files (config, tokenizer, ...) are copied by the
//! rules of [`super::side`].
//!
//! [`digest_model`] runs the same code with nothing written: every byte that
//! [`write_model`] would write goes into the same hashes instead, so the
//! digests it returns are those of the files [`write_model`] writes.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::side::{copy_checked, walk, Content, Purpose, SkippedFile};
use super::{Layout, Model, ModelFile, TensorInfo, TensorRef};
use crate::digest::{tensor_hasher, Sha256Digest};
use crate::error::{Error, Result};
use crate::io::{
    check_output, refuse_non_empty_dir, set_public_mode, AtomicFile, Overwrite, StagingDir,
};
use crate::progress::Progress;

/// What the writer thread returns: the file's SHA-256 and size, and each
/// tensor's digest.
type WrittenFile = (Sha256Digest, u64, Vec<(String, Sha256Digest)>);

/// Options for [`write_model`].
pub struct WriteOptions<'a> {
    /// Progress receiver.
    pub progress: &'a dyn Progress,
    /// Whether an existing output file may be replaced.
    pub overwrite: Overwrite,
}

/// One file written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    /// Path relative to the output (the file name for a single file).
    pub name: String,
    /// SHA-256 of its bytes.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
}

/// What [`write_model`] wrote.
#[derive(Clone, Debug)]
pub struct WriteReport {
    /// Where the model went (a file, or a directory).
    pub path: PathBuf,
    /// The safetensors files and the index, with their digests.
    pub files: Vec<OutputFile>,
    /// Every tensor's digest (see [`crate::digest`]).
    pub tensor_digests: Vec<(String, Sha256Digest)>,
    /// Side files copied from the input directory (config, tokenizer, ...),
    /// in name order, with their digests.
    pub copied: Vec<OutputFile>,
    /// Entries of the input directory deliberately not copied, with the
    /// reason (weights in another format, keys, links out of the directory,
    /// hidden entries, ...).
    pub skipped: Vec<SkippedFile>,
    /// Entries of the input directory visited while looking for side files
    /// (each at most once).
    pub entries_visited: u64,
}

impl WriteReport {
    /// Every file of the release, weights and side files, in name order.
    pub fn all_files(&self) -> Vec<OutputFile> {
        let mut all: Vec<OutputFile> = self.files.iter().chain(&self.copied).cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// Computes a tensor's replacement bytes, or `None` to copy it unchanged.
pub type Transform<'t> = dyn Fn(&TensorRef<'_>) -> Result<Option<Vec<u8>>> + Sync + 't;

/// Writes `model` to `out` with each tensor passed through `transform`.
///
/// A single-file model goes to the file `out` (or into `out` if that is an
/// existing directory); a directory model goes to the directory `out`.
pub fn write_model(
    model: &Model,
    out: &Path,
    transform: &Transform<'_>,
    options: &WriteOptions<'_>,
) -> Result<WriteReport> {
    let total: u64 = model.data_bytes();
    options.progress.start("writing", total);
    let result = match model.layout {
        Layout::Memory => {
            Err(Error::invalid("a model held in memory has no file layout to mirror"))
        }
        Layout::Gguf => Err(Error::invalid(format!(
            "{}: a GGUF model cannot be written back as GGUF here; `weightmark convert` it to \
             safetensors first",
            model.path.display()
        ))),
        Layout::File => write_single(model, out, transform, options),
        Layout::DirectorySingle | Layout::DirectorySharded => {
            write_directory(model, out, transform, options)
        }
    };
    options.progress.finish();
    result
}

/// Where [`write_model`] will put `model` when asked to write to `out`, after
/// refusing an output that is the input: the file itself for a single file
/// (inside `out` if that is an existing directory), else the directory `out`.
pub fn resolve_output(model: &Model, out: &Path) -> Result<PathBuf> {
    let dest = match (&model.layout, model.files.first()) {
        (Layout::File, Some(file)) if out.is_dir() => out.join(&file.file_name),
        _ => out.to_path_buf(),
    };
    refuse_same_path(&model.path, &dest)?;
    Ok(dest)
}

fn write_single(
    model: &Model,
    out: &Path,
    transform: &Transform<'_>,
    options: &WriteOptions<'_>,
) -> Result<WriteReport> {
    let file = model.files.first().ok_or_else(|| Error::invalid("model has no file"))?;
    let dest = resolve_output(model, out)?;
    check_output(&dest, options.overwrite)?;
    let mut tmp = AtomicFile::create(&dest)?;
    let mut digests = Vec::new();
    let tmp_path = tmp.temp_path()?.to_path_buf();
    let (sha256, size) =
        write_file(file, Some(tmp.file()?), &tmp_path, transform, options, &mut digests)?;
    tmp.commit(options.overwrite)?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(WriteReport {
        path: dest,
        files: vec![OutputFile { name, sha256, size }],
        tensor_digests: digests,
        copied: Vec::new(),
        skipped: Vec::new(),
        entries_visited: 0,
    })
}

fn write_directory(
    model: &Model,
    out: &Path,
    transform: &Transform<'_>,
    options: &WriteOptions<'_>,
) -> Result<WriteReport> {
    refuse_same_path(&model.path, out)?;
    if out.exists() && !out.is_dir() {
        return Err(Error::invalid(format!(
            "{}: the input is a model directory, so the output must be a directory, not a file",
            out.display()
        )));
    }
    refuse_non_empty_dir(out)?;
    check_output(out, options.overwrite)?;
    let staging = StagingDir::create(out)?;
    let mut files = Vec::new();
    let mut digests = Vec::new();
    for f in &model.files {
        let path = staging.path().join(&f.file_name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut handle = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let (sha256, size) =
            write_file(f, Some(&mut handle), &path, transform, options, &mut digests)?;
        files.push(OutputFile { name: f.file_name.clone(), sha256, size });
    }
    if let Some(index) = &model.index {
        let path = staging.path().join(&index.file_name);
        fs::write(&path, &index.bytes).map_err(|e| Error::io(&path, e))?;
        files.push(index_file(index));
    }
    let written: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let side = copy_side_files(&model.path, Some(staging.path()), &written)?;
    set_public_mode(staging.path(), 0o755)?;
    staging.commit(out)?;
    Ok(WriteReport {
        path: out.to_path_buf(),
        files,
        tensor_digests: digests,
        copied: side.copied,
        skipped: side.skipped,
        entries_visited: side.entries_visited,
    })
}

/// Writes the file `file` of a model directory to `dir` (one job of a split
/// embed, [`crate::split::embed`]) through `transform`, as [`write_model`]
/// writes it into a directory: atomically, fsynced. Returns the file written
/// and its tensor digests in write order.
pub(crate) fn write_shard(
    file: &ModelFile,
    dir: &Path,
    transform: &Transform<'_>,
    options: &WriteOptions<'_>,
) -> Result<(OutputFile, Vec<(String, Sha256Digest)>)> {
    let dest = dir.join(&file.file_name);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    check_output(&dest, options.overwrite)?;
    let mut tmp = AtomicFile::create(&dest)?;
    let mut digests = Vec::new();
    let tmp_path = tmp.temp_path()?.to_path_buf();
    let (sha256, size) =
        write_file(file, Some(tmp.file()?), &tmp_path, transform, options, &mut digests)?;
    tmp.commit(options.overwrite)?;
    Ok((OutputFile { name: file.file_name.clone(), sha256, size }, digests))
}

/// Completes a model directory `out` whose weight files the jobs of a split
/// embed wrote (`files`, in model order, with the tensor digests `digests`
/// in write order): writes the index and copies the side files, as
/// [`write_model`] does, and reports what it would have.
pub(crate) fn finish_directory(
    model: &Model,
    out: &Path,
    mut files: Vec<OutputFile>,
    digests: Vec<(String, Sha256Digest)>,
    overwrite: Overwrite,
) -> Result<WriteReport> {
    if let Some(index) = &model.index {
        crate::io::write_new_bytes(&out.join(&index.file_name), &index.bytes, overwrite)?;
        files.push(index_file(index));
    }
    let written: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let side = copy_side_files(&model.path, Some(out), &written)?;
    set_public_mode(out, 0o755)?;
    Ok(WriteReport {
        path: out.to_path_buf(),
        files,
        tensor_digests: digests,
        copied: side.copied,
        skipped: side.skipped,
        entries_visited: side.entries_visited,
    })
}

/// Writes one safetensors file: its header verbatim, then each tensor's
/// (possibly replaced) data in offset order. Returns the file's SHA-256 and
/// size. Without a `handle` the bytes are hashed and counted, not written.
fn write_file(
    file: &ModelFile,
    handle: Option<&mut File>,
    path: &Path,
    transform: &Transform<'_>,
    options: &WriteOptions<'_>,
    digests: &mut Vec<(String, Sha256Digest)>,
) -> Result<(Sha256Digest, u64)> {
    let mut order: Vec<_> = file.header.tensors.iter().collect();
    order.sort_by_key(|t| t.begin);
    let header = file.header_bytes();

    // The calling thread computes replacements (so its rayon pool is the one
    // used); a writer thread hashes and writes one tensor behind it.
    std::thread::scope(|scope| -> Result<(Sha256Digest, u64)> {
        let (tx, rx) = mpsc::sync_channel::<(&TensorInfo, Option<Vec<u8>>)>(1);
        let writer = scope.spawn(move || -> Result<WrittenFile> {
            let mut out = handle.map(|h| BufWriter::with_capacity(1 << 20, h));
            let mut file_hash = Sha256::new();
            if let Some(out) = out.as_mut() {
                out.write_all(header).map_err(|e| Error::io(path, e))?;
            }
            file_hash.update(header);
            let mut size = header.len() as u64;
            let mut written = Vec::new();
            for (info, replaced) in rx {
                let t = super::tensor_ref(file, info);
                let original = t.data();
                let data: &[u8] = replaced.as_deref().unwrap_or(&original);
                let mut tensor_hash = tensor_hasher(t.name, t.dtype.name(), t.shape);
                // Hash for the file and for the tensor digest side by side.
                rayon::join(|| file_hash.update(data), || tensor_hash.update(data));
                if let Some(out) = out.as_mut() {
                    out.write_all(data).map_err(|e| Error::io(path, e))?;
                }
                written.push((t.name.to_string(), tensor_hash.finalize().into()));
                size += data.len() as u64;
                options.progress.advance(data.len() as u64);
            }
            if let Some(mut out) = out {
                out.flush().map_err(|e| Error::io(path, e))?;
                let handle = out.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
                handle.sync_all().map_err(|e| Error::io(path, e))?;
            }
            Ok((file_hash.finalize().into(), size, written))
        });
        let mut produced: Result<()> = Ok(());
        for info in &order {
            let t = super::tensor_ref(file, info);
            let replaced = match transform(&t) {
                Ok(r) => r,
                Err(e) => {
                    produced = Err(e);
                    break;
                }
            };
            if let Some(data) = replaced.as_ref().filter(|d| d.len() != t.byte_len()) {
                produced = Err(Error::invalid(format!(
                    "tensor '{}': replacement has {} bytes, expected {}",
                    t.name,
                    data.len(),
                    t.byte_len()
                )));
                break;
            }
            if tx.send((info, replaced)).is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        drop(tx);
        // A panic in the writer is a bug: resume it here rather than
        // dressing it up as a problem with the input.
        let written = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        produced?;
        let (sha, size, tensor_digests) = written?;
        digests.extend(tensor_digests);
        Ok((sha, size))
    })
}

/// The index of a sharded model as an output file: its bytes verbatim.
fn index_file(index: &super::ShardIndex) -> OutputFile {
    OutputFile {
        name: index.file_name.clone(),
        sha256: Sha256::digest(&index.bytes).into(),
        size: index.bytes.len() as u64,
    }
}

/// What [`write_model`] would report for `model` written to `out`, computed
/// without writing anything: the same transform runs on every tensor and
/// the bytes that would be written (weight files, index, side files) are
/// hashed instead. [`WriteReport::path`] is where the model would go; for a
/// single-file model only the name of `out` matters (the name the file
/// would have), and a directory `out` need not exist.
pub fn digest_model(
    model: &Model,
    out: &Path,
    transform: &Transform<'_>,
    options: &WriteOptions<'_>,
) -> Result<WriteReport> {
    let total: u64 = model.data_bytes();
    options.progress.start("hashing", total);
    let result = digest_layout(model, out, transform, options);
    options.progress.finish();
    result
}

fn digest_layout(
    model: &Model,
    out: &Path,
    transform: &Transform<'_>,
    options: &WriteOptions<'_>,
) -> Result<WriteReport> {
    let mut report = WriteReport {
        path: out.to_path_buf(),
        files: Vec::new(),
        tensor_digests: Vec::new(),
        copied: Vec::new(),
        skipped: Vec::new(),
        entries_visited: 0,
    };
    match model.layout {
        Layout::Memory => {
            return Err(Error::invalid("a model held in memory has no file layout to mirror"))
        }
        Layout::Gguf => {
            return Err(Error::invalid(format!(
                "{}: a GGUF model cannot be released as GGUF here; `weightmark convert` it to \
                 safetensors first",
                model.path.display()
            )))
        }
        Layout::File => {
            let file = model.files.first().ok_or_else(|| Error::invalid("model has no file"))?;
            if out.is_dir() {
                report.path = out.join(&file.file_name);
            }
            let name = report
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.file_name.clone());
            let (sha256, size) =
                write_file(file, None, out, transform, options, &mut report.tensor_digests)?;
            report.files.push(OutputFile { name, sha256, size });
        }
        Layout::DirectorySingle | Layout::DirectorySharded => {
            for f in &model.files {
                let (sha256, size) =
                    write_file(f, None, out, transform, options, &mut report.tensor_digests)?;
                report.files.push(OutputFile { name: f.file_name.clone(), sha256, size });
            }
            report.files.extend(model.index.as_ref().map(index_file));
            let written: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
            let side = copy_side_files(&model.path, None, &written)?;
            report.copied = side.copied;
            report.skipped = side.skipped;
            report.entries_visited = side.entries_visited;
        }
    }
    Ok(report)
}

/// The side files of a directory model as copied into a release.
struct SideFiles {
    copied: Vec<OutputFile>,
    skipped: Vec<SkippedFile>,
    entries_visited: u64,
}

/// Copies the input directory's side files (config, tokenizer, ...) into
/// the staging directory by the rules of [`super::side`]: no keys, no links
/// out of the directory, no weights in other formats, each entry visited once.
/// Without a staging directory they are hashed as if copied.
fn copy_side_files(input: &Path, staging: Option<&Path>, written: &[&str]) -> Result<SideFiles> {
    let found = walk(input, written, Purpose::Release)?;
    let mut side = SideFiles {
        copied: Vec::new(),
        skipped: found.skipped,
        entries_visited: found.entries_visited,
    };
    for file in found.files {
        let dest = staging.map(|s| s.join(&file.name));
        if let Some(dir) = dest.as_deref().and_then(Path::parent) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        match copy_checked(&file.source, dest.as_deref())? {
            Content::Plain(sha256, size) => {
                side.copied.push(OutputFile { name: file.name, sha256, size });
            }
            Content::Key(why) => {
                side.skipped.push(SkippedFile { name: file.name, reason: why.to_string() });
            }
        }
    }
    side.copied.sort_by(|a, b| a.name.cmp(&b.name));
    side.skipped.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(side)
}

/// Refuses to write over the input.
pub(crate) fn refuse_same_path(input: &Path, out: &Path) -> Result<()> {
    let canonical_in = input.canonicalize().map_err(|e| Error::io(input, e))?;
    let canonical_out = match out.canonicalize() {
        Ok(p) => p,
        Err(_) => match (out.parent(), out.file_name()) {
            (Some(p), Some(n)) => {
                let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
                p.canonicalize().map(|p| p.join(n)).unwrap_or_else(|_| out.to_path_buf())
            }
            _ => out.to_path_buf(),
        },
    };
    let nested = canonical_in.is_dir()
        && (canonical_out.starts_with(&canonical_in) || canonical_in.starts_with(&canonical_out));
    if canonical_in == canonical_out {
        return Err(Error::invalid(format!(
            "{}: the output is the input; write the marked model somewhere else",
            out.display()
        )));
    }
    if nested {
        return Err(Error::invalid(format!(
            "{}: the output directory and the input directory {} are inside one another; \
             write the marked model somewhere else",
            out.display(),
            input.display()
        )));
    }
    Ok(())
}
