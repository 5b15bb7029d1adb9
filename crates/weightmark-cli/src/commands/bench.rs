//! `weightmark bench robustness`: how long does the mark survive each edit?

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use weightmark::bench::{robustness, svg, to_csv, to_markdown, Row, Sweep, SweepInputs};
use weightmark::provenance::{load_certificate, write_atomic};
use weightmark::scheme::z_for_p;
use weightmark::{Model, SecretKey};

use crate::cli::{BenchArgs, BenchKind, RobustnessArgs};
use crate::{outln, Outcome};

/// Runs a benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<Outcome> {
    match &args.kind {
        BenchKind::Robustness(a) => run_robustness(a),
    }
}

fn plan(args: &RobustnessArgs) -> anyhow::Result<Vec<(Sweep, Vec<f64>)>> {
    let sweeps: Vec<Sweep> = if args.attacks.is_empty() {
        Sweep::ALL.to_vec()
    } else {
        args.attacks
            .iter()
            .map(|name| {
                Sweep::from_name(name.trim()).with_context(|| {
                    let known: Vec<&str> = Sweep::ALL.iter().map(|s| s.name()).collect();
                    format!("--attacks: unknown attack '{name}' (known: {})", known.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut plan: Vec<(Sweep, Vec<f64>)> =
        sweeps.iter().map(|&s| (s, s.default_levels())).collect();
    for spec in &args.levels {
        let (name, levels) = spec
            .split_once('=')
            .with_context(|| format!("--levels '{spec}': write ATTACK=L1,L2"))?;
        let sweep = Sweep::from_name(name.trim())
            .with_context(|| format!("--levels: unknown attack '{name}'"))?;
        let values: Vec<f64> = levels
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .with_context(|| format!("--levels '{spec}': '{v}' is not a number"))
            })
            .collect::<anyhow::Result<_>>()?;
        match plan.iter_mut().find(|(s, _)| *s == sweep) {
            Some(entry) => entry.1 = values,
            None => bail!("--levels names '{name}', which is not in --attacks"),
        }
    }
    Ok(plan)
}

fn run_robustness(args: &RobustnessArgs) -> anyhow::Result<Outcome> {
    let plan = plan(args)?;
    let secret = SecretKey::load(&args.key)?;
    let cert = load_certificate(&args.cert, &secret.public_key())?;
    let p = cert.predicate();
    let mark_key = secret.mark_key(&p.label, p.recipient.as_deref());
    cert.check_mark_key(&mark_key)
        .with_context(|| format!("{}: not made with this key", args.cert.display()))?;
    let marked = Model::open(&args.model)?;
    let original = args.original.as_ref().map(Model::open).transpose()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".weightmark-bench-")
        .tempdir_in(&args.out)
        .with_context(|| format!("{}: cannot create a scratch directory", args.out.display()))?;

    let points: u64 = plan.iter().map(|(_, l)| l.len() as u64).sum();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = ProgressBar::new(points);
        b.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} points, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let on_row = |r: &Row| {
        bar.set_message(format!("{} {}", r.attack, r.level));
        bar.inc(1);
    };
    let rows = robustness(&SweepInputs {
        marked: &marked,
        original: original.as_ref(),
        mark_key: &mark_key,
        tensors: p.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect(),
        plan: plan.clone(),
        seed: args.seed,
        scratch: scratch.path(),
        on_row: &on_row,
    })
    .context("the robustness sweep failed")?;
    bar.finish_and_clear();

    let out = &args.out;
    let json = json!({
        "model": args.model.display().to_string(),
        "certificate_sha256": cert.digest,
        "strength": p.strength,
        "marked_elements": p.marked_elements,
        "informed": original.is_some(),
        "seed": args.seed,
        "rows": rows,
    });
    write_atomic(&out.join("results.json"), &(serde_json::to_string_pretty(&json)? + "\n"))?;
    write_atomic(&out.join("results.csv"), &to_csv(&rows))?;
    write_atomic(&out.join("results.md"), &to_markdown(&rows))?;
    let threshold = z_for_p(weightmark::DEFAULT_THRESHOLD_P);
    for (sweep, _) in &plan {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.attack == sweep.name()).collect();
        let title = format!("{}: {}", marked.display_name(), sweep.name());
        let svg = svg::plot(&title, sweep.level_name(), &mine, threshold);
        write_atomic(&out.join(format!("plot-{}.svg", sweep.name())), &svg)?;
    }
    let false_positives = rows
        .iter()
        .filter(|r| {
            r.wrong_key_blind_z >= threshold
                || r.wrong_key_informed_z.is_some_and(|z| z >= threshold)
        })
        .count();
    outln!(
        "{} points over {} attacks in {:.0} s -> {} (results.json, results.csv, results.md, plot-*.svg)",
        rows.len(),
        plan.len(),
        rows.iter().map(|r| r.seconds).sum::<f64>(),
        out.display()
    );
    outln!("wrong key above the threshold: {false_positives} of {} points", rows.len());
    Ok(Outcome::Success)
}
