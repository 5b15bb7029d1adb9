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

use cli::{Cli, Command};

/// What a command concluded, mapped to the exit code.
pub enum Outcome {
    /// Success (exit 0).
    Success,
    /// The command ran but the answer is "no" (exit 1).
    Negative,
}

fn main() -> ExitCode {
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
