//! One negative test per variant of the library's `Error`: each user mistake
//! reaches the caller as its own variant with a message naming the file (or
//! the parameter), and an internal failure (a panicking worker) is never
//! dressed up as a problem with the input.

mod common;

use std::path::Path;

use weightmark::synth::{gaussian_matrix, write_file};
use weightmark::{
    apply_attack, embed, load_certificate, Attack, Dtype, EmbedOptions, Error, Model, NoProgress,
    SecretKey, Selection, Target,
};

fn ok<T>(r: weightmark::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A 256 x 512 f32 model and its directory.
fn model(dir: &Path) -> Model {
    let path = dir.join("m.safetensors");
    ok(write_file(&path, &[gaussian_matrix("w", 256, 512, Dtype::F32, 1)], None));
    ok(Model::open(&path))
}

/// A marked copy and its certificate file.
fn marked(dir: &Path, key: &SecretKey) -> std::path::PathBuf {
    let m = model(dir);
    let report = ok(embed(&m, &dir.join("marked.safetensors"), key, &EmbedOptions::new("v1")));
    let cert = dir.join("marked.cert.json");
    ok(weightmark::write_atomic(&cert, &ok(report.certificate_text())));
    cert
}

#[test]
fn io_names_the_missing_file() {
    let err = Model::open("/nonexistent/model.safetensors").err();
    assert!(
        matches!(&err, Some(Error::Io { path, .. }) if path.ends_with("model.safetensors")),
        "{err:?}"
    );
}

#[test]
fn format_names_the_file_and_the_problem() {
    let dir = common::Scene::new();
    let path = dir.path("t.safetensors");
    std::fs::write(&path, [1u8, 2, 3]).unwrap_or_else(|e| panic!("{e}"));
    let err = Model::open(&path).err().map(|e| (matches!(e, Error::Format { .. }), e.to_string()));
    let (is_format, text) = err.unwrap_or_default();
    assert!(is_format && text.contains("t.safetensors") && text.contains("too short"), "{text}");
}

#[test]
fn not_a_model_for_a_directory_without_weights() {
    let dir = common::Scene::new();
    let err = Model::open(dir.dir.path()).err();
    assert!(matches!(err, Some(Error::NotAModel { .. })), "{err:?}");
}

#[test]
fn key_file_for_a_malformed_key_never_quotes_it() {
    let dir = common::Scene::new();
    let path = dir.path("bad.key");
    std::fs::write(&path, "SECRET-LOOKING-LINE\n").unwrap_or_else(|e| panic!("{e}"));
    let err = SecretKey::load(&path).err();
    let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(matches!(err, Some(Error::KeyFile { .. })), "{text}");
    assert!(text.contains("bad.key") && !text.contains("SECRET-LOOKING-LINE"), "{text}");
}

#[test]
fn key_exists_refuses_to_overwrite_a_key() {
    let dir = common::Scene::new();
    let key = SecretKey::from_seed([1; 32]);
    let (secret, public) = (dir.path("k.key"), dir.path("k.pub"));
    ok(key.save(&secret, &public, "2026-01-01T00:00:00Z"));
    let err = key.save(&secret, &public, "2026-01-01T00:00:00Z").err();
    assert!(matches!(err, Some(Error::KeyExists { .. })), "{err:?}");
}

#[test]
fn certificate_for_a_file_that_is_not_one() {
    let dir = common::Scene::new();
    let path = dir.path("c.json");
    std::fs::write(&path, "{}").unwrap_or_else(|e| panic!("{e}"));
    let err = load_certificate(&path, &SecretKey::from_seed([1; 32]).public_key()).err();
    let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(matches!(err, Some(Error::Certificate { .. })) && text.contains("c.json"), "{text}");
}

#[test]
fn bad_signature_for_an_edited_payload() {
    let dir = common::Scene::new();
    let key = SecretKey::from_seed([2; 32]);
    let cert = marked(dir.dir.path(), &key);
    let text = std::fs::read_to_string(&cert).unwrap_or_default();
    let mut envelope = ok(weightmark::provenance::parse_envelope(text.as_bytes(), &cert));
    envelope.payload = envelope.payload.replacen('e', "f", 1);
    let err = weightmark::provenance::verify_envelope(&envelope, &key.public_key()).err();
    assert!(matches!(err, Some(Error::BadSignature { .. })), "{err:?}");
}

#[test]
fn wrong_key_for_a_certificate_made_with_another_mark_key() {
    let dir = common::Scene::new();
    let key = SecretKey::from_seed([3; 32]);
    let cert = ok(load_certificate(&marked(dir.dir.path(), &key), &key.public_key()));
    let other = SecretKey::from_seed([4; 32]).mark_key("v1", None);
    assert!(matches!(cert.check_mark_key(&other), Err(Error::WrongKey { .. })));
    // Through a target the same refusal names the certificate file.
    let err = Target::from_revealed(&cert, other).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("marked.cert.json") && err.contains("does not belong"), "{err}");
}

#[test]
fn selection_for_a_pattern_that_matches_nothing() {
    let dir = common::Scene::new();
    let m = model(dir.dir.path());
    let options = EmbedOptions {
        selection: Selection::Globs(vec!["nothing.*".into()]),
        ..EmbedOptions::new("v1")
    };
    let err = embed(&m, &dir.path("o.safetensors"), &SecretKey::from_seed([1; 32]), &options).err();
    assert!(matches!(err, Some(Error::Selection { .. })), "{err:?}");
    assert!(!dir.path("o.safetensors").exists());
}

