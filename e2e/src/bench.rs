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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

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
    /// N publishers into one `$share` group of `--group` subscribers, one topic.
    Shared,
    /// `--retained` retained topics under one tree; N subscribers subscribe to the tree,
    /// receive every retained message, disconnect, and do it again.
    Retained,
    /// N clients connecting (and disconnecting) as fast as the broker answers.
    ConnectStorm,
    /// N idle connections held open: broker RSS growth per connection.
    Idle,
}

/// What to run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Options {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Subscribers connect here instead (another node of a cluster: publish on one node,
    /// receive on another). The flow scenarios wait half a second after the subscriptions for
    /// their routes to reach the publishers' node.
    #[arg(long, value_name = "ADDR")]
    pub subscriber_broker: Option<SocketAddr>,
    /// Load shape.
    #[arg(long, value_enum, default_value = "fan-in")]
    pub scenario: Scenario,
    /// Put into client ids and topics of the flow scenarios, so that several load tools can
    /// run against one broker or cluster without taking each other's sessions over.
    #[arg(long, default_value = "")]
    pub tag: String,
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
    /// Members of the shared subscription group (`shared`).
    #[arg(long, default_value_t = 4)]
    pub group: usize,
    /// Retained topics in the tree (`retained`).
    #[arg(long, default_value_t = 1000)]
    pub retained: usize,
    /// Connect over TLS, trusting this PEM CA bundle.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Server name to check the broker's certificate against.
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// Subscribers keep persistent sessions (3.1.1 clean session 0; 5.0 a session expiry of
    /// an hour), so that a broker with a store writes their QoS 1/2 deliveries durably.
    #[arg(long)]
    pub persistent: bool,
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
    /// `connect-storm`: completed CONNECT/CONNACK exchanges per second.
    pub connects_per_sec: Option<f64>,
    /// `idle`: connections held open.
    pub idle_connections: Option<usize>,
    /// `idle`: broker RSS growth per connection, bytes.
    pub rss_bytes_per_connection: Option<f64>,
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

/// A suffix that differs between runs.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn connect_packet(protocol: Protocol, id: String, persistent: bool) -> Packet {
    let mut properties = ConnectProperties::default();
    if persistent && protocol == Protocol::V5 {
        properties.session_expiry_interval = Some(3600);
    }
    Packet::Connect(Box::new(Connect {
        protocol,
        // A 3.1.1 session is persistent only with clean session 0 (ids are unique per run,
        // so nothing is resumed).
        clean_start: !(persistent && protocol != Protocol::V5),
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties,
    }))
}

/// A byte stream to the broker: TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How to reach the broker.
#[derive(Clone)]
struct Dialer {
    addr: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Dialer {
    fn new(opts: &Options) -> anyhow::Result<Dialer> {
        let tls = match &opts.tls_ca {
            None => None,
            Some(path) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading {}", path.display()))?
                {
                    roots.add(cert?)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from(opts.tls_server_name.clone())
                    .context("--tls-server-name")?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Dialer {
            addr: opts.broker,
            tls,
        })
    }

    async fn dial(&self) -> anyhow::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
        })
    }
}

struct Client {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    protocol: Protocol,
}

impl Client {
    async fn connect(dialer: &Dialer, protocol: Protocol, id: String) -> anyhow::Result<Client> {
        Client::connect_as(dialer, protocol, id, false).await
    }

