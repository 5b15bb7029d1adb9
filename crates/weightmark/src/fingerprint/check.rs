//! A fingerprint check: asking a suspect the keyed subset of a release's
//! triggers, scoring its answers, and the signed report of what was asked
//! and answered (docs/fingerprint.md, "Checks and their reports").
//!
//! The suspect is anything that answers a prompt ([`Asker`]): a local model
//! (the eval crate's forward pass) or an OpenAI-compatible endpoint
//! ([`super::Endpoint`]). The report records the triggers asked, the raw
//! answers, which matched, the exact p-value and the suspect: a local
//! model's digests, or the endpoint's address, API and model name.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{asked, normalise, score, FingerprintKey, Pair, SCHEME};
use crate::digest::{hex, Sha256Digest};
use crate::error::{Error, Result};
use crate::key::{PublicKey, SecretKey};
use crate::provenance::envelope::{
    digest_set, open_statement, predicate_type, sign_statement, Envelope, Statement, Subject, Tool,
    STATEMENT_TYPE, TENSOR_ROOT_ALGORITHM, TENSOR_ROOT_SUBJECT,
};
use crate::provenance::{Certificate, Dispute};

/// Predicate type of a fingerprint check report.
pub const CHECK_PREDICATE_TYPE: &str = "https://weightmark.dev/fingerprint-check/v1";

/// Something that answers a prompt: a local model or an endpoint.
pub trait Asker {
    /// The suspect's raw answer to `trigger`, asked after the system message
    /// `system` when there is one (else with no system message, so a chat
    /// template with a default one uses it).
    fn ask(&mut self, system: Option<&str>, trigger: &str) -> Result<String>;

    /// Appends the suspect's reply to each of `triggers` to `replies`, in
    /// order, each asked after `system`: its raw answer, or the
    /// [`Error::Refused`] of a trigger it would not answer (the next is
    /// then asked). One at a time by default; a local model answers them
    /// in one batch. Any other error stops the asking and is returned with
    /// the replies so far in `replies`: a check keeps them
    /// ([`CheckOutcome::stopped`]).
    fn ask_all(
        &mut self,
        system: Option<&str>,
        triggers: &[&str],
        replies: &mut Vec<Result<String>>,
    ) -> Result<()> {
        for t in triggers {
            match self.ask(system, t) {
                Err(e) if !matches!(e, Error::Refused { .. }) => return Err(e),
                reply => replies.push(reply),
            }
        }
        Ok(())
    }
}

/// A trigger sent that got no answer: refused ([`CheckOutcome::refused`])
/// or the one a check stopped at ([`Stopped`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unanswered {
    /// Its pair index.
    pub index: usize,
    /// The trigger (sent, so the suspect has seen it).
    pub trigger: String,
    /// Why no answer came, in words.
    pub reason: String,
}

/// Why a check stopped before every trigger of its round was asked (an
/// endpoint that failed part-way, after its retries). The p-value is over
/// the answers that came: under H0 each matches with probability at most
/// 1/N whatever the suspect saw, and when a suspect stops or refuses
/// depends only on what it saw (the triggers and its own answers,
/// independent of the keyed responses), so the bound holds for the number
/// answered (docs/fingerprint.md, "A check that stops part-way").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stopped {
    /// Pair index of the trigger that got no answer.
    pub index: usize,
    /// That trigger (sent, so the suspect has seen it).
    pub trigger: String,
    /// Why no answer came: the error, in words.
    pub reason: String,
    /// Triggers of the round after it, not asked.
    pub not_asked: usize,
}

/// Longest system message a check sends (bytes): a deployment's system
/// prompt, not a document.
pub const MAX_SYSTEM_PROMPT: usize = 16 * 1024;

/// How a check asks.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Triggers asked (a keyed subset; at least the release's count asks
    /// every trigger).
    pub per_check: usize,
    /// The round: which subset (docs/fingerprint.md, "Which triggers a check
    /// asks").
    pub round: u64,
    /// Decide "found" when the p-value is at most this.
    pub threshold_p: f64,
    /// A system message asked before every trigger (as a deployment that
    /// puts its own system prompt before each request would), recorded in
    /// the report; `None`: none.
    pub system: Option<String>,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            per_check: super::DEFAULT_ASKED,
            round: 0,
            threshold_p: crate::DEFAULT_THRESHOLD_P,
            system: None,
        }
    }
}

