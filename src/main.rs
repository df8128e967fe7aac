//! The `weft` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use weft::config::{Overrides, Settings};

mod cli;
use cli::snapshot::{self, SnapshotCommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "A room server for real-time collaboration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (canvas-store protocol on `/`, health on `/healthz`, metrics on `/metrics`).
    Serve(Box<Overrides>),
    /// Export, import, inspect and restore room snapshots (`<roomId>.json` files).
    ///
    /// Snapshot files are in the npm reference server's format. The storage commands must not
    /// run while `weft serve` uses the same data directory.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(overrides) => {
            let settings = Settings::load(&overrides)?;
            weft::telemetry::init(settings.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(weft::app::serve(settings))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(command) => match snapshot::run(command) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("weft snapshot: error: {}", snapshot::error_chain(&e));
                Ok(ExitCode::FAILURE)
            }
        },
    }
}
