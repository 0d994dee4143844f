//! Configuration reload: what changed between two configurations, which of it applies live,
//! and which needs a restart. The decision is pure ([`diff`]); the server applies it.

use std::collections::BTreeMap;

use crate::config::Config;

/// Keys a reload applies while clients stay connected. Password, ACL and certificate files
/// are re-read on every reload too, whatever the keys say (their contents are live; their
/// paths are not).
pub const LIVE_KEYS: [&str; 6] = [
    "log_level",
    "publish_rate_limit",
    "publish_byte_rate_limit",
    "rate_limit_action",
    "max_connection_rate",
    "memory_high_watermark",
];

/// What differs between the configuration in force and a new one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Changed keys that apply now.
    pub live: Vec<String>,
    /// Changed keys that take effect only after a restart.
    pub restart: Vec<String>,
}

impl ConfigChange {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }
}

/// Compares two configurations key by key (as their TOML forms).
pub fn diff(old: &Config, new: &Config) -> ConfigChange {
    let (a, b) = (table(old), table(new));
    let mut change = ConfigChange::default();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        if a.get(key) == b.get(key) {
            continue;
        }
        if LIVE_KEYS.contains(&key.as_str()) {
            change.live.push(key.clone());
        } else {
            change.restart.push(key.clone());
        }
    }
    change
}

fn table(c: &Config) -> BTreeMap<String, toml::Value> {
    toml::Value::try_from(c)
        .ok()
        .and_then(|v| match v {
            toml::Value::Table(t) => Some(t.into_iter().collect()),
            _ => None,
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_restart_keys_are_told_apart() {
        let old = Config::default();
        let new = Config {
            log_level: "debug".into(),
            publish_rate_limit: 100,
            max_inflight: 7,
            metrics_listen: Some("127.0.0.1:9000".parse().unwrap()),
            ..Config::default()
        };
        let c = diff(&old, &new);
        assert_eq!(c.live, vec!["log_level", "publish_rate_limit"]);
        assert_eq!(c.restart, vec!["max_inflight", "metrics_listen"]);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn every_live_key_is_a_config_key() {
        let keys = table(&Config::default());
        for k in LIVE_KEYS {
            assert!(keys.contains_key(k), "{k}");
        }
    }
}