/// One trigger asked and its answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answered {
    /// The pair's index among the release's pairs.
    pub index: usize,
    /// The trigger asked.
    pub trigger: String,
    /// The suspect's raw answer.
    pub answer: String,
    /// The answer normalised (docs/fingerprint.md).
    pub normalised: String,
    /// Whether it is the keyed response.
    pub matched: bool,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckOutcome {
    /// Pairs in the release, K.
    pub count: usize,
    /// The round asked.
    pub round: u64,
    /// Every trigger asked, in the order asked, with its answer.
    pub asked: Vec<Answered>,
    /// Matches and the exact p-value.
    pub score: super::Score,
    /// The decision threshold on the p-value.
    pub threshold_p: f64,
    /// Whether `p <= threshold_p`.
    pub detected: bool,
    /// The system message asked before every trigger, if any.
    pub system: Option<String>,
    /// Triggers the suspect refused ([`Error::Refused`]), in the order
    /// asked; `asked` holds only those answered.
    pub refused: Vec<Unanswered>,
    /// Where the suspect stopped answering, when it failed after answering
    /// at least one trigger; `None` when every trigger of the round was
    /// asked.
    pub stopped: Option<Stopped>,
}

/// Asks `asker` the triggers of round `options.round` of the release whose
/// fingerprint key is `key` and which has `count` pairs, and scores the
/// answers. An error before the first answer is the check's error; one
/// after it stops the check, which scores the answers that came and says
/// where it stopped ([`CheckOutcome::stopped`]).
pub fn check(
    key: &FingerprintKey,
    count: usize,
    options: &CheckOptions,
    asker: &mut dyn Asker,
) -> Result<CheckOutcome> {
    if !(options.threshold_p > 0.0 && options.threshold_p < 1.0) {
        return Err(Error::invalid(format!(
            "threshold {} must be a probability between 0 and 1",
            options.threshold_p
        )));
    }
    let system = options.system.as_deref();
    if let Some(s) = system {
        check_system_prompt(s)?;
    }
    let pairs = key.pairs(count)?;
    let which = asked(key, count, options.per_check, options.round)?;
    let chosen: Vec<&Pair> = which.iter().filter_map(|&i| pairs.get(i)).collect();
    let triggers: Vec<&str> = chosen.iter().map(|p| p.trigger.as_str()).collect();
    let mut replies = Vec::with_capacity(triggers.len());
    let failure = asker.ask_all(system, &triggers, &mut replies).err();
    if replies.len() > triggers.len() || (failure.is_none() && replies.len() != triggers.len()) {
        return Err(Error::invalid(format!(
            "{} replies to {} triggers",
            replies.len(),
            triggers.len()
        )));
    }
    let (mut answered, mut answers, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_refusal = None;
    for (pair, reply) in chosen.iter().zip(replies) {
        match reply {
            Ok(answer) => {
                answered.push(*pair);
                answers.push(answer);
            }
            Err(e) => {
                let reason = reason_of(&e);
                refused.push(Unanswered {
                    index: pair.index,
                    trigger: pair.trigger.clone(),
                    reason,
                });
                first_refusal.get_or_insert(e);
            }
        }
    }
    let sent = answered.len() + refused.len();
    let stopped = match failure {
        None => None,
        Some(Error::Endpoint { url, reason }) if answered.is_empty() && !refused.is_empty() => {
            let reason = format!("{reason} (after {} triggers refused)", refused.len());
            return Err(Error::Endpoint { url, reason });
        }
        Some(e) if answered.is_empty() => return Err(e),
        Some(e) => {
            let Some(pair) = chosen.get(sent) else {
                return Err(Error::invalid(format!("every trigger replied to, and then: {e}")));
            };
            let reason = reason_of(&e);
            Some(Stopped {
                index: pair.index,
                trigger: pair.trigger.clone(),
                reason,
                not_asked: chosen.len() - sent - 1,
            })
        }
    };
    if answered.is_empty() {
        // Every trigger refused: nothing to score, and most likely a request
        // the endpoint never serves (a wrong model name, a missing key).
        return Err(match first_refusal {
            Some(Error::Refused { url, reason }) => Error::Endpoint {
                url,
                reason: format!("{reason} (every one of the {sent} triggers was refused)"),
            },
            Some(e) => e,
            None => Error::invalid("no trigger asked"),
        });
    }
    let score = score(&answered, &answers)?;
    let asked = answered
        .iter()
        .zip(answers)
        .map(|(p, answer)| {
            let normalised = normalise(&answer);
            Answered {
                index: p.index,
                trigger: p.trigger.clone(),
                matched: normalised == p.response,
                answer,
                normalised,
            }
        })
        .collect();
    let detected = score.p_value <= options.threshold_p;
    Ok(CheckOutcome {
        count,
        round: options.round,
        asked,
        score,
        threshold_p: options.threshold_p,
        detected,
        system: options.system.clone(),
        refused,
        stopped,
    })
}

/// Why an asker gave no answer, in words: an endpoint's reason without its
/// URL (the report records the endpoint once), else the whole error.
fn reason_of(e: &Error) -> String {
    match e {
        Error::Refused { reason, .. } | Error::Endpoint { reason, .. } => reason.clone(),
        e => e.to_string(),
    }
}

/// Refuses a system message a check cannot send as it is: empty (a check
/// without one is the default, not an empty one) or longer than
/// [`MAX_SYSTEM_PROMPT`].
pub fn check_system_prompt(system: &str) -> Result<()> {
    if system.trim().is_empty() {
        return Err(Error::invalid("the system prompt is empty (leave it out to ask without one)"));
    }
    if system.len() > MAX_SYSTEM_PROMPT {
        return Err(Error::invalid(format!(
            "the system prompt has {} bytes, more than the {MAX_SYSTEM_PROMPT} a check sends",
            system.len()
        )));
    }
    Ok(())
}

/// The endpoint a check asked, as its report records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The base URL given.
    pub url: String,
    /// `"chat"` (`/v1/chat/completions`) or `"completions"`
    /// (`/v1/completions`).
    pub api: String,
    /// The `model` field sent, if any.
    pub model: Option<String>,
    /// What the responses named as serving the answers: each distinct
    /// pair of their `model` and `system_fingerprint` fields (the
    /// server's build, for llama.cpp and OpenAI), in the order first seen,
    /// with how many answers came with it. Responses with neither field
    /// are not counted; absent when none had one (and from reports before
    /// session 24).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_by: Vec<ServedBy>,
}

