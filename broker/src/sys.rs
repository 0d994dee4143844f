//! `$SYS/broker/...`: the broker's figures as retained QoS 0 messages, under the topic names
//! Mosquitto uses, every `sys_interval` seconds. A value is published when it changed since
//! the last tick (as Mosquitto does), the version once at start.
//!
//! Clients cannot publish under `$SYS` and read it only where the ACL grants it (see
//! [`crate::security::Security::check_subscribe`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::{Metrics, survey};

/// The windows of the load averages, in minutes, with their topic suffix.
const WINDOWS: [(f64, &str); 3] = [(1.0, "1min"), (5.0, "5min"), (15.0, "15min")];

/// An exponentially weighted per-minute rate, as Mosquitto's `$SYS/broker/load/...`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadAverage {
    /// The average, per minute.
    pub value: f64,
}

impl LoadAverage {
    /// Folds in `delta` events seen over `dt`, for a window of `window_min` minutes.
    pub fn update(&mut self, delta: f64, dt: Duration, window_min: f64) {
        let secs = dt.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let per_min = delta * 60.0 / secs;
        let decay = (-secs / (window_min * 60.0)).exp();
        self.value = per_min + decay * (self.value - per_min);
    }
}

/// What the loads are computed from, read at each tick.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    messages_received: u64,
    messages_sent: u64,
    bytes_received: u64,
    bytes_sent: u64,
    connections: u64,
    sockets: u64,
}

impl Totals {
    fn read(m: &Metrics) -> Totals {
        let connections = m
            .clients_total
            .iter()
            .flatten()
            .map(Metrics::get)
            .sum::<u64>();
        Totals {
            messages_received: m.received(),
            messages_sent: m.sent(),
            bytes_received: Metrics::get(&m.bytes_received_total),
            bytes_sent: Metrics::get(&m.bytes_sent_total),
            connections,
            sockets: Metrics::get(&m.connections_total),
        }
    }

    /// The load series: topic stem and the count it averages.
    fn series(&self) -> [(&'static str, u64); 8] {
        [
            ("messages/received", self.messages_received),
            ("messages/sent", self.messages_sent),
            ("publish/received", self.messages_received),
            ("publish/sent", self.messages_sent),
            ("bytes/received", self.bytes_received),
            ("bytes/sent", self.bytes_sent),
            ("connections", self.connections),
            ("sockets", self.sockets),
        ]
    }
}

/// The publisher's state between ticks.
struct SysState {
    last: Totals,
    last_at: Instant,
    loads: AHashMap<String, LoadAverage>,
    published: AHashMap<String, String>,
    max_connected: i64,
}

/// Runs the `$SYS` publisher until shutdown (nothing when `sys_interval` is 0).
pub async fn run(broker: Arc<Broker>) {
    let secs = broker.config.sys_interval;
    if secs == 0 {
        return;
    }
    publish(
        &broker,
        "$SYS/broker/version",
        format!("rookery {}", env!("CARGO_PKG_VERSION")),
    );
    let mut state = SysState {
        last: Totals::read(&broker.metrics),
        last_at: Instant::now(),
        loads: AHashMap::new(),
        published: AHashMap::new(),
        max_connected: 0,
    };
    let mut ticks = tokio::time::interval(Duration::from_secs(secs));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now: publish a first set at start.
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = broker.shutdown.cancelled() => return,
        }
        // The survey walks every session: off the runtime's worker threads.
        let b = broker.clone();
        let Ok(values) = tokio::task::spawn_blocking(move || {
            let survey = survey::take(&b);
            (survey, Totals::read(&b.metrics))
        })
        .await
        else {
            continue;
        };
        tick(&broker, &mut state, values.0, values.1);
    }
}

