use std::process::ExitCode;

use clap::Parser;
use healthgate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    healthgate::telemetry::init_logging();
    match cli.command {
        Command::Serve(args) => healthgate::app::serve(args).await,
        Command::Check(args) => healthgate::app::check(args).await,
        Command::Crd => {
            print!("{}", healthgate::api::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
