//! Planting checkpoints: the state a [`crate::fingerprint::Planter`] needs
//! to take its next step, in one safetensors file, so that an hour-long
//! plant stopped by a reboot, a scheduler's preemption or a step budget goes
//! on where it was and ends with the bits an uninterrupted plant gives.
//!
//! The file holds, as F32 tensors, each trainable variable (`var.NNNNN`) and
//! its two AdamW moments (`m.NNNNN`, `v.NNNNN`), and in the header's
//! `__metadata__` (strings):
//!
//! | key | value |
//! |---|---|
//! | `format` | `weightmark-plant-checkpoint/1` |
//! | `identity` | hex SHA-256 of what the plant is made of ([`crate::fingerprint::Planter::identity`]) |
//! | `steps` | steps taken |
//! | `optimizer_steps` | AdamW updates taken (its bias correction's `t`) |
//! | `rng_word_pos` | position of the ordinary-text batch order's ChaCha8 stream (decimal) |
//! | `pruned_min`, `system_min` | the last look at each pruned level and each system prompt: f64 bit patterns, 16 hex digits each, comma-separated |
//! | `learning_rate`, `distill` | f64 bit patterns (16 hex digits) |
//!
//! A checkpoint is written beside its destination under a temporary name
//! ([`weightmark::write_atomic_with`]: removed on a handled signal, or by
//! the next run once its process is gone), synced, then renamed over it, so
//! a crash while saving leaves the previous checkpoint whole. It is the
//! planter's own working state, trusted like the model being trained and
//! to be protected like it. Reading checks what a damaged, truncated or
//! swapped file would get wrong: a regular file, of this plant (identity),
//! of exactly the size its variables take (before the data is read), of
//! the right shapes, finite weights and moments and second moments not
//! negative; [`crate::fingerprint::Planter::resume`] checks the scalar
//! state (one optimiser update a step, a batch-order position the steps
//! can reach, probabilities within 0 to 1, rates in range), and `fingerprint
//! plant` that the rates are the command's. It is not a defence against
//! deliberate tampering: whoever can write the file chooses the weights
//! that the owner's key then certifies.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{EvalError, Result};

/// The `format` this module writes and reads.
pub const FORMAT: &str = "weightmark-plant-checkpoint/1";

/// The largest header read (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

/// The scalar state of a planter beside its tensors.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Header {
    pub identity: [u8; 32],
    pub steps: usize,
    pub optimizer_steps: usize,
    pub rng_word_pos: u128,
    pub pruned_min: Vec<f64>,
    pub system_min: Vec<f64>,
    pub learning_rate: f64,
    pub distill: f64,
}

/// A variable and its two moments.
pub(crate) type Slot<T> = (T, T, T);

fn bits(x: f64) -> String {
    format!("{:016x}", x.to_bits())
}

fn bits_list(xs: &[f64]) -> String {
    xs.iter().map(|&x| bits(x)).collect::<Vec<_>>().join(",")
}

impl Header {
    fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            ("format", FORMAT.to_string()),
            ("identity", weightmark::hex(&self.identity)),
            ("steps", self.steps.to_string()),
            ("optimizer_steps", self.optimizer_steps.to_string()),
            ("rng_word_pos", self.rng_word_pos.to_string()),
            ("pruned_min", bits_list(&self.pruned_min)),
            ("system_min", bits_list(&self.system_min)),
            ("learning_rate", bits(self.learning_rate)),
            ("distill", bits(self.distill)),
        ]
    }

    fn parse(path: &Path, meta: &HashMap<String, String>) -> Result<Header> {
        let bad = |what: &str| EvalError::input(path, format!("not a planting checkpoint: {what}"));
        let get = |k: &str| meta.get(k).ok_or_else(|| bad(&format!("no '{k}' in its header")));
        if get("format")? != FORMAT {
            return Err(bad(&format!("format '{}', expected '{FORMAT}'", get("format")?)));
        }
        let number = |k: &str| -> Result<u128> {
            get(k)?.parse::<u128>().map_err(|_| bad(&format!("'{k}' is not a number")))
        };
        let size = |k: &str| -> Result<usize> {
            usize::try_from(number(k)?).map_err(|_| bad(&format!("'{k}' is too large")))
        };
        let float = |k: &str, s: &str| -> Result<f64> {
            let ok = s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
            let n = u64::from_str_radix(s, 16).ok().filter(|_| ok);
            n.map(f64::from_bits).ok_or_else(|| bad(&format!("'{k}' is not 16 hex digits")))
        };
        let floats = |k: &str| -> Result<Vec<f64>> {
            let s = get(k)?;
            if s.is_empty() {
                return Ok(Vec::new());
            }
            s.split(',').map(|x| float(k, x)).collect()
        };
        let id = get("identity")?;
        let mut identity = [0u8; 32];
        let hex_ok = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok {
            return Err(bad("'identity' is not 64 hex digits"));
        }
        for (i, byte) in identity.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&id[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("'identity' is not 64 hex digits"))?;
        }
        Ok(Header {
            identity,
            steps: size("steps")?,
            optimizer_steps: size("optimizer_steps")?,
            rng_word_pos: number("rng_word_pos")?,
            pruned_min: floats("pruned_min")?,
            system_min: floats("system_min")?,
            learning_rate: float("learning_rate", get("learning_rate")?)?,
            distill: float("distill", get("distill")?)?,
        })
    }
}

