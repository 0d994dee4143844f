//! `rookery-broker`: parses the configuration and runs the broker until SIGTERM or SIGINT;
//! SIGHUP reloads certificates, password and ACL files. `rookery-broker passwd` edits a
//! password file.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rookery_broker::Server;
use rookery_broker::config::{Cli, Config, LogFormat};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

mod passwd;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(command) = cli.command.take() {
        return passwd::run(command);
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rookery-broker: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One thread (a broker pinned to one CPU): the current-thread runtime skips work stealing.
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rookery-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, threads))
}

async fn run(config: Config, threads: usize) -> ExitCode {
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let c = &server.broker.config;
    // One line that names every listener: the first address is the first plain MQTT one.
    let addrs: Vec<String> = server
        .listeners
        .iter()
        .map(|(kind, addr)| format!("{addr} ({kind})"))
        .collect();
    let access = if c.anonymous_allowed() {
        "anonymous access allowed"
    } else {
        "credentials required"
    };
    info!(
        node_id = %c.node_id,
        threads,
        "rookery-broker {} listening on {}; MQTT 3.1.1 and 5.0, {access}; {}",
        env!("CARGO_PKG_VERSION"),
        addrs.join(", "),
        server.broker.persist.as_ref().map_or_else(
            || "durability none (memory only)".to_owned(),
            |p| p.describe()
        )
    );
    wait_for_signal(&server).await;
    server.shutdown().await;
    info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal(server: &Server) {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut hup)) => loop {
            tokio::select! {
                _ = term.recv() => return info!("SIGTERM received"),
                _ = int.recv() => return info!("SIGINT received"),
                _ = hup.recv() => {
                    info!("SIGHUP received: reloading certificate, password and ACL files");
                    server.reload().await;
                }
            }
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(config: &Config) {
    // The storage engine's own progress lines ("creating database", compactions) are noise at
    // `info`; a filter that names it still decides.
    let mut directives = config.log_level.clone();
    if !directives.contains("fjall") && !directives.contains("lsm_tree") {
        directives.push_str(",fjall=warn,lsm_tree=warn");
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
