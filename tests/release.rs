//! End-to-end tests of what a release holds and what guards it (issue #14,
//! points 1, 2, 4 and 6): no secret or foreign file ships, the certificate
//! binds every file and `verify --model` names each difference, no output is
//! overwritten without `--force`, and an interrupted `embed` leaves nothing.

mod common;

use common::{stderr, stdout, Scene, TINY_LLAMA};

use std::path::{Path, PathBuf};

use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::Dtype;

/// Large enough that `embed` runs for a while (about 20 MB of F32).
const SLOW: LlamaShape =
    LlamaShape { vocab: 4096, hidden: 256, intermediate: 688, layers: 4, heads: 4, kv_heads: 2 };

/// Every file under `dir`, relative, `/`-separated, sorted; links listed as files.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).unwrap_or_else(|e| panic!("{e}")).flatten() {
            let rel = rel.join(e.file_name());
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                stack.push(rel);
            } else {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// Entries of `dir` whose names start with `.weightmark-`.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".weightmark-"))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(unix)]
fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap_or_else(|e| panic!("{e}"));
}

/// A model directory with side files, plus everything that must not ship:
/// the owner's key (by name and by content), a mark key under an innocent
/// name, links out of the directory, three self-links, hidden files.
#[cfg(unix)]
fn hostile_model_dir(s: &Scene) -> PathBuf {
    let m = common::write_llama_dir(&s.path("m"), &TINY_LLAMA, Dtype::F32, 1);
    std::fs::copy(s.path("lab.key"), m.join("lab.key")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(s.path("lab.key"), m.join("notes.txt")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        m.join("handover"),
        "weightmark mark key v1\n# one release's mark key\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(m.join("id_ed25519"), "ssh key").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(m.join(".env"), "TOKEN=secret").unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(m.join("sub")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(m.join("sub/generation_config.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(s.path("elsewhere")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path("elsewhere/private.txt"), "private").unwrap_or_else(|e| panic!("{e}"));
    symlink("../elsewhere", &m.join("docs"));
    symlink("../elsewhere/private.txt", &m.join("README.md"));
    symlink("tokenizer.json", &m.join("tokenizer-link.json"));
    for l in ["l1", "l2", "l3"] {
        symlink(".", &m.join(l));
    }
    m
}

#[cfg(unix)]
#[test]
fn embed_ships_no_key_and_no_foreign_file_and_visits_each_entry_once() {
    let s = Scene::new();
    s.keygen("lab");
    let m = hostile_model_dir(&s);
    let out = s.ok(&["embed", "-k", "lab.key", "m", "-o", "rel"]);

    assert_eq!(
        tree(&s.path("rel")),
        [
            "config.json",
            "model.safetensors",
            "sub/generation_config.json",
            "tokenizer-link.json",
            "tokenizer.json"
        ],
        "{out}"
    );
    // One directory entry visited once: 15 at the top, 1 in sub/; the
    // self-links are not followed (they once made thousands of directories).
    let visited = std::fs::read_dir(&m).map(|d| d.count()).unwrap_or(0) + 1;
    assert!(out.contains(&format!("({visited} entries of m looked at)")), "{out}");
    for (name, why) in [
        ("lab.key", "deny list"),
        ("notes.txt", "holds a weightmark secret key"),
        ("handover", "holds a weightmark mark key"),
        ("id_ed25519", "deny list"),
        (".env", "hidden"),
        ("docs", "outside the model directory"),
        ("README.md", "outside the model directory"),
        ("l1", "a link to a directory, not followed"),
    ] {
        assert!(
            out.lines().any(|l| l.contains(&format!("not copied: {name} (")) && l.contains(why)),
            "{name}: {out}"
        );
    }
    assert!(
        out.contains("side files: 4 copied")
            && out.contains("config.json, sub/generation_config.json, tokenizer-link.json"),
        "{out}"
    );

    // The certificate lists every file of the release with its SHA-256.
    let v = common::json(&s.run(&[
        "verify",
        "rel.cert.json",
        "--pub",
        "lab.pub",
        "--model",
        "rel",
        "--json",
    ]));
    let files = v["predicate"]["files"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = files.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, tree(&s.path("rel")));
    for f in &files {
        let bytes = std::fs::read(s.path("rel").join(f["name"].as_str().unwrap_or_default()))
            .unwrap_or_default();
        let sha = weightmark::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert_eq!(f["sha256"].as_str(), Some(sha.as_str()));
        assert_eq!(f["size"].as_u64(), Some(bytes.len() as u64));
    }
    assert_eq!(v["valid"], true, "{v}");
}

#[test]
fn verify_names_each_side_file_added_removed_or_changed() {
    let s = Scene::new();
    s.keygen("lab");
    common::write_llama_dir(&s.path("m"), &TINY_LLAMA, Dtype::F32, 2);
    s.ok(&["embed", "-k", "lab.key", "m", "-o", "rel"]);
    let verify = || s.run(&["verify", "rel.cert.json", "--pub", "lab.pub", "--model", "rel"]);
    let o = verify();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("MODEL MATCHES: every file of rel"), "{}", stdout(&o));

    // Hidden entries (a clone's .git, a hub's .gitattributes) are not compared.
    std::fs::write(s.path("rel/.gitattributes"), "*.safetensors filter=lfs").unwrap_or_default();
    let o = verify();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("not compared (hidden): .gitattributes"), "{}", stdout(&o));

    let config = s.path("rel/config.json");
    let original = std::fs::read_to_string(&config).unwrap_or_default();
    let edited = original.replacen('{', r#"{"auto_map":{"AutoModel":"modeling_evil.Model"},"#, 1);
    std::fs::write(&config, edited).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path("rel/modeling_evil.py"), "import os").unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(s.path("rel/tokenizer.json"), s.path("elsewhere.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let o = verify();
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("MODEL DIFFERS"), "{text}");
    assert!(text.contains("every tensor is identical"), "{text}");
    assert!(text.contains("side file changed: config.json"), "{text}");
    assert!(text.contains("side file added: modeling_evil.py"), "{text}");
    assert!(text.contains("side file removed: tokenizer.json"), "{text}");
    assert!(!text.contains("byte for byte"), "{text}");

    // Each difference alone is enough.
    std::fs::write(&config, &original).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(s.path("elsewhere.json"), s.path("rel/tokenizer.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let o = verify();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("side file added: modeling_evil.py"), "{}", stdout(&o));
    std::fs::remove_file(s.path("rel/modeling_evil.py")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path("rel/chat_template.jinja"), "{{ evil }}").unwrap_or_default();
    let json = common::json(&s.run(&[
        "verify",
        "rel.cert.json",
        "--pub",
        "lab.pub",
        "--model",
        "rel",
        "--json",
    ]));
    assert_eq!(json["valid"], false, "{json}");
    assert_eq!(json["model"]["side_files_added"], serde_json::json!(["chat_template.jinja"]));
}

#[test]
fn an_old_certificate_still_verifies_and_says_side_files_were_not_covered() {
    let s = Scene::new();
    s.keygen("lab");
    common::write_llama_dir(&s.path("m"), &TINY_LLAMA, Dtype::F32, 3);
    s.ok(&["embed", "-k", "lab.key", "m", "-o", "rel"]);
    // The same certificate as an older version wrote it: no file list.
    let key = weightmark::SecretKey::load(&s.path("lab.key")).unwrap_or_else(|e| panic!("{e}"));
    let cert = weightmark::load_certificate(&s.path("rel.cert.json"), &key.public_key())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut statement = cert.statement.clone();
    statement.predicate.files = None;
    let envelope =
        weightmark::provenance::sign_statement(&statement, &key).unwrap_or_else(|e| panic!("{e}"));
    let text = weightmark::provenance::envelope_to_string(&envelope).unwrap_or_default();
    std::fs::write(s.path("old.cert.json"), text).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path("rel/modeling_evil.py"), "import os").unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&["verify", "old.cert.json", "--pub", "lab.pub", "--model", "rel"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains("side files") && text.contains("not compared"), "{text}");
    assert!(text.contains("predates"), "{text}");
}

#[test]
fn existing_outputs_are_refused_before_any_work_unless_forced() {
    let s = Scene::new();
    s.keygen("lab");
    write_file(&s.path("m.safetensors"), &llama(&TINY_LLAMA, Dtype::F32, 4), None)
        .unwrap_or_else(|e| panic!("{e}"));

    // `-o` onto the owner's public key: refused, the key kept.
    let public = std::fs::read(s.path("lab.pub")).unwrap_or_default();
    let o = s.run(&["embed", "-k", "lab.key", "m.safetensors", "-o", "lab.pub"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("lab.pub: already exists") && stderr(&o).contains("--force"));
    assert_eq!(std::fs::read(s.path("lab.pub")).unwrap_or_default(), public);
    assert!(!s.path("lab.pub.cert.json").exists());

    // An existing certificate: refused before the model is written.
    std::fs::write(s.path("old.cert.json"), "evidence").unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&[
        "embed",
        "-k",
        "lab.key",
        "m.safetensors",
        "-o",
        "a.safetensors",
        "--cert",
        "old.cert.json",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("old.cert.json: already exists"), "{}", stderr(&o));
    assert!(!s.path("a.safetensors").exists());
    assert_eq!(std::fs::read_to_string(s.path("old.cert.json")).unwrap_or_default(), "evidence");

    // A certificate that cannot be written: found before the model is written.
    let o = s.run(&[
        "embed",
        "-k",
        "lab.key",
        "m.safetensors",
        "-o",
        "b.safetensors",
        "--cert",
        "no/such/dir/c.json",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("no/such/dir/c.json"), "{}", stderr(&o));
    assert!(!s.path("b.safetensors").exists());

    // --force replaces the files.
    s.ok(&["embed", "-k", "lab.key", "m.safetensors", "-o", "c.safetensors"]);
    let o = s.run(&["embed", "-k", "lab.key", "m.safetensors", "-o", "c.safetensors"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("c.safetensors: already exists"), "{}", stderr(&o));
    let before = std::fs::read(s.path("c.safetensors.cert.json")).unwrap_or_default();
    s.ok(&[
        "embed",
        "-k",
        "lab.key",
        "m.safetensors",
        "-o",
        "c.safetensors",
        "--label",
        "v2",
        "--force",
    ]);
    assert_ne!(std::fs::read(s.path("c.safetensors.cert.json")).unwrap_or_default(), before);

    // detect --report onto an existing report.
    let detect = |extra: &[&str]| {
        let mut args = vec!["detect", "-k", "lab.key", "--cert", "c.safetensors.cert.json"];
        args.extend_from_slice(extra);
        args.push("c.safetensors");
        s.run(&args)
    };
    std::fs::write(s.path("r.json"), "earlier report").unwrap_or_else(|e| panic!("{e}"));
    let o = detect(&["--report", "r.json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("r.json: already exists") && stderr(&o).contains("--force"));
    assert_eq!(std::fs::read_to_string(s.path("r.json")).unwrap_or_default(), "earlier report");
    let o = detect(&["--report", "r.json", "--force"]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    assert!(std::fs::read_to_string(s.path("r.json")).unwrap_or_default().contains("payload"));
}

/// Starts `embed` of a slow model in the scene and waits until one of its
/// temporaries appears; returns the running child.
#[cfg(unix)]
fn embed_until_temporary(s: &Scene, output: &str) -> std::process::Child {
    let binary = env!("CARGO_BIN_EXE_weightmark");
    let child = std::process::Command::new(binary)
        .args(["embed", "-k", "lab.key", "slow.safetensors", "-o", output])
        .current_dir(s.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let start = std::time::Instant::now();
    while temporaries(s.dir.path()).iter().all(|n| n.ends_with(".probe")) {
        assert!(start.elapsed().as_secs() < 60, "no temporary appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child
}

#[cfg(unix)]
fn send(signal: &str, child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {signal} failed");
}

#[cfg(unix)]
#[test]
fn an_interrupted_embed_leaves_no_temporary_and_a_later_run_clears_only_dead_ones() {
    use std::os::unix::process::ExitStatusExt;
    let s = Scene::new();
    s.keygen("lab");
    write_file(&s.path("slow.safetensors"), &llama(&SLOW, Dtype::F32, 5), None)
        .unwrap_or_else(|e| panic!("{e}"));
    for signal in ["-INT", "-TERM"] {
        let mut child = embed_until_temporary(&s, "out.safetensors");
        send(signal, &child);
        let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(!status.success(), "{signal}: {status:?}");
        assert!(status.signal().is_some(), "{signal}: died of the signal: {status:?}");
        assert_eq!(temporaries(s.dir.path()), Vec::<String>::new(), "{signal}");
        assert!(!s.path("out.safetensors").exists(), "{signal}");
    }

    // SIGKILL cannot be caught: its temporary stays until a later run.
    let mut child = embed_until_temporary(&s, "out.safetensors");
    send("-KILL", &child);
    let _ = child.wait();
    let left = temporaries(s.dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    let dead = left.first().cloned().unwrap_or_default();
    // The name records the writer's process id: a temporary of a live
    // process (here: this test) is a concurrent job's and must stay.
    let pid = format!("-p{}-", child.id());
    assert!(dead.contains(&pid), "{dead} should name process {}", child.id());
    let live = dead.replacen(&pid, &format!("-p{}-", std::process::id()), 1);
    std::fs::write(s.path(&live), "a concurrent job's").unwrap_or_else(|e| panic!("{e}"));
    write_file(&s.path("tiny.safetensors"), &llama(&TINY_LLAMA, Dtype::F32, 6), None)
        .unwrap_or_else(|e| panic!("{e}"));
    s.ok(&["embed", "-k", "lab.key", "tiny.safetensors", "-o", "tiny-out.safetensors"]);
    assert_eq!(temporaries(s.dir.path()), vec![live]);
    assert!(s.path("tiny-out.safetensors").exists());
}

#[cfg(unix)]
#[test]
fn a_model_truncated_while_read_gives_one_line_and_exit_2() {
    let s = Scene::new();
    s.keygen("lab");
    write_file(&s.path("slow.safetensors"), &llama(&SLOW, Dtype::F32, 7), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut child = {
        let binary = env!("CARGO_BIN_EXE_weightmark");
        let child = std::process::Command::new(binary)
            .args(["embed", "-k", "lab.key", "slow.safetensors", "-o", "out.safetensors"])
            .current_dir(s.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let start = std::time::Instant::now();
        while temporaries(s.dir.path()).iter().all(|n| n.ends_with(".probe")) {
            assert!(start.elapsed().as_secs() < 60, "no temporary appeared");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.path("slow.safetensors"))
        .and_then(|f| f.set_len(0))
        .unwrap_or_else(|e| panic!("{e}"));
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(2), "{status:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("truncated") && err.contains("SIGBUS"), "{err}");
    assert!(!s.path("out.safetensors").exists());
}

#[cfg(unix)]
#[test]
fn a_hugging_face_cache_snapshot_is_released_with_its_linked_side_files() {
    let s = Scene::new();
    s.keygen("lab");
    // hub/models--org--tiny/{blobs/, snapshots/REV/} as huggingface_hub lays it out.
    let repo = s.path("hub/models--org--tiny");
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots/0123abcd");
    common::write_llama_dir(&blobs, &TINY_LLAMA, Dtype::F32, 8);
    std::fs::create_dir_all(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        symlink(&format!("../../blobs/{name}"), &snapshot.join(name));
    }
    symlink("../../../../elsewhere.txt", &snapshot.join("stray.txt"));
    std::fs::write(s.path("elsewhere.txt"), "not the model's").unwrap_or_else(|e| panic!("{e}"));
    let out =
        s.ok(&["embed", "-k", "lab.key", "hub/models--org--tiny/snapshots/0123abcd", "-o", "rel"]);
    assert_eq!(
        tree(&s.path("rel")),
        ["config.json", "model.safetensors", "tokenizer.json"],
        "{out}"
    );
    let config = s.path("rel/config.json");
    assert!(!std::fs::symlink_metadata(&config)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(true));
    assert!(
        out.contains("not copied: stray.txt (a link to") && out.contains("outside the model"),
        "{out}"
    );
    let o = s.run(&["verify", "rel.cert.json", "--pub", "lab.pub", "--model", "rel"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}
