//! Writing to stdout without panicking when the reader goes away.
//!
//! `println!` panics on a closed pipe (`weightmark inspect m | head`); the
//! [`outln!`] macro writes through a locked stdout and turns a closed pipe
//! into [`StdoutClosed`], which `main` treats as a quiet success. Closed pipes
//! on any other file are real errors.

use std::fmt;
use std::io::Write;

/// Stdout was closed by its reader.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes one line to stdout. Commands escape the input text they print
/// ([`crate::format::safe`]); as a second guard, no control character other
/// than a line break ever reaches the terminal from here.
pub fn line(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let text = crate::format::safe_lines(&fmt::format(args));
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// `println!` that returns an error instead of panicking (use with `?`-able
/// return types).
#[macro_export]
macro_rules! outln {
    () => { $crate::output::line(format_args!(""))? };
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*))? };
}
