//! `rookery-bench`: load any MQTT broker and report throughput, latency, loss and broker cost.

use std::process::ExitCode;

use clap::Parser;
use rookery_e2e::bench::{self, Options};

#[derive(Parser)]
#[command(
    name = "rookery-bench",
    about = "MQTT load tool: fan-in, pairs and fan-out scenarios"
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rookery-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(cli.options)) {
        Ok(report) => {
            if cli.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => eprintln!("rookery-bench: {e}"),
                }
            } else {
                print!("{}", report.table());
            }
            // A run that lost messages at QoS 1 or 2 is a failed run.
            if report.options.qos > 0
                && (report.lost > 0 || (report.options.qos == 2 && report.duplicated > 0))
            {
                eprintln!(
                    "rookery-bench: {} lost, {} duplicated at QoS {}",
                    report.lost, report.duplicated, report.options.qos
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rookery-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
