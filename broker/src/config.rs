//! Configuration: one [`Config`] from defaults, then a TOML file, then `ROOKERY_*` environment
//! variables, then command-line flags (each later source wins). Errors name the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::limits::RateAction;
use crate::listener::identity::CertIdentity;
use crate::listener::tls::TlsFiles;
use crate::listener::{ListenerKind, ListenerSpec};
use crate::session::queue::{OverflowPolicy, QueueLimits};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// When an acknowledged write reaches the disk (or the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityMode {
    /// A QoS 1/2 PUBLISH, SUBSCRIBE or PUBREL is acknowledged only once what it changed is
    /// committed (group commit: concurrent writes share one transaction and one fsync).
    #[default]
    Sync,
    /// Acknowledged at once; committed every `flush_interval_ms`. A crash loses at most that
    /// interval of acknowledged writes.
    Async,
    /// Nothing is stored: sessions, queues and retained messages live in memory only.
    None,
}

/// The broker's configuration. Every key is documented in `docs/configuration.md`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name of this node in logs (and, later, in the cluster).
    pub node_id: String,
    /// MQTT listeners (TCP), 3.1, 3.1.1 and 5.0 on each.
    pub listen: Vec<SocketAddr>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `rookery_broker=debug`.
    pub log_level: String,
    /// Worker threads; 0 uses the CPUs this process may run on.
    pub threads: usize,
    /// Most concurrent connections per listener; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Largest packet accepted (and advertised to MQTT 5.0 clients), bytes.
    pub max_packet_size: u32,
    /// Longest client identifier accepted, bytes.
    pub max_client_id_len: usize,
    /// Most `/`-separated levels in a topic name or filter (deeper ones are refused).
    pub max_topic_levels: usize,
    /// Keep alive the broker imposes when a client asks for more (or for none), seconds; 0 = none.
    pub max_keepalive_secs: u16,
    /// Outgoing QoS 1/2 messages in flight per client (lowered by an MQTT 5.0 Receive Maximum).
    pub max_inflight: u16,
    /// Incoming QoS 2 messages awaiting PUBREL per client (the Receive Maximum we advertise).
    pub receive_maximum: u16,
    /// Messages queued per session beyond those in flight.
    pub max_queued_messages: usize,
    /// Bytes queued per session (topic + payload + overhead); 0 for no byte limit.
    pub max_queued_bytes: usize,
    /// What to do when a session queue is full: `drop-new`, `drop-oldest` or `disconnect`.
    pub queue_overflow: OverflowPolicy,
    /// Queue depth of an online subscriber from which its QoS 1/2 publishers are paused.
    pub backpressure_depth: usize,
    /// Queue QoS 0 messages for offline persistent sessions too.
    pub queue_qos0_offline: bool,
    /// Topic aliases a client may use towards us (MQTT 5.0 Topic Alias Maximum we advertise).
    pub topic_alias_maximum: u16,
    /// Use topic aliases towards MQTT 5.0 clients that allow them.
    pub outgoing_topic_aliases: bool,
    /// Cap on the Session Expiry Interval, seconds (also the expiry of 3.1.1 persistent
    /// sessions); 4294967295 means never.
    pub max_session_expiry_secs: u32,
    /// Takeovers of one client id within `takeover_window_secs` that log a warning.
    pub takeover_warn_count: usize,
    /// Window for `takeover_warn_count`, seconds.
    pub takeover_window_secs: u64,
    /// Seconds to wait for connections to close at shutdown.
    pub shutdown_timeout_secs: u64,
    /// Connections per second a drain (SIGTERM, `POST /admin/drain`) disconnects, at least.
    pub drain_rate: u32,
    /// Seconds a drain may take: past `drain_rate`, it speeds up to finish within them.
    pub drain_timeout_secs: u64,
    /// Where a drain sends MQTT 5.0 clients (Server Reference of DISCONNECT 0x9C), for
    /// example the load balancer's address (none by default).
    pub server_reference: Option<String>,

    /// MQTT over TLS listeners.
    pub tls_listen: Vec<SocketAddr>,
    /// MQTT over WebSocket listeners.
    pub ws_listen: Vec<SocketAddr>,
    /// MQTT over WebSocket over TLS listeners.
    pub wss_listen: Vec<SocketAddr>,
    /// HTTP path of the WebSocket endpoint.
    pub ws_path: String,
    /// PEM certificate chain for the TLS listeners.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle that client certificates must chain to (enables client certificates).
    pub ca: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate during the handshake.
    pub require_client_cert: bool,
    /// Use this part of a client certificate as the username: `cn`, `san-dns`, `san-uri`,
    /// `subject`.
    pub cert_identity: Option<CertIdentity>,
    /// Also use the certificate identity as the client id.
    pub cert_identity_as_client_id: bool,
    /// Listener kinds that expect a PROXY protocol v1/v2 header: `mqtt`, `mqtts`, `ws`, `wss`.
    pub proxy_protocol: Vec<ListenerKind>,
    /// Most open connections from one client address; 0 for no limit.
    pub max_connections_per_address: u32,
    /// Mosquitto-format password file.
    pub password_file: Option<PathBuf>,
    /// Mosquitto-format ACL file.
    pub acl_file: Option<PathBuf>,
    /// Allow clients without credentials. Unset: allowed only when neither a password file nor
    /// client certificates are configured.
    pub allow_anonymous: Option<bool>,
    /// Seconds between checks of the certificate, password and ACL files for changes; 0 to
    /// reload on SIGHUP only.
    pub reload_interval_secs: u64,
    /// Password hashes verified at once (each on a blocking thread); 0 = one per CPU.
    pub auth_workers: usize,
    /// Failed logins per client address, and per username, within `auth_fail_window_secs`
    /// before a ban; 0 disables.
    pub auth_fail_max: u32,
    /// Window for `auth_fail_max`, seconds.
    pub auth_fail_window_secs: u64,
    /// How long a failed-login ban lasts, seconds.
    pub auth_ban_secs: u64,
    /// Connections per client id (and per address) within `flapping_window_secs` before a
    /// ban; 0 disables.
    pub flapping_max: u32,
    /// Connections per client address within `flapping_window_secs` before the address is
    /// banned; 0 (the default) disables, since NAT and load balancers put many devices
    /// behind one address.
    pub flapping_max_per_address: u32,
    /// Window for `flapping_max`, seconds.
    pub flapping_window_secs: u64,
    /// How long a flapping ban lasts, seconds.
    pub flapping_ban_secs: u64,
    /// Directory of the embedded store (used for whatever Redis and PostgreSQL do not hold).
    pub data_dir: PathBuf,
    /// `sync`, `async` or `none`.
    pub durability: DurabilityMode,
    /// In `async` durability, milliseconds between commits.
    pub flush_interval_ms: u64,
    /// Writes waiting for a commit above which new QoS 1/2 messages for persistent sessions are
    /// refused (the store cannot keep up).
    pub store_max_pending: usize,
    /// Redis URL for sessions (`redis://`, `rediss://`, `redis+sentinel://`).
    pub redis_url: Option<String>,
    /// File holding the Redis URL (a mounted Secret); read at start.
    pub redis_url_file: Option<PathBuf>,
    /// PostgreSQL URL for retained messages and queues.
    pub postgres_url: Option<String>,
    /// File holding the PostgreSQL URL (a mounted Secret); read at start.
    pub postgres_url_file: Option<PathBuf>,
    /// Cluster name: namespaces shared state (Redis keys) and must match on every cluster link.
    pub cluster_name: String,
    /// Address for links from the other nodes (none: this node is not clustered).
    pub cluster_listen: Option<SocketAddr>,
    /// The other nodes' `cluster_listen` addresses, `host:port` (the same list on every node:
    /// a node finds and skips its own).
    pub peers: Vec<String>,
    /// A DNS name (`host:port`) whose addresses are the peers, re-resolved every 5 s: the
    /// StatefulSet's headless Service.
    pub peers_dns: Option<String>,
    /// CA that every node's link certificate chains to (mutual TLS on cluster links).
    pub cluster_ca: Option<PathBuf>,
    /// This node's link certificate (PEM chain), presented both ways.
    pub cluster_cert: Option<PathBuf>,
    /// This node's link key.
    pub cluster_key: Option<PathBuf>,
    /// The name a peer's link certificate must carry, whatever address it was dialed at
    /// (none: the host part of that address). For peers found through `peers_dns`, whose
    /// addresses are pod IPs, this is the headless Service's name.
    pub cluster_server_name: Option<String>,
    /// Address of the HTTP endpoint for `/metrics`, `/healthz`, `/readyz` and the admin API
    /// (none by default).
    pub metrics_listen: Option<SocketAddr>,
    /// File holding the bearer token of the admin API (`/admin/...`); the API is off
    /// without it.
    pub admin_token_file: Option<PathBuf>,
    /// Seconds between `$SYS/broker/...` updates (0 = none).
    pub sys_interval: u64,
    /// PUBLISH packets per second per client (0 = no limit).
    pub publish_rate_limit: u32,
    /// PUBLISH payload bytes per second per client (0 = no limit).
    pub publish_byte_rate_limit: u64,
    /// What an MQTT 5.0 client over its publish rate gets: `slow` or `disconnect` (0x96).
    pub rate_limit_action: RateAction,
    /// New connections per second per listener (0 = no limit).
    pub max_connection_rate: u32,
    /// Bytes queued for delivery, broker-wide, above which publishers are paused (0 = half
    /// of the memory the process may use).
    pub memory_high_watermark: u64,
    /// UDP address of the CoAP gateway (off by default).
    pub coap_listen: Option<SocketAddr>,
    /// UDP address of the CoAP gateway over DTLS with pre-shared keys (`coaps://`; off by
    /// default; needs `psk_file`).
    pub coaps_listen: Option<SocketAddr>,
    /// Mosquitto-format PSK file (`identity:hexkey` lines) for `coaps_listen`: the identity
    /// is the device id and its trusted username.
    pub psk_file: Option<PathBuf>,
    /// PSK identity hint sent to DTLS clients (none by default).
    pub psk_hint: Option<String>,
    /// MQTT topic prefix of a device's resources; `{device_id}` is replaced.
    pub coap_prefix: String,
    /// MQTT topic prefix of commands to devices: `{prefix}{device_id}/{path}`.
    pub coap_command_prefix: String,
    /// Static device addresses, `ID=HOST:PORT`.
    pub coap_devices: Vec<String>,
    /// RFC 7252 ACK_TIMEOUT in milliseconds, for the gateway's confirmable messages.
    pub coap_ack_timeout_ms: u64,
    /// RFC 7252 MAX_RETRANSMIT.
    pub coap_max_retransmit: u32,
    /// Datagrams per second per source address (burst: twice as many; 0 = no limit).
    pub coap_rate_limit: u32,
    /// Seconds without traffic after which a device's MQTT connection is closed (its
    /// persistent session stays).
    pub coap_idle_secs: u64,
    /// Session expiry of a device's MQTT session, seconds (commands queue there while the
    /// device is away).
    pub coap_session_expiry_secs: u32,
    /// Bridges to upstream brokers (`[[bridge]]` sections; configuration file only).
    pub bridge: Vec<crate::bridge::config::BridgeConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: default_node_id(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            log_format: LogFormat::Text,
            log_level: "info".into(),
            threads: 0,
            max_connections: 100_000,
            connect_timeout_secs: 10,
            max_packet_size: 1024 * 1024,
            max_client_id_len: 1024,
            max_topic_levels: 128,
            max_keepalive_secs: 0,
            max_inflight: 100,
            receive_maximum: 1024,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            queue_overflow: OverflowPolicy::DropNew,
            backpressure_depth: 256,
            queue_qos0_offline: false,
            topic_alias_maximum: 1024,
            outgoing_topic_aliases: true,
            max_session_expiry_secs: u32::MAX,
            takeover_warn_count: 3,
            takeover_window_secs: 60,
            shutdown_timeout_secs: 10,
            drain_rate: 500,
            drain_timeout_secs: 60,
            server_reference: None,
            tls_listen: Vec::new(),
            ws_listen: Vec::new(),
            wss_listen: Vec::new(),
            ws_path: "/mqtt".into(),
            cert: None,
            key: None,
            ca: None,
            require_client_cert: false,
            cert_identity: None,
            cert_identity_as_client_id: false,
            proxy_protocol: Vec::new(),
            max_connections_per_address: 0,
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
            reload_interval_secs: 10,
            auth_workers: 0,
            auth_fail_max: 10,
            auth_fail_window_secs: 60,
            auth_ban_secs: 300,
            flapping_max: 15,
            flapping_max_per_address: 0,
            flapping_window_secs: 60,
            flapping_ban_secs: 300,
            data_dir: PathBuf::from("rookery-data"),
            durability: DurabilityMode::Sync,
            flush_interval_ms: 10,
            store_max_pending: 1_000_000,
            redis_url: None,
            redis_url_file: None,
            postgres_url: None,
            postgres_url_file: None,
            cluster_name: "rookery".into(),
            cluster_listen: None,
            peers: Vec::new(),
            peers_dns: None,
            cluster_ca: None,
            cluster_cert: None,
            cluster_key: None,
            cluster_server_name: None,
            metrics_listen: None,
            admin_token_file: None,
            sys_interval: 10,
            publish_rate_limit: 0,
            publish_byte_rate_limit: 0,
            rate_limit_action: RateAction::Slow,
            max_connection_rate: 0,
            memory_high_watermark: 0,
            coap_listen: None,
            coaps_listen: None,
            psk_file: None,
            psk_hint: None,
            coap_prefix: "devices/{device_id}/".into(),
            coap_command_prefix: "commands/".into(),
            coap_devices: Vec::new(),
            coap_ack_timeout_ms: 2000,
            coap_max_retransmit: 4,
            coap_rate_limit: 100,
            coap_idle_secs: 300,
            coap_session_expiry_secs: 86_400,
            bridge: Vec::new(),
        }
    }
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rookery-0".into())
}

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid for [`Config`]; the message names the key.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What `toml` said, with the key and line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid value for `{field}`: {reason}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses TOML text over the defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Checks ranges that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.listeners().is_empty() {
            return invalid(
                "listen",
                "at least one listener (listen, tls_listen, ws_listen or wss_listen) is needed",
            );
        }
        let tls = !self.tls_listen.is_empty() || !self.wss_listen.is_empty();
        if tls && self.cert.is_none() {
            return invalid("cert", "TLS listeners need a certificate file");
        }
        if tls && self.key.is_none() {
            return invalid("key", "TLS listeners need a private key file");
        }
        if self.require_client_cert && self.ca.is_none() {
            return invalid(
                "ca",
                "require_client_cert needs a CA file to check certificates",
            );
        }
        if self.cert_identity.is_some() && self.ca.is_none() {
            return invalid("ca", "cert_identity needs a CA file to check certificates");
        }
        if self.cert_identity_as_client_id && self.cert_identity.is_none() {
            return invalid(
                "cert_identity_as_client_id",
                "needs cert_identity to say which part of the certificate",
            );
        }
        if !self.ws_path.starts_with('/') {
            return invalid("ws_path", "must start with /");
        }
        if self.max_packet_size < 64 {
            return invalid("max_packet_size", "must be at least 64 bytes");
        }
        if self.max_packet_size > 268_435_455 + 5 {
            return invalid(
                "max_packet_size",
                "MQTT packets are at most 268435460 bytes",
            );
        }
        if self.max_topic_levels == 0 {
            return invalid("max_topic_levels", "must be at least 1");
        }
        if self.max_inflight == 0 {
            return invalid("max_inflight", "must be at least 1");
        }
        if self.receive_maximum == 0 {
            return invalid("receive_maximum", "must be at least 1");
        }
        if self.max_queued_messages == 0 {
            return invalid("max_queued_messages", "must be at least 1");
        }
        if self.backpressure_depth < 2 {
            return invalid("backpressure_depth", "must be at least 2");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.drain_rate == 0 {
            return invalid("drain_rate", "must be at least 1 connection per second");
        }
        if self
            .server_reference
            .as_deref()
            .is_some_and(|r| r.is_empty() || r.len() > 65_535)
        {
            return invalid("server_reference", "must be a non-empty address");
        }
        if self.connect_timeout_secs == 0 {
            return invalid("connect_timeout_secs", "must be at least 1");
        }
        if self.node_id.is_empty() {
            return invalid("node_id", "must not be empty");
        }
        if let Some(bad) = self.peers.iter().chain(&self.peers_dns).find(|p| {
            p.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        }) {
            return invalid("peers", &format!("{bad:?} is not host:port"));
        }
        let link_tls = [&self.cluster_ca, &self.cluster_cert, &self.cluster_key];
        if link_tls.iter().any(|f| f.is_some()) && !link_tls.iter().all(|f| f.is_some()) {
            return invalid(
                "cluster_ca",
                "cluster links need all of cluster_ca, cluster_cert and cluster_key, or none",
            );
        }
        if let Some(name) = &self.cluster_server_name {
            if self.cluster_ca.is_none() {
                return invalid(
                    "cluster_server_name",
                    "needs cluster_ca, cluster_cert and cluster_key",
                );
            }
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return invalid(
                    "cluster_server_name",
                    &format!("{name:?} is not a DNS name"),
                );
            }
        }
        if (!self.peers.is_empty() || self.peers_dns.is_some()) && self.cluster_listen.is_none() {
            return invalid(
                "cluster_listen",
                "peers are set: the other nodes need an address to link to",
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return invalid("log_level", &e.to_string());
        }
        if let Err(reason) = crate::coap::topics::check_prefix(&self.coap_prefix, true) {
            return invalid("coap_prefix", &reason);
        }
        if let Err(reason) = crate::coap::topics::check_prefix(&self.coap_command_prefix, false) {
            return invalid("coap_command_prefix", &reason);
        }
        if let Err(reason) = self.coap_device_map() {
            return invalid("coap_devices", &reason);
        }
        if self.coap_ack_timeout_ms == 0 {
            return invalid("coap_ack_timeout_ms", "must be at least 1");
        }
        if self.coaps_listen.is_some() && self.psk_file.is_none() {
            return invalid(
                "coaps_listen",
                "needs psk_file: the keys DTLS clients authenticate with",
            );
        }
        if self.psk_file.is_some() && self.coaps_listen.is_none() {
            return invalid("psk_file", "is used only by coaps_listen, which is not set");
        }
        if self.psk_hint.is_some() && self.coaps_listen.is_none() {
            return invalid("psk_hint", "is used only by coaps_listen, which is not set");
        }
        if let (Some(a), Some(b)) = (self.coap_listen, self.coaps_listen)
            && a == b
            && a.port() != 0
        {
            return invalid("coaps_listen", &format!("{b} is coap_listen's address too"));
        }
        for (i, bridge) in self.bridge.iter().enumerate() {
            if let Err((field, reason)) = bridge.validate() {
                return invalid("bridge", &format!("{field}: {reason}"));
            }
            if self.bridge[..i].iter().any(|b| b.name == bridge.name) {
                return invalid(
                    "bridge",
                    &format!("two bridges are named {:?}", bridge.name),
                );
            }
        }
        Ok(())
    }

    /// The static CoAP device addresses, by device id.
    pub fn coap_device_map(&self) -> Result<std::collections::HashMap<String, SocketAddr>, String> {
        let mut map = std::collections::HashMap::new();
        for entry in &self.coap_devices {
            let Some((id, addr)) = entry.split_once('=') else {
                return Err(format!("{entry:?} is not ID=HOST:PORT"));
            };
            crate::coap::topics::check_device_id(id)
                .map_err(|reason| format!("{entry:?}: {reason}"))?;
            let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("{entry:?}: {addr:?} is not HOST:PORT"))?;
            map.insert(id.to_owned(), addr);
        }
        Ok(map)
    }

    /// Every listener to bind, in order: mqtt, mqtts, ws, wss.
    pub fn listeners(&self) -> Vec<ListenerSpec> {
        let kinds = [
            (ListenerKind::Mqtt, &self.listen),
            (ListenerKind::Mqtts, &self.tls_listen),
            (ListenerKind::Ws, &self.ws_listen),
            (ListenerKind::Wss, &self.wss_listen),
        ];
        kinds
            .into_iter()
            .flat_map(|(kind, addrs)| {
                addrs.iter().map(move |&addr| ListenerSpec {
                    kind,
                    addr,
                    proxy_protocol: self.proxy_protocol.contains(&kind),
                })
            })
            .collect()
    }

    /// The TLS files, when TLS listeners are configured.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        if self.tls_listen.is_empty() && self.wss_listen.is_empty() {
            return None;
        }
        Some(TlsFiles {
            cert: self.cert.clone()?,
            key: self.key.clone()?,
            ca: self.ca.clone(),
            require_client_cert: self.require_client_cert,
        })
    }

    /// The Redis and PostgreSQL URLs in force, read from their files when given that way.
    /// Errors name the key.
    pub fn store_urls(&self) -> Result<(Option<String>, Option<String>), ConfigError> {
        fn pick(
            field: &'static str,
            url: &Option<String>,
            file: &Option<PathBuf>,
        ) -> Result<Option<String>, ConfigError> {
            match (url, file) {
                (Some(_), Some(_)) => Err(ConfigError::Invalid {
                    field,
                    reason: "give the URL or a file holding it, not both".into(),
                }),
                (Some(u), None) => Ok(Some(u.trim().to_owned())),
                (None, Some(path)) => match std::fs::read_to_string(path) {
                    Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
                    Ok(_) => Err(ConfigError::Invalid {
                        field,
                        reason: format!("{} is empty", path.display()),
                    }),
                    Err(e) => Err(ConfigError::Invalid {
                        field,
                        reason: format!("cannot read {}: {e}", path.display()),
                    }),
                },
                (None, None) => Ok(None),
            }
        }
        Ok((
            pick("redis_url_file", &self.redis_url, &self.redis_url_file)?,
            pick(
                "postgres_url_file",
                &self.postgres_url,
                &self.postgres_url_file,
            )?,
        ))
    }

    /// The admin API token from `admin_token_file`, if set. Errors name the key.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            field: "admin_token_file",
            reason,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(invalid(format!(
                "{} must hold a token of at least 16 characters",
                path.display()
            )));
        }
        Ok(Some(token.to_owned()))
    }

    /// Whether clients without credentials are let in.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous
            .unwrap_or(self.password_file.is_none() && self.ca.is_none())
    }

    /// Session queue bounds.
    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.max_queued_messages,
            max_bytes: self.max_queued_bytes,
            overflow: self.queue_overflow,
            backpressure_depth: self.backpressure_depth,
        }
    }
}

