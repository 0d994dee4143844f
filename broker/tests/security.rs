//! Security over real sockets: TLS and mutual TLS with certificates made here (rcgen), a
//! rustls client, WebSocket (tungstenite client), PROXY protocol headers, password files,
//! ACL files, reloads while clients are connected, and bans.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "broker/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "security/pki.rs"]
mod pki;

#[path = "security/acl.rs"]
mod acl;
#[path = "security/auth.rs"]
mod auth;
#[path = "security/proxy.rs"]
mod proxy;
#[path = "security/tls.rs"]
mod tls;
#[path = "security/ws.rs"]
mod ws;
