//! How many of `ss2`'s canonical positions an edit moved: residual channels
//! (by magnitude alone and through the residual sketch), MLP neurons and
//! attention heads (through their sketches). For edits that permute nothing
//! (the mark, drift, fine-tuning), so every move is a lost position. The
//! measurement behind docs/ss2.md's "Stability".
//!
//! ```sh
//! cargo run --release -p weightmark --example canonical_moves -- ORIGINAL SUSPECT...
//! ```

use weightmark::{canonical_moves, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [original, suspects @ ..] = args.as_slice() else {
        return Err("usage: canonical_moves ORIGINAL SUSPECT...".into());
    };
    let original = Model::open(original)?;
    for path in suspects {
        let m = canonical_moves(&original, &Model::open(path)?);
        println!(
            "{path}: residual channels moved {} by magnitude, {} by sketch ({} flipped) of {}; \
             neurons moved {} of {}; heads moved {} of {}",
            m.residual_moved_by_magnitude,
            m.residual_moved_by_sketch,
            m.residual_flipped,
            m.residual_channels,
            m.neurons_moved,
            m.neurons,
            m.heads_moved,
            m.heads
        );
    }
    Ok(())
}