    async fn connect_as(
        dialer: &Dialer,
        protocol: Protocol,
        id: String,
        persistent: bool,
    ) -> anyhow::Result<Client> {
        let stream = dialer.dial().await?;
        let mut c = Client {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            protocol,
        };
        c.queue(&connect_packet(protocol, id, persistent));
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
        self.stream.write_all(&self.wbuf).await?;
        self.stream.flush().await?;
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
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
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
    dialer: Dialer,
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
    let mut c =
        Client::connect(&dialer, protocol, format!("bench-pub-{}{index}", opts.tag)).await?;
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
    dialer: Dialer,
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
    let id = if opts.persistent {
        // Unique per run: a persistent session of an earlier run must not be resumed.
        format!("bench-sub-{index}-{}-{}", std::process::id(), rand_suffix())
    } else {
        format!("bench-sub-{}{index}", opts.tag)
    };
    let mut c = Client::connect_as(&dialer, protocol, id, opts.persistent).await?;
    subscribe(&mut c, &filter, qos).await?;
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
    let dialer = Dialer::new(&opts)?;
    match opts.scenario {
        Scenario::Retained => run_retained(opts, dialer).await,
        Scenario::ConnectStorm => run_connect_storm(opts, dialer).await,
        Scenario::Idle => run_idle(opts, dialer).await,
        Scenario::FanIn | Scenario::Pairs | Scenario::FanOut | Scenario::Shared => {
            run_flow(opts, dialer).await
        }
    }
}

/// A report with only the options and this tool's numbers filled in.
fn empty_report(opts: Options) -> Report {
    Report {
        options: opts,
        delivered: 0,
        delivered_per_sec: 0.0,
        latency_us: [0; 4],
        lost: 0,
        duplicated: 0,
        broker_cpu_secs: None,
        broker_peak_rss_kib: None,
        broker_syscalls_per_msg: None,
        bench_cpu_secs: 0.0,
        connects_per_sec: None,
        idle_connections: None,
        rss_bytes_per_connection: None,
    }
}

fn protocol_of(opts: &Options) -> Protocol {
    if opts.v5 {
        Protocol::V5
    } else {
        Protocol::V311
    }
}

async fn subscribe(c: &mut Client, filter: &str, qos: QoS) -> anyhow::Result<()> {
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
        if let Packet::SubAck(a) = c.next().await? {
            if a.reason_codes.iter().any(|&r| r >= 0x80) {
                bail!("SUBSCRIBE {filter} refused: {:?}", a.reason_codes);
            }
            return Ok(());
        }
    }
}

/// How long one subscriber waits for the whole retained tree.
const RETAINED_ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// `retained`: publish the tree once, then subscribers fetch it again and again.
async fn run_retained(opts: Options, dialer: Dialer) -> anyhow::Result<Report> {
    let protocol = protocol_of(&opts);
    let k = opts.retained.max(1);
    let mut setup = Client::connect(&dialer, protocol, "bench-retained-setup".into()).await?;
    let payload = Bytes::from(vec![7u8; opts.payload]);
    for i in 0..k {
        setup.queue(&Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: format!("bench/retained/{}/{}", i % 32, i).into(),
            packet_id: (i % 60_000 + 1) as u16,
            payload: payload.clone(),
            ..Default::default()
        }));
        if i % 100 == 99 || i + 1 == k {
            setup.flush().await?;
            // Wait for the acknowledgements of this batch.
            let mut acked = 0;
            while acked < (i % 100) + 1 {
                if let Packet::PubAck(_) = setup.next().await? {
                    acked += 1;
                }
            }
        }
    }
    let pid = opts.broker_pid.map(|p| p.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let broker_start = pid.as_deref().and_then(proc_stats);
    let bench_start = proc_stats("self");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.clients.max(1) {
        let dialer = dialer.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let mut received = 0u64;
            let mut missing = 0u64;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let t0 = Instant::now();
                let mut sub =
                    Client::connect(&dialer, protocol, format!("bench-ret-{c}-{round}")).await?;
                subscribe(&mut sub, "bench/retained/#", QoS::AtMostOnce).await?;
                let mut got = 0;
                // A broker that drops part of the tree (queue limits) must not hang the run:
                // what does not come within the round's deadline counts as lost.
                let deadline = tokio::time::Instant::now() + RETAINED_ROUND_TIMEOUT;
                while got < k {
                    match tokio::time::timeout_at(deadline, sub.next()).await {
                        Ok(Ok(Packet::Publish(p))) if p.retain => got += 1,
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => break,
                    }
                }
                received += got as u64;
                missing += (k - got) as u64;
                let _ = histogram.record((t0.elapsed().as_micros() as u64).max(1));
                sub.queue(&Packet::Disconnect(Default::default()));
                let _ = sub.flush().await;
            }
            Ok::<_, anyhow::Error>((received, missing, histogram))
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(opts.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let broker_end = pid.as_deref().and_then(proc_stats);
    let bench_end = proc_stats("self");
    let mut report = empty_report(opts);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for t in tasks {
        let (received, missing, h) = t.await??;
        report.delivered += received;
        report.lost += missing;
        histogram.add(&h)?;
    }
    report.delivered_per_sec = report.delivered as f64 / elapsed;
    // Latency here: from CONNECT to the last retained message of the tree.
    report.latency_us = quantiles(&histogram);
    report.broker_cpu_secs = broker_start.zip(broker_end).map(|(a, b)| b.0 - a.0);
    report.broker_peak_rss_kib = broker_end.map(|e| e.1);
    report.broker_syscalls_per_msg = broker_start
        .zip(broker_end)
        .map(|(a, b)| (b.2 - a.2) as f64 / report.delivered.max(1) as f64);
    report.bench_cpu_secs = bench_start.zip(bench_end).map_or(0.0, |(a, b)| b.0 - a.0);
    Ok(report)
}

fn quantiles(h: &Histogram<u64>) -> [u64; 4] {
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    ]
}

