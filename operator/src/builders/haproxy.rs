//! The HAProxy configuration in front of the brokers: a pure function of the listeners and
//! the broker nodes, used as-is by the operator (the HAProxy ConfigMap) and by the tests that
//! run the real HAProxy against real brokers.
//!
//! What it sets up, and why:
//! - TCP mode throughout: HAProxy passes MQTT (and TLS and WebSocket) bytes untouched.
//! - Plain MQTT: the first packet must be a valid MQTT CONNECT (`mqtt_is_valid`), so a port
//!   scan or a stray HTTP request never reaches a broker; connections stick to a broker by
//!   client id (`mqtt_field_value(connect,client_identifier)`), so a device that reconnects
//!   finds its session where it left it; the least loaded broker takes new ids.
//! - TLS passthrough and WebSocket: the bytes are opaque, so `leastconn` alone.
//! - Health: each broker's `/readyz` on its HTTP port. A starting or draining broker answers
//!   503 and is taken out of rotation within two checks; its open connections are left alone
//!   (the broker's drain paces them out itself, no reconnect storm).
//! - `send-proxy-v2` when the brokers expect the PROXY protocol, so they see the device's
//!   address (bans, per-address limits, logs).
//! - Long timeouts: MQTT connections are idle between keep-alives for minutes.
//! - A stats page and Prometheus metrics on their own port.

use std::fmt::Write;

/// A kind of MQTT listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS (passed through: the brokers terminate TLS).
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS (passed through).
    Wss,
}

impl ListenerKind {
    /// The name used for the frontend and backend, and in the broker's `proxy_protocol` key.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// The usual port.
    pub fn default_port(self) -> u16 {
        match self {
            ListenerKind::Mqtt => 1883,
            ListenerKind::Mqtts => 8883,
            ListenerKind::Ws => 8083,
            ListenerKind::Wss => 8084,
        }
    }
}

/// One listener: the port clients reach on HAProxy and the brokers' port behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// What it carries.
    pub kind: ListenerKind,
    /// HAProxy's port.
    pub port: u16,
    /// The brokers' port.
    pub broker_port: u16,
}

impl Listener {
    /// The listener on its usual port on both sides.
    pub fn standard(kind: ListenerKind) -> Listener {
        Listener {
            kind,
            port: kind.default_port(),
            broker_port: kind.default_port(),
        }
    }
}

/// A broker node: its name (unique, shown in the stats) and its address (the pod's DNS name
/// under the headless Service, or an IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name, e.g. `rookery-0`.
    pub name: String,
    /// Host name or address, e.g. `rookery-0.rookery-headless.iot.svc.cluster.local`.
    pub host: String,
}

/// Everything the configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Haproxy {
    /// The listeners to balance.
    pub listeners: Vec<Listener>,
    /// The brokers.
    pub nodes: Vec<Node>,
    /// The brokers' HTTP port (`metrics_listen`), checked at `/readyz`.
    pub health_port: u16,
    /// The brokers expect a PROXY protocol v2 header on every listener.
    pub proxy_protocol: bool,
    /// Plain MQTT connections stick to a broker by client id.
    pub sticky: bool,
    /// Most concurrent client connections per listener.
    pub max_connections: u32,
    /// Idle timeout of a client connection, seconds: above the longest keep-alive (times 1.5)
    /// the devices use.
    pub idle_timeout_secs: u32,
    /// Port of the stats page (`/stats`), HAProxy's own metrics (`/metrics`) and its liveness
    /// (`/healthz`); none when `None`.
    pub stats_port: Option<u16>,
    /// Address HAProxy binds; empty for every IPv4 address.
    pub bind_host: String,
    /// Node hosts are DNS names to resolve again at run time (pods come back on new
    /// addresses); false for fixed addresses.
    pub resolve_dns: bool,
}

