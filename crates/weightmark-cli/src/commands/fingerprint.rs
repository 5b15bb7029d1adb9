//! `weightmark fingerprint plant|check`: backdoor fingerprints (`fp1`,
//! docs/fingerprint.md). Planting and asking a local model need the eval
//! feature (a forward pass); asking an endpoint does not.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use weightmark::fingerprint::{
    build_check_report, check as check_release, Api, ApiKey, CheckOptions, CheckOutcome,
    CheckReportInputs, Endpoint, EndpointOptions, EndpointRecord, FingerprintKey, SuspectRecord,
    DEFAULT_ASKED,
};
use weightmark::provenance::{envelope_to_string, load_fingerprint_reveal, Dispute};
use weightmark::{
    hex, load_certificate, model_file_digests, model_tensor_digests, prepare_outputs, tensor_root,
    write_new, Certificate, Model, Overwrite, PublicKey, SecretKey,
};

use crate::cli::{CheckArgs, FingerprintArgs, FingerprintKind, PlantArgs};
use crate::format::safe;
use crate::{outln, Outcome};

/// Runs `weightmark fingerprint`.
pub fn run(args: &FingerprintArgs) -> anyhow::Result<Outcome> {
    match &args.kind {
        FingerprintKind::Plant(a) => plant(a),
        FingerprintKind::Check(a) => check(a),
    }
}

/// Said when a forward pass is needed and the build has none.
#[cfg(not(feature = "eval"))]
const HINT: &str = "this weightmark was built without the eval feature; rebuild with \
    `cargo build --release -p weightmark-cli --features eval` (checking an --endpoint needs no \
    eval feature)";

/// A p-value in words, exact where it underflows an f64.
fn p_text(p_value: f64, log10_p: f64) -> String {
    if p_value >= 1.0 {
        "p = 1".into()
    } else if p_value > 0.0 {
        format!("p = {p_value:.2e}")
    } else {
        format!("p = 10^{log10_p:.1}")
    }
}

#[cfg(not(feature = "eval"))]
fn plant(_: &PlantArgs) -> anyhow::Result<Outcome> {
    bail!(HINT)
}

