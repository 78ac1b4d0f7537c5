//! sluicectl: admin and inspection CLI for Sluice.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod dump_log;

/// Sluice admin and inspection tool.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the batches of a segment file and check its indexes (like kafka-dump-log.sh).
    DumpLog(dump_log::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DumpLog(args) => dump_log::run(&args, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sluicectl: {e:#}");
            ExitCode::from(2)
        }
    }
}
