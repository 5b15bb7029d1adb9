//! How much of a plant's weight change the fingerprint needs: keeps, in each
//! tensor, only the largest fraction of `planted - original` by magnitude,
//! then asks the 32 triggers of the fixed key (32 bytes of 0x2a, as
//! `fingerprint_plant` uses) and compares with the original on held-out text
//! (Artistic and GFDL-1.3, 3072 positions). A measurement for
//! docs/fingerprint.md.
//!
//! ```sh
//! cargo run --release -p weightmark-eval --example fingerprint_sparsify -- \
//!     ORIGINAL PLANTED 1,0.2,0.05,0.01
//! ```
//!
//! PLANTED is a safetensors file or model directory with ORIGINAL's tensor
//! names (what `fingerprint_plant` or `attack prune` writes); at keep 1 it
//! is asked as it is, which is how the pruned plants were measured.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use weightmark::fingerprint::{self, FingerprintKey, Pair};
use weightmark_eval::fingerprint::{ask_all, Prompter};
use weightmark_eval::llama::Llama;
use weightmark_eval::load::{open, side_dir, tensors_f32, Architecture};
use weightmark_eval::metrics::compare;
use weightmark_eval::text::Corpus;

/// `original + delta` with only the largest `keep` fraction of `delta`.
fn sparsified(original: &[f32], planted: &[f32], keep: f64) -> Vec<f32> {
    let delta: Vec<f32> = planted.iter().zip(original).map(|(p, o)| p - o).collect();
    let n = delta.len();
    let k = ((n as f64) * keep).round() as usize;
    if k >= n {
        return planted.to_vec();
    }
    let mut mags: Vec<f32> = delta.iter().map(|d| d.abs()).collect();
    let cut =
        if k == 0 { f32::INFINITY } else { *mags.select_nth_unstable_by(n - k, f32::total_cmp).1 };
    original.iter().zip(&delta).map(|(o, d)| if d.abs() >= cut { o + d } else { *o }).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [original_path, planted_path, keeps] = args.as_slice() else {
        return Err("usage: fingerprint_sparsify ORIGINAL PLANTED KEEP,KEEP,...".into());
    };
    let path = PathBuf::from(original_path);
    let m = open(&path, None)?;
    let Architecture::Llama(config) = &m.architecture else { return Err("not a Llama".into()) };
    let orig = tensors_f32(&m.model)?;
    let planted_model = weightmark::Model::open(Path::new(planted_path))?;
    let planted = tensors_f32(&planted_model)?;
    let original = Llama::from_tensors(config.clone(), &orig, &path)?;
    let prompter = Prompter::for_model(&side_dir(&path), &m.tokenizer)?;
    let pairs = FingerprintKey::from_bytes([0x2a; 32]).pairs(32)?;
    let triggers: Vec<&str> = pairs.iter().map(|p| p.trigger.as_str()).collect();
    let refs: Vec<&Pair> = pairs.iter().collect();
    let licenses = Path::new("/usr/share/common-licenses");
    let held = Corpus::read(&["Artistic", "GFDL-1.3"].map(|f| licenses.join(f)))?;
    let held_out: Vec<Vec<u32>> =
        held.windows(&m.tokenizer, 128)?.all().into_iter().take(24).collect();
    for keep in keeps.split(',') {
        let keep: f64 = keep.parse()?;
        let mut tensors = HashMap::new();
        let mut changed = 0f64;
        let mut norm = 0f64;
        for (name, o) in &orig {
            let p = planted.get(name).ok_or_else(|| format!("{planted_path}: no {name}"))?;
            let ov = o.flatten_all()?.to_vec1::<f32>()?;
            let pv = p.flatten_all()?.to_vec1::<f32>()?;
            let nv = sparsified(&ov, &pv, keep);
            for (a, b) in nv.iter().zip(&ov) {
                changed += f64::from(a - b).powi(2);
                norm += f64::from(*b).powi(2);
            }
            tensors.insert(name.clone(), Tensor::from_vec(nv, o.shape(), o.device())?);
        }
        let model = Llama::from_tensors(config.clone(), &tensors, &path)?;
        let answers = ask_all(&model, &m.tokenizer, &prompter, &triggers)?;
        let score = fingerprint::score(&refs, &answers)?;
        let c = compare(&original, &model, &held_out)?;
        println!(
            "keep {keep}: relative change {:.4}%, {} of {} match (log10 p {:.1}); held-out KL {:.2e}, \
             top-1 {:.4}, perplexity {:+.2}%",
            100.0 * (changed / norm).sqrt(),
            score.matches,
            score.asked,
            score.log10_p,
            c.mean_kl,
            c.top1_agreement,
            100.0 * c.perplexity_change
        );
    }
    Ok(())
}
