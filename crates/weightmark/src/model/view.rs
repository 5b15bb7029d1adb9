//! Views of a model with some matrices read in another row or column order
//! (a re-aligned suspect), without copying the model.
//!
//! A view shares the maps of the model it was made from and reorders a
//! matrix only when its bytes are read ([`super::TensorRef::data`]), one
//! tensor at a time, as a GGUF tensor is decoded when read. Re-aligning a
//! permuted 7B suspect used to hold a re-ordered copy of all of it (13.5 GB
//! for bf16); a view holds the orders (a few numbers per row) and, while a
//! tensor is being read, that tensor.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

use super::{Layout, Model, RawFile, Slot, Source, TensorInfo, TensorRef};
use crate::error::{Error, Result};

/// A new order of a matrix's rows or of its columns: row (or column) `k` of
/// the result is row (column) `order[k]` of the matrix as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reorder {
    order: Arc<[usize]>,
    columns: bool,
}

impl Reorder {
    /// Rows in the order `order` (`out[k] = in[order[k]]`); `None` unless
    /// `order` is a permutation of `0..order.len()`.
    pub fn rows(order: Arc<[usize]>) -> Option<Reorder> {
        is_permutation(&order).then_some(Reorder { order, columns: false })
    }

    /// Columns in the order `order`; `None` unless it is a permutation.
    pub fn columns(order: Arc<[usize]>) -> Option<Reorder> {
        is_permutation(&order).then_some(Reorder { order, columns: true })
    }

    /// Whether it fits a tensor of shape `shape`: a matrix with as many
    /// rows (or columns) as the order is long.
    pub fn fits(&self, shape: &[usize]) -> bool {
        match shape {
            [rows, cols] => self.order.len() == if self.columns { *cols } else { *rows },
            _ => false,
        }
    }

    /// The reordered bytes of a `[rows, cols]` matrix of `elem`-byte elements.
    fn apply(&self, data: &[u8], cols: usize, elem: usize) -> Vec<u8> {
        let rows = data.len().checked_div(cols * elem).unwrap_or(0);
        crate::llama::reorder(data, rows, cols, elem, &self.order, self.columns)
    }
}

fn is_permutation(order: &[usize]) -> bool {
    let mut seen = vec![false; order.len()];
    order.iter().all(|&i| seen.get_mut(i).is_some_and(|s| !std::mem::replace(s, true)))
}

/// Where a viewed tensor's stored bytes are.
#[derive(Clone)]
enum Held {
    /// A range of a mapped safetensors file.
    Map(Arc<Mmap>, Range<usize>),
    /// Bytes in memory (the tensor of a model held in memory).
    Memory(Arc<Vec<u8>>),
    /// Tensor `i` of a GGUF file, decoded when read.
    Gguf(Arc<RawFile>, usize),
}

/// One tensor of a view: its header entry, its stored bytes and the
/// reorders applied, in turn, when it is read.
#[derive(Clone)]
pub(crate) struct Viewed {
    info: TensorInfo,
    held: Held,
    reorders: Vec<Reorder>,
}

impl Viewed {
    /// A reader's view of it.
    pub(super) fn tensor_ref(&self) -> TensorRef<'_> {
        let info = &self.info;
        let source = match (&self.held, self.reorders.is_empty()) {
            (Held::Map(map, range), true) => {
                Source::Bytes(map.get(range.clone()).unwrap_or_default())
            }
            (Held::Memory(data), true) => Source::Bytes(data),
            (Held::Gguf(raw, i), true) => match raw.tensors.get(*i) {
                Some((_, t)) => Source::Gguf(t, raw.bytes()),
                None => Source::Bytes(&[]),
            },
            (_, false) => Source::Reordered(self),
        };
        TensorRef { name: &info.name, dtype: info.dtype, shape: &info.shape, info, source }
    }

    /// Its bytes as read: the stored bytes (decoded, for a GGUF tensor),
    /// reordered.
    pub(super) fn read(&self) -> Vec<u8> {
        let elem = self.info.dtype.size();
        let cols = self.info.shape.get(1).copied().unwrap_or(0);
        let stored: Cow<'_, [u8]> = match &self.held {
            Held::Map(map, range) => Cow::Borrowed(map.get(range.clone()).unwrap_or_default()),
            Held::Memory(data) => Cow::Borrowed(data.as_slice()),
            Held::Gguf(raw, i) => Cow::Owned(
                raw.tensors.get(*i).map(|(_, t)| t.decode(raw.bytes())).unwrap_or_default(),
            ),
        };
        // The first reorder reads the stored bytes in place.
        let mut reorders = self.reorders.iter();
        let mut data = match reorders.next() {
            Some(r) => r.apply(&stored, cols, elem),
            None => stored.into_owned(),
        };
        for r in reorders {
            data = r.apply(&data, cols, elem);
        }
        data
    }
}

