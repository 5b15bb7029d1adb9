//! Progress reporting without printing: the library calls a [`Progress`]
//! implementation, the CLI draws it (a bar on a terminal, nothing otherwise).

/// Receives progress of long operations, in bytes of tensor data.
pub trait Progress: Sync {
    /// A phase starts, covering `total` bytes.
    fn start(&self, _phase: &str, _total: u64) {}
    /// `bytes` more bytes are done.
    fn advance(&self, _bytes: u64) {}
    /// The phase ended.
    fn finish(&self) {}
}

/// Ignores all progress.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
