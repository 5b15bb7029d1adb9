//! The collusion attack used by `scripts/collusion-experiment`: writes the
//! element-wise average of several copies of a model.
//!
//! `cargo run --release --example average_models -- OUT COPY1 COPY2 [COPY3 ...]`

use weightmark::attack::average_models;
use weightmark::{Model, NoProgress};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, copies) = args.split_first().ok_or("usage: average_models OUT COPY1 COPY2 [...]")?;
    if copies.len() < 2 {
        return Err("give at least two copies to average".into());
    }
    let models = copies.iter().map(Model::open).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&Model> = models.iter().collect();
    let report = average_models(&refs, out.as_ref(), &NoProgress)?;
    println!(
        "averaged {} copies into {out}: {:.3}% RMS away from the first copy",
        copies.len(),
        100.0 * report.damage.relative_rms_change()
    );
    Ok(())
}
