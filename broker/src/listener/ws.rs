//! MQTT over WebSocket (`ws`, and `wss` over TLS): the HTTP upgrade on the configured path with
//! the `mqtt` subprotocol, then a byte-stream view of the binary messages so the connection
//! code is the same as for TCP. MQTT packets may span WebSocket messages and a message may hold
//! several packets (MQTT 5.0 section 6); a text message closes the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::Config;

/// Subprotocols we answer to: `mqtt` (3.1.1 and 5.0) and `mqttv3.1` (3.1).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Performs the HTTP upgrade.
pub async fn accept<S>(stream: S, config: &Config) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = config.ws_path.clone();
    // Small buffers: most connections are idle devices; our own writes are already batched.
    let limit = config.max_packet_size as usize + 16;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    // The callback's signature is tungstenite's, large error type included.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| negotiate(&path, req, resp);
    let inner =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config)).await?;
    Ok(WsStream::new(inner))
}

/// Checks the path and picks the subprotocol.
#[allow(clippy::result_large_err)] // tungstenite's callback type
fn negotiate(path: &str, req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != path {
        return Err(error(
            StatusCode::NOT_FOUND,
            "no MQTT endpoint at this path",
        ));
    }
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    if offered.is_empty() {
        // Some clients omit it; MQTT needs nothing from it, so accept without echoing.
        return Ok(resp);
    }
    let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the mqtt subprotocol is required",
        ));
    };
    resp.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(chosen),
    );
    Ok(resp)
}

fn error(status: StatusCode, why: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(why.to_owned()));
    *resp.status_mut() = status;
    resp
}

/// A WebSocket connection as a byte stream: reads return the payloads of binary messages,
/// each write sends one binary message.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last message read.
    read: Bytes,
}

impl<S> WsStream<S> {
    /// Wraps an established WebSocket (either side: the load tool and tests use it as a client).
    pub fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            read: Bytes::new(),
        }
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::from(io::ErrorKind::BrokenPipe)
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                buf.put_slice(&self.read[..n]);
                self.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => self.read = data,
                // Answered by tungstenite itself on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message (MQTT uses binary messages)",
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        // Send it now if the socket takes it; if not, the caller's flush finishes the job.
        if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_flush(cx) {
            return Poll::Ready(Err(to_io(e)));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut b = Request::builder().uri(path);
        if let Some(p) = protocols {
            b = b.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn path_and_subprotocol() {
        let ok = negotiate("/mqtt", &request("/mqtt", Some("mqtt")), Response::new(())).unwrap();
        assert_eq!(ok.headers()[header::SEC_WEBSOCKET_PROTOCOL], "mqtt");
        let ok = negotiate(
            "/mqtt",
            &request("/mqtt", Some("wamp, mqttv3.1")),
            Response::new(()),
        )
        .unwrap();
        assert_eq!(ok.headers()[header::SEC_WEBSOCKET_PROTOCOL], "mqttv3.1");
        let none = negotiate("/mqtt", &request("/mqtt", None), Response::new(())).unwrap();
        assert!(!none.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL));
        let wrong = negotiate("/mqtt", &request("/other", Some("mqtt")), Response::new(()));
        assert_eq!(wrong.unwrap_err().status(), StatusCode::NOT_FOUND);
        let bad = negotiate("/mqtt", &request("/mqtt", Some("wamp")), Response::new(()));
        assert_eq!(bad.unwrap_err().status(), StatusCode::BAD_REQUEST);
    }
}
