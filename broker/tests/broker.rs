//! Loopback integration tests: a real broker on port 0, driven by a raw packet client (exact
//! wire checks) and by `rumqttc` (a client we did not write), for MQTT 3.1.1 and 5.0.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "broker/support.rs"]
mod support;

#[path = "security/pki.rs"]
#[allow(dead_code)]
mod pki;

#[path = "broker/cable.rs"]
mod cable;
#[path = "broker/client.rs"]
mod client;
#[path = "broker/cluster.rs"]
mod cluster;
#[path = "broker/coaps.rs"]
mod coaps;
#[path = "broker/connect.rs"]
mod connect;
#[path = "broker/drain.rs"]
mod drain;
#[path = "broker/durable.rs"]
mod durable;
#[path = "broker/forward_acks.rs"]
mod forward_acks;
#[path = "broker/handover.rs"]
mod handover;
#[path = "broker/malformed.rs"]
mod malformed;
#[path = "broker/operations.rs"]
mod operations;
#[path = "broker/ownership.rs"]
mod ownership;
#[path = "broker/publish.rs"]
mod publish;
#[path = "broker/reroute.rs"]
mod reroute;
#[path = "broker/retained.rs"]
mod retained;
#[path = "broker/rumqttc_clients.rs"]
mod rumqttc_clients;
#[path = "broker/session.rs"]
mod session;
#[path = "broker/subscribe.rs"]
mod subscribe;
#[path = "broker/v5.rs"]
mod v5;
#[path = "broker/will.rs"]
mod will;
