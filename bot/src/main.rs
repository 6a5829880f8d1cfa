//! `airlock`: the one binary. The command line, the server and the wiring of every crate
//! live here and nowhere else.
//!
//! Every failure ends in one line on stderr (`error: …`) and a non-zero exit: 2 for a command
//! line that does not parse, 1 for everything else. Nothing here prints a credential value.

mod app;
mod cli;
mod commands;
mod git;
mod output;
mod sandbox_side;
mod web;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            eprintln!("error: {}", one_line_usage_error(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    // The server logs what it does; a command says what it did, and logs only trouble.
    let serving = matches!(cli.command, cli::Command::Up | cli::Command::Gateway);
    if let Err(e) = init_tracing(if serving { "info" } else { "warn" }) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line: the outermost context, then its causes joined.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// clap's message spans several lines (the problem, the arguments concerned, usage, a tip);
/// keep the problem and the arguments, on one line.
fn one_line_usage_error(text: &str) -> String {
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() && !line.starts_with("tip:") {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    let msg = if parts.is_empty() {
        "invalid command line".to_string()
    } else {
        parts.join(" ")
    };
    format!("{msg} (see `airlock --help`)")
}

/// Logs go to stderr, filtered by `AIRLOCK_LOG` (`default`: `info` for the server, `warn`
/// for the other commands). `AIRLOCK_LOG_FORMAT=json`
/// writes one JSON object per line, with the spans it happened in (session, human, delivery),
/// so one session's story can be pulled from the logs alone.
fn init_tracing(default: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},sqlx=warn,hyper=warn,bollard=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match std::env::var("AIRLOCK_LOG_FORMAT").as_deref() {
        Ok("json") => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        Ok("text") | Err(_) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        Ok(other) => {
            return Err(format!(
                "AIRLOCK_LOG_FORMAT is {:?}; expected `text` or `json`",
                other.chars().take(40).collect::<String>()
            ))
        }
    };
    if let Err(e) = installed {
        eprintln!("warning: cannot set up logging: {e}");
    }
    Ok(())
}