impl Model {
    /// A view of this model in which the named matrices are read reordered
    /// (each by its reorders, in turn), sharing this model's files: nothing
    /// is copied but the tensors of a model held in memory. The view's
    /// layout is [`Layout::Memory`] (it cannot be written as files), its
    /// tensors come in this model's order, and it reports under this
    /// model's path. An error names a reorder that does not fit its tensor
    /// or a name the model does not have.
    pub fn view(&self, reorders: HashMap<String, Vec<Reorder>>) -> Result<Model> {
        let owned = self.owned.iter().map(|t| (t.info.clone(), Arc::new(t.data.clone()))).collect();
        self.view_with(owned, reorders)
    }

    /// [`Model::view`] of a model that is no longer needed: the tensors of
    /// a model held in memory move into the view instead of being copied.
    pub fn into_view(mut self, reorders: HashMap<String, Vec<Reorder>>) -> Result<Model> {
        let owned = std::mem::take(&mut self.owned);
        let owned = owned.into_iter().map(|t| (t.info, Arc::new(t.data))).collect();
        self.view_with(owned, reorders)
    }

    /// A view of this model in which the tensors `spilled` holds are read
    /// from it (new bytes of the tensor as read, in its dtype and shape: a
    /// rotated matrix; a reorder of this view no longer applies to them)
    /// and every other tensor is borrowed as [`Model::view`] borrows it. An
    /// error names a tensor the model does not have or whose spilled bytes
    /// do not fit it.
    pub(crate) fn view_replacing(&self, spilled: &Spilled) -> Result<Model> {
        let owned = self.owned.iter().map(|t| (t.info.clone(), Arc::new(t.data.clone()))).collect();
        let mut model = self.view_with(owned, HashMap::new())?;
        let mut wanted: HashMap<&str, &Range<usize>> =
            spilled.ranges.iter().map(|(n, r)| (n.as_str(), r)).collect();
        for v in &mut model.view {
            let Some(range) = wanted.remove(v.info.name.as_str()) else { continue };
            if range.len() != v.info.end - v.info.begin {
                return Err(Error::invalid(format!(
                    "{}: {} new bytes do not fit tensor '{}' of {} bytes",
                    self.path.display(),
                    range.len(),
                    v.info.name.escape_debug(),
                    v.info.end - v.info.begin
                )));
            }
            v.held = Held::Map(Arc::clone(&spilled.map), range.clone());
            v.reorders.clear();
        }
        if let Some(name) = wanted.keys().min() {
            return Err(Error::invalid(format!(
                "{}: no tensor '{}' to replace",
                self.path.display(),
                name.escape_debug()
            )));
        }
        Ok(model)
    }

    /// The view, with the tensors of `self.owned` given as `owned`.
    fn view_with(
        &self,
        owned: Vec<(TensorInfo, Arc<Vec<u8>>)>,
        reorders: HashMap<String, Vec<Reorder>>,
    ) -> Result<Model> {
        let mut held: Vec<(TensorInfo, Held, Vec<Reorder>)> =
            Vec::with_capacity(self.by_name.len());
        for f in &self.files {
            let start = f.header.data_start();
            for t in &f.header.tensors {
                let range = start + t.begin..start + t.end;
                held.push((t.clone(), Held::Map(Arc::clone(&f.map), range), Vec::new()));
            }
        }
        for (info, data) in owned {
            held.push((info, Held::Memory(data), Vec::new()));
        }
        if let Some(raw) = &self.raw {
            for (i, (info, _)) in raw.tensors.iter().enumerate() {
                held.push((info.clone(), Held::Gguf(Arc::clone(raw), i), Vec::new()));
            }
        }
        for v in &self.view {
            held.push((v.info.clone(), v.held.clone(), v.reorders.clone()));
        }
        let mut wanted = reorders;
        let mut view = Vec::with_capacity(held.len());
        let mut by_name = HashMap::with_capacity(held.len());
        for (info, held, mut applied) in held {
            if let Some(more) = wanted.remove(&info.name) {
                if let Some(r) = more.iter().find(|r| !r.fits(&info.shape)) {
                    return Err(Error::invalid(format!(
                        "{}: a reorder of {} {} does not fit tensor '{}' of shape {:?}",
                        self.path.display(),
                        r.order.len(),
                        if r.columns { "columns" } else { "rows" },
                        info.name.escape_debug(),
                        info.shape
                    )));
                }
                applied.extend(more);
            }
            by_name.insert(info.name.clone(), Slot::Viewed(view.len()));
            view.push(Viewed { info, held, reorders: applied });
        }
        if let Some(name) = wanted.keys().min() {
            return Err(Error::invalid(format!(
                "{}: no tensor '{}' to reorder",
                self.path.display(),
                name.escape_debug()
            )));
        }
        Ok(Model {
            path: self.path.clone(),
            layout: Layout::Memory,
            files: Vec::new(),
            index: None,
            owned: Vec::new(),
            raw: None,
            warnings: Vec::new(),
            view,
            by_name,
        })
    }
}