/// `connect-storm`: `clients` loops of connect, CONNACK, DISCONNECT.
async fn run_connect_storm(opts: Options, dialer: Dialer) -> anyhow::Result<Report> {
    let protocol = protocol_of(&opts);
    let pid = opts.broker_pid.map(|p| p.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..opts.clients.max(1) {
        let dialer = dialer.clone();
        let stop = stop.clone();
        let measuring = measuring.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let mut done = 0u64;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t0 = Instant::now();
                let mut client =
                    Client::connect(&dialer, protocol, format!("bench-storm-{c}-{n}")).await?;
                if measuring.load(Ordering::Relaxed) {
                    done += 1;
                    let _ = histogram.record((t0.elapsed().as_micros() as u64).max(1));
                }
                client.queue(&Packet::Disconnect(Default::default()));
                let _ = client.flush().await;
            }
            Ok::<_, anyhow::Error>((done, histogram))
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(opts.warmup)).await;
    let broker_start = pid.as_deref().and_then(proc_stats);
    let bench_start = proc_stats("self");
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(opts.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let broker_end = pid.as_deref().and_then(proc_stats);
    let bench_end = proc_stats("self");
    stop.store(true, Ordering::Relaxed);
    let mut report = empty_report(opts);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut connects = 0;
    for t in tasks {
        let (done, h) = t.await??;
        connects += done;
        histogram.add(&h)?;
    }
    report.connects_per_sec = Some(connects as f64 / elapsed);
    report.latency_us = quantiles(&histogram);
    report.broker_cpu_secs = broker_start.zip(broker_end).map(|(a, b)| b.0 - a.0);
    report.broker_peak_rss_kib = broker_end.map(|e| e.1);
    report.bench_cpu_secs = bench_start.zip(bench_end).map_or(0.0, |(a, b)| b.0 - a.0);
    Ok(report)
}

/// `idle`: open `clients` connections, let the broker settle, and read its RSS growth.
async fn run_idle(opts: Options, dialer: Dialer) -> anyhow::Result<Report> {
    let protocol = protocol_of(&opts);
    let Some(pid) = opts.broker_pid.map(|p| p.to_string()) else {
        bail!("the idle scenario needs --broker-pid to read the broker's RSS");
    };
    let rss = |pid: &str| proc_stats(pid).map(|s| s.1).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(&pid);
    let mut held = Vec::with_capacity(opts.clients);
    for c in 0..opts.clients {
        let mut client = Client::connect(&dialer, protocol, format!("bench-idle-{c}")).await?;
        // Idle clients hold no buffers on our side either.
        client.rbuf = BytesMut::new();
        held.push(client);
        if c % 1000 == 999 {
            eprint!("\r{:>8} connections", c + 1);
        }
    }
    eprintln!();
    tokio::time::sleep(Duration::from_secs_f64(opts.warmup.max(1.0))).await;
    let after = rss(&pid);
    let mut report = empty_report(opts);
    report.idle_connections = Some(held.len());
    report.broker_peak_rss_kib = Some(after);
    report.rss_bytes_per_connection =
        Some(after.saturating_sub(before) as f64 * 1024.0 / held.len().max(1) as f64);
    drop(held);
    Ok(report)
}

/// Publishers and subscribers exchanging sequence-numbered messages.
async fn run_flow(opts: Options, dialer: Dialer) -> anyhow::Result<Report> {
    let n = opts.clients.max(1);
    let (publishers, subscribers) = match opts.scenario {
        Scenario::FanIn => (n, 1),
        Scenario::Pairs => (n, n),
        Scenario::Shared => (n, opts.group.max(1)),
        _ => (1, n),
    };
    let shared = Arc::new(Shared {
        started: Instant::now(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        published: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers);
    let mut subs = Vec::new();
    let sub_dialer = match opts.subscriber_broker {
        Some(addr) => Dialer {
            addr,
            tls: dialer.tls.clone(),
        },
        None => dialer.clone(),
    };
    for i in 0..subscribers {
        let filter = match opts.scenario {
            Scenario::FanIn => format!("bench{}/in", opts.tag),
            Scenario::Pairs => format!("bench{}/pair/{i}", opts.tag),
            Scenario::Shared => format!("$share/bench/bench{}/shared", opts.tag),
            _ => format!("bench{}/out", opts.tag),
        };
        subs.push(tokio::spawn(subscriber(
            opts.clone(),
            sub_dialer.clone(),
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
    if opts.subscriber_broker.is_some() {
        // The subscriptions are routed from the publishers' node once announced.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut pubs = Vec::new();
    for i in 0..publishers {
        let topic = match opts.scenario {
            Scenario::FanIn => format!("bench{}/in", opts.tag),
            Scenario::Pairs => format!("bench{}/pair/{i}", opts.tag),
            Scenario::Shared => format!("bench{}/shared", opts.tag),
            _ => format!("bench{}/out", opts.tag),
        };
        pubs.push(tokio::spawn(publisher(
            opts.clone(),
            dialer.clone(),
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
    // For a shared group: distinct messages per publisher over all members.
    let mut shared_received = vec![0u64; publishers];
    for (i, s) in subs.into_iter().enumerate() {
        let seen = s.await??;
        delivered += seen.delivered;
        duplicated += seen.duplicated;
        histogram.add(&seen.histogram)?;
        let expected: Vec<usize> = match opts.scenario {
            Scenario::FanIn => (0..publishers).collect(),
            Scenario::Pairs => vec![i],
            Scenario::Shared => {
                for (p, total) in shared_received.iter_mut().enumerate() {
                    *total += seen.per_publisher[p].1;
                }
                vec![]
            }
            _ => vec![0],
        };
        for p in expected {
            let published = shared.published[p].load(Ordering::Relaxed);
            let received = seen.per_publisher[p].1;
            lost += published.saturating_sub(received);
        }
    }
    if opts.scenario == Scenario::Shared {
        for (p, &received) in shared_received.iter().enumerate() {
            let published = shared.published[p].load(Ordering::Relaxed);
            lost += published.saturating_sub(received);
            // Each message goes to one member: more than published means some went twice.
            duplicated += received.saturating_sub(published);
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
        connects_per_sec: None,
        idle_connections: None,
        rss_bytes_per_connection: None,
        options: opts,
    })
}

impl Report {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let o = &self.options;
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
        let mut out = format!(
            "scenario {:?}, {} clients, QoS {}, {} B payload, {}s measured{}\n",
            o.scenario,
            o.clients,
            o.qos,
            o.payload,
            o.duration,
            if o.tls_ca.is_some() { ", TLS" } else { "" },
        );
        if let Some(n) = self.idle_connections {
            out += &format!(
                "idle connections {n:>12}\n\
                 broker RSS       {:>12}\n\
                 RSS per conn     {:>12}\n",
                self.broker_peak_rss_kib
                    .map_or("-".to_string(), |k| format!("{k} KiB")),
                opt(self.rss_bytes_per_connection, " B"),
            );
            return out;
        }
        if let Some(rate) = self.connects_per_sec {
            out += &format!("connects         {rate:>12.0} per second\n");
        } else {
            out += &format!(
                "delivered        {:>12} ({:.0} msg/s)\n",
                self.delivered, self.delivered_per_sec
            );
        }
        out += &format!(
            "latency p50/p99/p99.9/max  {} / {} / {} / {} us\n\
             lost / duplicated {:>11} / {}\n\
             broker CPU       {:>12}\n\
             broker peak RSS  {:>12}\n\
             broker syscalls  {:>12} per delivered message\n\
             bench CPU        {:>11.2}s\n",
            self.latency_us[0],
            self.latency_us[1],
            self.latency_us[2],
            self.latency_us[3],
            self.lost,
            self.duplicated,
            opt(self.broker_cpu_secs, "s"),
            self.broker_peak_rss_kib
                .map_or("-".to_string(), |k| format!("{k} KiB")),
            opt(self.broker_syscalls_per_msg, ""),
            self.bench_cpu_secs,
        );
        out
    }
}
