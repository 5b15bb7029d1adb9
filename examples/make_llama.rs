//! Writes a synthetic Llama-shaped model (for scripts and experiments), one
//! tensor at a time, so a 7B-shaped model needs a few hundred megabytes of
//! memory, not the model's size.
//!
//! `cargo run --release --example make_llama -- OUT VOCAB HIDDEN INTERMEDIATE LAYERS HEADS KV_HEADS DTYPE [SEED] [SHARD_BYTES]`
//!
//! An OUT ending in `.safetensors` is one file (the bytes of
//! `synth::write_file(OUT, &synth::llama(..), None)`); any other OUT is a new
//! directory of shards of at most SHARD_BYTES (default 4 GB) with a
//! `model.safetensors.index.json` and a `config.json`.

use weightmark::synth::{write_llama_file, write_llama_sharded, LlamaShape};
use weightmark::Dtype;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 8 {
        return Err("usage: make_llama OUT VOCAB HIDDEN INTERMEDIATE LAYERS HEADS KV_HEADS DTYPE \
                    [SEED] [SHARD_BYTES]"
            .into());
    }
    let n = |i: usize| a[i].parse::<usize>();
    let shape = LlamaShape {
        vocab: n(1)?,
        hidden: n(2)?,
        intermediate: n(3)?,
        layers: n(4)?,
        heads: n(5)?,
        kv_heads: n(6)?,
    };
    let dtype = Dtype::from_name(&a[7]).ok_or("DTYPE is one of F32, F16, BF16, F64")?;
    let seed = a.get(8).map(|s| s.parse::<u64>()).transpose()?.unwrap_or(1);
    let shard_bytes = a.get(9).map(|s| s.parse::<u64>()).transpose()?.unwrap_or(4_000_000_000);
    let out = std::path::Path::new(&a[0]);
    if a[0].ends_with(".safetensors") {
        write_llama_file(out, &shape, dtype, seed)?;
    } else {
        let files = write_llama_sharded(out, &shape, dtype, seed, shard_bytes)?;
        println!("{}: {} shards", a[0], files.len());
    }
    println!("{}: {} parameters", a[0], shape.parameters());
    Ok(())
}
