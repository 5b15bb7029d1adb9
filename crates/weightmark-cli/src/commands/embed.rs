//! `weightmark embed`.

use anyhow::{bail, Context};
use weightmark::provenance::envelope_to_string;
use weightmark::split::embed::{assemble, EmbedPart, EmbedPlan};
use weightmark::strength::{Binding, StrengthChoice};
use weightmark::Selection;
use weightmark::{check_release_paths, default_certificate_path, resolve_output};
use weightmark::{embed, embed_superseding, load_certificate, EmbedOptions, Model, SecretKey};
use weightmark::{p_value_bound, z_for_p};
use weightmark::{prepare_outputs, write_new, Overwrite};
use weightmark::{Certificate, EmbedReport};

use crate::cli::{EmbedArgs, ReleaseArgs};
use crate::format::{count, p_bound};
use crate::progress::Bar;
use crate::{outln, Outcome};

/// The certificate's creation time: `--created`, checked and written as
/// certificates record it, else now.
pub fn created(given: Option<&str>) -> anyhow::Result<String> {
    match given {
        Some(t) => Ok(weightmark::normalize_created(t).context("--created")?),
        None => Ok(weightmark::now_rfc3339()),
    }
}

/// The library's options for the release `r` names, of `model`: the label
/// defaults to the model's name, the selection to the default one.
pub(crate) fn options<'a>(
    r: &ReleaseArgs,
    model: &Model,
    created: String,
    progress: &'a Bar,
    overwrite: Overwrite,
) -> anyhow::Result<EmbedOptions<'a>> {
    Ok(EmbedOptions {
        recipient_code: r.recipient_code().context("--recipient-code")?,
        recipient_share: r.recipient_share,
        scheme: r.scheme.into(),
        strength: r.strength,
        allocation: r.allocation,
        label: r.label.clone().unwrap_or_else(|| model.display_name()),
        recipient: r.recipient.clone(),
        selection: if r.tensors.is_empty() {
            Selection::Default
        } else {
            Selection::Globs(r.tensors.clone())
        },
        created,
        progress,
        overwrite,
    })
}

/// How the strength was chosen and what it predicts, for `embed` and `issue`.
/// `coded`: the release has a coded recipient, so the z is the release
/// component's.
pub(crate) fn strength_line(c: &StrengthChoice, coded: bool) -> String {
    let why = match c.binding {
        Binding::Given => "given",
        Binding::Fixed => "ss1's fixed default",
        Binding::Target => "the size rule's target (blind z 40), within the fidelity budget",
        Binding::Budget => "the fidelity budget (bf16 re-rounding's cost on SmolLM2)",
        Binding::Floor => "the floor (blind z 12), above the fidelity budget",
        Binding::Ceiling => "the ceiling (0.003): this model is too small for blind z 12",
        Binding::Reference => {
            "0.9 of the change storing this model in bf16 makes: the floor (blind z 12) would \
             cost more"
        }
    };
    format!(
        "strength {}: {why}; predicted blind z{} {:.1} over {} elements, relative change \
         {:.3}%, {:.2}x the fidelity budget ({:.3}%)",
        c.strength,
        if coded { " of the release component" } else { "" },
        c.predicted_z,
        count(c.elements),
        100.0 * c.predicted_change,
        c.budget_spent(),
        100.0 * c.budget_change
    )
}

/// The recipient component's share of a copy's mark, for `embed` and
/// `issue`: `given` by `--recipient-share`, or the default's; `coded`: the
/// recipient component is a code (whose default is the even split).
pub(crate) fn share_line(share: f64, given: bool, coded: bool) -> String {
    let why = if given {
        "given"
    } else if coded {
        "the default for a coded recipient: half (the decision is the release component's)"
    } else if share == weightmark::EVEN_RECIPIENT_SHARE {
        "the default: half (a predicted blind z of about 12 or less leaves nothing to spare \
         for tracing)"
    } else if share == weightmark::strength::MAX_DEFAULT_RECIPIENT_SHARE {
        "the default's cap (the release component keeps a predicted blind z above 8.5)"
    } else {
        "the default: the most that leaves the release component a predicted blind z of 8.5"
    };
    format!(
        "recipient share {share}: {why}; recipient component {:.2}, release component {:.2} \
         of the strength",
        share.sqrt(),
        (1.0 - share).sqrt()
    )
}

