//! Text for evaluation and training: files read as documents, tokenized, cut
//! into fixed-length windows, and split into training and held-out windows.
//!
//! The split is deterministic and interleaved: within each document, every
//! tenth window (the 10th, 20th, ...) is held out. Held-out text then comes
//! from the same documents and style as the training text but is never
//! trained on, which is what "held-out perplexity fell" should mean. Windows
//! do not cross documents; a document's last, partial window is dropped.

use std::path::PathBuf;

use tokenizers::Tokenizer;

use crate::error::{EvalError, Result};
use crate::load::encode;

/// One in this many windows of a document is held out.
pub const HELD_OUT_EVERY: usize = 10;

/// Documents read from files.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// `(file, text)` for each document.
    pub documents: Vec<(PathBuf, String)>,
}

impl Corpus {
    /// Reads each file as one UTF-8 document.
    pub fn read(paths: &[PathBuf]) -> Result<Corpus> {
        if paths.is_empty() {
            return Err(EvalError::invalid("no text given; pass --text FILE"));
        }
        let mut documents = Vec::new();
        for p in paths {
            let bytes =
                std::fs::read(p).map_err(|e| EvalError::input(p, format!("cannot read: {e}")))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                EvalError::input(
                    p,
                    format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
                )
            })?;
            if text.trim().is_empty() {
                return Err(EvalError::input(p, "holds no text"));
            }
            documents.push((p.clone(), text));
        }
        Ok(Corpus { documents })
    }

    /// Token windows of `len + 1` tokens (`len` predictions each), split into
    /// training and held-out sets.
    pub fn windows(&self, tokenizer: &Tokenizer, len: usize) -> Result<Split> {
        if len < 2 {
            return Err(EvalError::invalid(format!(
                "sequence length {len} is too short (at least 2)"
            )));
        }
        let mut split = Split::default();
        for (path, text) in &self.documents {
            let ids = encode(tokenizer, text)?;
            for (i, w) in ids.chunks_exact(len + 1).enumerate() {
                if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 {
                    split.held_out.push(w.to_vec());
                } else {
                    split.train.push(w.to_vec());
                }
            }
            split.tokens += ids.len();
            if ids.len() < len + 1 {
                split.too_short.push(path.clone());
            }
        }
        Ok(split)
    }

    /// Non-empty paragraphs (blocks separated by blank lines) with at least
    /// `min_words` words, whitespace collapsed; for sentence-embedding models.
    pub fn paragraphs(&self, min_words: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (_, text) in &self.documents {
            for block in text.split("\n\n") {
                let words: Vec<&str> = block.split_whitespace().collect();
                if words.len() >= min_words {
                    out.push(words.join(" "));
                }
            }
        }
        out
    }
}

/// Training and held-out token windows.
#[derive(Clone, Debug, Default)]
pub struct Split {
    /// Windows to train on.
    pub train: Vec<Vec<u32>>,
    /// Windows never trained on.
    pub held_out: Vec<Vec<u32>>,
    /// Tokens in all documents.
    pub tokens: usize,
    /// Documents shorter than one window (they contribute nothing).
    pub too_short: Vec<PathBuf>,
}

impl Split {
    /// All windows, training first (for evaluating a model on the whole text).
    pub fn all(&self) -> Vec<Vec<u32>> {
        self.train.iter().chain(&self.held_out).cloned().collect()
    }
}
