//! Work split into independent jobs that an existing scheduler (SLURM job
//! arrays, Kubernetes indexed Jobs) runs, whose results combine exactly.
//!
//! A model's files are divided into `N` parts ([`PartSpec`]); each job
//! handles one part and writes a small JSON file; a final step checks that
//! the parts cover the model exactly once and combines them into what one
//! run over the whole model gives, bit for bit. Detection is split this way
//! ([`detect`]), and so is marking one copy ([`embed`]); the formats are described in `docs/formats.md` and the
//! commands in `docs/scale.md`.

pub mod detect;
pub mod embed;
mod encode;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::model::Model;

/// One part of `count`: the `index`-th (from 0) of `count` nearly equal runs
/// of the model's files, in the model's file order. Written `I/N`, as a
/// scheduler's array index gives it (`$SLURM_ARRAY_TASK_ID`,
/// `$JOB_COMPLETION_INDEX`, both counting from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartSpec {
    /// The part, from 0.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl PartSpec {
    /// Part `index` of `count`; refused unless `index < count`.
    pub fn new(index: usize, count: usize) -> Result<PartSpec> {
        if count == 0 || index >= count {
            return Err(Error::invalid(format!(
                "part {index}/{count} does not exist: parts are numbered 0 to N-1 of N >= 1"
            )));
        }
        Ok(PartSpec { index, count })
    }

    /// The files of this part, as a range of indices into `files` files.
    /// Every file falls in exactly one part; a part may be empty only when
    /// there are fewer files than parts.
    pub fn files(&self, files: usize) -> std::ops::Range<usize> {
        (self.index * files / self.count)..((self.index + 1) * files / self.count)
    }
}

impl fmt::Display for PartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for PartSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<PartSpec> {
        let bad = || {
            Error::invalid(format!(
                "part '{}' is not I/N (the part's index from 0, slash, the number of parts)",
                s.escape_debug()
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        PartSpec::new(i, n)
    }
}

/// The files of a model that a split run divides, in model order, each with
/// the names of its tensors. Only safetensors models (one file or shards)
/// are split: a GGUF file is one file, tested by one run.
pub(crate) fn model_files(model: &Model) -> Result<Vec<(&str, Vec<&str>)>> {
    if model.raw.is_some() || model.files.is_empty() || !model.owned.is_empty() {
        return Err(Error::NotAModel {
            path: model.path.clone(),
            reason: "only safetensors models (a file, or shards with an index) are split into \
                     parts; test this one with a single run"
                .into(),
        });
    }
    Ok(model
        .files
        .iter()
        .map(|f| (f.file_name.as_str(), f.header.tensors.iter().map(|t| t.name.as_str()).collect()))
        .collect())
}

/// A plan or part record as the text of its file (one line of JSON);
/// `what` names it in the (internal) error.
pub(crate) fn record_text<T: serde::Serialize>(record: &T, what: &str) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| Error::internal(format!("{what} not serialisable: {e}")))
}

/// Reads the plan or part file at `path`: at most the size cap, JSON of
/// `T`, and `format` (the record's own format field) equal to `expected`;
/// errors name the file and say it is not `what`. Returns the record and
/// the file's bytes.
pub(crate) fn load_record<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
    format: impl Fn(&T) -> &str,
    expected: &str,
) -> Result<(T, Vec<u8>)> {
    let bytes = detect::read_capped(path)?;
    let record: T = serde_json::from_slice(&bytes)
        .map_err(|e| detect::split_error(path, format!("not {what}: {e}")))?;
    let found = format(&record);
    if found != expected {
        return Err(detect::split_error(
            path,
            format!("format '{}', expected '{expected}'", found.escape_debug()),
        ));
    }
    Ok((record, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_file_once() {
        for files in 0..12 {
            for count in 1..9 {
                let mut seen = vec![0; files];
                for index in 0..count {
                    for f in PartSpec::new(index, count).unwrap().files(files) {
                        seen[f] += 1;
                    }
                }
                assert!(seen.iter().all(|&n| n == 1), "{files} files, {count} parts: {seen:?}");
            }
        }
    }

    #[test]
    fn part_spec_parses_and_refuses() {
        assert_eq!("2/4".parse::<PartSpec>().unwrap(), PartSpec { index: 2, count: 4 });
        assert_eq!(PartSpec { index: 2, count: 4 }.to_string(), "2/4");
        for bad in ["4/4", "0/0", "1", "a/2", "1/b", "-1/3"] {
            assert!(bad.parse::<PartSpec>().is_err(), "{bad}");
        }
    }
}
