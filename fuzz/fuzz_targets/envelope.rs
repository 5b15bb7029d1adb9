//! A certificate or report: DSSE envelope, signature, statement; and the bytes as a signed payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = weightmark::fuzzing::envelope(data);
});
