//! Which licensee's copy is this? Every certificate of an owner (one per
//! recipient) is tested in a single read pass over the suspect, and the
//! candidates are ranked by their Bonferroni-adjusted p-value bound: with m
//! certificates tested, a candidate is named only when `m x p` is at most the
//! threshold, so testing many licensees does not raise the chance of accusing
//! an innocent one above the threshold (the union bound holds whatever the
//! dependence between the tests).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::detect::{adjusted_log10, detect_many, DetectOptions, Mode, Skipped, Target};
use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::key::SecretKey;
use crate::model::Model;
use crate::progress::Progress;
use crate::provenance::{load_certificate, Certificate};

/// One certificate under test, with the target derived from it.
pub struct Candidate {
    /// The certificate (signature checked).
    pub certificate: Certificate,
    /// Its release's mark key and tensors.
    pub target: Target,
}

/// The certificates of a directory that can be tested.
pub struct Candidates {
    /// Certificates signed by the owner's key and made with it, in file-name order.
    pub candidates: Vec<Candidate>,
    /// Files left out, with the reason (another signer, not a certificate,
    /// signed by this key but made with another mark key, unknown scheme, a
    /// fingerprint-only release, a certificate superseded by another one of
    /// the directory).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Reads every `*.json` file of `dir` and keeps the certificates signed by
/// `secret`'s public key whose commitment matches the mark key derived from
/// it. Fingerprint-only releases (no weight mark) and certificates that
/// another certificate of `dir` supersedes (the same mark) are skipped with
/// the reason. A directory with none left is an error naming the directory
/// and the key id.
///
/// Memory stays near one release's sketches whatever the number of
/// licensees: each kept certificate sheds its sketch records and payload
/// ([`Certificate::shed_sketches`]) once its target is built, and targets
/// whose sketches are equal (the certificates of one release) share one
/// decoded copy.
pub fn load_candidates(dir: &Path, secret: &SecretKey) -> Result<Candidates> {
    let public = secret.public_key();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let loaded = load_certificate(&path, &public).and_then(|certificate| {
            if !certificate.predicate().has_mark() {
                return Err(Error::invalid(
                    "a fingerprint-only release (no weight mark to test; its fingerprint is \
                     checked by asking the model)",
                ));
            }
            Ok((Target::from_certificate(&certificate, secret)?, certificate))
        });
        match loaded {
            Ok((mut target, mut certificate)) => {
                certificate.shed_sketches();
                let held = candidates.iter().map(|c| &c.target);
                share_sketches(&mut target, held);
                candidates.push(Candidate { certificate, target });
            }
            Err(e) => skipped.push((path, e.to_string())),
        }
    }
    // A certificate superseded by another one here (a fingerprint planted in
    // a marked release) certifies the same mark: test the release once.
    let newer: Vec<(String, PathBuf)> = candidates
        .iter()
        .filter_map(|c| {
            let old = c.certificate.predicate().supersedes.clone()?;
            Some((old, c.certificate.path.clone()))
        })
        .collect();
    candidates.retain(|c| match newer.iter().find(|(old, _)| *old == c.certificate.digest) {
        None => true,
        Some((_, by)) => {
            skipped.push((
                c.certificate.path.clone(),
                format!("superseded by {} (the same release's mark, tested once)", by.display()),
            ));
            false
        }
    });
    if candidates.is_empty() {
        return Err(Error::Certificate {
            path: dir.to_path_buf(),
            reason: format!("no certificate signed by key {} in this directory", public.key_id()),
        });
    }
    Ok(Candidates { candidates, skipped })
}

/// Points `target`'s sketches at an equal one that `held` targets already
/// hold, so that one release's certificates keep one decoded copy.
fn share_sketches<'t>(target: &mut Target, held: impl Iterator<Item = &'t Target> + Clone) {
    fn share<'t, T: PartialEq + 't>(
        mine: &mut Option<Arc<T>>,
        held: impl Iterator<Item = &'t Option<Arc<T>>>,
    ) {
        let Some(m) = mine.as_ref() else { return };
        if let Some(same) = held.flatten().find(|h| Arc::ptr_eq(h, m) || **h == *m) {
            *mine = Some(Arc::clone(same));
        }
    }
    share(&mut target.residual_sketch, held.clone().map(|t| &t.residual_sketch));
    share(&mut target.neuron_sketch, held.clone().map(|t| &t.neuron_sketch));
    share(&mut target.head_sketch, held.map(|t| &t.head_sketch));
}

