//! `rookery-broker`: parses the configuration and runs the broker until SIGTERM (which drains
//! the node first), SIGINT or a drain asked over the admin API; SIGHUP reloads certificates, password and ACL files. `rookery-broker passwd` edits a
//! password file.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rookery_broker::Server;
use rookery_broker::config::{Cli, Command, Config, LogFormat};
use rookery_broker::server::SetLogLevel;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

mod healthcheck;
mod passwd;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Command::Healthcheck { url }) => return healthcheck::run(&url),
        Some(command) => return passwd::run(command),
        None => {}
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rookery-broker: {e}");
            return ExitCode::from(2);
        }
    };
    let set_log_level = init_logging(&config);
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
    runtime.block_on(run(config, threads, set_log_level))
}

async fn run(config: Config, threads: usize, set_log_level: SetLogLevel) -> ExitCode {
    // The handlers exist before the first listener accepts: a signal sent as soon as the
    // "listening" line appears must reach them, not the default action (which kills).
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install the signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // A reload builds the configuration as the start did: same file, environment and flags.
    server.set_config_source(
        Box::new(|| {
            Cli::try_parse()
                .map_err(|e| rookery_broker::config::ConfigError::Invalid {
                    field: "command line",
                    reason: e.to_string(),
                })?
                .into_config()
        }),
        set_log_level,
    );
    let c = &server.broker.config;
    // One line that names every listener: the first address is the first plain MQTT one.
    let addrs: Vec<String> = server
        .listeners
        .iter()
        .map(|(kind, addr)| format!("{addr} ({kind})"))
        .chain(server.coaps_addr.map(|a| format!("{a} (coaps)")))
        .collect();
    let access = if c.anonymous_allowed() {
        "anonymous access allowed"
    } else {
        "credentials required"
    };
    let metrics = server
        .metrics_addr
        .map_or_else(String::new, |a| format!("; metrics on http://{a}/metrics"));
    info!(
        node_id = %c.node_id,
        threads,
        "rookery-broker {} listening on {}; MQTT 3.1.1 and 5.0, {access}; {}{metrics}",
        env!("CARGO_PKG_VERSION"),
        addrs.join(", "),
        server.broker.persist.as_ref().map_or_else(
            || "durability none (memory only)".to_owned(),
            |p| p.describe()
        )
    );
    if wait_for_signal(signals, &server).await == Stop::Drain {
        server.drain().await;
    }
    server.shutdown().await;
    info!("stopped");
    ExitCode::SUCCESS
}

/// How the process ends.
#[derive(PartialEq, Eq)]
enum Stop {
    /// SIGTERM (what Kubernetes sends) or a drain asked over the admin API: drain, then stop.
    Drain,
    /// SIGINT: stop now (clients get DISCONNECT 0x8B).
    Now,
}

/// SIGTERM, SIGINT and SIGHUP, caught from the start of the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

async fn wait_for_signal(mut signals: Signals, server: &Server) -> Stop {
    let drained = server.broker.drained.clone();
    loop {
        let stay = server
            .broker
            .stay_after_drain
            .load(std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            _ = signals.term.recv() => {
                info!("SIGTERM received: draining, then stopping");
                return Stop::Drain;
            }
            _ = signals.int.recv() => {
                info!("SIGINT received");
                return Stop::Now;
            }
            _ = drained.cancelled(), if !stay || !drained.is_cancelled() => {
                if !server.broker.stay_after_drain.load(std::sync::atomic::Ordering::Relaxed) {
                    return Stop::Now;
                }
                info!("drained: staying up, without clients, until SIGTERM");
            }
            _ = signals.hup.recv() => {
                info!("SIGHUP received: reloading the configuration, certificate, password and ACL files");
                server.reload().await;
            }
        }
    }
}

/// The filter for a `log_level`. The storage engine's own progress lines ("creating
/// database", compactions) are noise at `info`, and the DTLS crate warns of every TLS
/// extension a client offers that it does not know; a filter that names them still decides.
fn filter_for(level: &str) -> Result<EnvFilter, String> {
    let mut directives = level.to_owned();
    if !directives.contains("fjall") && !directives.contains("lsm_tree") {
        directives.push_str(",fjall=warn,lsm_tree=warn");
    }
    if !directives.contains("webrtc") {
        directives.push_str(",webrtc_dtls=error,webrtc_util=error");
    }
    EnvFilter::try_new(&directives).map_err(|e| format!("log_level `{level}`: {e}"))
}

/// Installs the logger; returns how to change its filter later (a reload).
fn init_logging(config: &Config) -> SetLogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = filter_for(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only on a terminal: log files and collectors get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    Box::new(move |level: &str| {
        let filter = filter_for(level)?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}
