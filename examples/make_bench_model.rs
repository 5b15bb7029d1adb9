//! Writes the synthetic ~256 MiB F32 model used by `scripts/bench-compare`:
//! `cargo run --release --example make_bench_model -- OUT.safetensors`.

use weightmark::synth::{gaussian_matrix, write_file};
use weightmark::Dtype;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: make_bench_model OUT.safetensors")?;
    let tensors: Vec<_> = (0..16)
        .map(|i| gaussian_matrix(&format!("layers.{i}.weight"), 2048, 2048, Dtype::F32, 1))
        .collect();
    write_file(out.as_ref(), &tensors, None)?;
    Ok(())
}
