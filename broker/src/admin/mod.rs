//! The HTTP endpoint on `metrics_listen`: `/metrics` for Prometheus, `/healthz` and `/readyz`
//! for Kubernetes probes, and a small admin API under `/admin/` (bans, drain), which answers only
//! requests bearing the token from `admin_token_file`.
//!
//! It runs on the broker's runtime but does its walking (the metrics survey) on a blocking
//! thread, so a scrape never stalls message traffic.

pub mod exposition;
pub mod process;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use exposition::Snapshot;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the endpoint; [`serve`] then answers on it.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (metrics_listen): {e}"),
        )
    })
}

/// Answers HTTP requests until shutdown.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, token: Option<Arc<str>>) {
    let shutdown = broker.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let broker = broker.clone();
        let token = token.clone();
        let shutdown = shutdown.clone();
        // Not on the broker's task tracker: a scraper's idle keep-alive connection must not
        // hold up the shutdown.
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let broker = broker.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(route(req, &broker, token.as_deref()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(%peer, error = %e, "metrics endpoint: connection ended");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Why the broker is not ready, if it is not: starting, draining, or a store failing.
pub fn readiness(broker: &Broker) -> Result<(), &'static str> {
    if broker.drain.is_cancelled() {
        return Err("draining");
    }
    if !broker.ready.load(Ordering::Relaxed) {
        return Err("starting");
    }
    if broker
        .persist
        .as_ref()
        .is_some_and(|p| p.committer().is_degraded())
    {
        return Err("store unavailable");
    }
    if broker.cluster.get().is_some_and(|c| !c.joined()) {
        return Err("joining the cluster");
    }
    Ok(())
}

async fn route(
    req: Request<Incoming>,
    broker: &Arc<Broker>,
    token: Option<&str>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => metrics(&req, broker).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match readiness(broker) {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        (_, p) if p.starts_with("/admin/") => {
            if let Err(refused) = authorize(&req, token) {
                return *refused;
            }
            api(req.method(), p, req.uri().query().unwrap_or(""), broker).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn metrics(req: &Request<Incoming>, broker: &Arc<Broker>) -> Response<Full<Bytes>> {
    let openmetrics = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let b = broker.clone();
    let rendered =
        tokio::task::spawn_blocking(move || Snapshot::take(&b).render(openmetrics)).await;
    match rendered {
        Ok(Ok(body)) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            let ct = if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            };
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        _ => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
    }
}

/// `/admin/` needs `Authorization: Bearer TOKEN`; without a configured token it is off.
fn authorize(
    req: &Request<Incoming>,
    token: Option<&str>,
) -> Result<(), Box<Response<Full<Bytes>>>> {
    let Some(token) = token else {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            "the admin API is off: set admin_token_file\n",
        )));
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        use subtle::ConstantTimeEq;
        bool::from(g.as_bytes().ct_eq(token.as_bytes()))
    });
    if ok {
        Ok(())
    } else {
        warn!("admin API: request without a valid token refused");
        Err(Box::new(text(StatusCode::UNAUTHORIZED, "unauthorized\n")))
    }
}

async fn api(
    method: &Method,
    path: &str,
    query: &str,
    broker: &Arc<Broker>,
) -> Response<Full<Bytes>> {
    let now = Instant::now();
    match (method, path) {
        (&Method::GET, "/admin/bans") => {
            let bans: Vec<serde_json::Value> = broker
                .security
                .bans(now)
                .into_iter()
                .map(|(key, until)| {
                    serde_json::json!({
                        "key": key,
                        "expires_in_secs": until.saturating_duration_since(now).as_secs(),
                    })
                })
                .collect();
            json(StatusCode::OK, &serde_json::Value::Array(bans))
        }
        (&Method::GET, "/admin/status") => {
            // What the operator reports per node in the MqttCluster's status. The survey
            // walks every session: off the runtime's threads.
            let b = broker.clone();
            let survey = tokio::task::spawn_blocking(move || crate::metrics::survey::take(&b))
                .await
                .unwrap_or_default();
            let peers: Vec<serde_json::Value> = broker
                .cluster
                .get()
                .map(|c| c.status())
                .unwrap_or_default()
                .into_iter()
                .map(|p| serde_json::json!({"peer": p.peer, "up": p.up}))
                .collect();
            let body = serde_json::json!({
                "node_id": broker.config.node_id,
                "ready": readiness(broker).is_ok(),
                "draining": broker.is_draining(),
                "connections": broker.metrics.connections.load(Ordering::Relaxed),
                "sessions_online": survey.online,
                "sessions_offline": survey.offline,
                "queued_messages": survey.queued_messages,
                "subscriptions": survey.subscriptions,
                "retained": survey.retained,
                "peers": peers,
            });
            json(StatusCode::OK, &body)
        }
        (&Method::POST, "/admin/drain") => {
            // `?stay=true`: once drained, wait for SIGTERM rather than exit (a restarted
            // process would take clients again before the operator removes the pod).
            if query.split('&').any(|kv| kv == "stay=true") {
                broker.stay_after_drain.store(true, Ordering::Relaxed);
            }
            let started = crate::drain::start(broker);
            if started {
                info!("drain asked through the admin API");
            }
            let body = serde_json::json!({
                "draining": true,
                "started": started,
                "connections": broker.metrics.connections.load(Ordering::Relaxed),
            });
            json(StatusCode::ACCEPTED, &body)
        }
        (&Method::DELETE, p) if p.starts_with("/admin/bans/") => {
            let key = percent_decode(&p["/admin/bans/".len()..]);
            if broker.security.clear_ban_everywhere(&key).await {
                info!(key, "ban lifted through the admin API");
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_else(|_| text(StatusCode::NO_CONTENT, ""))
            } else {
                text(StatusCode::NOT_FOUND, "no such ban\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Decodes `%XX` escapes (a username in a ban key may hold any character).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_decode_and_bad_ones_stay() {
        assert_eq!(percent_decode("user/a%20b"), "user/a b");
        assert_eq!(percent_decode("addr/::1"), "addr/::1");
        assert_eq!(percent_decode("id/x%2"), "id/x%2");
        assert_eq!(percent_decode("id/%zz"), "id/%zz");
    }
}
