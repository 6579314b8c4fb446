#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use healthgate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let telemetry = healthgate::telemetry::init();
            let code = healthgate::app::serve(args).await;
            // Last: the server and checkers have stopped, so every span has ended.
            telemetry.shutdown().await;
            code
        }
        Command::Check(args) => {
            healthgate::telemetry::init_logging();
            let code = healthgate::app::check(args).await;
            healthgate::telemetry::flush_logs();
            code
        }
        Command::Crd => {
            print!("{}", healthgate::api::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