/// Marks a model and writes its certificate.
pub fn run(args: &EmbedArgs) -> anyhow::Result<Outcome> {
    let created = created(args.release.created.as_deref())?;
    let key = SecretKey::load(&args.release.key)?;
    let model = Model::open(&args.model)?;
    if args.plan_out.is_some() || args.plan.is_some() {
        return run_split(args, created, &key, &model);
    }
    let destination = resolve_output(&model, &args.output)?;
    let cert_path = args.cert.clone().unwrap_or_else(|| default_certificate_path(&destination));
    check_release_paths(&model, &args.release.key, &destination, &cert_path)?;
    if let Some(old) = &args.supersedes {
        weightmark::check_superseding_path(&cert_path, old)?;
    }
    let overwrite = if args.force { Overwrite::Replace } else { Overwrite::Refuse };
    prepare_outputs(&[&destination, &cert_path], overwrite).map_err(crate::force_hint)?;
    let base = args.supersedes.as_deref().map(|p| load_certificate(p, &key.public_key()));
    let base = base.transpose()?;
    let bar = Bar::new();
    let mut options = options(&args.release, &model, created, &bar, overwrite)?;
    if let Some(b) = &base {
        options.label.clone_from(&b.predicate().label);
        options.recipient.clone_from(&b.predicate().recipient);
    }
    let label = options.label.clone();
    let report = match &base {
        None => embed(&model, &args.output, &key, &options),
        Some(b) => embed_superseding(&model, &args.output, &key, &options, b),
    }
    .map_err(crate::force_hint)
    .with_context(|| format!("could not mark {}", crate::format::path(&args.model)))?;
    write_new(&cert_path, &envelope_to_string(&report.certificate)?, overwrite)
        .map_err(crate::force_hint)
        .context("the marked model was written, but its certificate could not be")?;
    let superseded = args.supersedes.as_deref().zip(base.as_ref());
    summary(args, &report, &label, &options, &key, &cert_path, superseded)?;
    Ok(Outcome::Success)
}

/// Split embed: the plan, one part, or the assemble step.
fn run_split(
    args: &EmbedArgs,
    created: String,
    key: &SecretKey,
    model: &Model,
) -> anyhow::Result<Outcome> {
    let overwrite = if args.force { Overwrite::Replace } else { Overwrite::Refuse };
    let bar = Bar::new();
    let options = options(&args.release, model, created, &bar, overwrite)?;
    if let Some(out) = &args.plan_out {
        prepare_outputs(&[out.as_path()], overwrite).map_err(crate::force_hint)?;
        let name = args.model.display().to_string();
        let plan = EmbedPlan::new(model, &name, key, &options)?;
        write_new(out, &plan.to_text()?, overwrite).map_err(crate::force_hint)?;
        outln!(
            "plan: {} ({} file(s), {} tensor(s) to mark); run parts I/N for I = 0..N-1 (N at \
             most {}) with --plan, then --combine their files",
            crate::format::path(out),
            plan.files(),
            plan.selected(),
            plan.files()
        );
        return Ok(Outcome::Success);
    }
    let plan_path = args.plan.as_deref().context("give --plan PLAN")?;
    let plan = EmbedPlan::load(plan_path)?;
    if let (Some(part), Some(out)) = (args.part, &args.part_out) {
        prepare_outputs(&[out.as_path()], overwrite).map_err(crate::force_hint)?;
        let result = EmbedPart::run(model, &plan, key, &options, part, &args.output)
            .map_err(crate::force_hint)?;
        write_new(out, &result.to_text()?, overwrite).map_err(crate::force_hint)?;
        outln!(
            "part {part}: files in {}, record {}",
            crate::format::path(&args.output),
            crate::format::path(out)
        );
        return Ok(Outcome::Success);
    }
    if args.combine.is_empty() {
        bail!("with --plan, give --part I/N (a part) or --combine PART... (the assemble step)");
    }
    let cert_path = args.cert.clone().unwrap_or_else(|| default_certificate_path(&args.output));
    prepare_outputs(&[cert_path.as_path()], overwrite).map_err(crate::force_hint)?;
    let parts: Vec<EmbedPart> =
        args.combine.iter().map(|p| EmbedPart::load(p)).collect::<Result<_, _>>()?;
    let report = assemble(model, &plan, &parts, key, &options, &args.output)
        .map_err(crate::force_hint)
        .with_context(|| format!("could not assemble {}", crate::format::path(&args.output)))?;
    write_new(&cert_path, &envelope_to_string(&report.certificate)?, overwrite)
        .map_err(crate::force_hint)
        .context("the marked model was assembled, but its certificate could not be written")?;
    summary(args, &report, &options.label, &options, key, &cert_path, None)?;
    Ok(Outcome::Success)
}

