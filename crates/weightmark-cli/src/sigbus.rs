//! A model file truncated (or rewritten in place) while weightmark has it
//! memory-mapped makes the next read of a page past its new end raise SIGBUS.
//! Left alone, the process dies with no message; this handler prints one line
//! saying so and exits 2. Unix only: elsewhere the platform reports it.

/// The line printed on SIGBUS (the file cannot be named from the handler).
#[cfg(unix)]
const MESSAGE: &[u8] = b"weightmark: error: a model file was truncated or rewritten while being \
read (SIGBUS); nothing was written under a final name, and the next run removes the temporaries\n";

/// Installs the SIGBUS handler.
#[cfg(unix)]
pub fn report_truncated_models() {
    // SAFETY: the action calls only write(2) and _exit(2), both
    // async-signal-safe, on a static buffer; it never returns, so the
    // faulting access is not retried.
    #[allow(unsafe_code)]
    let _ = unsafe {
        signal_hook::low_level::register(signal_hook::consts::SIGBUS, || {
            libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
            signal_hook::low_level::exit(2);
        })
    };
}

/// Nothing to install elsewhere.
#[cfg(not(unix))]
pub fn report_truncated_models() {}
