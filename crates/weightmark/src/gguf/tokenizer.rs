//! A Hugging Face `tokenizer.json` and `tokenizer_config.json` from a GGUF
//! file's tokenizer metadata, for byte-level BPE vocabularies
//! (`tokenizer.ggml.model == "gpt2"`).
//!
//! GGUF stores the vocabulary by id (`tokenizer.ggml.tokens`, already in
//! GPT-2's byte-to-unicode form such as `Ġthe`), one type per token
//! (`tokenizer.ggml.token_type`), the merges as `"a b"` strings
//! (`tokenizer.ggml.merges`) and, in `tokenizer.ggml.pre`, the name llama.cpp
//! gives the pre-tokenizer. Only names whose Hugging Face pre-tokenizer is
//! known exactly are exported (`gpt2`, `smollm`); for any other, nothing is
//! guessed and [`TokenizerExport::Unsupported`] says why.
//!
//! Everything is checked before use: element types, matching lengths, merge
//! parts and results present in the vocabulary (the `tokenizers` crate refuses
//! a file otherwise), unique token strings and special ids inside the
//! vocabulary. A problem is a [`FormatError::Gguf`] naming the key. The JSON
//! is built in a fixed order, so the same file always gives the same bytes.

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

use super::reader::{GgufFile, Value};
use crate::error::FormatError;

/// Token type of a control token (`<|endoftext|>`, `<|im_start|>`, ...).
const TYPE_CONTROL: i64 = 3;
/// Token type of a user-defined token.
const TYPE_USER_DEFINED: i64 = 4;
/// Largest token type llama.cpp defines (6: byte).
const TYPE_MAX: i64 = 6;

/// The two Hugging Face tokenizer files built from GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct HfTokenizer {
    /// Contents of `tokenizer.json`.
    pub tokenizer: Json,
    /// Contents of `tokenizer_config.json`.
    pub config: Json,
}

/// What a GGUF file's tokenizer metadata allows.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerExport {
    /// The file has no `tokenizer.ggml.model`.
    Absent,
    /// The file has a tokenizer this tool does not export; the text says why.
    Unsupported(String),
    /// The Hugging Face files.
    Files(HfTokenizer),
}

