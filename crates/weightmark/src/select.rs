//! Which tensors carry the mark.
//!
//! By default: every tensor of a markable float dtype (F64, F32, F16, BF16)
//! with at least two dimensions and at least 4096 elements, i.e. the weight
//! matrices and embeddings that make up almost all of a model's parameters.
//! Norms, biases and integer tensors are left alone (copied byte for byte).
//! `--tensors GLOB` replaces the default with the tensors matching any glob.

use glob::Pattern;

use crate::error::{Error, Result};
use crate::model::{Model, TensorRef};

/// Smallest tensor the default selection marks.
pub const MIN_DEFAULT_ELEMENTS: usize = 4096;

/// How tensors are chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    /// The default rule (see the module docs).
    #[default]
    Default,
    /// Tensors whose names match any of these globs.
    Globs(Vec<String>),
}

/// Whether the default rule selects this tensor.
pub fn is_default_selected(t: &TensorRef<'_>) -> bool {
    t.dtype.is_markable() && t.shape.len() >= 2 && t.elements() >= MIN_DEFAULT_ELEMENTS
}

/// Names of the selected tensors, in model order.
pub fn select(model: &Model, selection: &Selection) -> Result<Vec<String>> {
    let names: Vec<String> = match selection {
        Selection::Default => {
            model.tensors().filter(is_default_selected).map(|t| t.name.to_string()).collect()
        }
        Selection::Globs(globs) => {
            let patterns = globs
                .iter()
                .map(|g| {
                    Pattern::new(g).map_err(|e| Error::Selection {
                        reason: format!("tensor pattern '{g}' is not a valid glob: {e}"),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            for (glob, pattern) in globs.iter().zip(&patterns) {
                if !model.tensors().any(|t| pattern.matches(t.name)) {
                    return Err(Error::Selection {
                        reason: format!("tensor pattern '{glob}' matches no tensor of the model"),
                    });
                }
            }
            let mut chosen = Vec::new();
            for t in model.tensors().filter(|t| patterns.iter().any(|p| p.matches(t.name))) {
                if !t.dtype.is_markable() {
                    return Err(Error::Selection {
                        reason: format!(
                            "tensor '{}' is {}; only F64, F32, F16 and BF16 tensors can be marked \
                             (narrow the --tensors glob)",
                            t.name, t.dtype
                        ),
                    });
                }
                chosen.push(t.name.to_string());
            }
            chosen
        }
    };
    if names.is_empty() {
        return Err(Error::Selection {
            reason: "no tensor to mark: the default selection needs float tensors with at least \
                     2 dimensions and 4096 elements (use --tensors to choose others)"
                .into(),
        });
    }
    Ok(names)
}
