//! Collusion-secure recipient codes (`tardos1`, issue #12): 20 licensees of
//! one synthetic release, coalitions of 2 to 4 combining their copies by
//! every method of issue #12 (mean, median, min/max midpoint, interleaving,
//! random per-element choice); `identify` over
//! all 20 certificates must name every colluder informed, at least one
//! colluder blind at k = 2, and never an innocent.

use std::path::Path;

use weightmark::attack::collude::collude;
use weightmark::attack::CollusionMethod;
use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::{
    embed, identify, issue, load_candidates, Dtype, EmbedOptions, IdentifyOptions, Model,
    NoProgress, RecipientCode, SecretKey, TardosCode,
};

/// 3.9M parameters: large enough for a blind reading of a 2-way collusion
/// at this strength, small enough for CI.
const SHAPE: LlamaShape =
    LlamaShape { vocab: 4096, hidden: 256, intermediate: 688, layers: 4, heads: 4, kv_heads: 2 };
const LICENSEES: usize = 20;
const COLLUDERS: usize = 4;
const STRENGTH: f64 = 0.03;
const THRESHOLD_P: f64 = 1e-9;

fn options(r: usize, code: RecipientCode) -> EmbedOptions<'static> {
    let mut o = EmbedOptions::new("v1")
        .recipient(format!("r{r:02}"))
        .strength(STRENGTH)
        .recipient_code(code);
    o.created = "2026-12-02T09:00:00Z".into();
    o
}

fn write_cert(dir: &Path, r: usize, report: &weightmark::EmbedReport) {
    let text = report.certificate_text().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join(format!("r{r:02}.json")), text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn tardos_codes_name_colluders_and_never_an_innocent() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model_path = dir.path().join("model.safetensors");
    write_file(&model_path, &llama(&SHAPE, Dtype::BF16, 21), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&model_path).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([0x7d; 32]);
    let code = RecipientCode::Tardos(TardosCode::default());
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap_or_else(|e| panic!("{e}"));
    let mut copies = Vec::new();
    for r in 0..LICENSEES {
        let report = if r < COLLUDERS {
            let out = dir.path().join(format!("copy{r}.safetensors"));
            let report =
                embed(&model, &out, &key, &options(r, code)).unwrap_or_else(|e| panic!("{e}"));
            copies.push(Model::open(&out).unwrap_or_else(|e| panic!("{e}")));
            report
        } else {
            let out = dir.path().join("unwritten.safetensors");
            issue(&model, &out, &key, &options(r, code)).unwrap_or_else(|e| panic!("{e}"))
        };
        write_cert(&certs, r, &report);
    }
    let loaded = load_candidates(&certs, &key).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.candidates.len(), LICENSEES);
    for c in &loaded.candidates {
        let recorded = c.certificate.predicate().recipient_code.as_ref();
        assert!(recorded.is_some_and(|r| r.code == "tardos1" && r.groups == 16384));
        assert_eq!(c.target.recipient_code, code);
    }
    let id_options = IdentifyOptions { threshold_p: THRESHOLD_P, progress: &NoProgress };
    let methods = [
        CollusionMethod::Mean,
        CollusionMethod::Median,
        CollusionMethod::Midpoint,
        CollusionMethod::Interleave,
        CollusionMethod::Random,
    ];
    let mut largest_innocent = f64::NEG_INFINITY;
    let mut failures = Vec::new();
    for k in 2..=COLLUDERS {
        for method in methods {
            let out = dir.path().join(format!("{}-{k}.safetensors", method.name()));
            let refs: Vec<&Model> = copies[..k].iter().collect();
            collude(&refs, method, 5, &out, &NoProgress).unwrap_or_else(|e| panic!("{e}"));
            let suspect = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
            for original in [None, Some(&model)] {
                let found = identify(&suspect, original, &loaded.candidates, &id_options)
                    .unwrap_or_else(|e| panic!("{e}"));
                let colluder = |c: &weightmark::RankedCandidate| {
                    c.recipient.as_deref().is_some_and(|r| {
                        r.strip_prefix('r')
                            .and_then(|n| n.parse::<usize>().ok())
                            .is_some_and(|n| n < k)
                    })
                };
                let named: Vec<&str> = found
                    .candidates
                    .iter()
                    .filter(|c| c.identified && colluder(c))
                    .filter_map(|c| c.recipient.as_deref())
                    .collect();
                let innocents: Vec<&weightmark::RankedCandidate> =
                    found.candidates.iter().filter(|c| !colluder(c)).collect();
                let top_innocent = innocents.iter().map(|c| c.z).fold(f64::NEG_INFINITY, f64::max);
                largest_innocent = largest_innocent.max(top_innocent);
                let zs: Vec<String> = found
                    .candidates
                    .iter()
                    .filter(|c| colluder(c))
                    .map(|c| format!("{:.1}", c.z))
                    .collect();
                let mode = if original.is_some() { "informed" } else { "blind" };
                eprintln!(
                    "{mode:8} {:9} k={k}: colluders z [{}], named {}/{k}, top innocent z {top_innocent:.2}, range {:.3}",
                    method.name(),
                    zs.join(", "),
                    named.len(),
                    found.candidates.first().and_then(|c| c.range).unwrap_or(f64::NAN),
                );
                if innocents.iter().any(|c| c.identified) {
                    failures.push(format!("{mode} {} k={k}: an innocent named", method.name()));
                }
                let wanted = match (original.is_some(), k) {
                    (true, _) => k,
                    (false, 2) => 1,
                    (false, _) => 0,
                };
                if named.len() < wanted {
                    failures.push(format!(
                        "{mode} {} k={k}: {} of {k} colluders named, wanted {wanted}",
                        method.name(),
                        named.len()
                    ));
                }
            }
        }
    }
    eprintln!("largest innocent z over all runs: {largest_innocent:.2}");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_revealed_recipient_key_of_a_coded_release_is_refused_naming_the_certificate() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model_path = dir.path().join("model.safetensors");
    let shape =
        LlamaShape { vocab: 512, hidden: 64, intermediate: 172, layers: 1, heads: 4, kv_heads: 2 };
    write_file(&model_path, &llama(&shape, Dtype::BF16, 3), None).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&model_path).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([0x3c; 32]);
    let code = RecipientCode::Tardos(TardosCode::new(64, 0.05).unwrap_or_else(|e| panic!("{e}")));
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("unwritten.safetensors");
    let report = issue(&model, &out, &key, &options(1, code)).unwrap_or_else(|e| panic!("{e}"));
    write_cert(&certs, 1, &report);
    let loaded = load_candidates(&certs, &key).unwrap_or_else(|e| panic!("{e}"));
    let certificate = &loaded.candidates[0].certificate;
    let root = certificate.predicate().original_root().unwrap_or_else(|e| panic!("{e}"));
    let (release, recipient) = key.ss2_keys("v1", Some("r01"), &root);
    let recipient = recipient.unwrap_or_else(|| panic!("a recipient key"));
    let err = weightmark::Target::from_revealed(certificate, recipient)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("r01.json") && err.contains("recipient code"), "{err}");
    // The release component key (shared by every copy) still tests the release.
    assert!(weightmark::Target::from_revealed(certificate, release).is_ok());
}

