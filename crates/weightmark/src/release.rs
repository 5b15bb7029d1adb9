//! Where a release's files go: the certificate's default path beside the
//! marked model, and the checks that keep the marked model, its certificate,
//! the secret key and the input apart. The CLI's `embed` and the Python
//! package's `embed` and `certify` share them, so both refuse the same paths.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::Model;

/// `OUT.cert.json` beside the marked model `output` (for a directory: beside
/// it, never inside it; `out/` and `out` give the same path).
pub fn default_certificate_path(output: &Path) -> PathBuf {
    let absolute;
    let output = match output.file_name() {
        Some(_) => output,
        None => {
            absolute = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
            &absolute
        }
    };
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!("{name}.cert.json"))
}

/// Refuses a release whose marked model (`output`, as resolved by
/// [`crate::resolve_output`]) would replace the secret key at `key`, or whose
/// `certificate` would replace the key, the output or a file of the input
/// `model`, or land inside the input's or the output's directory. Every
/// refusal is an [`Error::InvalidArgument`] naming the offending path.
pub fn check_release_paths(
    model: &Model,
    key: &Path,
    output: &Path,
    certificate: &Path,
) -> Result<()> {
    if same_file(output, key) {
        return Err(Error::invalid(format!(
            "{}: the output would replace the secret key",
            output.display()
        )));
    }
    check_side_path(model, key, output, certificate, "certificate")
}