/// Options for [`identify`].
pub struct IdentifyOptions<'a> {
    /// Name a candidate when its Bonferroni-adjusted p-value bound is at most this.
    pub threshold_p: f64,
    /// Progress receiver.
    pub progress: &'a dyn Progress,
}

/// One candidate's result.
#[derive(Clone, Debug, Serialize)]
pub struct RankedCandidate {
    /// The certificate file.
    pub certificate: String,
    /// Its release label.
    pub label: String,
    /// Its recipient.
    pub recipient: Option<String>,
    /// The z that identifies this candidate: of the recipient's own
    /// component for an `ss2` release with a recipient (every copy of a
    /// release shares its release component), else of the mark.
    pub z: f64,
    /// `ss2`: the z of the release component (shared by every copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_z: Option<f64>,
    /// Elements tested.
    pub elements: u64,
    /// A coded recipient component (`tardos1`): Bernstein's range ratio
    /// `rho`; the bound is `exp(-z^2 / (2 (1 + rho z / 3)))`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<f64>,
    /// Hoeffding bound `exp(-z^2/2)` for this candidate alone (Bernstein's
    /// with `range`).
    pub p_value: f64,
    /// `log10` of `p_value` (exact where it underflows).
    pub log10_p_value: f64,
    /// `min(1, m x p_value)` for `m` candidates tested.
    pub adjusted_p_value: f64,
    /// `log10` of the adjusted bound.
    pub log10_adjusted_p_value: f64,
    /// Whether the adjusted bound is at most the threshold.
    pub identified: bool,
    /// Tensors of this release that could not be tested.
    pub skipped: Vec<Skipped>,
    /// Position of the candidate in the list given to [`identify`].
    #[serde(skip)]
    pub index: usize,
}

/// The outcome of [`identify`].
#[derive(Clone, Debug, Serialize)]
pub struct Identification {
    /// Blind or informed.
    pub mode: Mode,
    /// Certificates tested (the Bonferroni factor).
    pub certificates: usize,
    /// Decision threshold on the adjusted bound.
    pub threshold_p: f64,
    /// Candidates named.
    pub identified: usize,
    /// Tensor root of the suspect (hex).
    pub suspect_digest: String,
    /// Every candidate, highest z first.
    pub candidates: Vec<RankedCandidate>,
    /// Digest of every tensor of the suspect (for signed reports).
    #[serde(skip)]
    pub suspect_tensor_digests: Vec<(String, Sha256Digest)>,
}

/// One release among the candidates, read on its release component alone
/// (the component every copy of the release shares): "is this ours?",
/// whoever's copy it is ([`Identification::releases`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReleaseReading {
    /// The release label.
    pub label: String,
    /// z of the release component.
    pub z: f64,
    /// `log10` of its bound `exp(-z^2/2)`, Bonferroni-adjusted for the
    /// number of releases read.
    pub log10_adjusted_p_value: f64,
    /// Whether the adjusted bound is at most the identification's threshold.
    pub found: bool,
}

impl Identification {
    /// Per release label among the candidates that read a release component
    /// (`ss2` with a recipient), the release component's z and whether it
    /// is found, adjusted for the number of such releases: what answers
    /// "ours?" when copies were mixed and no licensee can be named. Every
    /// candidate of one release reads the same release component, so its
    /// z is each's `release_z` (the largest, should two releases share a
    /// label). The null hypothesis is the suspect's independence of each
    /// release key, a family apart from the candidates' (whose copy).
    pub fn releases(&self) -> Vec<ReleaseReading> {
        let mut by_label: std::collections::BTreeMap<&str, f64> = Default::default();
        for c in &self.candidates {
            if let Some(z) = c.release_z {
                by_label.entry(c.label.as_str()).and_modify(|e| *e = e.max(z)).or_insert(z);
            }
        }
        let tests = by_label.len() as u64;
        by_label
            .into_iter()
            .map(|(label, z)| {
                let log10_adjusted_p_value = adjusted_log10(crate::log10_p_bound(z), tests);
                ReleaseReading {
                    label: label.to_string(),
                    z,
                    log10_adjusted_p_value,
                    found: log10_adjusted_p_value <= self.threshold_p.log10(),
                }
            })
            .collect()
    }
}

