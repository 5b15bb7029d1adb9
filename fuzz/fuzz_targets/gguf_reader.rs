//! A GGUF file: header, metadata, tensor infos, then every tensor dequantized and renamed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = weightmark::fuzzing::gguf(data);
});