/// Prints what one embed did.
fn summary(
    args: &EmbedArgs,
    report: &EmbedReport,
    label: &str,
    options: &EmbedOptions<'_>,
    key: &SecretKey,
    cert_path: &std::path::Path,
    superseded: Option<(&std::path::Path, &Certificate)>,
) -> anyhow::Result<()> {
    let f = &report.fidelity;
    let largest = report
        .tensors
        .iter()
        .max_by(|a, b| a.fidelity.max_abs_change.total_cmp(&b.fidelity.max_abs_change))
        .map(|t| t.name.as_str())
        .unwrap_or("-");
    outln!(
        "marked {} tensors ({} elements) of {} -> {}",
        report.tensors.len(),
        count(report.blind.elements),
        crate::format::path(&args.model),
        crate::format::path(&report.written.path)
    );
    outln!(
        "  release: label '{}', recipient {}, strength {}",
        crate::format::safe(label),
        options
            .recipient
            .as_deref()
            .map(|r| format!("'{}'", crate::format::safe(r)))
            .unwrap_or_else(|| "none".into()),
        report.strength.strength
    );
    let coded = options.recipient.is_some()
        && options.recipient_code != weightmark::RecipientCode::Independent;
    outln!("  {}", strength_line(&report.strength, coded));
    if let Some(share) = report.recipient_share {
        outln!("  {}", share_line(share, options.recipient_share.is_some(), coded));
    }
    outln!(
        "  fidelity: relative RMS change {:.3}%, SNR {:.1} dB, largest change {:.3e} (in {largest})",
        100.0 * f.relative_rms_change(),
        f.snr_db(),
        f.max_abs_change
    );
    let blind_z = report.blind.z();
    // With an independent recipient component, detect with this
    // certificate decides on both components, and so is this z.
    let both = options.scheme == weightmark::Scheme::Ss2
        && options.recipient.is_some()
        && options.recipient_code == weightmark::RecipientCode::Independent;
    let informed_z = report.informed.map_or(f64::NAN, |s| s.z());
    outln!(
        "  blind z of the output{}: {blind_z:.1} ({}); informed z: {:.0} ({})",
        if both { " (release and recipient components, as detect decides)" } else { "" },
        p_bound(p_value_bound(blind_z)),
        informed_z,
        p_bound(p_value_bound(informed_z))
    );
    let threshold_z = z_for_p(weightmark::DEFAULT_THRESHOLD_P);
    if blind_z < threshold_z {
        outln!(
            "  note: this model is too small for blind detection at strength {}: blind z {blind_z:.1} \
             is below {threshold_z:.2} (p <= 1e-9). Blind detection would need strength >= {} \
             ({:.2}% relative change). Keep the unmarked original: informed detection \
             (detect --original) finds this mark with z about {:.0}.",
            report.strength.strength,
            report.strength_for_blind_threshold(),
            100.0 * report.strength_for_blind_threshold(),
            informed_z
        );
    }
    let w = &report.written;
    if w.entries_visited > 0 {
        let names: Vec<&str> = w.copied.iter().map(|f| f.name.as_str()).collect();
        outln!(
            "  side files: {} copied ({} entries of {} looked at){}{}",
            names.len(),
            w.entries_visited,
            crate::format::path(&args.model),
            if names.is_empty() { "" } else { ": " },
            crate::format::safe(&names.join(", "))
        );
    }
    for skipped in &w.skipped {
        outln!("  not copied: {}", crate::format::safe(&skipped.to_string()));
    }
    outln!(
        "  certificate: {} (signed by key {}{})",
        crate::format::path(cert_path),
        key.public_key().key_id(),
        match superseded {
            Some((old, b)) => format!(
                "; covers the mark and the fingerprint of {}, which it supersedes (sha256 {})",
                crate::format::path(old),
                b.digest
            ),
            None => String::new(),
        }
    );
    Ok(())
}