/// The tensor names of slot `i`.
fn names(i: usize) -> [String; 3] {
    [format!("var.{i:05}"), format!("m.{i:05}"), format!("v.{i:05}")]
}

/// Writes `header` and `slots` (each variable with its moments, F32) to
/// `path`, atomically ([`weightmark::write_atomic_with`]).
pub(crate) fn save(path: &Path, header: &Header, slots: &[Slot<&Tensor>]) -> Result<()> {
    // The header: every tensor's place in the data that follows, in slot order.
    let mut entries = serde_json::Map::new();
    let meta: serde_json::Map<String, serde_json::Value> =
        header.metadata().into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
    entries.insert("__metadata__".into(), meta.into());
    let mut offset = 0usize;
    let mut order: Vec<&Tensor> = Vec::with_capacity(3 * slots.len());
    for (i, (var, m, v)) in slots.iter().enumerate() {
        for (name, t) in names(i).into_iter().zip([*var, *m, *v]) {
            let len = t.elem_count() * 4;
            entries.insert(
                name,
                serde_json::json!({
                    "dtype": "F32",
                    "shape": t.dims(),
                    "data_offsets": [offset, offset + len],
                }),
            );
            offset += len;
            order.push(t);
        }
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(entries))
        .map_err(|e| EvalError::invalid(format!("checkpoint header: {e}")))?;
    // The data starts 8-byte aligned (safetensors pads with spaces).
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        for t in order {
            let values = t
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(std::io::Error::other)?;
            for chunk in values.chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
                out.write_all(&bytes)?;
            }
        }
        Ok(())
    };
    weightmark::write_atomic_with(path, weightmark::Overwrite::Replace, write)?;
    Ok(())
}