/// Command line of `rookery-broker`. Every flag also reads its `ROOKERY_*` variable.
#[derive(Debug, Parser)]
#[command(name = "rookery-broker", version, about = "Rookery MQTT broker")]
pub struct Cli {
    /// A tool instead of the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, env = "ROOKERY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// MQTT listener address; repeat for several (env: comma-separated).
    #[arg(
        long,
        env = "ROOKERY_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,
    /// Node name (default: the host name).
    #[arg(long, env = "ROOKERY_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Log format.
    #[arg(long, env = "ROOKERY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `rookery_broker=debug`.
    #[arg(long, env = "ROOKERY_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Worker threads (0 = one per CPU this process may use).
    #[arg(long, env = "ROOKERY_THREADS")]
    pub threads: Option<usize>,
    /// Most concurrent connections per listener.
    #[arg(long, env = "ROOKERY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a new connection has to send CONNECT.
    #[arg(long, env = "ROOKERY_CONNECT_TIMEOUT_SECS")]
    pub connect_timeout_secs: Option<u64>,
    /// Largest packet accepted, bytes.
    #[arg(long, env = "ROOKERY_MAX_PACKET_SIZE")]
    pub max_packet_size: Option<u32>,
    /// Longest client identifier, bytes.
    #[arg(long, env = "ROOKERY_MAX_CLIENT_ID_LEN")]
    pub max_client_id_len: Option<usize>,
    /// Most levels in a topic name or filter.
    #[arg(long, env = "ROOKERY_MAX_TOPIC_LEVELS")]
    pub max_topic_levels: Option<usize>,
    /// Keep alive imposed on clients asking for more or none, seconds (0 = none).
    #[arg(long, env = "ROOKERY_MAX_KEEPALIVE_SECS")]
    pub max_keepalive_secs: Option<u16>,
    /// Outgoing QoS 1/2 in flight per client.
    #[arg(long, env = "ROOKERY_MAX_INFLIGHT")]
    pub max_inflight: Option<u16>,
    /// Incoming QoS 2 awaiting PUBREL per client.
    #[arg(long, env = "ROOKERY_RECEIVE_MAXIMUM")]
    pub receive_maximum: Option<u16>,
    /// Messages queued per session.
    #[arg(long, env = "ROOKERY_MAX_QUEUED_MESSAGES")]
    pub max_queued_messages: Option<usize>,
    /// Bytes queued per session (0 = no byte limit).
    #[arg(long, env = "ROOKERY_MAX_QUEUED_BYTES")]
    pub max_queued_bytes: Option<usize>,
    /// Policy when a session queue is full.
    #[arg(long, env = "ROOKERY_QUEUE_OVERFLOW", value_enum)]
    pub queue_overflow: Option<OverflowPolicy>,
    /// Queue depth from which QoS 1/2 publishers are paused.
    #[arg(long, env = "ROOKERY_BACKPRESSURE_DEPTH")]
    pub backpressure_depth: Option<usize>,
    /// Queue QoS 0 messages for offline sessions.
    #[arg(long, env = "ROOKERY_QUEUE_QOS0_OFFLINE")]
    pub queue_qos0_offline: Option<bool>,
    /// Topic Alias Maximum advertised to MQTT 5.0 clients.
    #[arg(long, env = "ROOKERY_TOPIC_ALIAS_MAXIMUM")]
    pub topic_alias_maximum: Option<u16>,
    /// Use topic aliases towards MQTT 5.0 clients.
    #[arg(long, env = "ROOKERY_OUTGOING_TOPIC_ALIASES")]
    pub outgoing_topic_aliases: Option<bool>,
    /// Cap on session expiry, seconds.
    #[arg(long, env = "ROOKERY_MAX_SESSION_EXPIRY_SECS")]
    pub max_session_expiry_secs: Option<u32>,
    /// Takeovers within the window that log a warning.
    #[arg(long, env = "ROOKERY_TAKEOVER_WARN_COUNT")]
    pub takeover_warn_count: Option<usize>,
    /// Takeover warning window, seconds.
    #[arg(long, env = "ROOKERY_TAKEOVER_WINDOW_SECS")]
    pub takeover_window_secs: Option<u64>,
    /// Seconds to wait for connections at shutdown.
    #[arg(long, env = "ROOKERY_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Connections per second a drain disconnects, at least.
    #[arg(long, env = "ROOKERY_DRAIN_RATE")]
    pub drain_rate: Option<u32>,
    /// Seconds a drain may take.
    #[arg(long, env = "ROOKERY_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Where a drain sends MQTT 5.0 clients (Server Reference), e.g. the load balancer.
    #[arg(long, env = "ROOKERY_SERVER_REFERENCE", value_name = "HOST[:PORT]")]
    pub server_reference: Option<String>,
    /// MQTT over TLS listener; repeat for several.
    #[arg(
        long,
        env = "ROOKERY_TLS_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub tls_listen: Vec<SocketAddr>,
    /// MQTT over WebSocket listener; repeat for several.
    #[arg(
        long,
        env = "ROOKERY_WS_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub ws_listen: Vec<SocketAddr>,
    /// MQTT over secure WebSocket listener; repeat for several.
    #[arg(
        long,
        env = "ROOKERY_WSS_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub wss_listen: Vec<SocketAddr>,
    /// HTTP path of the WebSocket endpoint.
    #[arg(long, env = "ROOKERY_WS_PATH", value_name = "PATH")]
    pub ws_path: Option<String>,
    /// PEM certificate chain for TLS listeners.
    #[arg(long, env = "ROOKERY_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, env = "ROOKERY_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// PEM CA bundle for client certificates.
    #[arg(long, env = "ROOKERY_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate.
    #[arg(long, env = "ROOKERY_REQUIRE_CLIENT_CERT", num_args = 0..=1, default_missing_value = "true")]
    pub require_client_cert: Option<bool>,
    /// Use this part of a client certificate as the username.
    #[arg(long, env = "ROOKERY_CERT_IDENTITY", value_enum)]
    pub cert_identity: Option<CertIdentity>,
    /// Also use the certificate identity as the client id.
    #[arg(long, env = "ROOKERY_CERT_IDENTITY_AS_CLIENT_ID", num_args = 0..=1, default_missing_value = "true")]
    pub cert_identity_as_client_id: Option<bool>,
    /// Listener kinds that expect a PROXY protocol header (comma-separated).
    #[arg(
        long,
        env = "ROOKERY_PROXY_PROTOCOL",
        value_enum,
        value_delimiter = ','
    )]
    pub proxy_protocol: Vec<ListenerKind>,
    /// Most open connections from one address (0 = no limit).
    #[arg(long, env = "ROOKERY_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<u32>,
    /// Mosquitto-format password file.
    #[arg(long, env = "ROOKERY_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Mosquitto-format ACL file.
    #[arg(long, env = "ROOKERY_ACL_FILE", value_name = "FILE")]
    pub acl_file: Option<PathBuf>,
    /// Allow clients without credentials.
    #[arg(long, env = "ROOKERY_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_anonymous: Option<bool>,
    /// Seconds between checks of certificate, password and ACL files (0 = SIGHUP only).
    #[arg(long, env = "ROOKERY_RELOAD_INTERVAL_SECS")]
    pub reload_interval_secs: Option<u64>,
    /// Password hashes verified at once (0 = one per CPU).
    #[arg(long, env = "ROOKERY_AUTH_WORKERS")]
    pub auth_workers: Option<usize>,
    /// Failed logins per address or username within the window before a ban (0 = off).
    #[arg(long, env = "ROOKERY_AUTH_FAIL_MAX")]
    pub auth_fail_max: Option<u32>,
    /// Failed-login window, seconds.
    #[arg(long, env = "ROOKERY_AUTH_FAIL_WINDOW_SECS")]
    pub auth_fail_window_secs: Option<u64>,
    /// Failed-login ban, seconds.
    #[arg(long, env = "ROOKERY_AUTH_BAN_SECS")]
    pub auth_ban_secs: Option<u64>,
    /// Connections per client id or address within the window before a ban (0 = off).
    #[arg(long, env = "ROOKERY_FLAPPING_MAX")]
    pub flapping_max: Option<u32>,
    /// Connections per address within the window before a ban (0 = off).
    #[arg(long, env = "ROOKERY_FLAPPING_MAX_PER_ADDRESS")]
    pub flapping_max_per_address: Option<u32>,
    /// Flapping window, seconds.
    #[arg(long, env = "ROOKERY_FLAPPING_WINDOW_SECS")]
    pub flapping_window_secs: Option<u64>,
    /// Flapping ban, seconds.
    #[arg(long, env = "ROOKERY_FLAPPING_BAN_SECS")]
    pub flapping_ban_secs: Option<u64>,
    /// Directory of the embedded store.
    #[arg(long, env = "ROOKERY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sync` (acknowledge after commit), `async` (commit every flush interval) or `none`.
    #[arg(long, env = "ROOKERY_DURABILITY", value_enum)]
    pub durability: Option<DurabilityMode>,
    /// Milliseconds between commits in `async` durability.
    #[arg(long, env = "ROOKERY_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Writes waiting for a commit above which new persistent QoS 1/2 messages are refused.
    #[arg(long, env = "ROOKERY_STORE_MAX_PENDING")]
    pub store_max_pending: Option<usize>,
    /// Redis URL for sessions.
    #[arg(long, env = "ROOKERY_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// File holding the Redis URL.
    #[arg(long, env = "ROOKERY_REDIS_URL_FILE", value_name = "FILE")]
    pub redis_url_file: Option<PathBuf>,
    /// PostgreSQL URL for retained messages and queues.
    #[arg(long, env = "ROOKERY_POSTGRES_URL", value_name = "URL")]
    pub postgres_url: Option<String>,
    /// File holding the PostgreSQL URL.
    #[arg(long, env = "ROOKERY_POSTGRES_URL_FILE", value_name = "FILE")]
    pub postgres_url_file: Option<PathBuf>,
    /// Cluster name (namespaces Redis keys).
    #[arg(long, env = "ROOKERY_CLUSTER_NAME", value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Address for links from the other cluster nodes.
    #[arg(long, env = "ROOKERY_CLUSTER_LISTEN", value_name = "ADDR")]
    pub cluster_listen: Option<SocketAddr>,
    /// The cluster nodes' link addresses, `host:port,...` (the same list on every node).
    #[arg(
        long,
        env = "ROOKERY_PEERS",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,
    /// A DNS name, `host:port`, whose addresses are the peers (re-resolved every 5 s).
    #[arg(long, env = "ROOKERY_PEERS_DNS", value_name = "HOST:PORT")]
    pub peers_dns: Option<String>,
    /// CA of the cluster links' certificates (mutual TLS between nodes).
    #[arg(long, env = "ROOKERY_CLUSTER_CA", value_name = "FILE")]
    pub cluster_ca: Option<PathBuf>,
    /// This node's certificate for cluster links.
    #[arg(long, env = "ROOKERY_CLUSTER_CERT", value_name = "FILE")]
    pub cluster_cert: Option<PathBuf>,
    /// This node's key for cluster links.
    #[arg(long, env = "ROOKERY_CLUSTER_KEY", value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,
    /// The name every peer's link certificate must carry (default: the dialed host).
    #[arg(long, env = "ROOKERY_CLUSTER_SERVER_NAME", value_name = "NAME")]
    pub cluster_server_name: Option<String>,
    /// Address for `/metrics`, `/healthz`, `/readyz` and the admin API.
    #[arg(long, env = "ROOKERY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// File holding the admin API's bearer token.
    #[arg(long, env = "ROOKERY_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Seconds between `$SYS` updates (0 = none).
    #[arg(long, env = "ROOKERY_SYS_INTERVAL", value_name = "SECS")]
    pub sys_interval: Option<u64>,
    /// PUBLISH packets per second per client (0 = no limit).
    #[arg(long, env = "ROOKERY_PUBLISH_RATE_LIMIT")]
    pub publish_rate_limit: Option<u32>,
    /// PUBLISH payload bytes per second per client (0 = no limit).
    #[arg(long, env = "ROOKERY_PUBLISH_BYTE_RATE_LIMIT")]
    pub publish_byte_rate_limit: Option<u64>,
    /// `slow` or `disconnect` (MQTT 5.0 reason 0x96) for clients over their publish rate.
    #[arg(long, env = "ROOKERY_RATE_LIMIT_ACTION", value_enum)]
    pub rate_limit_action: Option<RateAction>,
    /// New connections per second per listener (0 = no limit).
    #[arg(long, env = "ROOKERY_MAX_CONNECTION_RATE")]
    pub max_connection_rate: Option<u32>,
    /// Queued bytes above which publishers are paused (0 = half the memory limit).
    #[arg(long, env = "ROOKERY_MEMORY_HIGH_WATERMARK", value_name = "BYTES")]
    pub memory_high_watermark: Option<u64>,
    /// UDP address of the CoAP gateway.
    #[arg(long, env = "ROOKERY_COAP_LISTEN", value_name = "ADDR")]
    pub coap_listen: Option<SocketAddr>,
    /// UDP address of the CoAP gateway over DTLS with pre-shared keys (needs --psk-file).
    #[arg(long, env = "ROOKERY_COAPS_LISTEN", value_name = "ADDR")]
    pub coaps_listen: Option<SocketAddr>,
    /// Mosquitto-format PSK file (`identity:hexkey`) for --coaps-listen.
    #[arg(long, env = "ROOKERY_PSK_FILE", value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// PSK identity hint sent to DTLS clients.
    #[arg(long, env = "ROOKERY_PSK_HINT", value_name = "HINT")]
    pub psk_hint: Option<String>,
    /// MQTT topic prefix of a device's resources (`{device_id}` is replaced).
    #[arg(long, env = "ROOKERY_COAP_PREFIX", value_name = "PREFIX")]
    pub coap_prefix: Option<String>,
    /// MQTT topic prefix of commands to devices.
    #[arg(long, env = "ROOKERY_COAP_COMMAND_PREFIX", value_name = "PREFIX")]
    pub coap_command_prefix: Option<String>,
    /// A static device address, `ID=HOST:PORT` (repeat the flag for more).
    #[arg(
        long = "coap-device",
        env = "ROOKERY_COAP_DEVICES",
        value_name = "ID=HOST:PORT",
        value_delimiter = ','
    )]
    pub coap_devices: Vec<String>,
    /// ACK_TIMEOUT of the gateway's confirmable messages, milliseconds.
    #[arg(long, env = "ROOKERY_COAP_ACK_TIMEOUT_MS", value_name = "MS")]
    pub coap_ack_timeout_ms: Option<u64>,
    /// MAX_RETRANSMIT of the gateway's confirmable messages.
    #[arg(long, env = "ROOKERY_COAP_MAX_RETRANSMIT")]
    pub coap_max_retransmit: Option<u32>,
    /// CoAP datagrams per second per source address (0 = no limit).
    #[arg(long, env = "ROOKERY_COAP_RATE_LIMIT")]
    pub coap_rate_limit: Option<u32>,
    /// Seconds without traffic before a device's MQTT connection is closed.
    #[arg(long, env = "ROOKERY_COAP_IDLE_SECS", value_name = "SECS")]
    pub coap_idle_secs: Option<u64>,
    /// Session expiry of a device's MQTT session, seconds.
    #[arg(long, env = "ROOKERY_COAP_SESSION_EXPIRY_SECS", value_name = "SECS")]
    pub coap_session_expiry_secs: Option<u32>,
}