/// Builds the Hugging Face tokenizer files from `gguf`'s metadata.
///
/// Returns [`TokenizerExport::Absent`] or [`TokenizerExport::Unsupported`]
/// when there is nothing to export, and an error when the metadata of a
/// byte-level BPE tokenizer is malformed.
pub fn to_hf_tokenizer(gguf: &GgufFile) -> Result<TokenizerExport, FormatError> {
    let Some(model) = optional_str(gguf, "tokenizer.ggml.model")? else {
        return Ok(TokenizerExport::Absent);
    };
    if model != "gpt2" {
        return Ok(TokenizerExport::Unsupported(format!(
            "tokenizer.ggml.model '{}' is not exported (only 'gpt2', byte-level BPE)",
            model.escape_debug()
        )));
    }
    let pre = optional_str(gguf, "tokenizer.ggml.pre")?;
    let Some(pre_tokenizer) = pre.and_then(pre_tokenizer) else {
        return Ok(TokenizerExport::Unsupported(format!(
            "tokenizer.ggml.pre {} has no known Hugging Face pre-tokenizer here \
             (supported: 'gpt2', 'smollm')",
            pre.map_or("is missing and".into(), |p| format!("'{}'", p.escape_debug()))
        )));
    };

    let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(bad("tokenizer.ggml.tokens", "is empty"));
    }
    let types = token_types(gguf, tokens.len())?;
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if let Some(first) = ids.insert(token, id) {
            return Err(bad(
                "tokenizer.ggml.tokens",
                &format!("token '{}' appears at ids {first} and {id}", token.escape_debug()),
            ));
        }
    }
    let merges = string_array(gguf, "tokenizer.ggml.merges")?;
    for (i, merge) in merges.iter().enumerate() {
        check_merge(merge, &ids).map_err(|why| {
            bad("tokenizer.ggml.merges", &format!("entry {i} '{}' {why}", merge.escape_debug()))
        })?;
    }
    let special = |name: &str| -> Result<Option<(usize, &str)>, FormatError> {
        let key = format!("tokenizer.ggml.{name}_token_id");
        let Some(value) = gguf.metadata.get(&key) else { return Ok(None) };
        let id = value.as_u64().and_then(|id| usize::try_from(id).ok());
        match id.and_then(|id| tokens.get(id).map(|t| (id, t.as_str()))) {
            Some(found) => Ok(Some(found)),
            None => Err(bad(
                &key,
                &format!("is not a token id below the vocabulary size {}", tokens.len()),
            )),
        }
    };
    let bos = special("bos")?;
    let eos = special("eos")?;
    let unk = special("unknown")?;
    let pad = special("padding")?;
    let add_bos = optional_bool(gguf, "tokenizer.ggml.add_bos_token")?;
    let add_eos = optional_bool(gguf, "tokenizer.ggml.add_eos_token")?;
    let bos_added = added(add_bos, bos, "tokenizer.ggml.add_bos_token", "bos")?;
    let eos_added = added(add_eos, eos, "tokenizer.ggml.add_eos_token", "eos")?;

    let added_tokens: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (token, ty))| {
            !token.is_empty() && (**ty == TYPE_CONTROL || **ty == TYPE_USER_DEFINED)
        })
        .map(|(id, (token, ty))| {
            json!({
                "id": id,
                "content": token,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": *ty == TYPE_CONTROL,
            })
        })
        .collect();
    let vocab: Map<String, Json> =
        tokens.iter().enumerate().map(|(id, t)| (t.clone(), json!(id))).collect();
    let byte_level = |add_prefix_space: bool, trim_offsets: bool| {
        json!({
            "type": "ByteLevel",
            "add_prefix_space": add_prefix_space,
            "trim_offsets": trim_offsets,
            "use_regex": true,
        })
    };
    let post_processor = if bos_added.is_some() || eos_added.is_some() {
        json!({
            "type": "Sequence",
            "processors": [byte_level(true, false), template(bos_added, eos_added)],
        })
    } else {
        byte_level(true, false)
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true, true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    });

    let mut config = Map::new();
    for (name, token) in
        [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)]
    {
        if let Some((_, text)) = token {
            config.insert(name.into(), json!(text));
        }
    }
    config.insert("add_bos_token".into(), json!(bos_added.is_some()));
    if add_eos.is_some() {
        config.insert("add_eos_token".into(), json!(eos_added.is_some()));
    }
    let context = gguf.architecture().and_then(|a| gguf.meta_u64(&format!("{a}.context_length")));
    if let Some(context) = context {
        config.insert("model_max_length".into(), json!(context));
    }
    if let Some(template) = optional_str(gguf, "tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    // The generic class loads tokenizer.json as written; a model-specific class
    // (LlamaTokenizerFast, say) would replace the post-processor.
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(TokenizerExport::Files(HfTokenizer { tokenizer, config: Json::Object(config) }))
}

/// The Hugging Face pre-tokenizer equivalent to llama.cpp's pre-tokenizer `name`.
fn pre_tokenizer(name: &str) -> Option<Json> {
    let byte_level = json!({
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": true,
        "use_regex": true,
    });
    match name {
        "gpt2" => Some(byte_level),
        // llama.cpp splits every digit first (`\p{N}`), then applies GPT-2's regex.
        "smollm" => Some(json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level],
        })),
        _ => None,
    }
}

/// A `TemplateProcessing` that adds the given special tokens around each sequence.
fn template(bos: Option<(usize, &str)>, eos: Option<(usize, &str)>) -> Json {
    let special = |token: Option<(usize, &str)>, type_id: u32| {
        token.map(|(_, text)| json!({"SpecialToken": {"id": text, "type_id": type_id}}))
    };
    let sequence = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let single: Vec<Json> =
        [special(bos, 0), Some(sequence("A", 0)), special(eos, 0)].into_iter().flatten().collect();
    let pair: Vec<Json> = [
        special(bos, 0),
        Some(sequence("A", 0)),
        special(eos, 0),
        special(bos, 1),
        Some(sequence("B", 1)),
        special(eos, 1),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut special_tokens = Map::new();
    for (id, text) in [bos, eos].into_iter().flatten() {
        special_tokens.insert(text.into(), json!({"id": text, "ids": [id], "tokens": [text]}));
    }
    json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special_tokens,
    })
}

