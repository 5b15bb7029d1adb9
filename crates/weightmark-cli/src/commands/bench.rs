//! `weightmark bench robustness`: how long does the mark survive each edit?

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use weightmark::bench::{robustness, svg, to_csv, to_markdown, Row, Sweep, SweepInputs};
use weightmark::z_for_p;
use weightmark::{load_certificate, write_atomic};
use weightmark::{Model, SecretKey, Target};

use crate::cli::{BenchArgs, BenchKind, RobustnessArgs};
use crate::{outln, Outcome};

/// Runs a benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<Outcome> {
    match &args.kind {
        BenchKind::Robustness(a) => run_robustness(a),
    }
}

/// The real fine-tuning attacks (eval crate) and their default checkpoints.
pub const FINETUNE_ATTACKS: [&str; 3] = ["finetune-full", "finetune-lora", "finetune-layers"];

/// Default training steps at which a fine-tuning run is measured.
pub const FINETUNE_CHECKPOINTS: [f64; 5] = [0.0, 25.0, 50.0, 100.0, 200.0];

/// AWQ-style smoothing from the activations of a calibration text (eval
/// crate); level = alpha.
pub const SMOOTH_ATTACK: &str = "smooth";

/// Default alpha of the smoothing rows (AWQ's and SmoothQuant's).
pub const SMOOTH_LEVELS: [f64; 1] = [0.5];

fn is_finetune(name: &str) -> bool {
    FINETUNE_ATTACKS.contains(&name.trim())
}

/// Whether `name` is an attack of the eval crate, outside the library's sweeps.
fn is_eval_attack(name: &str) -> bool {
    is_finetune(name) || name.trim() == SMOOTH_ATTACK
}

/// The alphas of the smoothing rows, or none when smooth is not asked for.
pub fn smooth_plan(args: &RobustnessArgs) -> anyhow::Result<Vec<f64>> {
    if !args.attacks.iter().any(|a| a.trim() == SMOOTH_ATTACK) {
        if args.levels.iter().any(|l| l.split('=').next().map(str::trim) == Some(SMOOTH_ATTACK)) {
            bail!("--levels names '{SMOOTH_ATTACK}', which is not in --attacks");
        }
        return Ok(Vec::new());
    }
    let mut alphas = SMOOTH_LEVELS.to_vec();
    for spec in &args.levels {
        let Some((name, levels)) = spec.split_once('=') else { continue };
        if name.trim() != SMOOTH_ATTACK {
            continue;
        }
        alphas = levels
            .split(',')
            .map(|v| {
                let alpha = v
                    .trim()
                    .parse::<f64>()
                    .with_context(|| format!("--levels '{spec}': '{v}' is not a number"))?;
                if !(0.0..=1.0).contains(&alpha) {
                    bail!("--levels '{spec}': alpha {alpha} must be between 0 and 1");
                }
                Ok(alpha)
            })
            .collect::<anyhow::Result<_>>()?;
    }
    Ok(alphas)
}

