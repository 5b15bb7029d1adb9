//! Models on disk: a single `.safetensors` file, or a directory holding one
//! model (a single file, or shards listed by a `*.safetensors.index.json`).
//!
//! [`Model::open`] memory-maps every file and validates every header and the
//! index before anything else happens, so a malformed input is rejected before
//! any output exists. Tensors are then borrowed as [`TensorRef`]s straight from
//! the maps; nothing is copied until a tensor is actually transformed. A GGUF
//! file is mapped the same way and each tensor dequantized only when its
//! bytes are asked for ([`TensorRef::data`]), one tensor at a time.

mod header;
mod index;
mod mmap;
pub(crate) mod side;
mod view;
mod write;

pub(crate) use write::refuse_same_path;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

pub use header::{Header, TensorInfo};
pub use index::{ShardIndex, INDEX_FILE_NAME};
pub use side::{SkippedFile, DENY_PREFIXES, DENY_SUFFIXES};
pub use view::Reorder;
pub(crate) use view::SpillWriter;
pub use write::{digest_model, resolve_output, write_model, OutputFile, WriteOptions, WriteReport};
pub(crate) use write::{finish_directory, write_shard};

use crate::dtype::Dtype;
use crate::error::{Error, FormatError, Result};

/// Largest shard index accepted.
const MAX_INDEX_LEN: u64 = 64 * 1024 * 1024;

/// One memory-mapped safetensors file with its validated header.
pub struct ModelFile {
    /// Path of the file.
    pub path: PathBuf,
    /// File name (for shards: the name the index uses).
    pub file_name: String,
    /// The validated header.
    pub header: Header,
    map: Arc<Mmap>,
}

impl ModelFile {
    /// Opens, maps and validates one safetensors file.
    pub fn open(path: &Path) -> Result<ModelFile> {
        let file = crate::io::open_regular(path)?;
        let map = Arc::new(mmap::map(&file, path)?);
        // Validate against the bytes actually mapped, not an earlier stat.
        let len = map.len() as u64;
        if map.get(..4) == Some(b"GGUF".as_slice()) {
            return Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: "this is a GGUF file; this version reads safetensors only".into(),
            });
        }
        let header = Header::parse(&map, len).map_err(|e| Error::format(path, e))?;
        let file_name =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(ModelFile { path: path.to_path_buf(), file_name, header, map })
    }

    /// The raw bytes of the whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The JSON header bytes, including the 8-byte length prefix.
    pub fn header_bytes(&self) -> &[u8] {
        self.map.get(..self.header.data_start()).unwrap_or_default()
    }

    /// The data bytes of one tensor of this file.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = self.header.data_start();
        // Offsets were checked against the file length in Header::parse.
        self.map.get(start + info.begin..start + info.end).unwrap_or_default()
    }
}

/// How a model is laid out on disk; outputs mirror it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A bare `.safetensors` file.
    File,
    /// A directory holding one unsharded `.safetensors` file.
    DirectorySingle,
    /// A directory of shards with an index.
    DirectorySharded,
    /// A GGUF file, read as f32 tensors with canonical names, each tensor
    /// dequantized when it is read.
    Gguf,
    /// Tensors held in memory, or a view of another model's tensors (a
    /// re-aligned suspect): nothing to write as files.
    Memory,
}

/// A tensor held in memory (from a GGUF file).
pub struct OwnedTensor {
    /// Header entry (offsets are 0..len of `data`).
    pub info: TensorInfo,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

/// A GGUF file, kept mapped for its digest and its tensors.
pub struct RawFile {
    /// File name.
    pub file_name: String,
    /// Its bytes.
    map: Mmap,
    /// The parsed GGUF header and metadata.
    pub gguf: crate::gguf::GgufFile,
    /// Its tensors under their canonical names, in file order, each decoded
    /// when read (with the [`TensorInfo`] a reader of the model sees).
    tensors: Vec<(TensorInfo, crate::gguf::LazyTensor)>,
}

impl RawFile {
    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// Where a tensor lives.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Mapped(usize, usize),
    Owned(usize),
    Gguf(usize),
    Viewed(usize),
}

/// Where a tensor's bytes come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Bytes in a map or in memory, as they are.
    Bytes(&'a [u8]),
    /// A GGUF tensor and the whole file's bytes: decoded on each read.
    Gguf(&'a crate::gguf::LazyTensor, &'a [u8]),
    /// A tensor of a view, reordered on each read.
    Reordered(&'a view::Viewed),
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Source::Gguf(t, _) => write!(f, "Gguf({:?}, {})", t.gguf.name, t.gguf.ggml_type.name()),
            Source::Reordered(_) => write!(f, "Reordered"),
        }
    }
}

