//! The `weft` binary.

use clap::{Parser, Subcommand};

use weft::config::{Overrides, Settings};

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
    Serve(Overrides),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(overrides) => {
            let settings = Settings::load(&overrides)?;
            weft::telemetry::init(settings.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(weft::app::serve(settings))
        }
    }
}