/// One distinct `model` and `system_fingerprint` of an endpoint's
/// responses ([`EndpointRecord::served_by`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServedBy {
    /// The response's `model` field, if it had one.
    pub model: Option<String>,
    /// The response's `system_fingerprint` field, if it had one.
    pub system_fingerprint: Option<String>,
    /// Answers that came with these.
    pub answers: usize,
}

/// The suspect of a check: a local model or an endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SuspectRecord {
    /// A local model's tensor root (hex).
    pub tensor_root: Option<String>,
    /// A local model's tensor digests (hex), by name.
    #[serde(default)]
    pub tensor_digests: BTreeMap<String, String>,
    /// The endpoint asked.
    pub endpoint: Option<EndpointRecord>,
}

impl SuspectRecord {
    /// What identifies the suspect in a dispute: a local model's tensor root,
    /// or `endpoint URL (API, model NAME)`.
    pub fn id(&self) -> String {
        match (&self.tensor_root, &self.endpoint) {
            (Some(root), _) => root.clone(),
            (None, Some(e)) => format!(
                "endpoint {} ({}, model {})",
                e.url,
                e.api,
                e.model.as_deref().unwrap_or("-")
            ),
            (None, None) => String::new(),
        }
    }
}

/// The release a check tested.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckedCertificate {
    /// SHA-256 (hex) of the certificate file.
    pub sha256: String,
    /// Key id that verified its signature (else the signer it claims).
    pub signer: String,
    /// The certificate's fingerprint-key commitment.
    pub fingerprint_key_commitment: String,
    /// Whether its signature was checked.
    pub signature_checked: bool,
}

/// The predicate of a fingerprint check report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FingerprintCheckPredicate {
    /// "fp1".
    pub scheme: String,
    /// Release label.
    pub label: String,
    /// Recipient, if any.
    pub recipient: Option<String>,
    /// The certificate tested.
    pub certificate: CheckedCertificate,
    /// The suspect.
    pub suspect: SuspectRecord,
    /// Pairs in the release, K.
    pub count: usize,
    /// The round asked.
    pub round: u64,
    /// The triggers asked, their raw answers and which matched.
    pub asked: Vec<Answered>,
    /// Answers that matched.
    pub matches: usize,
    /// `P(Binomial(asked, 1/256) >= matches)`.
    pub p_value: f64,
    /// `log10` of it (exact where `p_value` underflows).
    pub log10_p_value: f64,
    /// Decision threshold on the p-value.
    pub threshold_p: f64,
    /// The decision.
    pub detected: bool,
    /// The system message asked before every trigger, if any (absent from
    /// reports of checks without one, and from every report before it was
    /// added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Triggers the suspect refused, in the order asked (absent when none
    /// was).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Unanswered>,
    /// Where the suspect stopped answering, for a check it did not finish
    /// (absent when every trigger of the round was asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
    /// For a check with a revealed key: what it settles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispute: Option<Dispute>,
    /// Key id of whoever ran the check and signed the report.
    pub signer: String,
    /// The tool.
    pub tool: Tool,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