/// The fine-tuning runs asked for, with their checkpoints.
pub fn finetune_plan(args: &RobustnessArgs) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let mut plan: Vec<(String, Vec<usize>)> = args
        .attacks
        .iter()
        .filter(|a| is_finetune(a))
        .map(|a| (a.trim().to_string(), FINETUNE_CHECKPOINTS.iter().map(|&s| s as usize).collect()))
        .collect();
    for spec in &args.levels {
        let Some((name, levels)) = spec.split_once('=') else { continue };
        if !is_finetune(name) {
            continue;
        }
        let steps: Vec<usize> = levels
            .split(',')
            .map(|v| {
                v.trim().parse::<usize>().with_context(|| {
                    format!("--levels '{spec}': '{v}' is not a whole number of steps")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        match plan.iter_mut().find(|(n, _)| n == name.trim()) {
            Some(entry) => entry.1 = steps,
            None => bail!("--levels names '{name}', which is not in --attacks"),
        }
    }
    Ok(plan)
}

fn plan(args: &RobustnessArgs) -> anyhow::Result<Vec<(Sweep, Vec<f64>)>> {
    let sweeps: Vec<Sweep> = if args.attacks.is_empty() {
        Sweep::ALL.to_vec()
    } else {
        args.attacks
            .iter()
            .filter(|name| !is_eval_attack(name))
            .map(|name| {
                Sweep::from_name(name.trim()).with_context(|| {
                    let mut known: Vec<&str> = Sweep::every().map(|s| s.name()).collect();
                    known.extend(FINETUNE_ATTACKS);
                    known.push(SMOOTH_ATTACK);
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
        if is_eval_attack(name) {
            continue;
        }
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
    weightmark::bench::validate_plan(&plan)?;
    let finetune = finetune_plan(args)?;
    if !finetune.is_empty() && args.finetune.text.is_empty() {
        bail!("{} needs --text FILE to train on", finetune[0].0);
    }
    let smooth = smooth_plan(args)?;
    if args.original.is_none() {
        let merge = plan.iter().any(|(s, _)| *s == Sweep::MergeOriginal);
        let layers = finetune.iter().any(|(name, _)| name == "finetune-layers");
        if merge || layers {
            bail!(
                "{} needs --original: the unmarked model to {}",
                if merge { "merge-original" } else { "finetune-layers" },
                if merge { "merge with" } else { "find the most changed blocks against" }
            );
        }
    }
    if !smooth.is_empty() && args.finetune.text.is_empty() {
        bail!("{SMOOTH_ATTACK} needs --text FILE to calibrate on");
    }
    let secret = SecretKey::load(&args.key)?;
    let cert = load_certificate(&args.cert, &secret.public_key())?;
    let p = cert.predicate();
    let target = Target::from_certificate(&cert, &secret)?;
    let marked = Model::open(&args.model)?;
    let original = args.original.as_ref().map(Model::open).transpose()?;
    // A fingerprinted release is read a second way on every attacked model:
    // its trigger prompts asked (eval feature).
    let detector = match (&p.fingerprint, args.no_fingerprint) {
        (Some(_), false) => {
            let count = cert.fingerprint()?.count;
            super::eval::fingerprint_detector(&args.model, cert.fingerprint_key(&secret)?, count)?
        }
        _ => None,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", crate::format::path(&args.out)))?;
    let scratch =
        tempfile::Builder::new().prefix(".weightmark-bench-").tempdir_in(&args.out).with_context(
            || format!("{}: cannot create a scratch directory", crate::format::path(&args.out)),
        )?;

    let points: u64 = plan.iter().map(|(_, l)| l.len() as u64).sum::<u64>()
        + finetune.iter().map(|(_, l)| 2 * l.len() as u64).sum::<u64>()
        + smooth.len() as u64;
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
    // Long runs (real fine-tuning takes most of an hour) report each point as
    // it lands: on the bar on a terminal, as one line each otherwise (logs).
    let on_row = |r: &Row| {
        bar.set_message(format!("{} {}", r.attack, r.level));
        bar.inc(1);
        if bar.is_hidden() {
            let informed = r.informed_z.map(|z| format!(", informed z {z:.1}")).unwrap_or_default();
            let ppl = r.perplexity.map(|p| format!(", perplexity {p:.3}")).unwrap_or_default();
            let fp = r
                .fingerprint
                .as_ref()
                .map(|f| {
                    format!(
                        ", fingerprint {} of {} (log10 p {:.1}; wrong key {})",
                        f.matches, f.asked, f.log10_p, f.wrong_key_matches
                    )
                })
                .unwrap_or_default();
            eprintln!(
                "bench: {} {}: damage {:.3}%, blind z {:.2}{informed}{ppl}{fp} ({:.0} s)",
                r.attack,
                r.level,
                100.0 * r.damage,
                r.blind_z,
                r.seconds
            );
        }
    };
    let inputs = SweepInputs {
        marked: &marked,
        original: original.as_ref(),
        target: &target,
        strength: p.strength,
        plan: plan.clone(),
        seed: args.seed,
        scratch: scratch.path(),
        on_row: &on_row,
        fingerprint: detector.as_deref().map(|d| d as _),
    };
    let mut rows = robustness(&inputs).context("the robustness sweep failed")?;
    if !finetune.is_empty() {
        rows.extend(
            super::eval::finetune_rows(args, &inputs, &finetune)
                .context("the fine-tuning sweep failed")?,
        );
    }
    if !smooth.is_empty() {
        rows.extend(
            super::eval::smooth_rows(args, &inputs, &smooth)
                .context("the smoothing sweep failed")?,
        );
    }
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
    let mut attacks: Vec<&str> = Vec::new();
    for r in &rows {
        if !attacks.contains(&r.attack.as_str()) {
            attacks.push(&r.attack);
        }
    }
    for attack in &attacks {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.attack == *attack).collect();
        let title = format!("{}: {attack}", marked.display_name());
        let level_name = weightmark::bench::level_name_of(attack);
        let svg = svg::plot(&title, level_name, &mine, threshold);
        write_atomic(&out.join(format!("plot-{attack}.svg")), &svg)?;
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
        attacks.len(),
        rows.iter().map(|r| r.seconds).sum::<f64>(),
        crate::format::path(out)
    );
    outln!("wrong key above the threshold: {false_positives} of {} points", rows.len());
    Ok(Outcome::Success)
}