/// Tools run instead of the broker.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Adds or updates a user in a Mosquitto-format password file (the password is read from
    /// the terminal, or from the first line of standard input; never from arguments).
    Passwd {
        /// The password file (created when missing, unless deleting).
        file: PathBuf,
        /// The user.
        user: String,
        /// Delete the user instead.
        #[arg(short = 'D', long)]
        delete: bool,
        /// Hash for new entries: `argon2id`, or `pbkdf2` (Mosquitto's `$7$`, readable by
        /// Mosquitto too).
        #[arg(long, value_enum, default_value_t = HashScheme::Argon2id)]
        hash: HashScheme,
    },
    /// Asks a broker's HTTP endpoint whether it is alive (for a container's HEALTHCHECK, which
    /// has no curl): exits 0 on HTTP 200, 1 otherwise.
    Healthcheck {
        /// The URL to GET (plain HTTP).
        #[arg(
            long,
            env = "ROOKERY_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:9100/healthz"
        )]
        url: String,
    },
}

/// Hash scheme for new password entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashScheme {
    /// argon2id with the argon2 crate's recommended cost.
    Argon2id,
    /// PBKDF2-HMAC-SHA512, Mosquitto's `$7$`, with 210 000 iterations.
    Pbkdf2,
}

macro_rules! override_fields {
    ($config:ident, $cli:ident, $($field:ident),* $(,)?) => {
        $( if let Some(v) = $cli.$field { $config.$field = v; } )*
    };
}