impl Haproxy {
    /// The usual setup for these nodes: plain MQTT on 1883 (sticky) and TLS on 8883, brokers'
    /// health on 9100, PROXY protocol, stats on 8404, names resolved through the cluster DNS.
    pub fn standard(nodes: Vec<Node>) -> Haproxy {
        Haproxy {
            listeners: vec![
                Listener::standard(ListenerKind::Mqtt),
                Listener::standard(ListenerKind::Mqtts),
            ],
            nodes,
            health_port: 9100,
            proxy_protocol: true,
            sticky: true,
            max_connections: 1_000_000,
            idle_timeout_secs: 3600,
            stats_port: Some(8404),
            bind_host: String::new(),
            resolve_dns: true,
        }
    }
}

/// Checks what no configuration can work without. Errors name the field.
pub fn validate(c: &Haproxy) -> Result<(), String> {
    if c.listeners.is_empty() {
        return Err("listeners: at least one is needed".into());
    }
    if c.nodes.is_empty() {
        return Err("nodes: at least one broker is needed".into());
    }
    for (i, l) in c.listeners.iter().enumerate() {
        if l.port == 0 || l.broker_port == 0 {
            return Err(format!("listeners[{i}]: ports must not be 0"));
        }
        if c.listeners[..i].iter().any(|o| o.kind == l.kind) {
            return Err(format!("listeners[{i}]: {} appears twice", l.kind.name()));
        }
        if c.listeners[..i].iter().any(|o| o.port == l.port) || c.stats_port == Some(l.port) {
            return Err(format!("listeners[{i}]: port {} is used twice", l.port));
        }
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let fine = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-._:".contains(ch))
        };
        if !fine(&n.name) || !fine(&n.host) {
            return Err(format!(
                "nodes[{i}]: names and hosts are letters, digits, '-', '.', '_' and ':'"
            ));
        }
        if c.nodes[..i].iter().any(|o| o.name == n.name) {
            return Err(format!("nodes[{i}]: {} appears twice", n.name));
        }
    }
    if c.health_port == 0 {
        return Err("health_port: must not be 0".into());
    }
    if c.max_connections == 0 {
        return Err("max_connections: must be at least 1".into());
    }
    if c.idle_timeout_secs < 10 {
        return Err("idle_timeout_secs: must be at least 10".into());
    }
    Ok(())
}

/// The configuration file's text. Call [`validate`] first: this renders what it is given.
pub fn render(c: &Haproxy) -> String {
    let mut out = String::with_capacity(4096);
    let o = &mut out;
    line(
        o,
        "# Generated by rookery-operator (builders/haproxy.rs): edit the MqttCluster, not this.",
    );
    line(o, "global");
    line(o, "    log stdout format raw local0 info");
    // No global maxconn: HAProxy derives it from the open-file limit it is given (a fixed
    // one above that limit stops it from starting). Each frontend has its own below.
    // A reload (new nodes) leaves the old process serving its long-lived connections: they
    // are closed over five minutes, then it stops.
    line(o, "    close-spread-time 5m");
    line(o, "    hard-stop-after 6m");
    line(o, "");
    line(o, "defaults");
    line(o, "    mode tcp");
    line(o, "    log global");
    line(o, "    option tcplog");
    line(o, "    option dontlognull");
    line(o, "    timeout connect 5s");
    line(o, &format!("    timeout client {}s", c.idle_timeout_secs));
    line(o, &format!("    timeout server {}s", c.idle_timeout_secs));
    line(o, "    timeout client-fin 30s");
    line(o, "    timeout server-fin 30s");
    line(o, "    timeout check 3s");
    // A broker that refuses (draining, gone) is retried once on another.
    line(o, "    retries 2");
    line(o, "    option redispatch 1");
    if c.resolve_dns {
        line(o, "");
        line(o, "resolvers cluster_dns");
        line(o, "    parse-resolv-conf");
        line(o, "    accepted_payload_size 8192");
        line(o, "    hold valid 10s");
        line(o, "    hold obsolete 30s");
    }
    for l in &c.listeners {
        frontend(o, c, l);
        backend(o, c, l);
    }
    if let Some(port) = c.stats_port {
        line(o, "");
        line(o, "frontend stats");
        line(o, "    mode http");
        line(o, &format!("    bind {}", bind(&c.bind_host, port)));
        line(o, "    option dontlog-normal");
        line(o, "    timeout client 30s");
        line(o, "    monitor-uri /healthz");
        line(
            o,
            "    http-request use-service prometheus-exporter if { path /metrics }",
        );
        line(o, "    stats enable");
        line(o, "    stats uri /stats");
        line(o, "    stats refresh 10s");
    }
    out
}

