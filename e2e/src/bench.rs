//! `rookery-bench`: MQTT load against any broker, with sequence-numbered, timestamped payloads.
//!
//! Every connection is a task on one single-threaded runtime, so the tool uses one core however
//! many clients it runs (pin it with `taskset` away from the broker). Payloads carry the
//! publisher's index, a sequence number and a send timestamp: subscribers measure
//! publish-to-delivery latency and count lost and duplicated messages per publisher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use rookery_codec::{
    Ack, Connect, ConnectProperties, Packet, Protocol, Publish, QoS, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N publishers, one subscriber, one topic.
    FanIn,
    /// N publishers, each to its own subscriber.
    Pairs,
    /// One publisher, N subscribers.
    FanOut,
}

/// What to run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Options {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Load shape.
    #[arg(long, value_enum, default_value = "fan-in")]
    pub scenario: Scenario,
    /// Publishers (fan-in), pairs (pairs) or subscribers (fan-out).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Payload bytes (at least 20: index, sequence and timestamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Messages per second per publisher; 0 publishes as fast as the in-flight window allows.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// QoS 1/2 messages in flight per publisher (QoS 0: messages per write burst).
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// MQTT 5.0 instead of 3.1.1.
    #[arg(long)]
    pub v5: bool,
    /// The broker's process id, to report its CPU, RSS and syscalls from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

/// Results of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The options.
    pub options: Options,
    /// Messages delivered to subscribers during the measured window.
    pub delivered: u64,
    /// Delivered messages per second.
    pub delivered_per_sec: f64,
    /// Latency percentiles in microseconds: p50, p99, p99.9, max.
    pub latency_us: [u64; 4],
    /// Messages acknowledged to publishers (QoS 1/2) or sent (QoS 0) and never delivered.
    pub lost: u64,
    /// Messages delivered more than once.
    pub duplicated: u64,
    /// Broker CPU seconds during the measured window.
    pub broker_cpu_secs: Option<f64>,
    /// Broker peak RSS during the run, KiB.
    pub broker_peak_rss_kib: Option<u64>,
    /// Broker read + write syscalls per delivered message during the window.
    pub broker_syscalls_per_msg: Option<f64>,
    /// This tool's CPU seconds during the window.
    pub bench_cpu_secs: f64,
}

struct Shared {
    started: Instant,
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Per publisher: the last sequence number acknowledged (QoS 1/2) or written (QoS 0).
    published: Vec<AtomicU64>,
}

fn now_ns(shared: &Shared) -> u64 {
    shared.started.elapsed().as_nanos() as u64
}

fn connect_packet(protocol: Protocol, id: String) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }))
}

struct Client {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    rbuf: BytesMut,
    wbuf: BytesMut,
    protocol: Protocol,
}

impl Client {
    async fn connect(addr: SocketAddr, protocol: Protocol, id: String) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut c = Client {
            reader,
            writer,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            protocol,
        };
        c.queue(&connect_packet(protocol, id));
        c.flush().await?;
        match c.next().await? {
            Packet::ConnAck(a) if a.code == 0 => Ok(c),
            other => bail!("CONNECT refused: {other:?}"),
        }
    }

    fn queue(&mut self, p: &Packet) {
        rookery_codec::encode(p, self.protocol, &mut self.wbuf);
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// The next packet already buffered, without reading.
    fn buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(rookery_codec::decode(
            &mut self.rbuf,
            self.protocol,
            usize::MAX,
        )?)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        self.rbuf.reserve(64 * 1024);
        if self.reader.read_buf(&mut self.rbuf).await? == 0 {
            bail!("broker closed the connection");
        }
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.buffered()? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }
}

fn qos_of(q: u8) -> anyhow::Result<QoS> {
    QoS::from_u8(q).context("--qos must be 0, 1 or 2")
}

