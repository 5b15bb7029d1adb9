//! A safetensors file (header, then every tensor decoded) and a shard index, from the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = weightmark::fuzzing::safetensors(data);
});
