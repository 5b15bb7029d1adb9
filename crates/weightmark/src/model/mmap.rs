//! Read-only memory maps of model files: the one place that needs `unsafe`.

#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Maps `file` (opened from `path`) read-only into memory.
pub(crate) fn map(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: the map is read-only and lives no longer than the `Model` that
    // owns it and the views of that model that share it (`Model::view`). Memory-mapped files are undefined behaviour in Rust only if the
    // file is modified or truncated while mapped; weightmark never writes its
    // inputs (outputs go to a temporary file that is then renamed, and an
    // output path equal to an input is refused), and the CLI documents that an
    // input must not be modified by another program while it is being read.
    // The one file weightmark maps that it wrote itself, a re-aligned
    // suspect's spill file (`view::SpillWriter`), is unnamed and written
    // only before it is mapped.
    unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e))
}