async fn publisher(
    opts: Options,
    shared: Arc<Shared>,
    index: usize,
    topic: String,
) -> anyhow::Result<()> {
    let protocol = if opts.v5 {
        Protocol::V5
    } else {
        Protocol::V311
    };
    let qos = qos_of(opts.qos)?;
    let mut c = Client::connect(opts.broker, protocol, format!("bench-pub-{index}")).await?;
    let mut seq: u64 = 0;
    let mut inflight = 0usize;
    let mut pid: u16 = 0;
    let pad = opts.payload.max(20);
    let mut interval = (opts.rate > 0).then(|| {
        let mut i = tokio::time::interval(Duration::from_nanos(1_000_000_000 / opts.rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    while !shared.stop.load(Ordering::Relaxed) {
        // Send what the window (or the rate) allows.
        let budget = match &mut interval {
            Some(i) => {
                i.tick().await;
                1
            }
            None => opts.inflight.saturating_sub(inflight),
        };
        for _ in 0..budget {
            if qos != QoS::AtMostOnce && inflight >= opts.inflight {
                break;
            }
            seq += 1;
            let mut payload = BytesMut::with_capacity(pad);
            payload.put_u32(index as u32);
            payload.put_u64(seq);
            payload.put_u64(now_ns(&shared));
            payload.resize(pad, 0);
            if qos != QoS::AtMostOnce {
                pid = pid.wrapping_add(1).max(1);
                inflight += 1;
            }
            c.queue(&Packet::Publish(Publish {
                qos,
                topic: topic.as_str().into(),
                packet_id: if qos == QoS::AtMostOnce { 0 } else { pid },
                payload: Bytes::from(payload),
                ..Default::default()
            }));
        }
        c.flush().await?;
        if qos == QoS::AtMostOnce {
            shared.published[index].store(seq, Ordering::Relaxed);
            if interval.is_none() {
                tokio::task::yield_now().await;
            }
            continue;
        }
        // Take acknowledgements: wait for at least one when the window is full.
        let must_wait = inflight >= opts.inflight;
        loop {
            match c.buffered()? {
                Some(Packet::PubAck(_)) | Some(Packet::PubComp(_)) => {
                    inflight -= 1;
                    // Acks come in order: everything up to seq - inflight is acknowledged.
                    shared.published[index].store(seq - inflight as u64, Ordering::Relaxed);
                }
                Some(Packet::PubRec(a)) => c.queue(&Packet::PubRel(Ack {
                    packet_id: a.packet_id,
                    ..Default::default()
                })),
                Some(_) => {}
                None if must_wait && inflight >= opts.inflight => {
                    c.flush().await?;
                    c.fill().await?;
                }
                None => break,
            }
        }
        if !c.wbuf.is_empty() {
            c.flush().await?;
        }
    }
    // Drain outstanding acknowledgements for an exact count.
    let deadline = Instant::now() + Duration::from_secs(5);
    while qos != QoS::AtMostOnce && inflight > 0 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), c.next()).await {
            Ok(Ok(Packet::PubAck(_))) | Ok(Ok(Packet::PubComp(_))) => {
                inflight -= 1;
                shared.published[index].store(seq - inflight as u64, Ordering::Relaxed);
            }
            Ok(Ok(Packet::PubRec(a))) => {
                c.queue(&Packet::PubRel(Ack {
                    packet_id: a.packet_id,
                    ..Default::default()
                }));
                c.flush().await?;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(())
}

/// What one subscriber saw.
struct Seen {
    delivered: u64,
    duplicated: u64,
    histogram: Histogram<u64>,
    /// Per publisher: highest sequence received, and distinct messages received.
    per_publisher: Vec<(u64, u64)>,
}

async fn subscriber(
    opts: Options,
    shared: Arc<Shared>,
    index: usize,
    filter: String,
    publishers: usize,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Seen> {
    let protocol = if opts.v5 {
        Protocol::V5
    } else {
        Protocol::V311
    };
    let qos = qos_of(opts.qos)?;
    let mut c = Client::connect(opts.broker, protocol, format!("bench-sub-{index}")).await?;
    c.queue(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    }));
    c.flush().await?;
    loop {
        if let Packet::SubAck(_) = c.next().await? {
            break;
        }
    }
    let _ = ready.send(()).await;
    let mut seen = Seen {
        delivered: 0,
        duplicated: 0,
        histogram: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        per_publisher: vec![(0, 0); publishers],
    };
    let mut idle_since: Option<Instant> = None;
    loop {
        while let Some(p) = c.buffered()? {
            match p {
                Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        c.queue(&Packet::PubAck(Ack {
                            packet_id: p.packet_id,
                            ..Default::default()
                        }));
                    } else if p.qos == QoS::ExactlyOnce {
                        c.queue(&Packet::PubRec(Ack {
                            packet_id: p.packet_id,
                            ..Default::default()
                        }));
                    }
                    record(&shared, &mut seen, &p.payload);
                }
                Packet::PubRel(a) => c.queue(&Packet::PubComp(Ack {
                    packet_id: a.packet_id,
                    ..Default::default()
                })),
                _ => {}
            }
        }
        if !c.wbuf.is_empty() {
            c.flush().await?;
        }
        if shared.stop.load(Ordering::Relaxed) {
            // After the publishers stop, wait until nothing arrives for a while.
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(500) {
                return Ok(seen);
            }
        }
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), c.fill()).await {
            r?;
            if shared.stop.load(Ordering::Relaxed) {
                idle_since = Some(Instant::now());
            }
        }
    }
}