fn frontend(o: &mut String, c: &Haproxy, l: &Listener) {
    let name = l.kind.name();
    line(o, "");
    line(o, &format!("frontend {name}"));
    line(o, &format!("    bind {}", bind(&c.bind_host, l.port)));
    line(o, &format!("    maxconn {}", c.max_connections));
    if l.kind == ListenerKind::Mqtt {
        // Wait for the CONNECT (up to 10 s, the brokers' own connect timeout) and let only a
        // valid one through.
        line(o, "    tcp-request inspect-delay 10s");
        line(
            o,
            "    tcp-request content reject unless { req.payload(0,0),mqtt_is_valid }",
        );
    }
    line(o, &format!("    default_backend {name}"));
}

fn backend(o: &mut String, c: &Haproxy, l: &Listener) {
    let name = l.kind.name();
    line(o, "");
    line(o, &format!("backend {name}"));
    line(o, "    balance leastconn");
    if l.kind == ListenerKind::Mqtt && c.sticky {
        line(o, "    stick-table type string len 256 size 2m expire 24h");
        line(
            o,
            "    stick on req.payload(0,0),mqtt_field_value(connect,client_identifier)",
        );
    }
    line(o, "    option httpchk");
    line(o, "    http-check send meth GET uri /readyz");
    line(o, "    http-check expect status 200");
    let mut defaults = format!(
        "    default-server check port {} inter 2s fall 2 rise 2",
        c.health_port
    );
    if c.proxy_protocol {
        defaults.push_str(" send-proxy-v2");
    }
    if c.resolve_dns {
        // Start even while a pod's name does not resolve yet (a scale-up under way).
        defaults.push_str(" resolvers cluster_dns init-addr last,libc,none");
    }
    line(o, &defaults);
    for n in &c.nodes {
        line(
            o,
            &format!("    server {} {}:{}", n.name, host(&n.host), l.broker_port),
        );
    }
}

/// An IPv6 literal goes in brackets before its port.
fn host(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_owned()
    }
}

fn bind(h: &str, port: u16) -> String {
    if h.is_empty() {
        format!(":{port}")
    } else {
        format!("{}:{port}", host(h))
    }
}

