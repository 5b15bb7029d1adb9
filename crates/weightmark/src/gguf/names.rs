//! llama.cpp tensor names to Hugging Face names, and undoing the Q/K row
//! permutation llama.cpp's converter applies for its RoPE layout.
//!
//! Covered: architectures `llama` (which llama.cpp also uses for Mistral and
//! SmolLM), `mistral`, `qwen2` and `qwen3`. Only `llama` and `mistral` have their
//! Q/K rows permuted by the converter; Qwen uses the NeoX RoPE layout and is
//! stored unpermuted. Other architectures keep their GGUF names.

/// Architectures whose tensor names are mapped.
pub const MAPPED_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// Whether llama.cpp permuted the Q/K rows of this architecture.
pub fn qk_permuted(architecture: &str) -> bool {
    matches!(architecture, "llama" | "mistral")
}

/// The Hugging Face name of a llama.cpp tensor name, for mapped architectures.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = tail.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The llama.cpp name of a Hugging Face Llama tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (part, suffix) = tail.rsplit_once('.')?;
    let g = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Which permutation (by head count) a tensor needs undone, if any.
pub enum QkHeads {
    /// Query rows: the attention head count.
    Query,
    /// Key rows: the key/value head count.
    Key,
}

/// Whether a GGUF tensor is a permuted Q or K projection (weight or bias).
pub fn qk_kind(gguf_name: &str) -> Option<QkHeads> {
    let part = gguf_name.strip_prefix("blk.")?.split_once('.')?.1;
    if part.starts_with("attn_q.") {
        Some(QkHeads::Query)
    } else if part.starts_with("attn_k.") {
        Some(QkHeads::Key)
    } else {
        None
    }
}

/// Undoes llama.cpp's permutation of the rows of a Q or K projection.
///
/// The converter reshapes the `rows x cols` matrix to
/// `(heads, 2, rows/heads/2, cols)` and swaps axes 1 and 2, interleaving the
/// two halves of each head: GGUF row `h*d + 2i + s` is Hugging Face row
/// `h*d + s*(d/2) + i` (with `d = rows/heads`). `values` is row-major.
pub fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Option<Vec<f32>> {
    move_rows(values, rows, cols, heads, |gguf, hf| (gguf, hf))
}

/// Applies llama.cpp's permutation (the inverse of [`unpermute_rows`]).
pub fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Option<Vec<f32>> {
    move_rows(values, rows, cols, heads, |gguf, hf| (hf, gguf))
}

/// Whether `rows` rows split into `heads` heads of an even number of rows
/// each, as [`permute_rows`] and [`unpermute_rows`] need.
pub fn splits_into_heads(rows: usize, heads: usize) -> bool {
    heads > 0 && heads <= rows && rows % heads == 0 && (rows / heads) % 2 == 0
}

/// Copies each row between its GGUF and Hugging Face positions; `route`
/// turns (GGUF row, HF row) into (source row, destination row).
fn move_rows(
    values: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
    route: impl Fn(usize, usize) -> (usize, usize),
) -> Option<Vec<f32>> {
    if !splits_into_heads(rows, heads) {
        return None;
    }
    if rows.checked_mul(cols) != Some(values.len()) {
        return None;
    }
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for s in 0..2 {
                let (src, dst) = route(h * d + 2 * i + s, h * d + s * half + i);
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // Hugging Face rows 0..8 of one head (d = 8): halves a0..a3, b0..b3.
        let heads = 2;
        let rows = 16;
        let hf: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        // The converter's permutation: GGUF row h*d + 2i + s holds HF row h*d + s*4 + i.
        let mut gguf = vec![0f32; rows];
        for h in 0..heads {
            for i in 0..4 {
                for s in 0..2 {
                    gguf[h * 8 + 2 * i + s] = hf[h * 8 + s * 4 + i];
                }
            }
        }
        assert_eq!(unpermute_rows(&gguf, rows, 1, heads), Some(hf));
        assert_eq!(unpermute_rows(&gguf, rows, 1, 3), None);
    }
}