/// New bytes of some tensors, written to an unnamed temporary file (in
/// `TMPDIR`, deleted when the last map of it goes) and mapped: a view
/// ([`Model::view_replacing`]) reads them from the page cache, which can
/// give them back to the disk, instead of holding them in memory.
pub(crate) struct Spilled {
    map: Arc<Mmap>,
    ranges: HashMap<String, Range<usize>>,
}

/// Writes a [`Spilled`], one tensor after another.
pub(crate) struct SpillWriter {
    dir: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    at: usize,
    ranges: HashMap<String, Range<usize>>,
}

impl SpillWriter {
    /// A new, empty temporary file; an error names the directory.
    pub(crate) fn new() -> Result<SpillWriter> {
        let dir = std::env::temp_dir();
        let file = tempfile::tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
        let out = std::io::BufWriter::with_capacity(1 << 20, file);
        Ok(SpillWriter { dir, out, at: 0, ranges: HashMap::new() })
    }

    /// Appends the new bytes of tensor `name`.
    pub(crate) fn put(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        self.out.write_all(bytes).map_err(|e| Error::io(&self.dir, e))?;
        self.ranges.insert(name.to_string(), self.at..self.at + bytes.len());
        self.at += bytes.len();
        Ok(())
    }

    /// The file written, mapped.
    pub(crate) fn finish(self) -> Result<Spilled> {
        let dir = self.dir;
        let file = self.out.into_inner().map_err(|e| Error::io(&dir, e.into_error()))?;
        let map = super::mmap::map(&file, &dir)?;
        Ok(Spilled { map: Arc::new(map), ranges: self.ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{gaussian_matrix, to_model, write_file, write_llama_file, LlamaShape};
    use crate::Dtype;

    fn order(o: &[usize]) -> Arc<[usize]> {
        Arc::from(o)
    }

    fn by_name<'m>(m: &'m Model, name: &str) -> TensorRef<'m> {
        m.tensor(name).unwrap_or_else(|| panic!("no {name}"))
    }

    /// Every tensor of `view` is `base`'s, in `base`'s order, reordered by
    /// `changes` (applied in turn) where named and borrowed as it is
    /// elsewhere.
    fn check(base: &Model, view: &Model, changes: &HashMap<String, Vec<Reorder>>) {
        assert_eq!(view.layout, Layout::Memory);
        assert_eq!(view.tensor_count(), base.tensor_count());
        let names: Vec<&str> = base.tensors().map(|t| t.name).collect();
        assert_eq!(view.tensors().map(|t| t.name).collect::<Vec<_>>(), names);
        for (b, v) in base.tensors().zip(view.tensors()) {
            assert_eq!((b.dtype, b.shape, b.info), (v.dtype, v.shape, v.info), "{}", b.name);
            let mut want = b.data().into_owned();
            let cols = b.shape.get(1).copied().unwrap_or(0);
            let size = b.dtype.size();
            for r in changes.get(b.name).into_iter().flatten() {
                let rows = want.len() / (cols * size);
                want = crate::llama::reorder(&want, rows, cols, size, &r.order, r.columns);
            }
            let reordered = changes.contains_key(b.name);
            assert_eq!(v.is_decoded_on_read(), reordered || b.is_decoded_on_read(), "{}", b.name);
            // Twice: nothing cached, nothing stale; and the same by name.
            for got in [v.data(), v.data(), by_name(view, b.name).data()] {
                assert!(got[..] == want[..], "{} differs", b.name);
                let borrowed = matches!(got, Cow::Borrowed(_));
                assert_eq!(borrowed, !v.is_decoded_on_read(), "{}", b.name);
            }
        }
    }

    /// A file `m.safetensors` of three small matrices, `a`, `b` and `c`
    /// (bf16, f32, f16), opened; the directory holds it.
    fn three_tensors() -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("m.safetensors");
        let tensors = [
            gaussian_matrix("a", 5, 3, Dtype::BF16, 1),
            gaussian_matrix("b", 4, 6, Dtype::F32, 2),
            gaussian_matrix("c", 2, 2, Dtype::F16, 3),
        ];
        write_file(&path, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
        let base = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
        (dir, base)
    }

    #[test]
    fn a_view_reads_spilled_tensors_from_the_spill_and_borrows_the_rest() {
        let (_dir, base) = three_tensors();
        let new_a: Vec<u8> = (0..30u8).collect();
        let new_c: Vec<u8> = (100..108u8).collect();
        let mut spill = SpillWriter::new().unwrap_or_else(|e| panic!("{e}"));
        for (name, bytes) in [("c", &new_c), ("a", &new_a)] {
            spill.put(name, bytes).unwrap_or_else(|e| panic!("{e}"));
        }
        let spilled = spill.finish().unwrap_or_else(|e| panic!("{e}"));
        let view = base.view_replacing(&spilled).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(view.layout, Layout::Memory);
        assert_eq!(view.tensors().map(|t| t.name).collect::<Vec<_>>(), ["a", "b", "c"]);
        for (b, v) in base.tensors().zip(view.tensors()) {
            assert_eq!((b.dtype, b.shape, b.info), (v.dtype, v.shape, v.info), "{}", b.name);
            let got = v.data();
            assert!(matches!(got, Cow::Borrowed(_)), "{}: read in place", v.name);
            match v.name {
                "a" => assert_eq!(got[..], new_a[..]),
                "c" => assert_eq!(got[..], new_c[..]),
                _ => assert_eq!(got.as_ptr(), b.data().as_ptr(), "b is the base's own bytes"),
            }
        }
        // New bytes of a reordered tensor of a view are the tensor as read:
        // the reorder no longer applies.
        let rows = Reorder::rows(order(&[4, 0, 3, 1, 2])).unwrap_or_else(|| panic!("rows"));
        let reordered = base.view([("a".to_string(), vec![rows])].into());
        let reordered = reordered.unwrap_or_else(|e| panic!("{e}"));
        let again = reordered.view_replacing(&spilled).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(by_name(&again, "a").data()[..], new_a[..]);
        assert!(!by_name(&again, "a").is_decoded_on_read());
        // Spilled bytes of another size, or of a tensor the model lacks.
        for (name, len, says) in [("b", 95, "do not fit tensor 'b'"), ("d", 4, "no tensor 'd'")] {
            let mut spill = SpillWriter::new().unwrap_or_else(|e| panic!("{e}"));
            spill.put(name, &vec![0; len]).unwrap_or_else(|e| panic!("{e}"));
            let spilled = spill.finish().unwrap_or_else(|e| panic!("{e}"));
            let e = base.view_replacing(&spilled).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(says) && e.contains("m.safetensors"), "{e}");
        }
    }