/// Tests every candidate in one read pass over `suspect` (informed with
/// `original`) and ranks them by z, with Bonferroni-adjusted bounds.
pub fn identify(
    suspect: &Model,
    original: Option<&Model>,
    candidates: &[Candidate],
    options: &IdentifyOptions<'_>,
) -> Result<Identification> {
    if !(options.threshold_p > 0.0 && options.threshold_p < 1.0) {
        return Err(Error::invalid(format!(
            "threshold {} must be a probability between 0 and 1",
            options.threshold_p
        )));
    }
    if candidates.is_empty() {
        return Err(Error::invalid("no certificate to test"));
    }
    let targets: Vec<&Target> = candidates.iter().map(|c| &c.target).collect();
    let detect_options =
        DetectOptions { threshold_p: options.threshold_p, progress: options.progress };
    let detections = detect_many(suspect, original, &targets, &detect_options)?;
    let m = candidates.len();
    let threshold_log10 = options.threshold_p.log10();
    let mut ranked: Vec<RankedCandidate> = detections
        .iter()
        .zip(candidates)
        .enumerate()
        .map(|(index, (d, c))| {
            let z = d.recipient_component.map_or(d.z, |r| r.z);
            let range = d.recipient_component.and_then(|r| r.range);
            let log10_p = crate::tardos::log10_bernstein(z, range.unwrap_or(0.0));
            let log10_adjusted = adjusted_log10(log10_p, m as u64);
            let p = c.certificate.predicate();
            RankedCandidate {
                certificate: c.certificate.path.display().to_string(),
                label: p.label.clone(),
                recipient: p.recipient.clone(),
                z,
                release_z: d.recipient_component.map(|_| d.release_component.map_or(d.z, |r| r.z)),
                elements: d.elements,
                range,
                p_value: 10f64.powf(log10_p),
                log10_p_value: log10_p,
                adjusted_p_value: 10f64.powf(log10_adjusted),
                log10_adjusted_p_value: log10_adjusted,
                identified: log10_adjusted <= threshold_log10,
                skipped: d.skipped.clone(),
                index,
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.z.total_cmp(&a.z).then(a.index.cmp(&b.index)));
    Ok(Identification {
        mode: if original.is_some() { Mode::Informed } else { Mode::Blind },
        certificates: m,
        threshold_p: options.threshold_p,
        identified: ranked.iter().filter(|r| r.identified).count(),
        suspect_digest: detections.first().map(|d| d.suspect_digest.clone()).unwrap_or_default(),
        candidates: ranked,
        suspect_tensor_digests: detections
            .first()
            .map(|d| d.suspect_tensor_digests.clone())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{embed, EmbedOptions};
    use crate::synth::{gaussian_matrix, write_file};
    use crate::NoProgress;

    fn write_cert(dir: &Path, name: &str, report: &crate::EmbedReport) {
        let text = crate::provenance::envelope_to_string(&report.certificate)
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn names_the_marked_recipient_and_adjusts_for_every_certificate() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let model_path = dir.path().join("m.safetensors");
        write_file(&model_path, &[gaussian_matrix("w", 1024, 2048, crate::Dtype::F32, 1)], None)
            .unwrap_or_else(|e| panic!("{e}"));
        let model = Model::open(&model_path).unwrap_or_else(|e| panic!("{e}"));
        let key = SecretKey::from_seed([9; 32]);
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap_or_else(|e| panic!("{e}"));
        for r in ["acme", "bolt", "core"] {
            let mut options = EmbedOptions::new("m").recipient(r);
            options.strength = Some(0.01);
            let out = dir.path().join(format!("{r}.safetensors"));
            let report = embed(&model, &out, &key, &options).unwrap_or_else(|e| panic!("{e}"));
            write_cert(&certs, &format!("{r}.json"), &report);
        }
        // Another owner's certificate and a stray file are skipped, not fatal.
        let stranger = SecretKey::from_seed([7; 32]);
        let other =
            embed(&model, &dir.path().join("x.safetensors"), &stranger, &EmbedOptions::new("m"))
                .unwrap_or_else(|e| panic!("{e}"));
        write_cert(&certs, "stranger.json", &other);
        std::fs::write(certs.join("notes.json"), "{}").unwrap_or_else(|e| panic!("{e}"));

        let loaded = load_candidates(&certs, &key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.candidates.len(), 3);
        assert_eq!(loaded.skipped.len(), 2);
        let suspect =
            Model::open(dir.path().join("bolt.safetensors")).unwrap_or_else(|e| panic!("{e}"));
        let options = IdentifyOptions { threshold_p: 1e-9, progress: &NoProgress };
        let found = identify(&suspect, None, &loaded.candidates, &options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.certificates, 3);
        assert_eq!(found.identified, 1);
        let top = &found.candidates[0];
        assert_eq!(top.recipient.as_deref(), Some("bolt"));
        assert!(top.z > 10.0, "z {}", top.z);
        // Bonferroni: the adjusted bound is exactly m times the single one.
        let log_m = 3f64.log10();
        assert!((top.log10_adjusted_p_value - (top.log10_p_value + log_m)).abs() < 1e-9);
        assert!(found.candidates[1..].iter().all(|c| !c.identified && c.z < 6.0));
    }

    /// Counts the detection passes and the bytes each reports as read.
    #[derive(Default)]
    struct Passes(std::sync::Mutex<(u32, u64)>);

    impl Progress for Passes {
        fn start(&self, _phase: &str, _total: u64) {
            if let Ok(mut p) = self.0.lock() {
                p.0 += 1;
            }
        }
        fn advance(&self, bytes: u64) {
            if let Ok(mut p) = self.0.lock() {
                p.1 += bytes;
            }
        }
    }

    #[test]
    fn identify_reads_the_suspect_once_whatever_the_number_of_certificates() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let model_path = dir.path().join("m.safetensors");
        let tensors = [
            gaussian_matrix("a", 256, 256, crate::Dtype::BF16, 1),
            gaussian_matrix("b", 128, 512, crate::Dtype::F32, 2),
        ];
        write_file(&model_path, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
        let model = Model::open(&model_path).unwrap_or_else(|e| panic!("{e}"));
        let key = SecretKey::from_seed([4; 32]);
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap_or_else(|e| panic!("{e}"));
        for r in 0..12 {
            let options = EmbedOptions::new("m").recipient(format!("r{r}"));
            let out = dir.path().join("copy.safetensors");
            let report =
                crate::embed::issue(&model, &out, &key, &options).unwrap_or_else(|e| panic!("{e}"));
            write_cert(&certs, &format!("r{r:02}.json"), &report);
        }
        let loaded = load_candidates(&certs, &key).unwrap_or_else(|e| panic!("{e}"));
        let passes = |n: usize| {
            let counter = Passes::default();
            let options = IdentifyOptions { threshold_p: 1e-9, progress: &counter };
            let found = identify(&model, None, &loaded.candidates[..n], &options)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(found.certificates, n);
            counter.0.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let one = passes(1);
        assert_eq!(one.0, 1, "one detection pass");
        // Each tested tensor once, then the suspect's digests: twice its data.
        assert_eq!(one.1, 2 * model.data_bytes());
        assert_eq!(passes(12), one, "12 certificates read the suspect as often as one");
    }

    #[test]
    fn one_releases_certificates_share_one_decoded_sketch_and_answer_as_before() {
        use crate::synth::{write_llama_file, LlamaShape};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        write_llama_file(&a, &LlamaShape::TINY, crate::Dtype::BF16, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        write_llama_file(&b, &LlamaShape::TINY, crate::Dtype::BF16, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        let (model_a, model_b) = (
            Model::open(&a).unwrap_or_else(|e| panic!("{e}")),
            Model::open(&b).unwrap_or_else(|e| panic!("{e}")),
        );
        let key = SecretKey::from_seed([6; 32]);
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap_or_else(|e| panic!("{e}"));
        // Release "a": r1's copy written (the suspect), r2 and r3 issued;
        // release "b", of another model, one certificate.
        let suspect_path = dir.path().join("r1.safetensors");
        let options = |r: &str| EmbedOptions::new("a").recipient(r).strength(0.01);
        let report =
            embed(&model_a, &suspect_path, &key, &options("r1")).unwrap_or_else(|e| panic!("{e}"));
        write_cert(&certs, "a1.json", &report);
        for r in ["r2", "r3"] {
            let report = crate::embed::issue(&model_a, &suspect_path, &key, &options(r))
                .unwrap_or_else(|e| panic!("{e}"));
            write_cert(&certs, &format!("a{}.json", &r[1..]), &report);
        }
        let other = dir.path().join("b-copy.safetensors");
        let report = embed(&model_b, &other, &key, &EmbedOptions::new("b").recipient("r1"))
            .unwrap_or_else(|e| panic!("{e}"));
        write_cert(&certs, "b1.json", &report);

        let loaded = load_candidates(&certs, &key).unwrap_or_else(|e| panic!("{e}"));
        let targets: Vec<&Target> = loaded.candidates.iter().map(|c| &c.target).collect();
        assert_eq!(targets.len(), 4);
        let same = |x: &Target, y: &Target| {
            let (Some(n), Some(m)) = (&x.neuron_sketch, &y.neuron_sketch) else {
                panic!("a tiny Llama has a neuron sketch")
            };
            let (Some(r), Some(s)) = (&x.residual_sketch, &y.residual_sketch) else {
                panic!("a tiny Llama has a residual sketch")
            };
            // (Heads of 16 channels are too narrow for a head sketch.)
            assert!(x.head_sketch.is_none() && y.head_sketch.is_none());
            [Arc::ptr_eq(n, m), Arc::ptr_eq(r, s)]
        };
        // One decoded copy for release "a"; release "b" keeps its own.
        assert_eq!(same(targets[0], targets[1]), [true; 2]);
        assert_eq!(same(targets[0], targets[2]), [true; 2]);
        assert_eq!(same(targets[0], targets[3]), [false; 2]);
        for c in &loaded.candidates {
            let p = c.certificate.predicate();
            assert!(p.residual_sketch.is_none() && p.neuron_sketch.is_none());
            assert!(p.head_sketch.is_none() && c.certificate.envelope.payload.is_empty());
        }

        // The same answer, bit for bit, as certificates read whole, one
        // target each.
        let whole: Vec<Candidate> = ["a1", "a2", "a3", "b1"]
            .iter()
            .map(|n| {
                let path = certs.join(format!("{n}.json"));
                let certificate = crate::provenance::load_certificate(&path, &key.public_key())
                    .unwrap_or_else(|e| panic!("{e}"));
                let target =
                    Target::from_certificate(&certificate, &key).unwrap_or_else(|e| panic!("{e}"));
                Candidate { certificate, target }
            })
            .collect();
        assert!(whole[0].certificate.predicate().neuron_sketch.is_some());
        let suspect = Model::open(&suspect_path).unwrap_or_else(|e| panic!("{e}"));
        let options = IdentifyOptions { threshold_p: 1e-9, progress: &NoProgress };
        let run = |c: &[Candidate]| {
            let found = identify(&suspect, None, c, &options).unwrap_or_else(|e| panic!("{e}"));
            serde_json::to_string(&found).unwrap_or_else(|e| panic!("{e}"))
        };
        let (shared, read_whole) = (run(&loaded.candidates), run(&whole));
        assert_eq!(shared, read_whole);
        assert!(shared.contains("\"recipient\":\"r1\""), "{shared}");
    }

    #[test]
    fn a_directory_without_this_owners_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = load_candidates(dir.path(), &SecretKey::from_seed([1; 32]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&dir.path().display().to_string()) && err.contains("no certificate"),
            "{err}"
        );
    }

    #[test]
    fn a_threshold_outside_zero_one_is_refused() {
        let model = Model::from_owned(Path::new("m"), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        let options = IdentifyOptions { threshold_p: 1.5, progress: &NoProgress };
        let err =
            identify(&model, None, &[], &options).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("threshold 1.5"), "{err}");
    }
}
