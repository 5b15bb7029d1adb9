//! The library in one page: make a key, mark a synthetic model, find the mark
//! blind and informed, and check that another key finds nothing.
//!
//! `cargo run --release --example mark_and_find`

use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::{
    detect, embed, DetectOptions, Dtype, EmbedOptions, Model, NoProgress, SecretKey, Selection,
    Target,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let original_path = dir.path().join("original.safetensors");
    let shape = LlamaShape {
        vocab: 8192,
        hidden: 384,
        intermediate: 1152,
        layers: 8,
        heads: 6,
        kv_heads: 2,
    };
    write_file(&original_path, &llama(&shape, Dtype::BF16, 1), None)?;

    let owner = SecretKey::generate()?;
    let original = Model::open(&original_path)?;
    let marked_path = dir.path().join("marked.safetensors");
    let report = embed(
        &original,
        &marked_path,
        &owner,
        &EmbedOptions {
            scheme: weightmark::Scheme::Ss1,
            strength: Some(weightmark::DEFAULT_STRENGTH),
            label: "example".into(),
            recipient: Some("licensee-1".into()),
            selection: Selection::Default,
            created: weightmark::now_rfc3339(),
            progress: &NoProgress,
            overwrite: weightmark::Overwrite::Refuse,
            allocation: weightmark::Allocation::Uniform,
            recipient_code: weightmark::RecipientCode::Independent,
            recipient_share: None,
        },
    )?;
    println!(
        "marked {} elements, relative change {:.3}%",
        report.blind.elements,
        100.0 * report.fidelity.relative_rms_change()
    );

    let suspect = Model::open(&marked_path)?;
    let options =
        DetectOptions { threshold_p: weightmark::DEFAULT_THRESHOLD_P, progress: &NoProgress };
    let mark_key = owner.mark_key("example", Some("licensee-1"));
    let target = Target::ss1(mark_key.clone(), None);
    let blind = detect(&suspect, None, &target, &options)?;
    let informed = detect(&suspect, Some(&original), &target, &options)?;
    let stranger = SecretKey::generate()?.mark_key("example", Some("licensee-1"));
    let wrong = detect(&suspect, None, &Target::ss1(stranger.clone(), None), &options)?;
    println!("blind z {:.1} (found: {})", blind.z, blind.detected);
    println!("informed z {:.0} (found: {})", informed.z, informed.detected);
    println!("another key: z {:.2} (found: {})", wrong.z, wrong.detected);
    Ok(())
}