    #[test]
    fn a_view_reads_reordered_rows_and_columns_and_borrows_the_rest() {
        let (dir, base) = three_tensors();
        let rows = |o: &[usize]| Reorder::rows(order(o)).unwrap_or_else(|| panic!("{o:?}"));
        let cols = |o: &[usize]| Reorder::columns(order(o)).unwrap_or_else(|| panic!("{o:?}"));
        let changes: HashMap<String, Vec<Reorder>> = [
            ("a".to_string(), vec![rows(&[4, 0, 3, 1, 2])]),
            ("b".to_string(), vec![cols(&[5, 4, 3, 2, 1, 0]), rows(&[1, 0, 3, 2])]),
        ]
        .into();
        let view = base.view(changes.clone()).unwrap_or_else(|e| panic!("{e}"));
        check(&base, &view, &changes);
        // The view shares the base's map: dropping the base leaves it whole.
        let want: Vec<Vec<u8>> = view.tensors().map(|t| t.data().into_owned()).collect();
        drop(base);
        let got: Vec<Vec<u8>> = view.tensors().map(|t| t.data().into_owned()).collect();
        assert_eq!(got, want);
        // A view of the view applies both orders, in turn.
        let more: HashMap<String, Vec<Reorder>> =
            [("a".to_string(), vec![rows(&[1, 2, 3, 4, 0])])].into();
        let again = view.view(more.clone()).unwrap_or_else(|e| panic!("{e}"));
        check(&view, &again, &more);
        // A view has no files to write.
        let out = dir.path().join("out.safetensors");
        let options = crate::model::WriteOptions {
            progress: &crate::NoProgress,
            overwrite: crate::Overwrite::Refuse,
        };
        let refused = crate::model::write_model(&view, &out, &|_| Ok(None), &options);
        assert!(refused.is_err() && !out.exists());
    }

