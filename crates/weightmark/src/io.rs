//! Small bounded reads of text inputs (indexes, keys, certificates).

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Reads at most `cap` bytes of `path`; a longer input (even a pipe or a
/// device that reports no length) is an error rather than an unbounded read.
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
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
