//! Formatting for people: numbers, and text from inputs made safe to print.

use std::path::Path;

/// `22.7M`, `85.1k`, `512`.
pub fn count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// `1.2 MB`, `340 B`.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// A p-value bound as a phrase: `p <= 3.2e-44`, `p <= 1`, or `p < 1e-300`
/// when `exp(-z^2/2)` underflows.
pub fn p_bound(p: f64) -> String {
    if p >= 1.0 {
        "p <= 1".into()
    } else if p == 0.0 {
        "p < 1e-300".into()
    } else {
        format!("p <= {p:.1e}")
    }
}

/// Text that came from an input (a tensor name, a label, a path, a library
/// message quoting them), safe to print on a terminal: control characters
/// (C0, DEL, C1), which could move the cursor, rewrite the screen or run
/// terminal escape sequences, and the Unicode controls that reorder a line,
/// are written as escapes (`\n`, `\t`, `\u{1b}`); everything else is kept.
/// Applying it twice changes nothing more.
pub fn safe(text: &str) -> String {
    escape(text, false)
}

/// A path as [`safe`] text.
pub fn path(p: &Path) -> String {
    safe(&p.display().to_string())
}

/// [`safe`], but keeping line breaks and writing each escape as JSON does
/// (`\u001b`, `\u202e`): for whole outputs whose lines the command itself
/// made. JSON output is one of them, and serde_json leaves DEL, the C1
/// controls and the direction controls as they are; escaped this way, they
/// stay off the terminal and the output stays valid JSON with the same
/// strings.
pub fn safe_lines(text: &str) -> String {
    escape(text, true)
}

fn escape(text: &str, keep_newlines: bool) -> String {
    let unsafe_char = |c: char| {
        (c.is_control() && !(keep_newlines && c == '\n'))
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) && keep_newlines {
            // Every character escaped is in the Basic Multilingual Plane.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(22_700_000), "22.7M");
        assert_eq!(bytes(340), "340 B");
        assert_eq!(p_bound(0.0), "p < 1e-300");
        assert_eq!(p_bound(3.2e-44), "p <= 3.2e-44");
    }

    #[test]
    fn input_text_is_escaped_once() {
        let evil = "w\x1b]0;owned\x07\n\u{202e}x\u{9b}";
        let shown = safe(evil);
        assert_eq!(shown, "w\\u{1b}]0;owned\\u{7}\\n\\u{202e}x\\u{9b}");
        assert_eq!(safe(&shown), shown);
        assert_eq!(safe_lines("a\nb\x1b"), "a\nb\\u001b");
        // JSON with what serde_json does not escape stays JSON, same strings.
        let value = serde_json::json!({"name": "x\u{202e}y\u{7f}\u{9b}\u{2066}z\n"});
        let shown = safe_lines(&serde_json::to_string_pretty(&value).unwrap_or_default());
        assert!(!shown.contains(['\u{202e}', '\u{7f}', '\u{9b}', '\u{2066}']), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap_or_default();
        assert_eq!(back, value);
        assert_eq!(safe("model.layers.0.mlp.weight é"), "model.layers.0.mlp.weight é");
        assert_eq!(path(Path::new("a\rb")), "a\\rb");
    }
}