impl Cli {
    /// Builds the configuration: defaults, file, then environment and flags.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let cli = self;
        if !cli.listen.is_empty() {
            config.listen = cli.listen;
        }
        if !cli.tls_listen.is_empty() {
            config.tls_listen = cli.tls_listen;
        }
        if !cli.ws_listen.is_empty() {
            config.ws_listen = cli.ws_listen;
        }
        if !cli.wss_listen.is_empty() {
            config.wss_listen = cli.wss_listen;
        }
        if !cli.proxy_protocol.is_empty() {
            config.proxy_protocol = cli.proxy_protocol;
        }
        for (slot, value) in [
            (&mut config.cert, cli.cert),
            (&mut config.key, cli.key),
            (&mut config.ca, cli.ca),
            (&mut config.password_file, cli.password_file),
            (&mut config.acl_file, cli.acl_file),
            (&mut config.psk_file, cli.psk_file),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
        if cli.cert_identity.is_some() {
            config.cert_identity = cli.cert_identity;
        }
        if cli.allow_anonymous.is_some() {
            config.allow_anonymous = cli.allow_anonymous;
        }
        override_fields!(
            config,
            cli,
            node_id,
            log_format,
            log_level,
            threads,
            max_connections,
            connect_timeout_secs,
            max_packet_size,
            max_client_id_len,
            max_topic_levels,
            max_keepalive_secs,
            max_inflight,
            receive_maximum,
            max_queued_messages,
            max_queued_bytes,
            queue_overflow,
            backpressure_depth,
            queue_qos0_offline,
            topic_alias_maximum,
            outgoing_topic_aliases,
            max_session_expiry_secs,
            takeover_warn_count,
            takeover_window_secs,
            shutdown_timeout_secs,
            drain_rate,
            drain_timeout_secs,
            ws_path,
            require_client_cert,
            cert_identity_as_client_id,
            max_connections_per_address,
            reload_interval_secs,
            auth_workers,
            auth_fail_max,
            auth_fail_window_secs,
            auth_ban_secs,
            flapping_max,
            flapping_max_per_address,
            flapping_window_secs,
            flapping_ban_secs,
            data_dir,
            durability,
            flush_interval_ms,
            store_max_pending,
            cluster_name,
            sys_interval,
            publish_rate_limit,
            publish_byte_rate_limit,
            rate_limit_action,
            max_connection_rate,
            memory_high_watermark,
            coap_prefix,
            coap_command_prefix,
            coap_ack_timeout_ms,
            coap_max_retransmit,
            coap_rate_limit,
            coap_idle_secs,
            coap_session_expiry_secs,
        );
        if cli.coap_listen.is_some() {
            config.coap_listen = cli.coap_listen;
        }
        if cli.coaps_listen.is_some() {
            config.coaps_listen = cli.coaps_listen;
        }
        if cli.psk_hint.is_some() {
            config.psk_hint = cli.psk_hint;
        }
        if !cli.coap_devices.is_empty() {
            config.coap_devices = cli.coap_devices;
        }
        if cli.server_reference.is_some() {
            config.server_reference = cli.server_reference;
        }
        if cli.metrics_listen.is_some() {
            config.metrics_listen = cli.metrics_listen;
        }
        if cli.cluster_listen.is_some() {
            config.cluster_listen = cli.cluster_listen;
        }
        if !cli.peers.is_empty() {
            config.peers = cli.peers;
        }
        if cli.peers_dns.is_some() {
            config.peers_dns = cli.peers_dns;
        }
        if cli.cluster_server_name.is_some() {
            config.cluster_server_name = cli.cluster_server_name;
        }
        for (slot, value) in [
            (&mut config.cluster_ca, cli.cluster_ca),
            (&mut config.cluster_cert, cli.cluster_cert),
            (&mut config.cluster_key, cli.cluster_key),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
        if cli.admin_token_file.is_some() {
            config.admin_token_file = cli.admin_token_file;
        }
        for (slot, value) in [
            (&mut config.redis_url, cli.redis_url),
            (&mut config.postgres_url, cli.postgres_url),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
        for (slot, value) in [
            (&mut config.redis_url_file, cli.redis_url_file),
            (&mut config.postgres_url_file, cli.postgres_url_file),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_types_name_the_field() {
        let err = Config::from_toml("max_inflight = \"many\"").unwrap_err();
        assert!(err.contains("max_inflight"), "{err}");
        let err = Config::from_toml("max_infligt = 3").unwrap_err();
        assert!(err.contains("max_infligt"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(
            &path,
            "max_inflight = 7\nmax_queued_messages = 9\nlisten = [\"127.0.0.1:1999\"]\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "rookery-broker",
            "--config",
            path.to_str().unwrap(),
            "--max-inflight",
            "11",
            "--listen",
            "127.0.0.1:2000",
            "--listen",
            "127.0.0.1:2001",
        ]);
        let c = cli.into_config().unwrap();
        assert_eq!(c.max_inflight, 11);
        assert_eq!(c.max_queued_messages, 9);
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let c = Config {
            max_inflight: 0,
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("max_inflight"), "{err}");
    }

    #[test]
    fn store_urls_come_from_flags_or_files_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg-url");
        std::fs::write(&file, "postgres://u:secret@db/rookery\n").unwrap();
        let c = Config {
            redis_url: Some("redis://r:6379".into()),
            postgres_url_file: Some(file.clone()),
            ..Config::default()
        };
        let (redis, postgres) = c.store_urls().unwrap();
        assert_eq!(redis.as_deref(), Some("redis://r:6379"));
        assert_eq!(postgres.as_deref(), Some("postgres://u:secret@db/rookery"));

        let both = Config {
            postgres_url: Some("postgres://x".into()),
            postgres_url_file: Some(file),
            ..Config::default()
        };
        let err = both.store_urls().unwrap_err().to_string();
        assert!(err.contains("postgres_url_file"), "{err}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let missing = dir.path().join("missing");
        for path in [empty, missing] {
            let c = Config {
                redis_url_file: Some(path),
                ..Config::default()
            };
            let err = c.store_urls().unwrap_err().to_string();
            assert!(err.contains("redis_url_file"), "{err}");
        }
    }

    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../docs/configuration.md");
        let keys = toml::to_string(&Config::default()).unwrap();
        for line in keys.lines() {
            let key = line.split(' ').next().unwrap();
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/configuration.md lacks `{key}`"
            );
            let env = format!("ROOKERY_{}", key.to_uppercase());
            assert!(doc.contains(&env), "docs/configuration.md lacks {env}");
        }
    }
}
