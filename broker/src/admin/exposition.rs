//! `/metrics`: a [`Snapshot`] of every figure, taken at scrape time, encoded by
//! `prometheus-client` in the Prometheus text format or OpenMetrics.
//!
//! The broker counts with plain atomics ([`crate::metrics`]); nothing on the message path
//! touches this module. Counter names are given without `_total`: the encoder appends it.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rookery_store::stats::{HistogramSnapshot, StoreKind};

use super::process::ProcessStats;
use crate::broker::Broker;
use crate::metrics::survey::{self, Survey};
use crate::metrics::{LISTENERS, PROTOCOLS, RateLimit, RefuseReason};

type Labels = Vec<(&'static str, String)>;

/// A histogram metric: name, help, and a snapshot per label set.
type HistogramFamily = (&'static str, &'static str, Vec<(Labels, HistogramSnapshot)>);

/// Every value `/metrics` shows, read at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    counters: Vec<Family<u64>>,
    float_counters: Vec<Family<f64>>,
    gauges: Vec<Family<f64>>,
    histograms: Vec<HistogramFamily>,
}

/// One metric: its name, help and a value per label set.
#[derive(Debug, Clone)]
struct Family<T> {
    name: &'static str,
    help: &'static str,
    rows: Vec<(Labels, T)>,
}