/// Refuses a file that a release command writes beside its output (its
/// certificate; `fingerprint plant`'s checkpoint, `what`) at `path` when
/// it would replace the key, the output or a file of the input `model`, or
/// land inside the input's or the output's directory, naming `path` and
/// `what` it is.
pub fn check_side_path(
    model: &Model,
    key: &Path,
    output: &Path,
    path: &Path,
    what: &str,
) -> Result<()> {
    if same_file(path, key)
        || same_file(path, output)
        || model.files.iter().any(|f| same_file(path, &f.path))
    {
        return Err(Error::invalid(format!(
            "{}: the {what} would replace the key, the input or the output; choose another \
             {what} path",
            path.display()
        )));
    }
    let inside_input = model.path.is_dir()
        && match (resolved(path), model.path.canonicalize()) {
            (Some(c), Ok(input)) => c.starts_with(input),
            _ => false,
        };
    if inside_input {
        return Err(Error::invalid(format!(
            "{}: the {what} must not go inside the input model directory",
            path.display()
        )));
    }
    if certificate_inside_output(path, output) {
        return Err(Error::invalid(format!(
            "{}: the {what} must not go inside the output model directory",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses a new `certificate` path that names the certificate it
/// supersedes: the superseded certificate is never overwritten, with or
/// without permission to replace outputs.
pub fn check_superseding_path(certificate: &Path, superseded: &Path) -> Result<()> {
    if same_file(certificate, superseded) {
        return Err(Error::invalid(format!(
            "{}: the new certificate would replace the one it supersedes; choose another \
             certificate path (the old certificate is never overwritten)",
            certificate.display()
        )));
    }
    Ok(())
}

/// Whether two paths name the same file (resolving links where they exist:
/// for a file not yet written, the links of its directory).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (resolved(a), resolved(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `path` with links and `..` resolved, whether or not it exists yet: its
/// longest existing ancestor's canonical path, then the rest of it with
/// `.` and `..` applied (a directory not yet made cannot be a link), so
/// that `d/../out` and a path through a link to a directory name the file
/// they would reach.
fn resolved(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let absolute = std::path::absolute(path).ok()?;
    let parts: Vec<Component<'_>> = absolute.components().collect();
    for k in (1..=parts.len()).rev() {
        let Ok(mut out) = parts[..k].iter().collect::<PathBuf>().canonicalize() else { continue };
        for c in &parts[k..] {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        return Some(out);
    }
    Some(absolute)
}

/// Whether `certificate` would land inside an output that is (or will be) a
/// directory: one that exists as a directory, or any path not ending in
/// `.safetensors`.
fn certificate_inside_output(certificate: &Path, output: &Path) -> bool {
    let (Some(certificate), Some(output)) = (resolved(certificate), resolved(output)) else {
        return false;
    };
    let output_is_dir = output.is_dir() || output.extension().is_none_or(|e| e != "safetensors");
    output_is_dir && certificate.starts_with(&output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{gaussian_matrix, write_file};

    fn err_text(r: Result<()>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    /// A model directory `dir` (created) holding one 64×64 F32 matrix.
    fn one_matrix_model_dir(dir: &Path) -> Model {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        write_file(
            &dir.join("model.safetensors"),
            &[gaussian_matrix("w", 64, 64, crate::Dtype::F32, 1)],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Model::open(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn default_certificate_goes_beside_the_output_never_inside() {
        assert_eq!(
            default_certificate_path(Path::new("out/m.safetensors")),
            PathBuf::from("out/m.safetensors.cert.json")
        );
        assert_eq!(
            default_certificate_path(Path::new("dir/marked")),
            PathBuf::from("dir/marked.cert.json")
        );
        let trailing = default_certificate_path(Path::new("marked/"));
        assert_eq!(trailing.file_name().and_then(|n| n.to_str()), Some("marked.cert.json"));
        assert!(!trailing.parent().is_some_and(|p| p.ends_with("marked")));
    }

    #[test]
    fn collisions_are_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let input = dir.path().join("m.safetensors");
        write_file(&input, &[gaussian_matrix("w", 64, 64, crate::Dtype::F32, 1)], None)
            .unwrap_or_else(|e| panic!("{e}"));
        let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
        let key = dir.path().join("lab.key");
        std::fs::write(&key, "k").unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("marked.safetensors");
        let cert = default_certificate_path(&out);
        assert!(check_release_paths(&model, &key, &out, &cert).is_ok());

        let e = err_text(check_release_paths(&model, &key, &key, &cert));
        assert!(e.contains("replace the secret key") && e.contains("lab.key"), "{e}");
        for bad in [&key, &out, &input] {
            let e = err_text(check_release_paths(&model, &key, &out, bad));
            assert!(e.contains("the certificate would replace"), "{e}");
        }
        let out_dir = dir.path().join("marked");
        let e = err_text(check_release_paths(&model, &key, &out_dir, &out_dir.join("c.json")));
        assert!(e.contains("inside the output model directory"), "{e}");
    }

    #[test]
    fn a_certificate_inside_the_input_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let input = dir.path().join("model");
        let model = one_matrix_model_dir(&input);
        let e = err_text(check_release_paths(
            &model,
            &dir.path().join("k.key"),
            &dir.path().join("out"),
            &input.join("c.json"),
        ));
        assert!(e.contains("inside the input model directory"), "{e}");
    }

    /// A side file spelt around the rules (`..` through another directory, a
    /// link to a directory) is caught like one spelt plainly, whether or not
    /// the file or the output exists yet.
    #[test]
    fn a_side_path_spelt_through_dot_dot_or_a_link_is_refused_like_a_plain_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.path();
        let input = d.join("model");
        std::fs::create_dir_all(d.join("other")).unwrap_or_else(|e| panic!("{e}"));
        let model = one_matrix_model_dir(&input);
        let (key, out) = (d.join("k.key"), d.join("out"));
        let side = |p: &Path| err_text(check_side_path(&model, &key, &out, p, "checkpoint"));
        assert_eq!(side(&d.join("plant.ckpt")), "");
        // The key and the output, not yet written, reached through `..`.
        assert!(side(&d.join("other/../k.key")).contains("would replace the key"));
        assert!(side(&d.join("other/../out")).contains("would replace the key"));
        assert!(side(&d.join("other/../out/x.ckpt")).contains("inside the output"));
        assert!(side(&d.join("nothing/../out/x.ckpt")).contains("inside the output"));
        assert!(side(&d.join("other/../model/x.ckpt")).contains("inside the input"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&input, d.join("link")).unwrap_or_else(|e| panic!("{e}"));
            assert!(side(&d.join("link/x.ckpt")).contains("inside the input"));
            assert!(side(&d.join("link/model.safetensors")).contains("would replace"));
        }
        assert!(same_file(&d.join("other/../a"), &d.join("a")));
        assert!(!same_file(&d.join("other/a"), &d.join("a")));
    }
}
