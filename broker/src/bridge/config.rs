//! `[[bridge]]` sections: the upstream broker, credentials, and topic rules with prefix
//! remapping; and the pure mapping of topics between the two sides.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::router::topic::{has_wildcard, validate_filter};

/// Which way a topic rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From this broker to the upstream.
    Out,
    /// From the upstream to this broker.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    /// Forwards to the upstream.
    pub fn out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// Forwards from the upstream.
    pub fn inward(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// The MQTT version spoken to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[serde(rename = "5")]
    V5,
}

/// One topic rule (Mosquitto's `topic PATTERN DIRECTION QOS LOCAL_PREFIX REMOTE_PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// A topic filter, relative to the prefixes.
    pub pattern: String,
    /// Which way.
    #[serde(default = "default_direction")]
    pub direction: Direction,
    /// Largest QoS forwarded (0, 1 or 2).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Prefix of the topics on this broker.
    #[serde(default)]
    pub local_prefix: String,
    /// Prefix of the topics on the upstream.
    #[serde(default)]
    pub remote_prefix: String,
}

fn default_direction() -> Direction {
    Direction::Out
}

fn default_qos() -> u8 {
    1
}

/// A bridge to an upstream broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Its name, in logs and metrics; unique.
    pub name: String,
    /// The upstream, `host:port`.
    pub address: String,
    /// MQTT version: `"5"` (default) or `"3.1.1"`.
    #[serde(default = "default_protocol")]
    pub protocol: BridgeProtocol,
    /// Client id on the upstream (default `{node_id}-{name}`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username on the upstream.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (its first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificates to verify the upstream with: setting it turns TLS on.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Key of the client certificate.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name the upstream's certificate must carry (default: the host of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Keep alive to the upstream, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// Session expiry asked of the upstream (MQTT 5.0), seconds: messages for us queue there
    /// while the link is down.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// First reconnection delay, milliseconds (doubled up to `reconnect_max_ms`).
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest reconnection delay, milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Topic rules.
    pub topics: Vec<TopicRule>,
}

fn default_protocol() -> BridgeProtocol {
    BridgeProtocol::V5
}
fn default_keep_alive() -> u16 {
    60
}
fn default_session_expiry() -> u32 {
    7 * 24 * 3600
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}

impl BridgeConfig {
    /// Checks the section; errors name the field, `bridge[NAME].field`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let field = |f: &str| format!("bridge[{}].{f}", self.name);
        if self.name.is_empty() || has_wildcard(&self.name) || self.name.contains('/') {
            return Err((field("name"), "must be a non-empty word".into()));
        }
        match self.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => {
                return Err((
                    field("address"),
                    format!("{:?} is not host:port", self.address),
                ));
            }
        }
        if self.topics.is_empty() {
            return Err((field("topics"), "at least one topic rule".into()));
        }
        for (i, t) in self.topics.iter().enumerate() {
            let f = |n: &str| field(&format!("topics[{i}].{n}"));
            // The rule's filters as each side subscribes them, by the broker's own rules.
            for filter in [t.local_filter(), t.remote_filter()] {
                if let Err(e) = validate_filter(&filter, usize::MAX) {
                    return Err((
                        f("pattern"),
                        format!("{:?} is not a topic filter: {e}", t.pattern),
                    ));
                }
            }
            if t.qos > 2 {
                return Err((f("qos"), "0, 1 or 2".into()));
            }
            for (name, prefix) in [
                ("local_prefix", &t.local_prefix),
                ("remote_prefix", &t.remote_prefix),
            ] {
                if has_wildcard(prefix) || prefix.contains('\0') {
                    return Err((f(name), format!("{prefix:?} holds a wildcard")));
                }
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err((field("cert"), "cert and key go together".into()));
        }
        if self.cert.is_some() && self.ca.is_none() {
            return Err((field("ca"), "a client certificate needs TLS: set ca".into()));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err((
                field("reconnect_min_ms"),
                "0 < reconnect_min_ms <= reconnect_max_ms".into(),
            ));
        }
        Ok(())
    }
}

