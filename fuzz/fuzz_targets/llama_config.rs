//! A config.json beside a tiny Llama model: head counts, attention geometry, informed re-alignment.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = weightmark::fuzzing::llama_config(data);
});