/// The special token to add when `flag` is true; an error if it has no id.
fn added<'a>(
    flag: Option<bool>,
    token: Option<(usize, &'a str)>,
    key: &str,
    name: &str,
) -> Result<Option<(usize, &'a str)>, FormatError> {
    match (flag, token) {
        (Some(true), None) => {
            Err(bad(key, &format!("is true but tokenizer.ggml.{name}_token_id is missing")))
        }
        (Some(true), token) => Ok(token),
        _ => Ok(None),
    }
}

/// Checks that `merge` is two vocabulary tokens whose concatenation is one too.
fn check_merge(merge: &str, ids: &HashMap<&str, usize>) -> Result<(), &'static str> {
    let mut parts = merge.split(' ');
    let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("is not two tokens separated by one space");
    };
    if !ids.contains_key(a) || !ids.contains_key(b) {
        return Err("names a token outside the vocabulary");
    }
    if !ids.contains_key(format!("{a}{b}").as_str()) {
        return Err("makes a token outside the vocabulary");
    }
    Ok(())
}

/// The token types, one per token (all normal when the key is absent).
fn token_types(gguf: &GgufFile, count: usize) -> Result<Vec<i64>, FormatError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let Some(value) = gguf.metadata.get(KEY) else { return Ok(vec![1; count]) };
    let Value::Array(items) = value else { return Err(bad(KEY, "is not an array")) };
    if items.len() != count {
        return Err(bad(
            KEY,
            &format!("has {} entries for {count} tokens in tokenizer.ggml.tokens", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let ty = match v {
                Value::I64(t) => Some(t),
                Value::U64(t) => i64::try_from(t).ok(),
                _ => None,
            };
            ty.filter(|t| (0..=TYPE_MAX).contains(t))
                .ok_or_else(|| bad(KEY, &format!("entry {i} is not a token type from 0 to 6")))
        })
        .collect()
}

/// A required array of strings.
fn string_array(gguf: &GgufFile, key: &str) -> Result<Vec<String>, FormatError> {
    let Some(value) = gguf.metadata.get(key) else {
        return Err(bad(key, "is missing (tokenizer.ggml.model is 'gpt2')"));
    };
    let Value::Array(items) = value else { return Err(bad(key, "is not an array")) };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(key, &format!("entry {i} is not a string")))
        })
        .collect()
}

/// An optional string.
fn optional_str<'a>(gguf: &'a GgufFile, key: &str) -> Result<Option<&'a str>, FormatError> {
    match gguf.metadata.get(key) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(_) => Err(bad(key, "is not a string")),
    }
}

/// An optional boolean.
fn optional_bool(gguf: &GgufFile, key: &str) -> Result<Option<bool>, FormatError> {
    match gguf.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(key, "is not a boolean")),
    }
}