    #[test]
    fn a_view_of_a_model_in_memory_moves_or_copies_its_tensors_and_reorders_them() {
        let tensors =
            [gaussian_matrix("a", 6, 4, Dtype::F32, 1), gaussian_matrix("b", 3, 3, Dtype::BF16, 2)];
        let base = to_model(&tensors).unwrap_or_else(|e| panic!("{e}"));
        let changes: HashMap<String, Vec<Reorder>> = [(
            "b".to_string(),
            vec![Reorder::columns(order(&[2, 0, 1])).unwrap_or_else(|| panic!("order"))],
        )]
        .into();
        let copied = base.view(changes.clone()).unwrap_or_else(|e| panic!("{e}"));
        check(&base, &copied, &changes);
        let moved = to_model(&tensors).unwrap_or_else(|e| panic!("{e}"));
        let moved = moved.into_view(changes.clone()).unwrap_or_else(|e| panic!("{e}"));
        check(&base, &moved, &changes);
    }

    #[test]
    fn a_view_of_a_gguf_model_decodes_then_reorders() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let shape = LlamaShape {
            vocab: 64,
            hidden: 64,
            intermediate: 96,
            layers: 1,
            heads: 4,
            kv_heads: 2,
        };
        write_llama_file(&dir.path().join("model.safetensors"), &shape, Dtype::BF16, 3)
            .unwrap_or_else(|e| panic!("{e}"));
        let config = serde_json::to_vec(&shape.config_json(Dtype::BF16)).unwrap_or_default();
        std::fs::write(dir.path().join("config.json"), config).unwrap_or_else(|e| panic!("{e}"));
        let model = Model::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let config = crate::llama::LlamaConfig::for_model(&model).unwrap_or_else(|e| panic!("{e}"));
        let gguf = out.path().join("m.gguf");
        crate::attack::gguf::write_gguf(&model, &gguf, crate::gguf::GgmlType::Q8_0, &config)
            .unwrap_or_else(|e| panic!("{e}"));
        let base = Model::open(&gguf).unwrap_or_else(|e| panic!("{e}"));
        let up = "model.layers.0.mlp.up_proj.weight";
        let down = "model.layers.0.mlp.down_proj.weight";
        let perm: Vec<usize> = (0..96).map(|i| (i * 7 + 5) % 96).collect();
        let changes: HashMap<String, Vec<Reorder>> = [
            (up.to_string(), vec![Reorder::rows(order(&perm)).unwrap_or_else(|| panic!("rows"))]),
            (
                down.to_string(),
                vec![Reorder::columns(order(&perm)).unwrap_or_else(|| panic!("cols"))],
            ),
        ]
        .into();
        let view = base.view(changes.clone()).unwrap_or_else(|e| panic!("{e}"));
        check(&base, &view, &changes);
    }

    #[test]
    fn orders_that_are_not_permutations_or_do_not_fit_are_refused_by_name() {
        for bad in [&[0, 0, 1][..], &[0, 3, 1], &[1, 2]] {
            if bad.len() == 3 {
                assert!(Reorder::rows(order(bad)).is_none(), "{bad:?}");
                assert!(Reorder::columns(order(bad)).is_none(), "{bad:?}");
            }
        }
        assert!(Reorder::rows(order(&[])).is_some());
        let base = to_model(&[gaussian_matrix("a", 3, 2, Dtype::F32, 1)])
            .unwrap_or_else(|e| panic!("{e}"));
        let three = Reorder::rows(order(&[2, 1, 0])).unwrap_or_else(|| panic!("order"));
        let change = |name: &str, r: &Reorder| -> HashMap<String, Vec<Reorder>> {
            [(name.to_string(), vec![r.clone()])].into()
        };
        let three_cols = Reorder::columns(order(&[2, 1, 0])).unwrap_or_else(|| panic!("order"));
        let e =
            base.view(change("a", &three_cols)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("'a'") && e.contains("3 columns"), "{e}");
        let e = base.view(change("z", &three)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no tensor 'z'"), "{e}");
        assert!(base.view(change("a", &three)).is_ok());
    }
}