/// A view of one tensor: its name, dtype and shape, and access to its bytes.
/// Cheap to copy and to hold: for a GGUF model the bytes are produced only
/// when [`TensorRef::data`] is called, so holding views of every tensor
/// costs nothing, while each call to `data` decodes the tensor again. Call
/// it once per pass over a tensor and keep the result while it is needed
/// (or pass [`TensorRef::with_data`] on).
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// The header entry.
    pub info: &'a TensorInfo,
    source: Source<'a>,
}

impl<'a> TensorRef<'a> {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.info.elements()
    }

    /// Number of bytes of its data (what [`TensorRef::data`] returns),
    /// without reading them.
    pub fn byte_len(&self) -> usize {
        self.info.end.saturating_sub(self.info.begin)
    }

    /// Its little-endian element bytes: borrowed from the map or memory, or
    /// for a GGUF tensor dequantized now, for a reordered tensor of a view
    /// ([`Model::view`]) reordered now (each call decodes or reorders anew).
    pub fn data(&self) -> Cow<'a, [u8]> {
        match self.source {
            Source::Bytes(b) => Cow::Borrowed(b),
            Source::Gguf(t, file) => Cow::Owned(t.decode(file)),
            Source::Reordered(v) => Cow::Owned(v.read()),
        }
    }

    /// A view of `data`, bytes held elsewhere that `info` describes (its
    /// name, dtype and shape; `data` should be `info`'s byte length).
    pub fn from_parts(info: &'a TensorInfo, data: &'a [u8]) -> TensorRef<'a> {
        TensorRef {
            name: &info.name,
            dtype: info.dtype,
            shape: &info.shape,
            info,
            source: Source::Bytes(data),
        }
    }

    /// The same view over `data` (the bytes [`TensorRef::data`] returned),
    /// whose `data` is then free: for passing a decoded tensor to code that
    /// reads it more than once.
    pub fn with_data<'b>(&self, data: &'b [u8]) -> TensorRef<'b>
    where
        'a: 'b,
    {
        TensorRef { source: Source::Bytes(data), ..*self }
    }

    /// Whether reading its bytes produces them anew (a GGUF tensor, or a
    /// reordered tensor of a view), rather than borrowing them.
    pub fn is_decoded_on_read(&self) -> bool {
        matches!(self.source, Source::Gguf(..) | Source::Reordered(_))
    }
}

/// An opened, validated model.
pub struct Model {
    /// The path the model was opened from.
    pub path: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// Its files, in shard order.
    pub files: Vec<ModelFile>,
    /// The shard index, for sharded models.
    pub index: Option<ShardIndex>,
    /// Tensors held in memory (models built in memory).
    pub owned: Vec<OwnedTensor>,
    /// The GGUF file, for GGUF models.
    pub raw: Option<Arc<RawFile>>,
    /// Things the reader wants the user to know (unmapped names, ...).
    pub warnings: Vec<String>,
    /// The tensors of a view of another model ([`Model::view`]).
    view: Vec<view::Viewed>,
    by_name: HashMap<String, Slot>,
}