fn bad(key: &str, reason: &str) -> FormatError {
    FormatError::Gguf { reason: format!("{key} {reason}") }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::Str(s.to_string())).collect::<Vec<_>>().into())
    }

    /// A tiny byte-level BPE vocabulary: one control token, then `h`, `e`, `he`, `Ġ`, `Ġhe`.
    fn gguf(pre: &str) -> GgufFile {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Value| m.insert(k.to_string(), v);
        put("general.architecture", Value::Str("llama".into()));
        put("llama.context_length", Value::U64(2048));
        put("tokenizer.ggml.model", Value::Str("gpt2".into()));
        put("tokenizer.ggml.pre", Value::Str(pre.into()));
        put(
            "tokenizer.ggml.tokens",
            strings(&["<|endoftext|>", "h", "e", "he", "Ġ", "Ġhe", "<u>"]),
        );
        put(
            "tokenizer.ggml.token_type",
            Value::Array(
                [3, 1, 1, 1, 1, 1, 4].into_iter().map(Value::I64).collect::<Vec<_>>().into(),
            ),
        );
        put("tokenizer.ggml.merges", strings(&["h e", "Ġ he"]));
        put("tokenizer.ggml.bos_token_id", Value::U64(0));
        put("tokenizer.ggml.eos_token_id", Value::U64(0));
        put("tokenizer.ggml.add_bos_token", Value::Bool(false));
        GgufFile { version: 3, metadata: m, tensors: Vec::new() }
    }

    fn files(g: &GgufFile) -> HfTokenizer {
        match to_hf_tokenizer(g) {
            Ok(TokenizerExport::Files(f)) => f,
            other => panic!("expected files, got {other:?}"),
        }
    }

    fn error(g: &GgufFile) -> String {
        match to_hf_tokenizer(g) {
            Err(e) => e.to_string(),
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn smollm_vocabulary_becomes_a_bpe_tokenizer() {
        let f = files(&gguf("smollm"));
        let t = &f.tokenizer;
        let vocab = &t["model"]["vocab"];
        assert_eq!(vocab["<|endoftext|>"], 0);
        assert_eq!(vocab["Ġhe"], 5);
        let keys: Vec<&String> = vocab.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        assert_eq!(keys, ["<|endoftext|>", "h", "e", "he", "Ġ", "Ġhe", "<u>"]);
        assert_eq!(t["model"]["merges"], json!(["h e", "Ġ he"]));
        assert_eq!(t["model"]["type"], "BPE");
        assert_eq!(t["model"]["unk_token"], Json::Null);
        assert_eq!(
            t["added_tokens"],
            json!([
                {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 6, "content": "<u>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": false},
            ])
        );
        assert_eq!(t["pre_tokenizer"]["type"], "Sequence");
        assert_eq!(t["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
        assert_eq!(t["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
        assert_eq!(t["post_processor"]["type"], "ByteLevel");
        assert_eq!(t["decoder"]["type"], "ByteLevel");
        assert_eq!(t["normalizer"], Json::Null);
        assert_eq!(
            f.config,
            json!({
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "add_bos_token": false,
                "model_max_length": 2048,
                "clean_up_tokenization_spaces": false,
                "tokenizer_class": "PreTrainedTokenizerFast",
            })
        );
        // Same input, same bytes.
        let again = files(&gguf("smollm"));
        assert_eq!(t.to_string(), again.tokenizer.to_string());
    }

    #[test]
    fn gpt2_pre_is_plain_byte_level_and_bos_adds_a_template() {
        let mut g = gguf("gpt2");
        g.metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        let f = files(&g);
        assert_eq!(f.tokenizer["pre_tokenizer"]["type"], "ByteLevel");
        let post = &f.tokenizer["post_processor"];
        assert_eq!(post["type"], "Sequence");
        assert_eq!(post["processors"][1]["type"], "TemplateProcessing");
        assert_eq!(
            post["processors"][1]["single"][0],
            json!({"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}})
        );
        assert_eq!(f.config["add_bos_token"], true);
    }

    #[test]
    fn unknown_or_missing_pre_tokenizer_exports_nothing() {
        for pre in ["llama-bpe", "default"] {
            let r = to_hf_tokenizer(&gguf(pre));
            assert!(
                matches!(r, Ok(TokenizerExport::Unsupported(ref m)) if m.contains(pre)),
                "{r:?}"
            );
        }
        let mut g = gguf("smollm");
        g.metadata.remove("tokenizer.ggml.pre");
        assert!(matches!(to_hf_tokenizer(&g), Ok(TokenizerExport::Unsupported(_))));
        g.metadata.insert("tokenizer.ggml.model".into(), Value::Str("llama".into()));
        assert!(matches!(to_hf_tokenizer(&g), Ok(TokenizerExport::Unsupported(_))));
        g.metadata.remove("tokenizer.ggml.model");
        assert_eq!(to_hf_tokenizer(&g), Ok(TokenizerExport::Absent));
    }

    #[test]
    fn malformed_metadata_is_an_error_naming_the_key() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("tokenizer.ggml.tokens", Value::Str("x".into()), "is not an array"),
            (
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::U64(1)].into()),
                "entry 0 is not a string",
            ),
            (
                "tokenizer.ggml.tokens",
                strings(&["<|endoftext|>", "h", "e", "he", "Ġ", "Ġhe", "h"]),
                "token 'h' appears at ids 1 and 6",
            ),
            ("tokenizer.ggml.merges", Value::Array(vec![Value::Bool(true)].into()), "not a string"),
            ("tokenizer.ggml.merges", strings(&["h e x"]), "two tokens"),
            ("tokenizer.ggml.merges", strings(&["h z"]), "outside the vocabulary"),
            ("tokenizer.ggml.merges", strings(&["e h"]), "makes a token outside"),
            (
                "tokenizer.ggml.token_type",
                Value::Array(vec![Value::I64(1)].into()),
                "has 1 entries for 7",
            ),
            ("tokenizer.ggml.token_type", Value::Str("x".into()), "is not an array"),
            ("tokenizer.ggml.bos_token_id", Value::U64(7), "below the vocabulary size 7"),
            ("tokenizer.ggml.add_bos_token", Value::U64(1), "is not a boolean"),
            ("tokenizer.ggml.pre", Value::U64(1), "is not a string"),
        ];
        for (key, value, expected) in cases {
            let mut g = gguf("smollm");
            g.metadata.insert(key.into(), value);
            let message = error(&g);
            assert!(message.contains(key) && message.contains(expected), "{key}: {message}");
        }
        let mut g = gguf("smollm");
        g.metadata.remove("tokenizer.ggml.merges");
        assert!(error(&g).contains("tokenizer.ggml.merges is missing"));
        g = gguf("smollm");
        g.metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        g.metadata.remove("tokenizer.ggml.bos_token_id");
        assert!(error(&g).contains("bos_token_id is missing"));
    }
}

/// The GGUF tokenizer metadata llama.cpp's converter writes, built from the
/// Hugging Face files beside a model, or why none is written.
#[derive(Clone, Debug)]
pub enum GgufTokenizer {
    /// `tokenizer.ggml.*` and `tokenizer.chat_template` keys, in the order
    /// llama.cpp's converter writes them.
    Keys(Vec<(String, super::meta::Kv)>),
    /// No tokenizer is written; the text says why (llama.cpp then cannot run
    /// the file, but every weightmark command can read it).
    None(String),
}

/// Largest `tokenizer.json` / `tokenizer_config.json` read.
const MAX_TOKENIZER_LEN: u64 = 64 << 20;

/// The inverse of [`to_hf_tokenizer`] for byte-level BPE: reads
/// `tokenizer.json` and `tokenizer_config.json` in `dir` and returns the
/// GGUF keys llama.cpp's `convert_hf_to_gguf.py` writes for them
/// (`tokenizer.ggml.model = "gpt2"`, the vocabulary by id, token types, merges
/// as `"a b"`, the special token ids, `add_bos_token`, the chat template).
/// Only the pre-tokenizers [`to_hf_tokenizer`] knows are mapped back (`gpt2`,
/// `smollm`); any other tokenizer gives [`GgufTokenizer::None`] with the
/// reason. `vocab` is the model's vocabulary size: the token list must fill it.
pub fn to_gguf_tokenizer(dir: &std::path::Path, vocab: usize) -> crate::Result<GgufTokenizer> {
    use super::meta::Kv;
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(GgufTokenizer::None(format!("no tokenizer.json in {}", dir.display())));
    }
    let read = |p: &std::path::Path| -> crate::Result<Json> {
        let bytes = crate::io::read_capped(p, MAX_TOKENIZER_LEN)?;
        serde_json::from_slice(&bytes).map_err(|e| crate::Error::NotAModel {
            path: p.to_path_buf(),
            reason: format!("not JSON: {e}"),
        })
    };
    let tok = read(&path)?;
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.is_file() { read(&config_path)? } else { json!({}) };
    let none = |why: &str| Ok(GgufTokenizer::None(format!("{}: {why}", path.display())));
    let model = &tok["model"];
    if model["type"] != "BPE" {
        return none("not a BPE tokenizer");
    }
    let pre = match &tok["pre_tokenizer"] {
        p if *p == pre_tokenizer("gpt2").unwrap_or_default() => "gpt2",
        p if *p == pre_tokenizer("smollm").unwrap_or_default() => "smollm",
        _ => return none("its pre-tokenizer has no llama.cpp name known here (gpt2, smollm)"),
    };
    let Some(vocab_map) = model["vocab"].as_object() else { return none("no model.vocab") };
    let mut tokens: Vec<Option<String>> = vec![None; vocab];
    let mut types = vec![1i32; vocab];
    let mut place = |id: Option<u64>, text: &str| -> Result<usize, String> {
        let id =
            id.and_then(|i| usize::try_from(i).ok()).filter(|&i| i < vocab).ok_or_else(|| {
                format!(
                    "token '{}' has an id outside the vocabulary of {vocab}",
                    text.escape_debug()
                )
            })?;
        tokens[id] = Some(text.to_string());
        Ok(id)
    };
    for (text, id) in vocab_map {
        if let Err(why) = place(id.as_u64(), text) {
            return none(&why);
        }
    }
    for added in tok["added_tokens"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(text) = added["content"].as_str() else {
            return none("an added token has no content");
        };
        match place(added["id"].as_u64(), text) {
            Ok(id) => {
                types[id] = if added["special"] == true {
                    TYPE_CONTROL as i32
                } else {
                    TYPE_USER_DEFINED as i32
                }
            }
            Err(why) => return none(&why),
        }
    }
    let Some(tokens) = tokens.into_iter().collect::<Option<Vec<String>>>() else {
        return none(&format!("the vocabulary does not cover every id below {vocab}"));
    };
    let mut merges = Vec::new();
    for m in model["merges"].as_array().map(Vec::as_slice).unwrap_or_default() {
        match (m.as_str(), m.as_array()) {
            (Some(s), _) => merges.push(s.to_string()),
            (_, Some(pair)) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => merges.push(format!("{a} {b}")),
                _ => return none("a merge is not two strings"),
            },
            _ => return none("a merge is neither \"a b\" nor [a, b]"),
        }
    }
    let ids: HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let special_id = |key: &str| -> Option<u32> {
        let text = match &config[key] {
            Json::String(s) => Some(s.as_str()),
            v => v["content"].as_str(),
        }?;
        ids.get(text).and_then(|&i| u32::try_from(i).ok())
    };
    let mut specials: Vec<(String, Kv)> = Vec::new();
    for (name, key) in [
        ("bos", "bos_token"),
        ("eos", "eos_token"),
        ("unknown", "unk_token"),
        ("padding", "pad_token"),
    ] {
        if let Some(id) = special_id(key) {
            specials.push((format!("tokenizer.ggml.{name}_token_id"), Kv::U32(id)));
        }
    }
    drop(ids);
    let add_prefix_space = tok["pre_tokenizer"]["add_prefix_space"].as_bool().unwrap_or(false)
        || tok["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"].as_bool().unwrap_or(false);
    let mut keys: Vec<(String, Kv)> = vec![
        ("tokenizer.ggml.add_space_prefix".into(), Kv::Bool(add_prefix_space)),
        ("tokenizer.ggml.add_bos_token".into(), Kv::Bool(config["add_bos_token"] == true)),
        ("tokenizer.ggml.model".into(), Kv::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Kv::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), Kv::Strings(tokens)),
        ("tokenizer.ggml.token_type".into(), Kv::I32s(types)),
        ("tokenizer.ggml.merges".into(), Kv::Strings(merges)),
    ];
    keys.extend(specials);
    if let Some(add_eos) = config["add_eos_token"].as_bool() {
        keys.push(("tokenizer.ggml.add_eos_token".into(), Kv::Bool(add_eos)));
    }
    if let Some(template) = config["chat_template"].as_str() {
        keys.push(("tokenizer.chat_template".into(), Kv::Str(template.into())));
    }
    Ok(GgufTokenizer::Keys(keys))
}