fn record(shared: &Shared, seen: &mut Seen, payload: &[u8]) {
    if payload.len() < 20 {
        return;
    }
    let publisher = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[4..12]);
    let seq = u64::from_be_bytes(b);
    b.copy_from_slice(&payload[12..20]);
    let sent = u64::from_be_bytes(b);
    let Some(slot) = seen.per_publisher.get_mut(publisher) else {
        return;
    };
    if seq <= slot.0 {
        seen.duplicated += 1;
        return;
    }
    slot.0 = seq;
    slot.1 += 1;
    if shared.measuring.load(Ordering::Relaxed) {
        seen.delivered += 1;
        let latency_us = now_ns(shared).saturating_sub(sent) / 1000;
        let _ = seen.histogram.record(latency_us.max(1));
    }
}

/// CPU seconds, RSS KiB and read+write syscalls of a process, from /proc.
fn proc_stats(pid: &str) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15 (1-based).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let syscalls = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .map(|io| {
            io.lines()
                .filter(|l| l.starts_with("syscr:") || l.starts_with("syscw:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Some((ticks as f64 / 100.0, rss, syscalls))
}

/// Runs one scenario and reports.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.payload < 20 {
        bail!("--payload must be at least 20 bytes");
    }
    let n = opts.clients.max(1);
    let (publishers, subscribers) = match opts.scenario {
        Scenario::FanIn => (n, 1),
        Scenario::Pairs => (n, n),
        Scenario::FanOut => (1, n),
    };
    let shared = Arc::new(Shared {
        started: Instant::now(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        published: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers);
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let filter = match opts.scenario {
            Scenario::FanIn => "bench/in".to_string(),
            Scenario::Pairs => format!("bench/pair/{i}"),
            Scenario::FanOut => "bench/out".to_string(),
        };
        subs.push(tokio::spawn(subscriber(
            opts.clone(),
            shared.clone(),
            i,
            filter,
            publishers,
            ready_tx.clone(),
        )));
    }
    for _ in 0..subscribers {
        ready_rx
            .recv()
            .await
            .context("a subscriber failed to start")?;
    }
    let mut pubs = Vec::new();
    for i in 0..publishers {
        let topic = match opts.scenario {
            Scenario::FanIn => "bench/in".to_string(),
            Scenario::Pairs => format!("bench/pair/{i}"),
            Scenario::FanOut => "bench/out".to_string(),
        };
        pubs.push(tokio::spawn(publisher(
            opts.clone(),
            shared.clone(),
            i,
            topic,
        )));
    }
    let pid = opts.broker_pid.map(|p| p.to_string());
    let mut peak_rss = 0u64;
    let sample = |peak: &mut u64| {
        let s = pid.as_deref().and_then(proc_stats);
        if let Some((_, rss, _)) = s {
            *peak = (*peak).max(rss);
        }
        s
    };
    tokio::time::sleep(Duration::from_secs_f64(opts.warmup)).await;
    let broker_start = sample(&mut peak_rss);
    let bench_start = proc_stats("self");
    shared.measuring.store(true, Ordering::Relaxed);
    let measure_start = Instant::now();
    let end = measure_start + Duration::from_secs_f64(opts.duration);
    while Instant::now() < end {
        let left = end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        tokio::time::sleep(left).await;
        sample(&mut peak_rss);
        let done = shared
            .published
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .sum::<u64>();
        eprint!(
            "\r{:>5.1}s  published {done:>12}",
            measure_start.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = measure_start.elapsed().as_secs_f64();
    let broker_end = sample(&mut peak_rss);
    let bench_end = proc_stats("self");
    shared.stop.store(true, Ordering::Relaxed);
    for p in pubs {
        p.await??;
    }
    let mut delivered = 0;
    let mut duplicated = 0;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut lost = 0u64;
    for (i, s) in subs.into_iter().enumerate() {
        let seen = s.await??;
        delivered += seen.delivered;
        duplicated += seen.duplicated;
        histogram.add(&seen.histogram)?;
        let expected: Vec<usize> = match opts.scenario {
            Scenario::FanIn => (0..publishers).collect(),
            Scenario::Pairs => vec![i],
            Scenario::FanOut => vec![0],
        };
        for p in expected {
            let published = shared.published[p].load(Ordering::Relaxed);
            let received = seen.per_publisher[p].1;
            lost += published.saturating_sub(received);
        }
    }
    let broker_cpu_secs = broker_start.zip(broker_end).map(|(a, b)| b.0 - a.0);
    let broker_syscalls_per_msg = broker_start
        .zip(broker_end)
        .map(|(a, b)| (b.2 - a.2) as f64 / delivered.max(1) as f64);
    Ok(Report {
        delivered,
        delivered_per_sec: delivered as f64 / elapsed,
        latency_us: [
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max(),
        ],
        lost,
        duplicated,
        broker_cpu_secs,
        broker_peak_rss_kib: opts.broker_pid.map(|_| peak_rss),
        broker_syscalls_per_msg,
        bench_cpu_secs: bench_start.zip(bench_end).map_or(0.0, |(a, b)| b.0 - a.0),
        options: opts,
    })
}

impl Report {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let o = &self.options;
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
        format!(
            "scenario {:?}, {} clients, QoS {}, {} B payload, {}s measured\n\
             delivered        {:>12} ({:.0} msg/s)\n\
             latency p50/p99/p99.9/max  {} / {} / {} / {} us\n\
             lost / duplicated {:>11} / {}\n\
             broker CPU       {:>12}\n\
             broker peak RSS  {:>12}\n\
             broker syscalls  {:>12} per delivered message\n\
             bench CPU        {:>11.2}s\n",
            o.scenario,
            o.clients,
            o.qos,
            o.payload,
            o.duration,
            self.delivered,
            self.delivered_per_sec,
            self.latency_us[0],
            self.latency_us[1],
            self.latency_us[2],
            self.latency_us[3],
            self.lost,
            self.duplicated,
            opt(self.broker_cpu_secs, "s"),
            self.broker_peak_rss_kib
                .map_or("-".to_string(), |k| format!("{} KiB", k)),
            opt(self.broker_syscalls_per_msg, ""),
            self.bench_cpu_secs,
        )
    }
}