fn line(o: &mut String, s: &str) {
    let _ = writeln!(o, "{s}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| Node {
                name: format!("rookery-{i}"),
                host: format!("rookery-{i}.rookery-headless.iot.svc.cluster.local"),
            })
            .collect()
    }

    fn block<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
        let mut lines = text.lines().skip_while(|l| *l != header);
        let mut out: Vec<&str> = lines.next().into_iter().collect();
        out.extend(lines.take_while(|l| l.starts_with("    ")));
        out
    }

    #[test]
    fn plain_mqtt_is_checked_and_sticky_on_the_client_id() {
        let text = render(&Haproxy::standard(nodes(3)));
        let fe = block(&text, "frontend mqtt");
        assert!(fe.contains(&"    bind :1883"), "{fe:?}");
        assert!(
            fe.contains(
                &"    tcp-request content reject unless { req.payload(0,0),mqtt_is_valid }"
            )
        );
        let be = block(&text, "backend mqtt");
        assert!(be.contains(
            &"    stick on req.payload(0,0),mqtt_field_value(connect,client_identifier)"
        ));
        assert!(be.contains(&"    balance leastconn"));
        assert!(be.contains(
            &"    server rookery-2 rookery-2.rookery-headless.iot.svc.cluster.local:1883"
        ));
        assert_eq!(be.iter().filter(|l| l.contains("    server ")).count(), 3);
    }

    #[test]
    fn tls_is_passed_through_to_the_least_loaded_broker() {
        let text = render(&Haproxy::standard(nodes(2)));
        let fe = block(&text, "frontend mqtts");
        assert!(!fe.iter().any(|l| l.contains("mqtt_is_valid")), "{fe:?}");
        let be = block(&text, "backend mqtts");
        assert!(be.contains(&"    balance leastconn"));
        assert!(!be.iter().any(|l| l.contains("stick")), "{be:?}");
        assert!(be.iter().any(|l| l.ends_with(":8883")));
    }

    #[test]
    fn health_is_the_readiness_endpoint_and_proxy_v2_is_sent() {
        let text = render(&Haproxy::standard(nodes(1)));
        let be = block(&text, "backend mqtt");
        assert!(be.contains(&"    http-check send meth GET uri /readyz"));
        let defaults = be.iter().find(|l| l.contains("default-server")).unwrap();
        assert!(defaults.contains("check port 9100"), "{defaults}");
        assert!(defaults.contains("send-proxy-v2"), "{defaults}");
        assert!(defaults.contains("resolvers cluster_dns"), "{defaults}");
        // Never cut a draining broker's connections from here: it paces them itself.
        assert!(!text.contains("shutdown-sessions"));
    }

    #[test]
    fn options_off_leave_their_lines_out() {
        let mut c = Haproxy::standard(nodes(1));
        c.proxy_protocol = false;
        c.sticky = false;
        c.resolve_dns = false;
        c.stats_port = None;
        c.bind_host = "127.0.0.1".into();
        let text = render(&c);
        assert!(!text.contains("send-proxy"));
        assert!(!text.contains("stick"));
        assert!(!text.contains("resolvers"));
        assert!(!text.contains("frontend stats"));
        assert!(text.contains("    bind 127.0.0.1:1883"));
    }

    #[test]
    fn timeouts_suit_long_lived_connections() {
        let mut c = Haproxy::standard(nodes(1));
        c.idle_timeout_secs = 7200;
        let text = render(&c);
        let defaults = block(&text, "defaults");
        assert!(defaults.contains(&"    timeout client 7200s"));
        assert!(defaults.contains(&"    timeout server 7200s"));
        assert!(defaults.contains(&"    timeout connect 5s"));
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        let mut c = Haproxy::standard(vec![Node {
            name: "n0".into(),
            host: "fd00::7".into(),
        }]);
        c.bind_host = "::1".into();
        let text = render(&c);
        assert!(text.contains("    server n0 [fd00::7]:1883"));
        assert!(text.contains("    bind [::1]:1883"));
    }

    #[test]
    fn validation_names_the_field() {
        let good = Haproxy::standard(nodes(2));
        assert_eq!(validate(&good), Ok(()));
        let mut c = good.clone();
        c.nodes.clear();
        assert!(validate(&c).unwrap_err().starts_with("nodes"));
        let mut c = good.clone();
        c.listeners.push(Listener::standard(ListenerKind::Mqtt));
        assert!(validate(&c).unwrap_err().contains("appears twice"));
        let mut c = good.clone();
        c.listeners[1].port = 1883;
        assert!(
            validate(&c)
                .unwrap_err()
                .contains("port 1883 is used twice")
        );
        let mut c = good.clone();
        c.stats_port = Some(8883);
        assert!(validate(&c).unwrap_err().starts_with("listeners[1]"));
        let mut c = good.clone();
        c.nodes[1].host = "evil\n    server x 1.2.3.4:1".into();
        assert!(validate(&c).unwrap_err().starts_with("nodes[1]"));
        let mut c = good.clone();
        c.nodes[1].name = "rookery-0".into();
        assert!(validate(&c).unwrap_err().contains("twice"));
        let mut c = good;
        c.idle_timeout_secs = 5;
        assert!(validate(&c).unwrap_err().starts_with("idle_timeout_secs"));
    }
}