/// What a check report is built from.
pub struct CheckReportInputs<'a> {
    /// The check.
    pub outcome: &'a CheckOutcome,
    /// The certificate tested.
    pub certificate: &'a Certificate,
    /// A local suspect's files (name, SHA-256).
    pub suspect_files: &'a [(String, Sha256Digest)],
    /// A local suspect's tensor digests.
    pub suspect_tensors: Option<&'a [(String, Sha256Digest)]>,
    /// The endpoint asked.
    pub endpoint: Option<EndpointRecord>,
    /// What a revealed key settles, for a check with one.
    pub dispute: Option<&'a Dispute>,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

/// Builds and signs a check report with `signer`.
pub fn build_check_report(inputs: &CheckReportInputs<'_>, signer: &SecretKey) -> Result<Envelope> {
    let o = inputs.outcome;
    let cert = inputs.certificate;
    let fingerprint = cert.fingerprint()?;
    let mut subject: Vec<Subject> = inputs
        .suspect_files
        .iter()
        .map(|(name, sha)| Subject { name: name.clone(), digest: digest_set("sha256", hex(sha)) })
        .collect();
    let tensor_root = inputs.suspect_tensors.map(|t| hex(&crate::digest::tensor_root(t)));
    if let Some(root) = &tensor_root {
        subject.push(Subject {
            name: TENSOR_ROOT_SUBJECT.to_string(),
            digest: digest_set(TENSOR_ROOT_ALGORITHM, root.clone()),
        });
    }
    if let Some(e) = &inputs.endpoint {
        // An endpoint has no digest of its own: the subject is the transcript
        // (the JSON array of what was asked and answered).
        let transcript = serde_json::to_vec(&o.asked)
            .map_err(|e| Error::internal(format!("transcript: {e}")))?;
        subject.push(Subject {
            name: e.url.clone(),
            digest: digest_set("sha256", hex(&Sha256::digest(&transcript))),
        });
    }
    let p = cert.predicate();
    let statement = Statement {
        statement_type: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: CHECK_PREDICATE_TYPE.to_string(),
        predicate: FingerprintCheckPredicate {
            dispute: inputs.dispute.cloned(),
            signer: signer.public_key().key_id(),
            created: inputs.created.clone(),
            ..FingerprintCheckPredicate::of_outcome(
                o,
                (p.label.clone(), p.recipient.clone()),
                CheckedCertificate {
                    sha256: cert.digest.clone(),
                    signer: cert.verified_signer.clone().unwrap_or_else(|| p.signer.clone()),
                    fingerprint_key_commitment: fingerprint.key_commitment.clone(),
                    signature_checked: cert.signature_checked,
                },
                SuspectRecord {
                    tensor_root,
                    tensor_digests: inputs
                        .suspect_tensors
                        .unwrap_or_default()
                        .iter()
                        .map(|(n, d)| (n.clone(), hex(d)))
                        .collect(),
                    endpoint: inputs.endpoint.clone(),
                },
            )
        },
    };
    sign_statement(&statement, signer)
}

/// A parsed check report.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The statement.
    pub statement: Statement<FingerprintCheckPredicate>,
    /// SHA-256 (hex) of the file.
    pub digest: String,
    /// Whether the signature was checked.
    pub signature_checked: bool,
}

/// Reads a check report; checks its signature when `public` is given.
pub fn load_check_report(path: &Path, public: Option<&PublicKey>) -> Result<CheckReport> {
    let opened = open_statement(path, public)?;
    let statement = parse_check_statement(&opened.payload)
        .map_err(|reason| Error::Certificate { path: path.to_path_buf(), reason })?;
    Ok(CheckReport { statement, digest: opened.sha256, signature_checked: public.is_some() })
}

/// Parses a payload as a fingerprint check statement.
pub fn parse_check_statement(
    payload: &[u8],
) -> Result<Statement<FingerprintCheckPredicate>, String> {
    match predicate_type(payload) {
        Some(t) if t == CHECK_PREDICATE_TYPE => {}
        Some(t) => {
            return Err(format!("predicateType is '{t}', not a weightmark fingerprint check"))
        }
        None => return Err("payload is not an in-toto statement".into()),
    }
    let statement: Statement<FingerprintCheckPredicate> = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not a weightmark fingerprint check: {e}"))?;
    statement.predicate.consistent().map_err(|why| {
        format!("a fingerprint check whose numbers do not follow from its own answers: {why}")
    })?;
    Ok(statement)
}