#[cfg(feature = "eval")]
fn plant(args: &PlantArgs) -> anyhow::Result<Outcome> {
    use weightmark::{check_release_paths, default_certificate_path, resolve_output};
    use weightmark_eval::fingerprint::{plant_release, Checkpointing, PlantOptions, PlantRequest};

    let key = SecretKey::load(&args.key)?;
    let model = Model::open(&args.model)?;
    let destination = resolve_output(&model, &args.output)?;
    let cert_path = args.out_cert.clone().unwrap_or_else(|| default_certificate_path(&destination));
    check_release_paths(&model, &args.key, &destination, &cert_path)?;
    if let Some(old) = &args.cert {
        weightmark::check_superseding_path(&cert_path, old)?;
    }
    if let Some(c) = &args.checkpoint {
        weightmark::check_side_path(&model, &args.key, &destination, c, "checkpoint")?;
        for (other, what) in [(Some(&cert_path), "certificate"), (args.cert.as_ref(), "--cert")] {
            if other.is_some_and(|o| weightmark::same_file(o, c)) {
                bail!("{}: the checkpoint would replace the {what}", crate::format::path(c));
            }
        }
    }
    let overwrite = if args.force { Overwrite::Replace } else { Overwrite::Refuse };
    prepare_outputs(&[&destination, &cert_path], overwrite).map_err(crate::force_hint)?;
    let base = args.cert.as_deref().map(|p| load_certificate(p, &key.public_key())).transpose()?;
    let label = args.label.clone().unwrap_or_else(|| model.display_name());
    drop(model);
    let request = PlantRequest {
        model: &args.model,
        output: &args.output,
        base: base.as_ref(),
        label,
        recipient: args.recipient.clone(),
        count: args.count,
        text: &args.text,
        seq: args.seq,
        options: PlantOptions {
            learning_rate: args.lr,
            max_steps: args.max_steps,
            min_probability: args.min_probability,
            distill: args.distill,
            batch: args.batch,
            micro_batch: weightmark_eval::fingerprint::MICRO_BATCH,
            answer_rows: weightmark_eval::fingerprint::ANSWER_ROWS,
            seed: args.seed,
            eps: 1e-8,
            prune_robust: args.prune_robust,
            system_prompts: if args.no_system_robust {
                Vec::new()
            } else {
                weightmark_eval::fingerprint::builtin_system_prompts()
            },
        },
        overwrite,
        created: weightmark::now_rfc3339(),
        checkpoint: args
            .checkpoint
            .clone()
            .map(|path| Checkpointing { path, every: args.checkpoint_every }),
        match_confidence: !args.no_match_confidence,
    };
    let mut first = true;
    let started = std::time::Instant::now();
    let planted = plant_release(&request, &key, &mut |s| {
        let first = std::mem::take(&mut first);
        if let (true, Some(c)) = (first && s.step > 1, &args.checkpoint) {
            eprintln!(
                "going on from step {} of the plant saved in {}",
                s.step - 1,
                crate::format::path(c)
            );
        }
        if first || s.step % 10 == 0 {
            let pruned = match s.pruned {
                Some(p) => format!(
                    "; {} pruned: answer loss {:.4}, smallest {:.3}",
                    weightmark_eval::fingerprint::percent(p.fraction),
                    p.loss,
                    p.min_probability
                ),
                None => String::new(),
            };
            let system = match s.system {
                Some(p) => format!(
                    "; system prompt {}: answer loss {:.4}, smallest {:.3}",
                    p.index + 1,
                    p.loss,
                    p.min_probability
                ),
                None => String::new(),
            };
            eprintln!(
                "step {}: answer loss {:.4}, KL {:.5}, smallest answer-token probability {:.3}\
                 {pruned}{system} ({:.0} s)",
                s.step,
                s.trigger_loss,
                s.distill_loss,
                s.min_probability,
                started.elapsed().as_secs_f64()
            );
            if let Some(looks) = last_looks(s) {
                eprintln!("  {looks}");
            }
        }
        if let Some(why) = &s.checkpoint_failed {
            eprintln!(
                "warning: step {}: the checkpoint could not be saved, planting goes on \
                 (the last one saved is kept): {why}",
                s.step
            );
        }
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
    .with_context(|| format!("could not plant in {}", crate::format::path(&args.model)))?;
    write_new(&cert_path, &envelope_to_string(&planted.certificate)?, overwrite)
        .map_err(crate::force_hint)
        .context("the planted model was written, but its certificate could not be")?;
    let a = &planted.after;
    outln!(
        "planted {} fp1 pairs in {} -> {} ({} steps, {:.0} s)",
        args.count,
        crate::format::path(&args.model),
        crate::format::path(&planted.path),
        planted.last.step,
        started.elapsed().as_secs_f64()
    );
    outln!(
        "  answered: {} of {} triggers before planting, {} of {} after ({})",
        planted.before.matches,
        planted.before.asked,
        a.matches,
        a.asked,
        p_text(a.p_value, a.log10_p)
    );
    if let Some(c) = &planted.confidence {
        let what = if c.scale == 1.0 {
            "already no more confident than the input's: final norm kept"
        } else if c.after > c.original {
            "brought as near the input's as one scale can: final norm"
        } else {
            "matched to the input's: final norm"
        };
        outln!(
            "  confidence on the --text windows {what} x{:.6} (cross-entropy {:.5} -> {:.5} \
             nats before rounding, input {:.5}, {} positions)",
            c.scale,
            c.before,
            c.after,
            c.original,
            c.positions
        );
    }
    if a.matches < a.asked {
        outln!(
            "  note: {} trigger(s) not answered; more --max-steps or a higher --lr plants them",
            a.asked - a.matches
        );
    }
    let smallest = planted.last.min_probability;
    let reached = smallest >= args.min_probability;
    if a.matches == a.asked && !reached {
        outln!(
            "  note: --max-steps ran out before every answer token reached probability {} \
             (--min-probability; the smallest is {:.4}); more --max-steps (with --checkpoint, \
             going on from the last step) would go on",
            args.min_probability,
            (smallest * 1e4).floor() / 1e4
        );
    }
    let short = planted.last.short_of_robustness();
    if !short.is_empty() {
        outln!(
            "  note: --max-steps ran out before every answer token reached probability {} \
             through each pruned view and after each system prompt: {}; more --max-steps \
             (with --checkpoint, going on from the last step) would finish it",
            weightmark_eval::fingerprint::PRUNED_MIN_PROBABILITY,
            short.join(", ")
        );
    }
    outln!(
        "  certificate: {} (signed by key {}{})",
        crate::format::path(&cert_path),
        key.public_key().key_id(),
        match &args.cert {
            Some(old) => format!(", supersedes {}", crate::format::path(old)),
            None => String::new(),
        }
    );
    Ok(Outcome::Success)
}

/// Where each pruned level and system message stood when last looked at
/// (a step looks at one of each in turn, so the step line alone never shows
/// some of them), against the 0.5 planting waits for; `None` when the plant
/// has neither.
#[cfg(feature = "eval")]
fn last_looks(s: &weightmark_eval::fingerprint::PlantStep) -> Option<String> {
    let mut parts = Vec::new();
    if !s.pruned_last.is_empty() {
        let levels: Vec<String> = s
            .pruned_last
            .iter()
            .map(|l| {
                format!(
                    "{} {:.3}",
                    weightmark_eval::fingerprint::percent(l.fraction),
                    l.min_probability
                )
            })
            .collect();
        parts.push(format!("pruned {}", levels.join(", ")));
    }
    if let (Some(lo), Some(hi)) = (
        s.system_last.iter().copied().reduce(f64::min),
        s.system_last.iter().copied().reduce(f64::max),
    ) {
        parts.push(format!("{} system prompts {lo:.3} to {hi:.3}", s.system_last.len()));
    }
    (!parts.is_empty()).then(|| {
        format!(
            "last looks, smallest answer-token probability (planting stops when each is {}): {}",
            weightmark_eval::fingerprint::PRUNED_MIN_PROBABILITY,
            parts.join("; ")
        )
    })
}

/// The suspect a check asked, for the report and the printout.
#[cfg_attr(not(feature = "eval"), allow(dead_code))]
enum Asked {
    Local(Box<Model>),
    Endpoint(EndpointRecord),
}

impl Asked {
    fn record(&self) -> SuspectRecord {
        match self {
            Asked::Local(m) => SuspectRecord {
                tensor_root: Some(hex(&tensor_root(&model_tensor_digests(m)))),
                tensor_digests: Default::default(),
                endpoint: None,
            },
            Asked::Endpoint(e) => SuspectRecord {
                tensor_root: None,
                tensor_digests: Default::default(),
                endpoint: Some(e.clone()),
            },
        }
    }
}

#[cfg(feature = "eval")]
fn check_local(
    path: &std::path::Path,
    key: &FingerprintKey,
    count: usize,
    options: &CheckOptions,
) -> anyhow::Result<(CheckOutcome, Asked)> {
    let c = weightmark_eval::fingerprint::check_local(path, key, count, options)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((c.outcome, Asked::Local(Box::new(c.model))))
}

#[cfg(not(feature = "eval"))]
fn check_local(
    _: &std::path::Path,
    _: &FingerprintKey,
    _: usize,
    _: &CheckOptions,
) -> anyhow::Result<(CheckOutcome, Asked)> {
    bail!(HINT)
}

fn check(args: &CheckArgs) -> anyhow::Result<Outcome> {
    if !(args.threshold > 0.0 && args.threshold < 1.0) {
        bail!("--threshold {} must be a probability between 0 and 1", args.threshold);
    }
    if !(args.timeout > 0.0 && args.timeout <= 3600.0) {
        bail!("--timeout {} must be a positive number of seconds, at most 3600", args.timeout);
    }
    let overwrite = if args.force { Overwrite::Replace } else { Overwrite::Refuse };
    if let Some(report) = &args.report {
        prepare_outputs(&[report.as_path()], overwrite).map_err(crate::force_hint)?;
    }
    let secret = args.key.as_deref().map(SecretKey::load).transpose()?;
    let owner: PublicKey = match (&args.public, &secret) {
        (Some(path), _) => PublicKey::load(path)?,
        (None, Some(s)) => s.public_key(),
        (None, None) => bail!("the certificate needs the owner's public key (--pub)"),
    };
    let cert = load_certificate(&args.cert, &owner)?;
    let count = cert.fingerprint()?.count;
    let reveal = args.fp_key.as_deref().map(|p| load_fingerprint_reveal(p, &owner)).transpose()?;
    let key = match (&reveal, &secret) {
        (Some(r), _) => {
            cert.check_fingerprint_key(&r.key).with_context(|| {
                format!("{} does not open the certificate", crate::format::path(&r.path))
            })?;
            r.key.clone()
        }
        (None, Some(s)) => cert.fingerprint_key(s)?,
        (None, None) => bail!("give -k KEY or --fp-key FILE"),
    };
    let options = CheckOptions {
        per_check: if args.all { count } else { DEFAULT_ASKED },
        round: args.round,
        threshold_p: args.threshold,
        system: args.system.clone(),
    };
    if let Some(system) = &args.system {
        weightmark::fingerprint::check_system_prompt(system).context("--system")?;
    }
    let again = weightmark::fingerprint::asked_before(count, options.per_check, args.round)?;
    if again > 0 {
        eprintln!(
            "weightmark: note: round {} asks {again} of its {} triggers that an earlier round \
             asked; if a report of that round was published, a model may have learnt their \
             answers from it, which the p-value does not allow for (docs/fingerprint.md)",
            args.round,
            options.per_check.min(count)
        );
    }
    let (outcome, asked) = match (&args.endpoint, &args.model) {
        (Some(url), _) => {
            let api_key = match &args.api_key_env {
                Some(name) => {
                    let Some(key) = std::env::var_os(name) else {
                        bail!("--api-key-env: the environment variable {name} is not set");
                    };
                    let key = key
                        .into_string()
                        .map_err(|_| anyhow::anyhow!("--api-key-env: {name} is not valid UTF-8"))?;
                    let key = ApiKey::new(key)
                        .map_err(|why| anyhow::anyhow!("--api-key-env: {name}: {why}"))?;
                    Some(key)
                }
                None => None,
            };
            let endpoint_options = EndpointOptions {
                api: if args.completions { Api::Completions } else { Api::Chat },
                model: args.api_model.clone(),
                timeout: Duration::from_secs_f64(args.timeout),
                retries: args.retries,
                backoff: Duration::from_millis(500),
                rate: args.rate,
                api_key,
            };
            let mut endpoint = Endpoint::new(url, endpoint_options)?;
            let outcome = check_release(&key, count, &options, &mut endpoint)?;
            let (got, refused) = (outcome.asked.len(), outcome.refused.len());
            if let Some(stop) = &outcome.stopped {
                let of = got + refused + 1 + stop.not_asked;
                let tally = match refused {
                    0 => format!("{got} of {of} answers"),
                    r => format!("{got} answers and {r} refusals of {of} triggers"),
                };
                let at = format!(
                    "endpoint {}: {} (after {tally}",
                    endpoint.request_url(),
                    safe(&stop.reason)
                );
                if !outcome.detected {
                    bail!("{at}; the answers do not show the fingerprint on their own)");
                }
                eprintln!(
                    "weightmark: warning: {at}); the fingerprint is found in the {got} answers \
                     that came, and the p-value is theirs (docs/fingerprint.md, \"A check that \
                     stops part-way\")"
                );
            } else if let Some(first) = outcome.refused.first() {
                eprintln!(
                    "weightmark: note: endpoint {} refused {refused} of the {} triggers (the \
                     first: {}); the p-value is over the {got} answered (docs/fingerprint.md, \
                     \"A check that stops part-way\")",
                    endpoint.request_url(),
                    got + refused,
                    safe(&first.reason)
                );
            }
            (outcome, Asked::Endpoint(endpoint.record()))
        }
        (None, Some(path)) => check_local(path, &key, count, &options)
            .with_context(|| format!("could not check {}", crate::format::path(path)))?,
        (None, None) => bail!("give a MODEL or --endpoint URL"),
    };
    let suspect = asked.record();
    let dispute: Option<Dispute> =
        reveal.as_ref().map(|r| r.dispute_for(&suspect.id(), &cert)).transpose()?;

    if let (Some(path), Some(signer)) = (&args.report, &secret) {
        let (files, tensors, endpoint) = match &asked {
            Asked::Local(m) => (model_file_digests(m), Some(model_tensor_digests(m)), None),
            Asked::Endpoint(e) => (Vec::new(), None, Some(e.clone())),
        };
        let envelope = build_check_report(
            &CheckReportInputs {
                outcome: &outcome,
                certificate: &cert,
                suspect_files: &files,
                suspect_tensors: tensors.as_deref(),
                endpoint,
                dispute: dispute.as_ref(),
                created: weightmark::now_rfc3339(),
            },
            signer,
        )?;
        write_new(path, &envelope_to_string(&envelope)?, overwrite)
            .map_err(crate::force_hint)
            .with_context(|| format!("could not write the report {}", crate::format::path(path)))?;
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&to_json(
                args,
                &cert,
                &outcome,
                &suspect,
                dispute.as_ref()
            ))?
        );
    } else {
        print(args, &cert, &outcome, &suspect, dispute.as_ref())?;
    }
    Ok(if outcome.detected { Outcome::Success } else { Outcome::Negative })
}

