//! `rookery-operator`: `run` (the controller), `crdgen` (writes `crds/`), `render` (prints
//! every object of an `MqttCluster` without a cluster).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use rookery_operator::builders::Environment;
use rookery_operator::builders::meta::Names;
use rookery_operator::crd::MqttCluster;
use rookery_operator::inputs::{self, Inputs};
use rookery_operator::render;
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "rookery-operator",
    version,
    about = "Rookery's Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: watch MqttClusters and reconcile them.
    Run {
        /// Address of `/healthz`, `/readyz` and `/metrics`.
        #[arg(
            long,
            env = "ROOKERY_OPERATOR_METRICS_LISTEN",
            default_value = "0.0.0.0:8080"
        )]
        metrics_listen: std::net::SocketAddr,
        /// `text` or `json` logs.
        #[arg(long, env = "ROOKERY_OPERATOR_LOG_FORMAT", default_value = "text")]
        log_format: String,
        /// Reconcile only while holding the `rookery-operator` Lease in the pod's namespace
        /// (`POD_NAMESPACE`), named by `POD_NAME`: two replicas are then safe.
        #[arg(long)]
        leader_election: bool,
        /// Watch one namespace only (default: all).
        #[arg(long, env = "ROOKERY_OPERATOR_WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
        /// The Kubernetes cluster's DNS domain.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Broker image for clusters that name none.
        #[arg(long, env = "ROOKERY_BROKER_IMAGE")]
        broker_image: Option<String>,
        /// HAProxy image for clusters that name none.
        #[arg(long, env = "ROOKERY_HAPROXY_IMAGE")]
        haproxy_image: Option<String>,
    },
    /// Write the CustomResourceDefinitions as YAML, one file per resource.
    Crdgen {
        /// Directory to write to.
        #[arg(long, default_value = "crds")]
        out: PathBuf,
    },
    /// Print every object the operator would make for an MqttCluster (a YAML stream), with
    /// freshly made certificates and tokens. No cluster is needed.
    Render {
        /// The MqttCluster (YAML or JSON); `-` for standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Namespace when the resource names none.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The Kubernetes cluster's DNS domain.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Broker image when the resource names none.
        #[arg(long)]
        broker_image: Option<String>,
        /// HAProxy image when the resource names none.
        #[arg(long)]
        haproxy_image: Option<String>,
        /// Secrets the resource refers to (a YAML stream of Secret objects), as they would be
        /// in the cluster; Secrets the operator made before may be among them and are kept.
        #[arg(long)]
        secrets: Option<PathBuf>,
        /// Optional CRDs to assume installed: `cert-manager`, `service-monitor`, `cnpg`
        /// (comma-separated). The running operator looks them up instead.
        #[arg(long, value_delimiter = ',')]
        with_crds: Vec<String>,
    },
}