/// Reads a checkpoint [`save`] wrote for the plant of `identity`, whose
/// variables have `shapes`: its header and each variable with its moments.
/// A file that is not one, another plant's, or one of another number or
/// shape of variables is an error naming `path`.
pub(crate) fn load(
    path: &Path,
    identity: &[u8; 32],
    shapes: &[Vec<usize>],
) -> Result<(Header, Vec<Slot<Tensor>>)> {
    use std::io::Read;
    let bad = |what: String| EvalError::input(path, format!("not a planting checkpoint: {what}"));
    let unreadable =
        |e: std::io::Error| EvalError::input(path, format!("could not read the checkpoint: {e}"));
    // Its header first, from a regular file (a FIFO would hang, a directory
    // fail late), then the data only if it is this plant's and its size is
    // exactly what this plant's variables take: another model or a large
    // unrelated file is refused before it is read.
    let len = std::fs::metadata(path).map_err(unreadable)?;
    if !len.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let len = len.len();
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = vec![0u8; 8];
    file.read_exact(&mut bytes).map_err(|_| bad(format!("{len} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    if n > MAX_HEADER || 8 + n > len {
        return Err(bad(format!("a header of {n} bytes in a file of {len}")));
    }
    bytes.resize(8 + n as usize, 0);
    file.read_exact(&mut bytes[8..]).map_err(unreadable)?;
    let entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..]).map_err(|e| bad(format!("its header: {e}")))?;
    let metadata: HashMap<String, String> = match entries.get("__metadata__") {
        Some(m) => {
            serde_json::from_value(m.clone()).map_err(|e| bad(format!("its header: {e}")))?
        }
        None => HashMap::new(),
    };
    let header = Header::parse(path, &metadata)?;
    if &header.identity != identity {
        return Err(EvalError::input(
            path,
            "a checkpoint of another plant (the model, the pairs, the ordinary text or a training \
             option differs; only the step budget may change): remove it or name another file",
        ));
    }
    let count = entries.len() - usize::from(entries.contains_key("__metadata__"));
    if count != 3 * shapes.len() {
        return Err(EvalError::input(
            path,
            format!(
                "a checkpoint of {count} tensors, where this plant has {} (3 per variable)",
                3 * shapes.len()
            ),
        ));
    }
    let data: u128 =
        shapes.iter().map(|s| 12 * s.iter().map(|&d| d as u128).product::<u128>()).sum();
    if u128::from(len) != u128::from(8 + n) + data {
        return Err(bad(format!(
            "{len} bytes, where its header and this plant's variables take {}",
            u128::from(8 + n) + data
        )));
    }
    bytes.reserve_exact(usize::try_from(data).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(unreadable)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut slots = Vec::with_capacity(shapes.len());
    for (i, shape) in shapes.iter().enumerate() {
        let [a, b, c] = names(i).map(|name| -> Result<Tensor> {
            let view = st.tensor(&name).map_err(|e| bad(format!("'{name}': {e}")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape.as_slice() {
                return Err(EvalError::input(
                    path,
                    format!(
                        "tensor '{name}' is {:?} {:?}, where this plant needs F32 {shape:?}",
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            // Weights and first moments are finite, second moments (running
            // means of squares) finite and not negative: anything else would
            // turn the next update's weights into NaN, which a certificate
            // would then cover.
            let second = name.starts_with("v.");
            if values.iter().any(|x| !x.is_finite() || (second && *x < 0.0)) {
                let what =
                    if second { "a non-finite or negative value" } else { "a non-finite value" };
                return Err(bad(format!("tensor '{name}' holds {what}")));
            }
            Ok(Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?)
        });
        slots.push((a?, b?, c?));
    }
    Ok((header, slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            identity: [7; 32],
            steps: 12,
            optimizer_steps: 12,
            rng_word_pos: (1u128 << 70) + 5,
            pruned_min: vec![0.25, f64::MIN_POSITIVE, -0.0],
            system_min: vec![],
            learning_rate: 2e-5,
            distill: 10.0,
        }
    }

    #[test]
    fn a_saved_checkpoint_reads_back_exactly_and_a_damaged_one_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EvalError::invalid(e.to_string()))?;
        let path = dir.path().join("plant.ckpt");
        let a = Tensor::new(&[[1.5f32, -0.0, f32::MIN_POSITIVE], [3.0, 4.0, 5.0]], &Device::Cpu)?;
        let b = Tensor::new(&[0.1f32, 0.2], &Device::Cpu)?;
        let (a2, a3) = ((&a * 2.0)?, (&a * 3.0)?);
        let slots: Vec<Slot<&Tensor>> = vec![(&a, &a2, &a3), (&b, &b, &b)];
        save(&path, &header(), &slots)?;
        let (h, back) = load(&path, &[7; 32], &[vec![2, 3], vec![2]])?;
        assert_eq!(h, header());
        let flat = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|x| x.to_bits()).collect())
        };
        for ((x, y, z), (p, q, r)) in back.iter().zip(&slots) {
            assert_eq!(flat(x)?, flat(p)?);
            assert_eq!(flat(y)?, flat(q)?);
            assert_eq!(flat(z)?, flat(r)?);
        }
        // Saving again replaces it and leaves no temporary behind.
        save(&path, &Header { steps: 13, ..header() }, &slots)?;
        assert_eq!(load(&path, &[7; 32], &[vec![2, 3], vec![2]])?.0.steps, 13);
        let files: Vec<_> =
            std::fs::read_dir(dir.path()).map_err(|e| EvalError::invalid(e.to_string()))?.collect();
        assert_eq!(files.len(), 1, "a temporary file was left: {files:?}");
        // Another plant's shapes, a truncated file, a file of something else.
        let e = load(&path, &[7; 32], &[vec![3, 2], vec![2]]).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("plant.ckpt") && e.contains("[3, 2]")),
            "{e:?}"
        );
        let e = load(&path, &[7; 32], &[vec![2, 3]]).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("6 tensors")), "{e:?}");
        let e = load(&path, &[8; 32], &[vec![2, 3], vec![2]]).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("another plant")), "{e:?}");
        let bytes = std::fs::read(&path).map_err(|e| EvalError::invalid(e.to_string()))?;
        std::fs::write(&path, &bytes[..bytes.len() - 3])
            .map_err(|e| EvalError::invalid(e.to_string()))?;
        let e = load(&path, &[7; 32], &[vec![2, 3], vec![2]]).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("not a planting checkpoint")), "{e:?}");
        std::fs::write(&path, b"{}").map_err(|e| EvalError::invalid(e.to_string()))?;
        assert!(load(&path, &[7; 32], &[vec![2, 3], vec![2]]).is_err());
        // A byte more, a directory: refused before the data is read.
        let io = |e: std::io::Error| EvalError::invalid(e.to_string());
        let longer = [bytes.as_slice(), &[0]].concat();
        std::fs::write(&path, longer).map_err(io)?;
        let e = load(&path, &[7; 32], &[vec![2, 3], vec![2]]).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("bytes, where")), "{e:?}");
        let e = load(dir.path(), &[7; 32], &[vec![2, 3], vec![2]]).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("not a regular file")), "{e:?}");
        // A weight that is not finite, a second moment below zero.
        let nan = Tensor::new(&[0.1f32, f32::NAN], &Device::Cpu)?;
        let below = Tensor::new(&[0.1f32, -1e-30], &Device::Cpu)?;
        for (slot, name) in [((&nan, &b, &b), "var.00001"), ((&b, &b, &below), "v.00001")] {
            save(&path, &header(), &[(&a, &a2, &a3), slot])?;
            let e = load(&path, &[7; 32], &[vec![2, 3], vec![2]]).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains(&format!("'{name}' holds"))), "{e:?}");
        }
        // A negative first moment is an ordinary one.
        let m = (&b * -1.0)?;
        save(&path, &header(), &[(&a, &a2, &a3), (&b, &m, &b)])?;
        load(&path, &[7; 32], &[vec![2, 3], vec![2]])?;
        Ok(())
    }
}