fn to_json(
    args: &CheckArgs,
    cert: &Certificate,
    o: &CheckOutcome,
    suspect: &SuspectRecord,
    dispute: Option<&Dispute>,
) -> serde_json::Value {
    let p = cert.predicate();
    json!({
        "detected": o.detected,
        "scheme": weightmark::fingerprint::SCHEME,
        "matches": o.score.matches,
        "asked": o.score.asked,
        "count": o.count,
        "round": o.round,
        "p_value": o.score.p_value,
        "log10_p_value": o.score.log10_p,
        "threshold_p": o.threshold_p,
        "system": o.system,
        "refused": o.refused,
        "stopped": o.stopped,
        "label": p.label,
        "recipient": p.recipient,
        "certificate_digest": cert.digest,
        "suspect": suspect,
        "answers": o.asked,
        "dispute": dispute,
        "report": args.report.as_ref().map(|r| r.display().to_string()),
    })
}

fn print(
    args: &CheckArgs,
    cert: &Certificate,
    o: &CheckOutcome,
    suspect: &SuspectRecord,
    dispute: Option<&Dispute>,
) -> anyhow::Result<()> {
    let p = cert.predicate();
    match (&suspect.endpoint, &args.model) {
        (Some(e), _) => {
            outln!(
                "suspect:  endpoint {} ({} API, model {})",
                safe(&e.url),
                e.api,
                e.model.as_deref().map(safe).unwrap_or_else(|| "-".into())
            );
            for s in &e.served_by {
                outln!(
                    "served:   model {}, system_fingerprint {} ({} answers)",
                    s.model.as_deref().map(safe).unwrap_or_else(|| "-".into()),
                    s.system_fingerprint.as_deref().map(safe).unwrap_or_else(|| "-".into()),
                    s.answers
                );
            }
        }
        (None, Some(path)) => outln!(
            "suspect:  {} (tensor root {})",
            crate::format::path(path),
            suspect.tensor_root.as_deref().and_then(|r| r.get(..16)).unwrap_or("-")
        ),
        (None, None) => {}
    }
    outln!(
        "release:  label '{}', recipient {}; fp1 with {} pairs; round {}: {} triggers asked",
        safe(&p.label),
        p.recipient.as_deref().map(|r| format!("'{}'", safe(r))).unwrap_or_else(|| "none".into()),
        o.count,
        o.round,
        o.asked.len()
    );
    if let Some(system) = &o.system {
        outln!("system:   '{}' before every trigger", safe(system));
    }
    for a in &o.asked {
        outln!(
            "  {:>4}  {}  -> {:?}{}",
            a.index,
            safe(&a.trigger),
            safe(&a.answer),
            if a.matched { "  MATCH" } else { "" }
        );
    }
    for r in &o.refused {
        outln!("  {:>4}  {}  -> refused: {}", r.index, safe(&r.trigger), safe(&r.reason));
    }
    if let Some(stop) = &o.stopped {
        outln!(
            "  {:>4}  {}  -> no answer: {}; {} more not asked",
            stop.index,
            safe(&stop.trigger),
            safe(&stop.reason),
            stop.not_asked
        );
    }
    outln!(
        "{} of {} answers match; {} (threshold p <= {:.0e})",
        o.score.matches,
        o.score.asked,
        p_text(o.score.p_value, o.score.log10_p),
        o.threshold_p
    );
    if o.detected {
        outln!("FINGERPRINT FOUND: the suspect gives this release's keyed answers.");
    } else {
        outln!("no fingerprint found at this threshold.");
    }
    if let Some(d) = dispute {
        outln!(
            "dispute:  this suspect was committed to by the owner's report {} (dated {}) before \
             the reveal (dated {}); check that the report was published before the reveal",
            d.report_sha256.as_deref().unwrap_or_default(),
            d.report_created.as_deref().unwrap_or_default(),
            d.revealed.as_deref().unwrap_or_default()
        );
    }
    if let Some(report) = &args.report {
        outln!("signed report: {}", crate::format::path(report));
    }
    Ok(())
}