fn read(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        Ok(std::io::read_to_string(std::io::stdin())?)
    } else {
        Ok(std::fs::read_to_string(file)?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            metrics_listen,
            log_format,
            leader_election,
            watch_namespace,
            cluster_domain,
            broker_image,
            haproxy_image,
        } => {
            let mut env = Environment {
                domain: cluster_domain,
                ..Environment::default()
            };
            if let Some(i) = broker_image {
                env.broker_image = i;
            }
            if let Some(i) = haproxy_image {
                env.haproxy_image = i;
            }
            run(
                metrics_listen,
                &log_format,
                leader_election,
                watch_namespace,
                env,
            )
        }
        Command::Crdgen { out } => crdgen(&out),
        Command::Render {
            file,
            namespace,
            cluster_domain,
            broker_image,
            haproxy_image,
            secrets,
            with_crds,
        } => (|| {
            let mut env = Environment {
                domain: cluster_domain,
                ..Environment::default()
            };
            for crd in &with_crds {
                match crd.as_str() {
                    "cert-manager" => env.cert_manager_crd = true,
                    "service-monitor" => env.service_monitor_crd = true,
                    "cnpg" => env.cnpg_crd = true,
                    other => anyhow::bail!(
                        "--with-crds: unknown {other:?} (cert-manager, service-monitor, cnpg)"
                    ),
                }
            }
            if let Some(i) = broker_image {
                env.broker_image = i;
            }
            if let Some(i) = haproxy_image {
                env.haproxy_image = i;
            }
            let mut c: MqttCluster = serde_yaml::from_str(&read(&file)?)?;
            if c.metadata.namespace.is_none() {
                c.metadata.namespace = Some(namespace);
            }
            let names = Names::of(&c, &env.domain);
            let mut list = Vec::new();
            if let Some(file) = &secrets {
                for doc in serde_yaml::Deserializer::from_str(&read(file)?) {
                    let value = serde_yaml::Value::deserialize(doc)?;
                    if !value.is_null() {
                        list.push(serde_yaml::from_value::<Secret>(value)?);
                    }
                }
            }
            let material = inputs::material(&c, &names, &Inputs::from_secrets(list))
                .map_err(|e| anyhow::anyhow!("{}", rookery_operator::validate::describe(&e)))?;
            match render::render(&c, &env, &material, 0) {
                Ok(r) => {
                    for note in &r.notes {
                        eprintln!("note: {note}");
                    }
                    print!("{}", render::to_yaml(&r.objects)?);
                    Ok(())
                }
                Err(errors) => Err(anyhow::anyhow!(
                    "invalid MqttCluster: {}",
                    rookery_operator::validate::describe(&errors)
                )),
            }
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rookery-operator: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(
    listen: std::net::SocketAddr,
    log_format: &str,
    leader_election: bool,
    watch_namespace: Option<String>,
    env: Environment,
) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log_format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format: {other:?} is neither text nor json"),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        use futures_util::StreamExt;
        use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::core::v1::{ConfigMap, Service};
        use kube::runtime::{Controller, watcher};
        use rookery_operator::controller::{self, Context, Metrics};
        use std::sync::Arc;
        use std::sync::atomic::Ordering;

        let client = kube::Client::try_default().await?;
        let metrics = Arc::new(Metrics::default());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tokio::spawn(rookery_operator::http::serve(listener, metrics.clone()));
        let me = std::env::var("POD_NAME").unwrap_or_else(|_| "rookery-operator".into());
        if leader_election {
            let ns = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
            let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &ns);
            tracing::info!(holder = %me, namespace = %ns, "waiting for the leader lease");
            rookery_operator::leader::acquire(&leases, "rookery-operator", &me).await;
            let me2 = me.clone();
            tokio::spawn(async move {
                rookery_operator::leader::keep(&leases, "rookery-operator", &me2).await;
                // Leadership lost: stop at once; the Deployment brings this replica back as a
                // standby.
                tracing::error!("leader lease lost: exiting");
                std::process::exit(1);
            });
        }
        metrics.leader.store(true, Ordering::Relaxed);
        let ctx = Arc::new(Context {
            client: client.clone(),
            env,
            probe: controller::http_probe(),
            drain: controller::http_drain(),
            metrics,
            reporter: kube::runtime::events::Reporter {
                controller: "rookery-operator".into(),
                instance: Some(me),
            },
            failures: parking_lot::Mutex::new(Default::default()),
            status_written: parking_lot::Mutex::new(Default::default()),
        });
        let owned =
            watcher::Config::default().labels("app.kubernetes.io/managed-by=rookery-operator");
        let (clusters, sts, deps, svcs, cms) = match &watch_namespace {
            Some(ns) => (
                kube::Api::<MqttCluster>::namespaced(client.clone(), ns),
                kube::Api::<StatefulSet>::namespaced(client.clone(), ns),
                kube::Api::<Deployment>::namespaced(client.clone(), ns),
                kube::Api::<Service>::namespaced(client.clone(), ns),
                kube::Api::<ConfigMap>::namespaced(client.clone(), ns),
            ),
            None => (
                kube::Api::all(client.clone()),
                kube::Api::all(client.clone()),
                kube::Api::all(client.clone()),
                kube::Api::all(client.clone()),
                kube::Api::all(client.clone()),
            ),
        };
        tracing::info!("reconciling MqttClusters");
        // The status the operator writes starts another reconcile; it finds nothing to do, and
        // the live figures in the status are written at most every 30 s (controller.rs), so
        // this settles instead of looping.
        Controller::new(clusters, watcher::Config::default())
            .owns(sts, owned.clone())
            .owns(deps, owned.clone())
            .owns(svcs, owned.clone())
            .owns(cms, owned)
            .shutdown_on_signal()
            .run(controller::reconcile, controller::error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "reconcile");
                }
            })
            .await;
        anyhow::Ok(())
    })
}

fn crdgen(out: &PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for (name, text) in rookery_operator::crd::crd_files()? {
        std::fs::write(out.join(&name), text)?;
        eprintln!("wrote {}", out.join(&name).display());
    }
    Ok(())
}