#[test]
fn invalid_argument_for_a_strength_out_of_range_and_a_bad_attack_level() {
    let dir = common::Scene::new();
    let m = model(dir.dir.path());
    let options = EmbedOptions::new("v1").strength(0.5);
    let err = embed(&m, &dir.path("o.safetensors"), &SecretKey::from_seed([1; 32]), &options).err();
    assert!(matches!(err, Some(Error::InvalidArgument { .. })), "{err:?}");
    let attack = Attack::Quantize { bits: 16, group: None };
    let err = apply_attack(&m, &dir.path("q.safetensors"), &attack, 1, &NoProgress).err();
    let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(
        matches!(err, Some(Error::InvalidArgument { .. })) && text.contains("16 bits"),
        "{text}"
    );
    assert!(!text.contains("--"), "library messages do not name CLI flags: {text}");
}

#[test]
fn unknown_scheme_names_the_scheme_and_the_certificate() {
    let dir = common::Scene::new();
    let key = SecretKey::from_seed([5; 32]);
    let mut cert = ok(load_certificate(&marked(dir.dir.path(), &key), &key.public_key()));
    cert.statement.predicate.scheme = "ss9".into();
    let err =
        Target::from_certificate(&cert, &key).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("'ss9'") && err.contains("marked.cert.json"), "{err}");
    assert!(matches!(cert.predicate().scheme(), Err(Error::UnknownScheme { .. })));
}

#[test]
fn unknown_allocation_names_the_allocation_and_the_certificate() {
    let dir = common::Scene::new();
    let key = SecretKey::from_seed([5; 32]);
    let mut cert = ok(load_certificate(&marked(dir.dir.path(), &key), &key.public_key()));
    // The default allocation is recorded; an unknown one is refused.
    assert_eq!(cert.statement.predicate.allocation.as_deref(), Some("ss2-alloc2"));
    cert.statement.predicate.allocation = Some("ss2-alloc9".into());
    let err =
        Target::from_certificate(&cert, &key).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("'ss2-alloc9'") && err.contains("marked.cert.json"), "{err}");
}

#[test]
fn output_exists_when_a_new_directory_would_replace_one() {
    let dir = common::Scene::new();
    let input = dir.path("in");
    std::fs::create_dir(&input).unwrap_or_else(|e| panic!("{e}"));
    common::write_llama(&input, "model.safetensors", &common::TINY_LLAMA, Dtype::F32, 1);
    let m = ok(Model::open(&input));
    let out = dir.path("out");
    std::fs::create_dir(&out).unwrap_or_else(|e| panic!("{e}"));
    let err = apply_attack(&m, &out, &Attack::Truncate { keep: 1 }, 1, &NoProgress).err();
    assert!(matches!(err, Some(Error::OutputExists { .. })), "{err:?}");
}

#[test]
fn endpoint_errors_name_the_endpoint() {
    use weightmark::fingerprint::{Asker, Endpoint, EndpointOptions};
    let err = Endpoint::new("ftp://example.invalid", EndpointOptions::default()).err();
    assert!(
        matches!(&err, Some(Error::Endpoint { url, .. }) if url == "ftp://example.invalid"),
        "{err:?}"
    );
    // Nothing listens on the port of a listener just closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let options = EndpointOptions { retries: 0, ..EndpointOptions::default() };
    let mut e = ok(Endpoint::new(&format!("http://127.0.0.1:{port}"), options));
    let err = e.ask(None, "What?").err();
    let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(matches!(err, Some(Error::Endpoint { .. })), "{err:?}");
    assert!(text.starts_with(&format!("endpoint http://127.0.0.1:{port}/v1/chat/completions: ")));
}

#[test]
fn internal_errors_say_so_and_a_panicking_worker_is_resumed() {
    let text = Error::internal("detection produced no result").to_string();
    assert_eq!(text, "internal error: detection produced no result");
    // A progress receiver that panics inside the write: the panic reaches the
    // caller as a panic, not as an input error.
    struct Boom;
    impl weightmark::Progress for Boom {
        fn advance(&self, _: u64) {
            panic!("boom in a worker");
        }
    }
    let dir = common::Scene::new();
    let m = model(dir.dir.path());
    let out = dir.path("o.safetensors");
    let options = EmbedOptions::new("v1").progress(&Boom);
    let key = SecretKey::from_seed([1; 32]);
    let caught =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| embed(&m, &out, &key, &options)));
    assert!(caught.is_err(), "the worker's panic was turned into a result");
    assert!(!out.exists(), "nothing is left under the output's name");
}

#[test]
fn format_offsets_reversed_says_so_instead_of_a_zero_byte_mismatch() {
    let dir = common::Scene::new();
    let path = dir.path("r.safetensors");
    let json = r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[10,5]}}"#;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(&[0u8; 10]);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    let err = Model::open(&path).err();
    let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(
        matches!(
            err,
            Some(Error::Format { source: weightmark::FormatError::OffsetsReversed { .. }, .. })
        ),
        "{text}"
    );
    assert!(
        text.contains("r.safetensors") && text.contains("[10, 5] end before they begin"),
        "{text}"
    );
}

#[test]
fn split_names_the_plan_or_part_file_that_is_not_one() {
    let dir = common::Scene::new();
    let path = dir.path("plan.json");
    std::fs::write(&path, "{\"format\":\"something else\"}").unwrap_or_else(|e| panic!("{e}"));
    for err in [
        weightmark::split::detect::DetectPlan::load(&path).err(),
        weightmark::split::detect::DetectPart::load(&path).err(),
        weightmark::split::embed::EmbedPlan::load(&path).err(),
        weightmark::split::embed::EmbedPart::load(&path).err(),
    ] {
        let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(matches!(err, Some(Error::Split { .. })) && text.contains("plan.json"), "{text}");
    }
}
