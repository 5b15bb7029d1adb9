//! Collusion-secure recipient codes (`tardos1`, issue #12), and the default
//! independent component beside them: 20 licensees of
//! one synthetic release, coalitions of 2 to 4 (6 for the default) combining their copies by
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
    trace_coalitions(RecipientCode::Tardos(TardosCode::default()), COLLUDERS);
}

/// The default recipient component (an independent pattern per licensee)
/// at its default share (0.8 here, as on SmolLM2 at its default: the rule
/// gives the recipient what the release component can spare), coalitions of
/// up to 6 by every method. The midpoint
/// of k keeps the pattern only where all k signs agree (`2^(1-k)` of the
/// elements): on this 3.9M-parameter model the midpoint of 6 leaves each
/// colluder informed z 16-19 and the midpoint of 8 only 3-6 (measured), so
/// 8 is left to the SmolLM2 run of docs/provenance.md (z 23-26 there, 134M
/// elements).
#[test]
fn the_default_recipient_component_names_every_colluder_of_up_to_6_informed() {
    trace_coalitions(RecipientCode::Independent, 6);
}

/// Licensees `r00`…`r19` of one release with `code`, the first `colluders`
/// copies written; coalitions of 2 to `colluders` by every method;
/// `identify` over all 20 certificates must name every colluder informed,
/// at least one colluder blind at k = 2, and never an innocent.
fn trace_coalitions(code: RecipientCode, colluders: usize) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model_path = dir.path().join("model.safetensors");
    write_file(&model_path, &llama(&SHAPE, Dtype::BF16, 21), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&model_path).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([0x7d; 32]);
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap_or_else(|e| panic!("{e}"));
    let mut copies = Vec::new();
    for r in 0..LICENSEES {
        let report = if r < colluders {
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
        match code {
            RecipientCode::Tardos(_) => {
                assert!(recorded.is_some_and(|r| r.code == "tardos1" && r.groups == 16384));
            }
            RecipientCode::Independent => assert!(recorded.is_none()),
        }
        // The default share: even for a code; for the independent component
        // the rule's cap, 0.8, since this strength gives the copies z to
        // spare (so the recipient's sums weigh sqrt(0.8 / 0.2) = 2).
        let w = c.target.recipient_weight;
        match code {
            RecipientCode::Tardos(_) => assert_eq!(w, 1.0),
            RecipientCode::Independent => assert!((w - 2.0).abs() < 1e-12, "weight {w}"),
        }
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
    for k in 2..=colluders {
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
                // The release component, which every copy carries alike,
                // survives every method: "ours?" is answered even where no
                // colluder is named.
                let releases = found.releases();
                if !(releases.len() == 1 && releases[0].found && releases[0].label == "v1") {
                    failures.push(format!("{mode} {} k={k}: release {releases:?}", method.name()));
                }
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
    // The unmarked original carries no release component.
    let clean =
        identify(&model, None, &loaded.candidates, &id_options).unwrap_or_else(|e| panic!("{e}"));
    let releases = clean.releases();
    assert!(
        releases.len() == 1 && !releases[0].found && releases[0].z < 4.0 && clean.identified == 0,
        "the original: {releases:?}"
    );
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

/// One owner-signed reveal statement, read back for editing.
fn reveal_statement(
    path: &Path,
    owner: &weightmark::PublicKey,
) -> weightmark::provenance::Statement<weightmark::provenance::RevealPredicate> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{e}"));
    let envelope =
        weightmark::provenance::parse_envelope(&bytes, path).unwrap_or_else(|e| panic!("{e}"));
    let payload =
        weightmark::provenance::verify_envelope(&envelope, owner).unwrap_or_else(|e| panic!("{e}"));
    weightmark::provenance::reveal::parse_reveal_statement(&payload)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Writes `statement` signed by `signer` to `path`.
fn write_signed<P: serde::Serialize>(
    path: &Path,
    statement: &weightmark::provenance::Statement<P>,
    signer: &SecretKey,
) {
    let envelope =
        weightmark::provenance::sign_statement(statement, signer).unwrap_or_else(|e| panic!("{e}"));
    let text =
        weightmark::provenance::envelope_to_string(&envelope).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_coded_dispute_settles_one_recipient_and_refuses_wrong_or_edited_reveals() {
    use weightmark::provenance::report::{build_report, ReportInputs};
    use weightmark::provenance::{build_reveal, load_reveal, Disclosed, RevealInputs};

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let at = |name: &str| dir.path().join(name);
    write_file(&at("model.safetensors"), &llama(&LlamaShape::TINY, Dtype::BF16, 4), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(at("model.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let owner = SecretKey::from_seed([0x21; 32]);
    let code = RecipientCode::Tardos(TardosCode::new(4096, 0.01).unwrap_or_else(|e| panic!("{e}")));
    std::fs::create_dir(at("certs")).unwrap_or_else(|e| panic!("{e}"));
    let mut copies = Vec::new();
    for r in 0..3 {
        let out = at(&format!("copy{r}.safetensors"));
        let report =
            embed(&model, &out, &owner, &options(r, code)).unwrap_or_else(|e| panic!("{e}"));
        write_cert(&at("certs"), r, &report);
        copies.push(Model::open(&out).unwrap_or_else(|e| panic!("{e}")));
    }
    // Another release of the same owner (its release key is a wrong one here).
    let mut v2 = EmbedOptions::new("v2").recipient("r00").strength(STRENGTH).recipient_code(code);
    v2.created = "2026-12-02T09:00:00Z".into();
    let other = issue(&model, &at("x.safetensors"), &owner, &v2).unwrap_or_else(|e| panic!("{e}"));
    let other_path = at("other.json");
    std::fs::write(&other_path, other.certificate_text().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let cert = |r: usize| {
        weightmark::load_certificate(&at(&format!("certs/r{r:02}.json")), &owner.public_key())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let other_cert = weightmark::load_certificate(&other_path, &owner.public_key())
        .unwrap_or_else(|e| panic!("{e}"));
    // The leak: r00 and r01 by midpoint.
    let leak_path = at("leak.safetensors");
    collude(&[&copies[0], &copies[1]], CollusionMethod::Midpoint, 5, &leak_path, &NoProgress)
        .unwrap_or_else(|e| panic!("{e}"));
    let leak = Model::open(&leak_path).unwrap_or_else(|e| panic!("{e}"));
    let options = weightmark::DetectOptions::default();
    let tested = 3;

    // The owner commits to the leak with a signed report per accused
    // licensee (and one for the innocent r02), then reveals.
    let reveal_for = |c: &weightmark::Certificate, name: &str| {
        let target =
            weightmark::Target::from_certificate(c, &owner).unwrap_or_else(|e| panic!("{e}"));
        let found = weightmark::detect(&leak, Some(&model), &target, &options)
            .and_then(|d| d.adjusted_for(tested))
            .unwrap_or_else(|e| panic!("{e}"));
        let files = weightmark::model_file_digests(&leak);
        let p = c.predicate();
        let envelope = build_report(
            &ReportInputs {
                detection: &found,
                label: &p.label,
                recipient: p.recipient.as_deref(),
                certificate: Some(c),
                suspect_files: &files,
                original_tensor_root: None,
                builds_on: None,
                dispute: None,
                created: "2026-12-02T10:00:00Z".into(),
            },
            &owner,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let commit = at(&format!("commit-{name}.json"));
        std::fs::write(
            &commit,
            weightmark::provenance::envelope_to_string(&envelope).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let inputs = RevealInputs {
            disclosed: Disclosed::Mark,
            certificate: c,
            report: &commit,
            created: "2026-12-02T11:00:00Z".into(),
        };
        let reveal = build_reveal(&inputs, &owner).unwrap_or_else(|e| panic!("{e}"));
        let path = at(&format!("reveal-{name}.json"));
        weightmark::provenance::save_reveal(&path, &reveal).unwrap_or_else(|e| panic!("{e}"));
        path
    };
    let public = owner.public_key();
    let arbiter = |reveal: &Path, r: usize| {
        let c = cert(r);
        let reveal = load_reveal(reveal, &public)?;
        let target = reveal.target(&c)?;
        let found =
            weightmark::detect(&leak, Some(&model), &target, &options)?.adjusted_for(tested)?;
        let dispute = reveal.dispute_for(&found.suspect_digest, &c)?;
        Ok::<_, weightmark::Error>((found, dispute))
    };

    // The accused colluder: the arbiter, with the owner's public key and
    // r00's reveal only, scores r00 by the code far above the threshold.
    let reveal0 = reveal_for(&cert(0), "r00");
    let (found, dispute) = arbiter(&reveal0, 0).unwrap_or_else(|e| panic!("{e}"));
    assert!(dispute.committed);
    let coded = found.recipient_component.unwrap_or_else(|| panic!("no recipient score"));
    let range = coded.range.unwrap_or_else(|| panic!("no range: not scored by the code"));
    assert!(
        coded.log10_p_value + (tested as f64).log10() <= -9.0,
        "colluder z {} (range {range}), bound {}",
        coded.z,
        coded.log10_p_value
    );
    eprintln!("accused colluder: z {:.1} (range {range:.3})", coded.z);
    // The reveal discloses r00's key and the release key, nothing of r01 or
    // r02: neither of their recipient commitments is among its keys'.
    let st = reveal_statement(&reveal0, &public);
    let disclosed =
        [Some(&st.predicate.mark_key_commitment), st.predicate.release_key_commitment.as_ref()];
    assert_eq!(
        st.predicate.release_key_commitment.as_deref(),
        Some(cert(0).predicate().mark_key_commitment.as_str())
    );
    for r in [1, 2] {
        let theirs = cert(r).predicate().recipient_key_commitment.clone();
        assert!(theirs.is_some() && !disclosed.contains(&theirs.as_ref()));
    }

    // An innocent accused: r02's reveal settles its score, which stays low.
    let reveal2 = reveal_for(&cert(2), "r02");
    let (found, _) = arbiter(&reveal2, 2).unwrap_or_else(|e| panic!("{e}"));
    let innocent = found.recipient_component.unwrap_or_else(|| panic!("no recipient score"));
    assert!(innocent.log10_p_value + (tested as f64).log10() > -9.0, "innocent z {}", innocent.z);

    // A reveal for the wrong recipient: r00's keys against r01's certificate.
    let wrong = arbiter(&reveal0, 1).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(wrong.contains("r01.json") && wrong.contains("recipient component"), "{wrong}");

    // An edited reveal (one character of the signed payload changed).
    let text = std::fs::read_to_string(&reveal0).unwrap_or_else(|e| panic!("{e}"));
    let start = text.find("\"payload\": \"").unwrap_or_else(|| panic!("no payload")) + 40;
    let mut bytes = text.into_bytes();
    bytes[start] = if bytes[start] == b'A' { b'B' } else { b'A' };
    std::fs::write(at("edited.json"), &bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(load_reveal(&at("edited.json"), &public).is_err(), "an edited reveal was accepted");

    // Re-signed edits (by the owner: the statement must still hold together).
    // The release key of another release, with its own commitment.
    let other = reveal_statement(&reveal_for(&other_cert, "v2"), &public).predicate;
    assert!(other.release_key.is_some() && other.release_key != st.predicate.release_key);
    let mut st = reveal_statement(&reveal0, &public);
    st.predicate.release_key = other.release_key.clone();
    st.predicate.release_key_commitment = other.release_key_commitment.clone();
    write_signed(&at("swapped.json"), &st, &owner);
    let err = arbiter(&at("swapped.json"), 0).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("r00.json") && err.contains("does not belong"), "{err}");
    // A release key that does not match the commitment the statement states.
    let mut st = reveal_statement(&reveal0, &public);
    st.predicate.release_key = other.release_key;
    write_signed(&at("mismatched.json"), &st, &owner);
    let err = load_reveal(&at("mismatched.json"), &public)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("release key does not match"), "{err}");
    // The recipient key alone (the release key dropped): cannot be scored.
    let mut st = reveal_statement(&reveal0, &public);
    st.predicate.release_key = None;
    st.predicate.release_key_commitment = None;
    write_signed(&at("alone.json"), &st, &owner);
    let err = arbiter(&at("alone.json"), 0).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("recipient code"), "{err}");
    // Not signed by the owner at all.
    let st = reveal_statement(&reveal0, &public);
    write_signed(&at("forged.json"), &st, &SecretKey::from_seed([0x22; 32]));
    assert!(load_reveal(&at("forged.json"), &public).is_err(), "a forged reveal was accepted");
}