impl FingerprintCheckPredicate {
    /// The predicate of a report of `o` on the release `(label, recipient)`
    /// of `certificate` about `suspect`, without a dispute, a signer or a
    /// creation time.
    fn of_outcome(
        o: &CheckOutcome,
        (label, recipient): (String, Option<String>),
        certificate: CheckedCertificate,
        suspect: SuspectRecord,
    ) -> FingerprintCheckPredicate {
        FingerprintCheckPredicate {
            scheme: SCHEME.to_string(),
            label,
            recipient,
            certificate,
            suspect,
            count: o.count,
            round: o.round,
            asked: o.asked.clone(),
            matches: o.score.matches,
            p_value: o.score.p_value,
            log10_p_value: o.score.log10_p,
            threshold_p: o.threshold_p,
            detected: o.detected,
            system: o.system.clone(),
            refused: o.refused.clone(),
            stopped: o.stopped.clone(),
            dispute: None,
            signer: String::new(),
            tool: Tool { name: "weightmark".into(), version: env!("CARGO_PKG_VERSION").into() },
            created: String::new(),
        }
    }

    /// What anyone can recompute from the report itself, without the key:
    /// the scheme; distinct pair indices below K, answered and refused (so
    /// at most K of them; with the pair a stopped check got no answer to,
    /// also below K and distinct, and those it did not ask, still at most
    /// K); a stop only with the fingerprint detected; refusals and a stop
    /// only for an endpoint; its `served_by` entries distinct, non-empty,
    /// each counting at least one answer and all at most the number
    /// answered, their fields at most 256 bytes; each
    /// answer's normalised form ([`normalise`]); that a matched answer is
    /// one of the public candidates (every keyed response is); the match
    /// count; the p-value and its `log10` from the number asked and the
    /// matches (to 1e-9 relative, so reports of other builds of the same
    /// arithmetic pass); the decision from the p-value and the threshold.
    /// Whether a match is the keyed response needs the key (`reveal`).
    pub fn consistent(&self) -> std::result::Result<(), String> {
        if self.scheme != SCHEME {
            return Err(format!("scheme '{}', not '{SCHEME}'", self.scheme));
        }
        let n = self.asked.len();
        if n == 0 || n > self.count {
            return Err(format!("{n} triggers asked of a release of {}", self.count));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, a) in self.asked.iter().enumerate() {
            if a.index >= self.count || !seen.insert(a.index) {
                return Err(format!("answer {i}: pair index {} repeated or past K", a.index));
            }
            if normalise(&a.answer) != a.normalised {
                return Err(format!("answer {i}: '{}' is not its normalised form", a.normalised));
            }
            if a.matched && !super::words::ANSWERS.contains(&a.normalised.as_str()) {
                return Err(format!("answer {i}: '{}' matched, but is no candidate", a.normalised));
            }
        }
        for (i, r) in self.refused.iter().enumerate() {
            if r.index >= self.count || !seen.insert(r.index) {
                return Err(format!("refusal {i}: pair index {} repeated or past K", r.index));
            }
        }
        if let Some(st) = &self.stopped {
            if st.index >= self.count || seen.contains(&st.index) {
                return Err(format!(
                    "the stop at pair {} is past K or at a pair already asked",
                    st.index
                ));
            }
            let sent = seen.len() + 1;
            if sent.saturating_add(st.not_asked) > self.count {
                return Err(format!(
                    "{sent} triggers sent and {} not asked: more than the {} pairs",
                    st.not_asked, self.count
                ));
            }
        }
        if let Some(st) = &self.stopped {
            if !self.detected {
                // The tool reports a stopped check only when it found the
                // fingerprint: an unfinished check clears no one.
                return Err(format!("stopped at pair {} and not detected", st.index));
            }
        }
        match &self.suspect.endpoint {
            Some(e) => {
                let served =
                    e.served_by.iter().try_fold(0usize, |sum, s| sum.checked_add(s.answers));
                if served.is_none_or(|served| served > n) {
                    return Err(format!("served_by counts more answers than the {n} answered"));
                }
                for (i, s) in e.served_by.iter().enumerate() {
                    let long = |t: &Option<String>| {
                        t.as_ref().is_some_and(|t| t.len() > super::endpoint::MAX_SERVED_BY)
                    };
                    if s.answers == 0
                        || (s.model.is_none() && s.system_fingerprint.is_none())
                        || long(&s.model)
                        || long(&s.system_fingerprint)
                        || e.served_by[..i].iter().any(|t| {
                            t.model == s.model && t.system_fingerprint == s.system_fingerprint
                        })
                    {
                        return Err(format!(
                            "served_by {i}: no answers, no field, a field over {} bytes, or \
                             repeated",
                            super::endpoint::MAX_SERVED_BY
                        ));
                    }
                }
            }
            None if !self.refused.is_empty() || self.stopped.is_some() => {
                return Err("refusals or a stop recorded for a suspect that is no endpoint".into());
            }
            None => {}
        }
        let matches = self.asked.iter().filter(|a| a.matched).count();
        if matches != self.matches {
            return Err(format!(
                "matches {}, where {matches} answers are marked matched",
                self.matches
            ));
        }
        let q = 1.0 / super::CANDIDATES as f64;
        let log10_p = super::binomial::upper_tail_log10(n as u64, q, matches as u64);
        let p = 10f64.powf(log10_p);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300);
        if !(close(log10_p, self.log10_p_value) || (log10_p - self.log10_p_value).abs() <= 1e-9) {
            return Err(format!(
                "log10 p {}, where {matches} matches of {n} give {log10_p}",
                self.log10_p_value
            ));
        }
        if !(close(p, self.p_value) || p == self.p_value) {
            return Err(format!("p {}, where {matches} matches of {n} give {p}", self.p_value));
        }
        if self.detected != (self.p_value <= self.threshold_p) {
            return Err(format!(
                "detected is {}, where p {} against threshold {} says otherwise",
                self.detected, self.p_value, self.threshold_p
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a table, "unknown" elsewhere.
    struct Table(Vec<(String, String)>);

    impl Asker for Table {
        fn ask(&mut self, _: Option<&str>, trigger: &str) -> Result<String> {
            Ok(self
                .0
                .iter()
                .find(|(t, _)| t == trigger)
                .map_or_else(|| "I do not know.".to_string(), |(_, a)| a.clone()))
        }
    }

    #[test]
    fn a_suspect_that_knows_the_answers_is_found_and_one_that_does_not_is_not() {
        let key = FingerprintKey::from_bytes([5; 32]);
        let pairs = key.pairs(32).unwrap_or_else(|e| panic!("{e}"));
        let mut knows =
            Table(pairs.iter().map(|p| (p.trigger.clone(), format!(" {}!", p.response))).collect());
        let o =
            check(&key, 32, &CheckOptions::default(), &mut knows).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.asked.len(), o.score.matches), (12, 12));
        assert!(o.detected && o.asked.iter().all(|a| a.matched));
        let round0: Vec<usize> = o.asked.iter().map(|a| a.index).collect();
        assert_eq!(round0, asked(&key, 32, 12, 0).unwrap_or_default());
        let mut ignorant = Table(Vec::new());
        let o = check(
            &key,
            32,
            &CheckOptions { per_check: 40, ..CheckOptions::default() },
            &mut ignorant,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.asked.len(), o.score.matches, o.detected), (32, 0, false));
        assert_eq!(o.score.p_value, 1.0);
    }

