//! The `weightmark` command: a thin layer that parses arguments, calls the
//! library, and prints. Exit codes: 0 success (for `detect`: mark found),
//! 1 `detect` ran and found no mark, 2 usage or input error.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod format;
mod output;
mod progress;
mod sigbus;

use cli::{Cli, Command};

/// What a command concluded, mapped to the exit code.
pub enum Outcome {
    /// Success (exit 0).
    Success,
    /// The command ran but the answer is "no" (exit 1).
    Negative,
}

fn main() -> ExitCode {
    remove_temporaries_on_signals();
    sigbus::report_truncated_models();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let line = format::safe(&one_line(&err));
            let _ = writeln!(std::io::stderr(), "weightmark: error: {line}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Keygen(args) => commands::keygen::run(&args),
        Command::Embed(args) => commands::embed::run(&args),
        Command::Issue(args) => commands::issue::run(&args),
        Command::Detect(args) => commands::detect::run(&args),
        Command::Verify(args) => commands::verify::run(&args),
        Command::Identify(args) => commands::identify::run(&args),
        Command::Reveal(args) => commands::reveal::run(&args),
        Command::Convert(args) => commands::convert::run(&args),
        Command::Attack(args) => commands::attack::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Inspect(args) => commands::inspect::run(&args),
        Command::Eval(args) => commands::eval::run(&args),
        Command::Demo(args) => commands::demo::run(&args),
        Command::Fingerprint(args) => commands::fingerprint::run(&args),
    }
}

/// The error chain on one line, leaving out a cause whose text the previous
/// message already ends with (library errors include their I/O cause).
fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|prev| prev.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// A closed stdout (`weightmark inspect m | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<output::StdoutClosed>())
}

/// The hint the CLI adds to a refusal to overwrite (the library names no flags).
pub fn force_hint(e: weightmark::Error) -> anyhow::Error {
    match e {
        weightmark::Error::OutputExists { .. } => {
            anyhow::anyhow!("{e} (pass --force to replace it)")
        }
        e => e.into(),
    }
}

/// On SIGINT, SIGTERM or SIGHUP, removes the temporaries of outputs not yet
/// in place, then dies of the signal as it would have (exit status 128+N).
#[cfg(unix)]
fn remove_temporaries_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            weightmark::remove_temporaries();
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    });
}

/// Elsewhere an interrupted run may leave temporaries, which a later run on
/// the same host does not remove either (it cannot tell whether their writer
/// still runs).
#[cfg(not(unix))]
fn remove_temporaries_on_signals() {}