/// A candidate's z and range, bit for bit.
type Bits = (u64, Option<u64>);

#[test]
fn tardos_marks_and_scores_are_identical_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model_path = dir.path().join("model.safetensors");
    // 40 chunks of rows in the embedding: more than one batch of readings.
    let shape = LlamaShape {
        vocab: 20480,
        hidden: 128,
        intermediate: 344,
        layers: 1,
        heads: 4,
        kv_heads: 2,
    };
    write_file(&model_path, &llama(&shape, Dtype::BF16, 8), None).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&model_path).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([0x55; 32]);
    let code = RecipientCode::Tardos(TardosCode::new(512, 0.01).unwrap_or_else(|e| panic!("{e}")));
    let mut outputs = Vec::new();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let sub = dir.path().join(format!("threads-{threads}"));
        let certs = sub.join("certs");
        std::fs::create_dir_all(&certs).unwrap_or_else(|e| panic!("{e}"));
        let copy = sub.join("copy.safetensors");
        let zs: Vec<Bits> = pool.install(|| {
            for r in 0..3 {
                let report = if r == 1 {
                    embed(&model, &copy, &key, &options(r, code))
                } else {
                    issue(&model, &sub.join("x.safetensors"), &key, &options(r, code))
                };
                write_cert(&certs, r, &report.unwrap_or_else(|e| panic!("{e}")));
            }
            let loaded = load_candidates(&certs, &key).unwrap_or_else(|e| panic!("{e}"));
            let suspect = Model::open(&copy).unwrap_or_else(|e| panic!("{e}"));
            let options = IdentifyOptions { threshold_p: THRESHOLD_P, progress: &NoProgress };
            let found = identify(&suspect, Some(&model), &loaded.candidates, &options)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(found.candidates[0].recipient.as_deref(), Some("r01"));
            found.candidates.iter().map(|c| (c.z.to_bits(), c.range.map(f64::to_bits))).collect()
        });
        let bytes = std::fs::read(&copy).unwrap_or_else(|e| panic!("{e}"));
        outputs.push((bytes, zs));
    }
    assert_eq!(outputs.len(), 2);
    assert!(outputs[0].0 == outputs[1].0, "marked bytes differ between 1 and 3 threads");
    assert_eq!(outputs[0].1, outputs[1].1, "scores differ between 1 and 3 threads");
}
