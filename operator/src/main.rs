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

fn crdgen(out: &PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for (name, text) in rookery_operator::crd::crd_files()? {
        std::fs::write(out.join(&name), text)?;
        eprintln!("wrote {}", out.join(&name).display());
    }
    Ok(())
}