impl<T> Family<T> {
    fn one(name: &'static str, help: &'static str, v: T) -> Family<T> {
        Family {
            name,
            help,
            rows: vec![(Vec::new(), v)],
        }
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Snapshot {
    /// Reads the broker. The survey walks every session: call it off the runtime's workers.
    pub fn take(broker: &Broker) -> Snapshot {
        let survey = survey::take(broker);
        let process = ProcessStats::read(broker.uptime());
        Snapshot::build(broker, &survey, &process)
    }

    fn build(broker: &Broker, survey: &Survey, process: &ProcessStats) -> Snapshot {
        let m = &broker.metrics;
        let mut counters = Vec::new();
        let mut gauges = Vec::new();
        let mut histograms = Vec::new();

        gauges.push(Family {
            name: "rookery_build_info",
            help: "Always 1; the version is a label.",
            rows: vec![(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
        });
        gauges.push(Family::one(
            "rookery_ready",
            "1 when /readyz answers ready.",
            if super::readiness(broker).is_ok() {
                1.0
            } else {
                0.0
            },
        ));

        // Connections.
        let mut connected = Vec::new();
        let mut accepted = Vec::new();
        for (li, listener) in LISTENERS.iter().enumerate() {
            for (pi, protocol) in PROTOCOLS.iter().enumerate() {
                let labels = vec![
                    ("listener", listener.as_str().to_owned()),
                    ("protocol", (*protocol).to_owned()),
                ];
                connected.push((
                    labels.clone(),
                    m.clients[li][pi].load(Ordering::Relaxed) as f64,
                ));
                accepted.push((labels, get(&m.clients_total[li][pi])));
            }
        }
        gauges.push(Family {
            name: "rookery_connections",
            help: "Connected clients (CONNACK sent), by listener and protocol version.",
            rows: connected,
        });
        counters.push(Family {
            name: "rookery_connections_accepted",
            help: "CONNECTs accepted, by listener and protocol version.",
            rows: accepted,
        });
        counters.push(Family {
            name: "rookery_connection_attempts",
            help: "Sockets accepted, by listener.",
            rows: LISTENERS
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    (
                        vec![("listener", l.as_str().to_owned())],
                        get(&m.connection_attempts_total[i]),
                    )
                })
                .collect(),
        });
        gauges.push(Family::one(
            "rookery_connections_limit",
            "Open connections allowed per listener (max_connections).",
            broker.config.max_connections as f64,
        ));
        counters.push(Family {
            name: "rookery_connects_refused",
            help: "Connections refused before they became sessions, by reason.",
            rows: RefuseReason::ALL
                .iter()
                .map(|r| {
                    (
                        vec![("reason", r.as_str().to_owned())],
                        get(&m.refused_by_reason[*r as usize]),
                    )
                })
                .collect(),
        });
        counters.push(Family::one(
            "rookery_auth_failures",
            "CONNECTs refused for bad credentials.",
            get(&m.auth_failures_total),
        ));

        // Sessions and state.
        gauges.push(Family {
            name: "rookery_sessions",
            help: "Sessions, online (connected) and offline (kept for a disconnected client).",
            rows: vec![
                (vec![("state", "online".to_owned())], survey.online as f64),
                (vec![("state", "offline".to_owned())], survey.offline as f64),
            ],
        });
        gauges.push(Family::one(
            "rookery_subscriptions",
            "Subscriptions (filters), shared ones included.",
            survey.subscriptions as f64,
        ));
        gauges.push(Family::one(
            "rookery_retained_messages",
            "Retained messages.",
            survey.retained as f64,
        ));
        gauges.push(Family::one(
            "rookery_retained_bytes",
            "Bytes of retained payloads.",
            survey.retained_bytes as f64,
        ));
        gauges.push(Family::one(
            "rookery_inflight_messages",
            "Outgoing QoS 1/2 messages sent and not yet acknowledged.",
            m.inflight.load(Ordering::Relaxed).max(0) as f64,
        ));
        gauges.push(Family::one(
            "rookery_queued_messages",
            "Messages waiting in session queues.",
            survey.queued_messages as f64,
        ));
        gauges.push(Family::one(
            "rookery_queued_bytes",
            "Approximate bytes waiting in session queues.",
            survey.queued_bytes as f64,
        ));

        // Messages.
        let by_qos = |a: &[std::sync::atomic::AtomicU64; 3]| {
            (0..3)
                .map(|q| (vec![("qos", q.to_string())], get(&a[q])))
                .collect::<Vec<_>>()
        };
        counters.push(Family {
            name: "rookery_messages_received",
            help: "PUBLISH packets received from clients, by QoS.",
            rows: by_qos(&m.messages_received_total),
        });
        counters.push(Family {
            name: "rookery_messages_sent",
            help: "PUBLISH packets sent to clients, by QoS.",
            rows: by_qos(&m.messages_sent_total),
        });
        counters.push(Family {
            name: "rookery_payload_bytes_received",
            help: "PUBLISH payload bytes received from clients, by QoS.",
            rows: by_qos(&m.payload_bytes_received_total),
        });
        counters.push(Family {
            name: "rookery_payload_bytes_sent",
            help: "PUBLISH payload bytes sent to clients, by QoS.",
            rows: by_qos(&m.payload_bytes_sent_total),
        });
        counters.push(Family::one(
            "rookery_bytes_received",
            "Bytes read from clients.",
            get(&m.bytes_received_total),
        ));
        counters.push(Family::one(
            "rookery_bytes_sent",
            "Bytes written to clients.",
            get(&m.bytes_sent_total),
        ));
        counters.push(Family {
            name: "rookery_messages_dropped",
            help: "Deliveries not made, by reason.",
            rows: [
                ("queue_full", &m.dropped_queue_full_total),
                ("expired", &m.dropped_expired_total),
                ("acl_denied", &m.dropped_acl_total),
                ("too_large", &m.dropped_too_large_total),
                ("offline_qos0", &m.dropped_offline_total),
            ]
            .into_iter()
            .map(|(r, c)| (vec![("reason", r.to_owned())], get(c)))
            .collect(),
        });
        counters.push(Family {
            name: "rookery_publishes_refused",
            help: "PUBLISH packets not accepted, by reason.",
            rows: [
                ("acl_denied", &m.publishes_denied_total),
                ("store_unavailable", &m.publishes_refused_store_total),
            ]
            .into_iter()
            .map(|(r, c)| (vec![("reason", r.to_owned())], get(c)))
            .collect(),
        });
        counters.push(Family::one(
            "rookery_subscriptions_denied",
            "Subscription filters refused by the ACL.",
            get(&m.subscriptions_denied_total),
        ));
        histograms.push((
            "rookery_delivery_latency_seconds",
            "From a PUBLISH being read to its delivery being written, per delivery.",
            vec![(Vec::new(), m.delivery_latency.snapshot())],
        ));
        histograms.push((
            "rookery_session_queue_length",
            "Messages queued per session, at scrape time.",
            vec![(
                Vec::new(),
                HistogramSnapshot {
                    sum: survey.queue_length_sum as f64,
                    count: survey.online + survey.offline,
                    buckets: survey.queue_length_buckets(),
                },
            )],
        ));

        // Sessions' lives and security.
        for (name, help, c) in [
            (
                "rookery_takeovers",
                "Session takeovers (a CONNECT with a client id already connected).",
                &m.takeovers_total,
            ),
            (
                "rookery_wills_published",
                "Will messages published.",
                &m.wills_published_total,
            ),
            (
                "rookery_sessions_expired",
                "Sessions that expired.",
                &m.sessions_expired_total,
            ),
            (
                "rookery_protocol_errors",
                "Connections closed for a malformed packet or a protocol error.",
                &m.protocol_errors_total,
            ),
            (
                "rookery_keepalive_timeouts",
                "Connections closed for silence past 1.5 times their keep alive.",
                &m.keepalive_timeouts_total,
            ),
            (
                "rookery_tls_handshake_failures",
                "TLS handshakes that failed.",
                &m.tls_handshake_failures_total,
            ),
            (
                "rookery_sys_messages_published",
                "$SYS messages published.",
                &m.sys_published_total,
            ),
        ] {
            counters.push(Family::one(name, help, get(c)));
        }
        counters.push(Family {
            name: "rookery_bans",
            help: "Bans imposed, by reason (failed logins, flapping).",
            rows: vec![
                (vec![("reason", "auth".to_owned())], get(&m.bans_auth_total)),
                (
                    vec![("reason", "flapping".to_owned())],
                    get(&m.bans_flapping_total),
                ),
            ],
        });
        gauges.push(Family::one(
            "rookery_bans_active",
            "Bans in force now.",
            broker.security.bans(Instant::now()).len() as f64,
        ));

        if !broker.config.bridge.is_empty() {
            gauges.push(Family::one(
                "rookery_bridges_up",
                "Bridges connected to their upstream broker.",
                m.bridges_up.load(Ordering::Relaxed) as f64,
            ));
            gauges.push(Family::one(
                "rookery_bridges",
                "Bridges configured.",
                broker.config.bridge.len() as f64,
            ));
        }
        // CoAP gateway.
        if broker.config.coap_listen.is_some() || broker.config.coaps_listen.is_some() {
            let labelled =
                |label: &'static str, names: &[&str], values: &[std::sync::atomic::AtomicU64]| {
                    names
                        .iter()
                        .zip(values)
                        .map(|(n, v)| (vec![(label, (*n).to_owned())], get(v)))
                        .collect::<Vec<_>>()
                };
            counters.push(Family {
                name: "rookery_coap_requests",
                help: "CoAP requests handled, by method.",
                rows: labelled("method", &crate::coap::METHODS, &m.coap_requests_total),
            });
            let reasons: Vec<&str> = crate::coap::Dropped::ALL
                .iter()
                .map(|d| d.as_str())
                .collect();
            counters.push(Family {
                name: "rookery_coap_dropped",
                help: "CoAP datagrams dropped or answered without being handled, by reason.",
                rows: labelled("reason", &reasons, &m.coap_dropped_total),
            });
            counters.push(Family::one(
                "rookery_coap_notifications",
                "CoAP Observe notifications sent.",
                get(&m.coap_notifications_total),
            ));
            counters.push(Family {
                name: "rookery_coap_commands",
                help: "MQTT commands sent to CoAP devices, by result.",
                rows: labelled(
                    "result",
                    &crate::coap::COMMAND_RESULTS,
                    &m.coap_commands_total,
                ),
            });
            if broker.config.coaps_listen.is_some() {
                counters.push(Family {
                    name: "rookery_coap_handshakes",
                    help: "DTLS handshakes on the CoAP gateway's secure listener, by result.",
                    rows: labelled(
                        "result",
                        &crate::coap::dtls::HANDSHAKE_RESULTS,
                        &m.coap_handshakes_total,
                    ),
                });
                gauges.push(Family::one(
                    "rookery_coap_dtls_sessions",
                    "DTLS sessions of the CoAP gateway, established or in their handshake.",
                    m.coap_dtls_sessions.load(Ordering::Relaxed) as f64,
                ));
            }
        }

        // Overload protection.
        counters.push(Family {
            name: "rookery_rate_limited",
            help: "Times a limit held a client back, by limit.",
            rows: RateLimit::ALL
                .iter()
                .map(|l| {
                    (
                        vec![("limit", l.as_str().to_owned())],
                        get(&m.rate_limited_total[*l as usize]),
                    )
                })
                .collect(),
        });
        gauges.push(Family::one(
            "rookery_memory_pressure",
            "1 while queued bytes are above the memory high-water mark (publishers paused).",
            if broker.memory.is_high() { 1.0 } else { 0.0 },
        ));
        gauges.push(Family::one(
            "rookery_memory_high_watermark_bytes",
            "The memory high-water mark in force (0 = off).",
            broker.limits.load().memory_high_watermark as f64,
        ));

        // Stores.
        if let Some(p) = &broker.persist {
            let committer = p.committer();
            let stats = committer.stats();
            let stores = committer.stores();
            let names = [
                stores.sessions.name(),
                stores.retained.name(),
                stores.queue.name(),
            ];
            let labels = |k: StoreKind| {
                vec![
                    ("store", names[k as usize].to_owned()),
                    ("kind", k.as_str().to_owned()),
                ]
            };
            let each = |f: &dyn Fn(StoreKind) -> u64| {
                StoreKind::ALL
                    .iter()
                    .map(|k| (labels(*k), f(*k)))
                    .collect::<Vec<_>>()
            };
            counters.push(Family {
                name: "rookery_store_operations",
                help: "Operations committed, by store.",
                rows: each(&|k| get(&stats.of(k).operations)),
            });
            counters.push(Family {
                name: "rookery_store_commits",
                help: "Commits (batches) attempted, by store.",
                rows: each(&|k| get(&stats.of(k).commits)),
            });
            counters.push(Family {
                name: "rookery_store_errors",
                help: "Commits that failed (each retry counts), by store.",
                rows: each(&|k| get(&stats.of(k).errors)),
            });
            histograms.push((
                "rookery_store_commit_duration_seconds",
                "Time of one commit attempt, by store.",
                StoreKind::ALL
                    .iter()
                    .map(|k| (labels(*k), stats.of(*k).commit_duration.snapshot()))
                    .collect(),
            ));
            gauges.push(Family::one(
                "rookery_store_degraded",
                "1 while a store fails (new persistent QoS 1/2 messages are refused).",
                if committer.is_degraded() { 1.0 } else { 0.0 },
            ));
            gauges.push(Family::one(
                "rookery_store_pending_operations",
                "Operations waiting for the next commit.",
                committer.pending_len() as f64,
            ));
        }

        // Cluster links.
        if let Some(cluster) = broker.cluster.get() {
            gauges.push(Family {
                name: "rookery_cluster_link_up",
                help: "1 while the link to a peer is up, by peer (its configured address).",
                rows: cluster
                    .status()
                    .into_iter()
                    .map(|p| (vec![("peer", p.peer)], if p.up { 1.0 } else { 0.0 }))
                    .collect(),
            });
            let forwards = cluster.forward_counts();
            counters.push(Family {
                name: "rookery_cluster_forwarded_messages",
                help: "Messages forwarded to a peer (by its node id).",
                rows: forwards
                    .iter()
                    .map(|(p, f, _)| (vec![("peer", p.clone())], *f))
                    .collect(),
            });
            counters.push(Family {
                name: "rookery_cluster_forward_dropped",
                help: "Messages not forwarded to a peer: not linked, or its queue was full; or \
                       forwarded and given up unacknowledged when the peer did not come back.",
                rows: forwards
                    .iter()
                    .map(|(p, _, d)| (vec![("peer", p.clone())], *d))
                    .collect(),
            });
            counters.push(Family {
                name: "rookery_cluster_forward_rerouted",
                help: "Messages a departed peer had not committed, sent to the nodes that \
                       adopted its sessions, by the departed peer's node id.",
                rows: cluster
                    .rerouted_counts()
                    .into_iter()
                    .map(|(p, n)| (vec![("peer", p)], n))
                    .collect(),
            });
            gauges.push(Family {
                name: "rookery_cluster_forward_unacknowledged",
                help: "Messages forwarded to a peer (or kept for it while it is down) that it has \
                       not acknowledged yet, by node id.",
                rows: cluster
                    .unacked()
                    .into_iter()
                    .map(|(p, n)| (vec![("peer", p)], n as f64))
                    .collect(),
            });
        }

        // The process.
        let cpu = vec![Family::one(
            "process_cpu_seconds",
            "User and system CPU time, seconds.",
            process.cpu_seconds,
        )];
        gauges.push(Family::one(
            "process_resident_memory_bytes",
            "Resident memory, bytes.",
            process.resident_bytes as f64,
        ));
        gauges.push(Family::one(
            "process_open_fds",
            "Open file descriptors.",
            process.open_fds as f64,
        ));
        gauges.push(Family::one(
            "process_max_fds",
            "Limit of open file descriptors.",
            process.max_fds as f64,
        ));
        gauges.push(Family::one(
            "process_start_time_seconds",
            "Start time, seconds since the Unix epoch.",
            process.start_time_secs,
        ));
        Snapshot {
            counters,
            float_counters: cpu,
            gauges,
            histograms,
        }
    }

    /// The text for a scrape: OpenMetrics when `openmetrics`, else Prometheus' text format.
    pub fn render(self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(16 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        }
        Ok(out)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.counters {
            let mut metric =
                encoder.encode_descriptor(f.name, f.help, None, MetricType::Counter)?;
            for (labels, v) in &f.rows {
                let mut row = metric.encode_family(labels)?;
                row.encode_counter::<NoLabelSet, _, u64>(v, None)?;
            }
        }
        for f in &self.float_counters {
            let mut metric =
                encoder.encode_descriptor(f.name, f.help, None, MetricType::Counter)?;
            for (labels, v) in &f.rows {
                let mut row = metric.encode_family(labels)?;
                row.encode_counter::<NoLabelSet, _, f64>(v, None)?;
            }
        }
        for f in &self.gauges {
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, MetricType::Gauge)?;
            for (labels, v) in &f.rows {
                let mut row = metric.encode_family(labels)?;
                row.encode_gauge(v)?;
            }
        }
        for (name, help, rows) in &self.histograms {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, h) in rows {
                let mut row = metric.encode_family(labels)?;
                row.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
            }
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch of an instant `ago` in the past.
pub fn epoch_secs_ago(ago: std::time::Duration) -> f64 {
    SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}