impl Model {
    /// Opens a `.safetensors` file or a model directory and validates all of it.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            Self::open_dir(path)
        } else if !meta.is_file() {
            Err(crate::io::not_a_regular_file(path, &meta.file_type()))
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) || is_gguf(path)?
        {
            Self::open_gguf(path)
        } else {
            let file = ModelFile::open(path)?;
            Self::assemble(path, Layout::File, vec![file], None)
        }
    }

    fn open_dir(dir: &Path) -> Result<Model> {
        let mut indexes = Vec::new();
        let mut weights = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                indexes.push(name);
            } else if name.ends_with(".safetensors") {
                weights.push(name);
            }
        }
        indexes.sort();
        weights.sort();
        let not_a_model = |reason: String| Error::NotAModel { path: dir.to_path_buf(), reason };
        match (indexes.len(), weights.len()) {
            (0, 0) => Err(not_a_model("no .safetensors file in this directory".into())),
            (0, 1) => {
                let file = ModelFile::open(&dir.join(&weights[0]))?;
                Self::assemble(dir, Layout::DirectorySingle, vec![file], None)
            }
            (0, _) => Err(not_a_model(format!(
                "{} .safetensors files and no *.safetensors.index.json to say how they fit together",
                weights.len()
            ))),
            (1, _) => Self::open_sharded(dir, &indexes[0]),
            _ => Err(not_a_model(format!("several shard indexes: {}", indexes.join(", ")))),
        }
    }

    fn open_sharded(dir: &Path, index_name: &str) -> Result<Model> {
        let index_path = dir.join(index_name);
        let bytes = crate::io::read_capped(&index_path, MAX_INDEX_LEN)?;
        let index =
            ShardIndex::parse(index_name, bytes).map_err(|e| Error::format(&index_path, e))?;
        let mut files = Vec::new();
        for shard in &index.shards {
            // Shard names are plain relative names (checked by ShardIndex::parse), so
            // they cannot climb out of the directory; a shard that is a symbolic link
            // (as in a Hugging Face cache snapshot) is followed.
            let shard_path = dir.join(shard);
            if !shard_path.exists() {
                let reason = format!("shard '{shard}' named by the index does not exist");
                return Err(Error::format(&index_path, FormatError::Index { reason }));
            }
            let mut file = ModelFile::open(&shard_path)?;
            file.file_name = shard.clone();
            files.push(file);
        }
        // Every indexed tensor must be where the index says, and vice versa:
        // one pass over each side with hashed look-ups, linear in the number
        // of tensors (a pairwise search took minutes on 80k tensors).
        let by_file: HashMap<&str, &ModelFile> =
            files.iter().map(|f| (f.file_name.as_str(), f)).collect();
        let mut present: HashMap<&str, &str> = HashMap::new();
        for f in &files {
            for t in &f.header.tensors {
                if index.weight_map.get(&t.name) != Some(&f.file_name) {
                    return Err(Error::format(
                        &index_path,
                        FormatError::Index {
                            reason: format!(
                                "tensor '{}' in shard '{}' is not listed for that shard",
                                t.name.escape_debug(),
                                f.file_name.escape_debug()
                            ),
                        },
                    ));
                }
                present.insert(t.name.as_str(), f.file_name.as_str());
            }
        }
        for (name, shard) in &index.weight_map {
            let in_shard = by_file.contains_key(shard.as_str())
                && present.get(name.as_str()) == Some(&shard.as_str());
            if !in_shard {
                return Err(Error::format(
                    &index_path,
                    FormatError::IndexTensorMissing { name: name.clone(), file: shard.clone() },
                ));
            }
        }
        Self::assemble(dir, Layout::DirectorySharded, files, Some(index))
    }

    fn open_gguf(path: &Path) -> Result<Model> {
        let file = crate::io::open_regular(path)?;
        let map = mmap::map(&file, path)?;
        let gguf = crate::gguf::GgufFile::parse(&map).map_err(|e| Error::format(path, e))?;
        let (lazy, warnings) =
            crate::gguf::lazy_tensors(&gguf).map_err(|e| Error::format(path, e))?;
        let mut by_name = HashMap::new();
        let mut tensors = Vec::with_capacity(lazy.len());
        for t in lazy {
            if by_name.insert(t.name.clone(), Slot::Gguf(tensors.len())).is_some() {
                return Err(Error::format(path, FormatError::DuplicateName { name: t.name }));
            }
            let info = TensorInfo {
                name: t.name.clone(),
                dtype: Dtype::F32,
                shape: t.shape.clone(),
                begin: 0,
                end: t.byte_len(),
            };
            tensors.push((info, t));
        }
        let file_name =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Model {
            path: path.to_path_buf(),
            layout: Layout::Gguf,
            files: Vec::new(),
            index: None,
            owned: Vec::new(),
            raw: Some(Arc::new(RawFile { file_name, map, gguf, tensors })),
            warnings,
            view: Vec::new(),
            by_name,
        })
    }

    /// A model held in memory, built from (name, dtype, shape, little-endian
    /// bytes) of each tensor (a state dict from Python, say), reported under
    /// `name`. Each tensor's byte count must match its shape and dtype.
    pub fn from_tensors(
        name: &str,
        tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    ) -> Result<Model> {
        let path = Path::new(name);
        let mut owned = Vec::with_capacity(tensors.len());
        for (tensor, dtype, shape, data) in tensors {
            let expected =
                shape.iter().try_fold(dtype.size(), |n, &d| n.checked_mul(d)).ok_or_else(|| {
                    Error::format(
                        path,
                        FormatError::ShapeOverflow {
                            name: tensor.clone(),
                            shape: shape.iter().map(|&d| d as u64).collect(),
                        },
                    )
                })?;
            if expected != data.len() {
                return Err(Error::format(
                    path,
                    FormatError::SizeMismatch {
                        name: tensor,
                        shape: shape.iter().map(|&d| d as u64).collect(),
                        dtype: dtype.name(),
                        expected: expected as u64,
                        actual: data.len() as u64,
                    },
                ));
            }
            let info = TensorInfo { name: tensor, dtype, shape, begin: 0, end: data.len() };
            owned.push(OwnedTensor { info, data });
        }
        Model::from_owned(path, owned)
    }

    /// A model held entirely in memory (re-aligned suspects), reported under `path`.
    pub fn from_owned(path: &Path, tensors: Vec<OwnedTensor>) -> Result<Model> {
        let mut by_name = HashMap::new();
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.info.name.clone(), Slot::Owned(i)).is_some() {
                return Err(Error::format(
                    path,
                    FormatError::DuplicateName { name: t.info.name.clone() },
                ));
            }
        }
        Ok(Model {
            path: path.to_path_buf(),
            layout: Layout::Memory,
            files: Vec::new(),
            index: None,
            owned: tensors,
            raw: None,
            warnings: Vec::new(),
            view: Vec::new(),
            by_name,
        })
    }

    fn assemble(
        path: &Path,
        layout: Layout,
        files: Vec<ModelFile>,
        index: Option<ShardIndex>,
    ) -> Result<Model> {
        let mut by_name = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.header.tensors.iter().enumerate() {
                if by_name.insert(t.name.clone(), Slot::Mapped(fi, ti)).is_some() {
                    return Err(Error::format(
                        &f.path,
                        FormatError::DuplicateName { name: t.name.clone() },
                    ));
                }
            }
        }
        Ok(Model {
            path: path.to_path_buf(),
            layout,
            files,
            index,
            owned: Vec::new(),
            raw: None,
            warnings: Vec::new(),
            view: Vec::new(),
            by_name,
        })
    }

    /// All tensors, shard by shard, each in header order (a GGUF file's in
    /// file order).
    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'_>> {
        let mapped =
            self.files.iter().flat_map(|f| f.header.tensors.iter().map(move |t| tensor_ref(f, t)));
        let gguf = self.raw.iter().flat_map(|r| r.tensors.iter().map(move |t| gguf_ref(r, t)));
        let viewed = self.view.iter().map(view::Viewed::tensor_ref);
        mapped.chain(self.owned.iter().map(owned_ref)).chain(gguf).chain(viewed)
    }

    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        match *self.by_name.get(name)? {
            Slot::Mapped(fi, ti) => {
                let f = self.files.get(fi)?;
                f.header.tensors.get(ti).map(|t| tensor_ref(f, t))
            }
            Slot::Owned(i) => self.owned.get(i).map(owned_ref),
            Slot::Gguf(i) => {
                let r = self.raw.as_ref()?;
                r.tensors.get(i).map(|t| gguf_ref(r, t))
            }
            Slot::Viewed(i) => self.view.get(i).map(view::Viewed::tensor_ref),
        }
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.by_name.len()
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors().map(|t| t.byte_len() as u64).sum()
    }

    /// A short name for the model: its file name without `.safetensors`, or
    /// its directory name.
    pub fn display_name(&self) -> String {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_else(|| "model".into());
        let name = name.strip_suffix(".safetensors").map(str::to_string).unwrap_or(name);
        name.strip_suffix(".gguf").map(str::to_string).unwrap_or(name)
    }

    /// Names of every tensor, as a set.
    pub fn names(&self) -> HashSet<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

fn owned_ref(t: &OwnedTensor) -> TensorRef<'_> {
    TensorRef {
        name: &t.info.name,
        dtype: t.info.dtype,
        shape: &t.info.shape,
        info: &t.info,
        source: Source::Bytes(&t.data),
    }
}

fn gguf_ref<'a>(
    r: &'a RawFile,
    (info, t): &'a (TensorInfo, crate::gguf::LazyTensor),
) -> TensorRef<'a> {
    TensorRef {
        name: &info.name,
        dtype: info.dtype,
        shape: &info.shape,
        info,
        source: Source::Gguf(t, r.bytes()),
    }
}

/// Whether the file at `path` starts with the GGUF magic bytes.
fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = crate::io::open_regular(path)?;
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    Ok(n == 4 && &magic == crate::gguf::reader::MAGIC)
}

fn tensor_ref<'a>(f: &'a ModelFile, t: &'a TensorInfo) -> TensorRef<'a> {
    TensorRef {
        name: &t.name,
        dtype: t.dtype,
        shape: &t.shape,
        info: t,
        source: Source::Bytes(f.tensor_data(t)),
    }
}
