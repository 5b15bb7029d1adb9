//! The JSON summary of a marking (file or in memory): release, fidelity and
//! the blind and informed statistics measured on the output.

use serde_json::{json, Map, Value};
use weightmark::{
    p_value_bound, z_for_p, Fidelity, Scheme, Stats, TensorSummary, DEFAULT_THRESHOLD_P,
};

/// What a marking measured.
pub struct Marked<'a> {
    /// Mark scheme.
    pub scheme: Scheme,
    /// Release label.
    pub label: &'a str,
    /// Recipient.
    pub recipient: Option<&'a str>,
    /// Strength used.
    pub strength: f64,
    /// Key id of the owner.
    pub signer: &'a str,
    /// Per marked tensor.
    pub tensors: &'a [TensorSummary],
    /// Over all marked tensors.
    pub fidelity: &'a Fidelity,
    /// Blind statistics of the output.
    pub blind: &'a Stats,
    /// Informed statistics of the output against the input, where measured.
    pub informed: Option<&'a Stats>,
}

/// A finite number, or JSON null (an SNR of an unchanged tensor is infinite).
fn number(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// Smallest strength at which blind z would reach the default threshold,
/// rounded up to three significant digits (the library's
/// `EmbedReport::strength_for_blind_threshold`, for in-memory markings too).
pub fn strength_for_blind_threshold(elements: u64) -> f64 {
    let exact = z_for_p(DEFAULT_THRESHOLD_P) / (elements.max(1) as f64).sqrt();
    let scale = 10f64.powi(2 - exact.log10().floor() as i32);
    (exact * scale).ceil() / scale
}

/// The summary object.
pub fn marking_summary(m: &Marked<'_>) -> Map<String, Value> {
    let tensors: Vec<Value> = m
        .tensors
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "elements": t.blind.elements,
                "blind_z": number(t.blind.z()),
                "relative_rms_change": number(t.fidelity.relative_rms_change()),
                "snr_db": number(t.fidelity.snr_db()),
                "max_abs_change": number(t.fidelity.max_abs_change),
            })
        })
        .collect();
    let blind_z = m.blind.z();
    let informed_z = m.informed.map_or(f64::NAN, Stats::z);
    let mut out = Map::new();
    out.insert("scheme".into(), json!(m.scheme.name()));
    out.insert("label".into(), json!(m.label));
    out.insert("recipient".into(), json!(m.recipient));
    out.insert("strength".into(), json!(m.strength));
    out.insert("signer".into(), json!(m.signer));
    out.insert("elements".into(), json!(m.blind.elements));
    out.insert("relative_rms_change".into(), number(m.fidelity.relative_rms_change()));
    out.insert("snr_db".into(), number(m.fidelity.snr_db()));
    out.insert("max_abs_change".into(), number(m.fidelity.max_abs_change));
    out.insert("blind_z".into(), number(blind_z));
    out.insert("blind_p_value".into(), number(p_value_bound(blind_z)));
    out.insert("informed_z".into(), number(informed_z));
    out.insert("informed_p_value".into(), number(p_value_bound(informed_z)));
    out.insert(
        "strength_for_blind_threshold".into(),
        number(strength_for_blind_threshold(m.blind.elements)),
    );
    out.insert("tensors".into(), Value::Array(tensors));
    out
}