impl TopicRule {
    /// The filter subscribed on this broker.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter subscribed on the upstream.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// The upstream topic for a local one, when this rule forwards it out.
    pub fn to_remote(&self, local: &str) -> Option<String> {
        if !self.direction.out() {
            return None;
        }
        let rest = local.strip_prefix(self.local_prefix.as_str())?;
        crate::router::topic::matches(&self.pattern, rest)
            .then(|| format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic for an upstream one, when this rule forwards it in.
    pub fn to_local(&self, remote: &str) -> Option<String> {
        if !self.direction.inward() {
            return None;
        }
        let rest = remote.strip_prefix(self.remote_prefix.as_str())?;
        crate::router::topic::matches(&self.pattern, rest)
            .then(|| format!("{}{rest}", self.local_prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, direction: Direction, local: &str, remote: &str) -> TopicRule {
        TopicRule {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn prefixes_are_remapped_both_ways() {
        let r = rule("sensors/#", Direction::Both, "", "site1/");
        assert_eq!(r.local_filter(), "sensors/#");
        assert_eq!(r.remote_filter(), "site1/sensors/#");
        assert_eq!(
            r.to_remote("sensors/t/1").as_deref(),
            Some("site1/sensors/t/1")
        );
        assert_eq!(
            r.to_local("site1/sensors/t/1").as_deref(),
            Some("sensors/t/1")
        );
        assert_eq!(r.to_remote("other/t"), None);
        assert_eq!(r.to_local("site2/sensors/t"), None);
        let r = rule("+/cmd", Direction::In, "local/", "cloud/");
        assert_eq!(
            r.to_local("cloud/dev1/cmd").as_deref(),
            Some("local/dev1/cmd")
        );
        assert_eq!(r.to_remote("local/dev1/cmd"), None);
        let out = rule("a", Direction::Out, "", "");
        assert_eq!(out.to_local("a"), None);
        assert_eq!(out.to_remote("a").as_deref(), Some("a"));
    }

    #[test]
    fn sections_are_checked_and_name_the_field() {
        let good: BridgeConfig = toml::from_str(
            r#"
            name = "cloud"
            address = "127.0.0.1:1883"
            topics = [{ pattern = "sensors/#", direction = "out", qos = 1, remote_prefix = "site1/" }]
            "#,
        )
        .unwrap();
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(good.protocol, BridgeProtocol::V5);
        let mut bad = good.clone();
        bad.topics[0].pattern = "a/#/b".into();
        assert_eq!(
            bad.validate().unwrap_err().0,
            "bridge[cloud].topics[0].pattern"
        );
        let mut bad = good.clone();
        bad.topics[0].qos = 3;
        assert_eq!(bad.validate().unwrap_err().0, "bridge[cloud].topics[0].qos");
        let mut bad = good.clone();
        bad.address = "nohost".into();
        assert_eq!(bad.validate().unwrap_err().0, "bridge[cloud].address");
        let mut bad = good.clone();
        bad.topics[0].remote_prefix = "a/+/".into();
        assert_eq!(
            bad.validate().unwrap_err().0,
            "bridge[cloud].topics[0].remote_prefix"
        );
        let mut bad = good;
        bad.cert = Some("c.pem".into());
        assert_eq!(bad.validate().unwrap_err().0, "bridge[cloud].cert");
        let v311: BridgeConfig = toml::from_str(
            r#"
            name = "old"
            address = "h:1"
            protocol = "3.1.1"
            topics = [{ pattern = "x" }]
            "#,
        )
        .unwrap();
        assert_eq!(v311.protocol, BridgeProtocol::V311);
        assert_eq!(v311.topics[0].direction, Direction::Out);
        assert!(
            toml::from_str::<BridgeConfig>(
                "name = \"x\"\naddress = \"h:1\"\ntopics = []\ntypo = 1"
            )
            .is_err()
        );
    }
}
