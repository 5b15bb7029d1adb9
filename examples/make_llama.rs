//! Writes a synthetic Llama-shaped model (for scripts and experiments).
//!
//! `cargo run --release --example make_llama -- OUT.safetensors VOCAB HIDDEN INTERMEDIATE LAYERS HEADS KV_HEADS DTYPE [SEED]`

use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::Dtype;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 8 {
        return Err(
            "usage: make_llama OUT VOCAB HIDDEN INTERMEDIATE LAYERS HEADS KV_HEADS DTYPE [SEED]"
                .into(),
        );
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
    write_file(a[0].as_ref(), &llama(&shape, dtype, seed), None)?;
    println!("{}: {} parameters", a[0], shape.parameters());
    Ok(())
}
