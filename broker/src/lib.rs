//! Rookery broker: a clustered MQTT 3.1, 3.1.1 and 5.0 broker.
//!
//! Map of the crate, I/O at the edges:
//! - [`config`]: the [`config::Config`] struct from TOML, `ROOKERY_*` variables and flags.
//! - [`listener`]: accept loops with connection limits; PROXY protocol, TLS and WebSocket.
//! - [`security`]: passwords, ACLs and bans in force, CONNECT checks, reload.
//! - [`connection`]: one task per client: read, decode, handle, drain the session queue, write.
//! - [`session`]: per client id state that outlives a connection: queue, QoS 1/2 in flight, will.
//! - [`router`]: topic rules, the subscription trie and the retained-message index (pure data).
//! - [`message`]: a routed message and a per-subscriber delivery.
//! - [`broker`]: shared state and the publish path.
//! - [`cluster`]: membership and the links between nodes.
//! - [`metrics`]: broker-wide counters and the survey of the state.
//! - [`admin`]: the HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, the admin API.
//! - [`sys`]: the `$SYS/broker/...` publisher.
//! - [`limits`]: publish and connection rate limits, the memory high-water mark.
//! - [`server`]: binds listeners, runs and shuts the broker down.
//! - [`drain`]: empties a node before it stops (SIGTERM, `POST /admin/drain`).
//! - [`client`]: an MQTT client, in-process or to another broker (the gateway's and the
//!   bridge's sessions).
//! - [`coap`]: the CoAP gateway.
//! - [`bridge`]: the edge bridge to an upstream broker.
//!
//! The wire codec is the `rookery-codec` crate.

pub mod admin;
pub mod bridge;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod coap;
pub mod config;
pub mod connection;
pub mod drain;
pub mod limits;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod persist;
pub mod reload;
pub mod router;
pub mod security;
pub mod server;
pub mod session;
pub mod sys;

pub use broker::Broker;
pub use config::Config;
pub use server::Server;