fn tick(broker: &Broker, state: &mut SysState, survey: survey::Survey, now_totals: Totals) {
    let m = &broker.metrics;
    let now = Instant::now();
    let dt = now.saturating_duration_since(state.last_at);
    let connected = m.clients_connected();
    state.max_connected = state.max_connected.max(connected);
    let mut values: Vec<(String, String)> = vec![
        (
            "uptime".into(),
            format!("{} seconds", broker.uptime().as_secs()),
        ),
        ("clients/connected".into(), connected.to_string()),
        ("clients/active".into(), connected.to_string()),
        ("clients/disconnected".into(), survey.offline.to_string()),
        ("clients/inactive".into(), survey.offline.to_string()),
        (
            "clients/total".into(),
            (survey.online + survey.offline).to_string(),
        ),
        ("clients/maximum".into(), state.max_connected.to_string()),
        (
            "clients/expired".into(),
            Metrics::get(&m.sessions_expired_total).to_string(),
        ),
        (
            "messages/received".into(),
            now_totals.messages_received.to_string(),
        ),
        ("messages/sent".into(), now_totals.messages_sent.to_string()),
        (
            "publish/messages/received".into(),
            now_totals.messages_received.to_string(),
        ),
        (
            "publish/messages/sent".into(),
            now_totals.messages_sent.to_string(),
        ),
        ("publish/messages/dropped".into(), dropped(m).to_string()),
        (
            "bytes/received".into(),
            now_totals.bytes_received.to_string(),
        ),
        ("bytes/sent".into(), now_totals.bytes_sent.to_string()),
        (
            "subscriptions/count".into(),
            survey.subscriptions.to_string(),
        ),
        (
            "retained messages/count".into(),
            survey.retained.to_string(),
        ),
        (
            "store/messages/count".into(),
            survey.queued_messages.to_string(),
        ),
        (
            "store/messages/bytes".into(),
            survey.queued_bytes.to_string(),
        ),
    ];
    let before = state.last.series();
    for (i, (stem, total)) in now_totals.series().into_iter().enumerate() {
        let delta = total.saturating_sub(before[i].1) as f64;
        for (window, suffix) in WINDOWS {
            let key = format!("load/{stem}/{suffix}");
            let load = state.loads.entry(key.clone()).or_default();
            load.update(delta, dt, window);
            values.push((key, format!("{:.2}", load.value)));
        }
    }
    state.last = now_totals;
    state.last_at = now;
    for (key, value) in values {
        if state.published.get(&key) == Some(&value) {
            continue;
        }
        publish(broker, &format!("$SYS/broker/{key}"), value.clone());
        state.published.insert(key, value);
    }
}

fn dropped(m: &Metrics) -> u64 {
    [
        &m.dropped_queue_full_total,
        &m.dropped_expired_total,
        &m.dropped_too_large_total,
        &m.dropped_acl_total,
    ]
    .into_iter()
    .map(Metrics::get)
    .sum()
}

/// Publishes one retained QoS 0 value from the broker itself.
fn publish(broker: &Broker, topic: &str, value: String) {
    let message = Arc::new(Message::from_broker(topic, Bytes::from(value)));
    broker.route(&message);
    broker
        .metrics
        .sys_published_total
        .fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_converges_to_its_per_minute_value() {
        let mut load = LoadAverage::default();
        // 10 events every 10 s is 60 per minute.
        for _ in 0..200 {
            load.update(10.0, Duration::from_secs(10), 1.0);
        }
        assert!((load.value - 60.0).abs() < 1e-6, "{}", load.value);
    }

    #[test]
    fn longer_windows_move_slower() {
        let (mut one, mut fifteen) = (LoadAverage::default(), LoadAverage::default());
        one.update(100.0, Duration::from_secs(10), 1.0);
        fifteen.update(100.0, Duration::from_secs(10), 15.0);
        assert!(one.value > fifteen.value);
        assert!(fifteen.value > 0.0);
        // After a quiet minute the one-minute load has mostly decayed.
        for _ in 0..6 {
            one.update(0.0, Duration::from_secs(10), 1.0);
        }
        assert!(one.value < 600.0 * 0.37, "{}", one.value);
    }
}