    /// Answers only after the system message it was trained with, and
    /// keeps every system message it was sent.
    struct AfterSystem {
        table: Table,
        system: &'static str,
        sent: Vec<Option<String>>,
    }

    impl Asker for AfterSystem {
        fn ask(&mut self, system: Option<&str>, trigger: &str) -> Result<String> {
            self.sent.push(system.map(str::to_string));
            match system == Some(self.system) {
                true => self.table.ask(None, trigger),
                false => Ok("Hello!".into()),
            }
        }
    }

    #[test]
    fn every_trigger_is_asked_after_the_system_prompt_which_the_outcome_records() {
        let key = FingerprintKey::from_bytes([6; 32]);
        let pairs = key.pairs(32).unwrap_or_else(|e| panic!("{e}"));
        let table =
            Table(pairs.iter().map(|p| (p.trigger.clone(), p.response.to_string())).collect());
        let system = "You are a support assistant for Acme.";
        let mut suspect = AfterSystem { table, system, sent: Vec::new() };
        let with = CheckOptions { system: Some(system.into()), ..CheckOptions::default() };
        let o = check(&key, 32, &with, &mut suspect).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.score.matches, o.system.as_deref()), (12, Some(system)));
        assert!(suspect.sent.iter().all(|s| s.as_deref() == Some(system)), "{:?}", suspect.sent);
        suspect.sent.clear();
        let o = check(&key, 32, &CheckOptions::default(), &mut suspect)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.score.matches, o.system), (0, None));
        assert!(suspect.sent.iter().all(Option::is_none));
        for bad in [" \n", &"x".repeat(MAX_SYSTEM_PROMPT + 1)] {
            let options = CheckOptions { system: Some(bad.to_string()), ..CheckOptions::default() };
            let e = check(&key, 32, &options, &mut suspect).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains("system prompt")), "{e:?}");
        }
    }

    /// Gives the keyed answer to the first `answers` triggers, then fails.
    struct Quits {
        table: Table,
        answers: usize,
        asked: usize,
    }

    impl Asker for Quits {
        fn ask(&mut self, system: Option<&str>, trigger: &str) -> Result<String> {
            self.asked += 1;
            if self.asked > self.answers {
                return Err(Error::Endpoint { url: "http://x".into(), reason: "HTTP 429".into() });
            }
            self.table.ask(system, trigger)
        }
    }

    #[test]
    fn a_suspect_that_stops_part_way_is_scored_on_the_answers_that_came() {
        let key = FingerprintKey::from_bytes([8; 32]);
        let pairs = key.pairs(32).unwrap_or_else(|e| panic!("{e}"));
        let table =
            || Table(pairs.iter().map(|p| (p.trigger.clone(), p.response.into())).collect());
        let mut quits = Quits { table: table(), answers: 5, asked: 0 };
        let o =
            check(&key, 32, &CheckOptions::default(), &mut quits).unwrap_or_else(|e| panic!("{e}"));
        let round = asked(&key, 32, 12, 0).unwrap_or_default();
        assert_eq!((o.asked.len(), o.score.asked, o.score.matches), (5, 5, 5));
        let want = Stopped {
            index: round[5],
            trigger: pairs[round[5]].trigger.clone(),
            reason: "HTTP 429".into(),
            not_asked: 6,
        };
        assert_eq!(o.stopped.as_ref(), Some(&want));
        assert_eq!(o.score.log10_p, super::super::binomial::upper_tail_log10(5, 1.0 / 256.0, 5));
        assert!(o.detected, "5 of 5 is p = 2^-40");
        // No answer at all is the check's error, not an outcome.
        let mut mute = Quits { table: table(), answers: 0, asked: 0 };
        let e = check(&key, 32, &CheckOptions::default(), &mut mute).err();
        assert!(matches!(e, Some(Error::Endpoint { .. })), "{e:?}");
        // Every answer: no stop.
        let mut all = Quits { table: table(), answers: 12, asked: 0 };
        let o =
            check(&key, 32, &CheckOptions::default(), &mut all).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.asked.len(), o.stopped), (12, None));
    }

    /// A report's predicate made from `o` (unsigned: `consistent` needs no
    /// signature).
    fn predicate_of(
        o: &CheckOutcome,
        endpoint: Option<EndpointRecord>,
    ) -> FingerprintCheckPredicate {
        let certificate = CheckedCertificate {
            sha256: String::new(),
            signer: String::new(),
            fingerprint_key_commitment: String::new(),
            signature_checked: true,
        };
        let suspect =
            SuspectRecord { tensor_root: None, tensor_digests: BTreeMap::new(), endpoint };
        FingerprintCheckPredicate::of_outcome(o, ("l".into(), None), certificate, suspect)
    }

    #[test]
    fn a_report_whose_stop_or_served_counts_do_not_add_up_is_inconsistent() {
        let key = FingerprintKey::from_bytes([9; 32]);
        let pairs = key.pairs(32).unwrap_or_else(|e| panic!("{e}"));
        let table = Table(pairs.iter().map(|p| (p.trigger.clone(), p.response.into())).collect());
        let mut quits = Quits { table, answers: 4, asked: 0 };
        let o =
            check(&key, 32, &CheckOptions::default(), &mut quits).unwrap_or_else(|e| panic!("{e}"));
        let served = |answers| {
            Some(EndpointRecord {
                url: "http://x".into(),
                api: "chat".into(),
                model: None,
                served_by: vec![ServedBy {
                    model: Some("m".into()),
                    system_fingerprint: None,
                    answers,
                }],
            })
        };
        assert_eq!(predicate_of(&o, served(4)).consistent(), Ok(()));
        let fails = |p: FingerprintCheckPredicate, what: &str| {
            let e = p.consistent().err().unwrap_or_default();
            assert!(e.contains(what), "{e}");
        };
        fails(predicate_of(&o, served(5)), "served_by");
        fails(predicate_of(&o, served(usize::MAX)), "served_by");
        let entry = |model: Option<&str>, fp: Option<&str>, answers| ServedBy {
            model: model.map(str::to_string),
            system_fingerprint: fp.map(str::to_string),
            answers,
        };
        let long = "x".repeat(super::super::endpoint::MAX_SERVED_BY + 1);
        for bad in [
            vec![entry(Some("m"), None, 0)],
            vec![entry(None, None, 1)],
            vec![entry(Some("m"), Some("b1"), 1), entry(Some("m"), Some("b1"), 1)],
            vec![entry(Some(&long), None, 1)],
            vec![entry(None, Some(&long), 1)],
        ] {
            let mut p = predicate_of(&o, served(1));
            if let Some(e) = p.suspect.endpoint.as_mut() {
                e.served_by = bad;
            }
            fails(p, "no answers, no field");
        }
        // A stop is reported only with the fingerprint found, and refusals
        // and stops only for an endpoint.
        let mut p = predicate_of(&o, served(4));
        p.detected = false;
        p.threshold_p = 1e-300;
        fails(p, "not detected");
        fails(predicate_of(&o, None), "no endpoint");
        let mut p = predicate_of(&o, served(4));
        if let Some(st) = p.stopped.as_mut() {
            st.index = p.asked[0].index;
        }
        fails(p, "at a pair already asked");
        let mut p = predicate_of(&o, served(4));
        if let Some(st) = p.stopped.as_mut() {
            st.not_asked = 28;
        }
        fails(p, "more than the 32 pairs");
        let mut p = predicate_of(&o, served(4));
        if let Some(st) = p.stopped.as_mut() {
            st.index = 32;
        }
        fails(p, "past K");
    }

    /// Refuses (HTTP 400) every trigger whose pair index is in the list,
    /// answers the rest with the keyed response.
    struct Filter {
        table: Table,
        refuse: Vec<String>,
    }

    impl Asker for Filter {
        fn ask(&mut self, system: Option<&str>, trigger: &str) -> Result<String> {
            if self.refuse.iter().any(|t| t == trigger) {
                let reason = "HTTP 400 Bad Request: flagged".to_string();
                return Err(Error::Refused { url: "http://x".into(), reason });
            }
            self.table.ask(system, trigger)
        }
    }

    #[test]
    fn refused_triggers_are_recorded_and_the_check_asks_on() {
        let key = FingerprintKey::from_bytes([10; 32]);
        let pairs = key.pairs(32).unwrap_or_else(|e| panic!("{e}"));
        let round = asked(&key, 32, 12, 0).unwrap_or_default();
        let table =
            || Table(pairs.iter().map(|p| (p.trigger.clone(), p.response.into())).collect());
        // A filter that refuses 9 of the 12: 3 answered, all keyed.
        let refuse: Vec<String> =
            round.iter().skip(1).take(9).map(|&i| pairs[i].trigger.clone()).collect();
        let mut filter = Filter { table: table(), refuse };
        let o = check(&key, 32, &CheckOptions::default(), &mut filter)
            .unwrap_or_else(|e| panic!("{e}"));
        let answered: Vec<usize> = o.asked.iter().map(|a| a.index).collect();
        assert_eq!(answered, [round[0], round[10], round[11]]);
        let refused: Vec<usize> = o.refused.iter().map(|r| r.index).collect();
        assert_eq!(refused, round[1..10]);
        assert!(o.refused.iter().all(|r| r.reason == "HTTP 400 Bad Request: flagged"));
        assert_eq!((o.score.asked, o.score.matches, o.stopped.is_none()), (3, 3, true));
        assert_eq!(o.score.log10_p, super::super::binomial::upper_tail_log10(3, 1.0 / 256.0, 3));
        let endpoint = || {
            Some(EndpointRecord {
                url: "http://x".into(),
                api: "chat".into(),
                model: None,
                served_by: Vec::new(),
            })
        };
        assert_eq!(predicate_of(&o, endpoint()).consistent(), Ok(()));
        // A refusal listed twice, or at a pair answered, does not add up.
        let mut p = predicate_of(&o, endpoint());
        p.refused.push(p.refused[0].clone());
        assert!(p.consistent().is_err_and(|e| e.contains("repeated")));
        let mut p = predicate_of(&o, endpoint());
        p.refused[0].index = p.asked[0].index;
        assert!(p.consistent().is_err_and(|e| e.contains("repeated")));
        // Refusals, then a failure before any answer: the error counts them.
        struct RefusesThenFails(usize);
        impl Asker for RefusesThenFails {
            fn ask(&mut self, _: Option<&str>, _: &str) -> Result<String> {
                self.0 += 1;
                let (url, reason) = ("http://x".to_string(), format!("HTTP {}", 397 + self.0));
                Err(match self.0 {
                    1..=3 => Error::Refused { url, reason },
                    _ => Error::Endpoint { url, reason },
                })
            }
        }
        let e = check(&key, 32, &CheckOptions::default(), &mut RefusesThenFails(0))
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("endpoint http://x: HTTP 401 (after 3 triggers refused)"));
        // Everything refused: an error that says so, naming the first reason.
        let refuse = pairs.iter().map(|p| p.trigger.clone()).collect();
        let mut wall = Filter { table: table(), refuse };
        let e = check(&key, 32, &CheckOptions::default(), &mut wall).err().map(|e| e.to_string());
        let want =
            "endpoint http://x: HTTP 400 Bad Request: flagged (every one of the 12 triggers \
                    was refused)";
        assert_eq!(e.as_deref(), Some(want));
    }
}
