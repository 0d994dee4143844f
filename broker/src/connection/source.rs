//! The reading side of a connection. A plain TCP socket waits for readiness first and only
//! then reserves buffer space, so an idle connection holds no read buffer at all; any other
//! stream (TLS, WebSocket) reads through `AsyncRead` into a reserved buffer.

use std::future::Future;
use std::io;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedReadHalf;

/// Bytes reserved for one read.
pub const READ_CHUNK: usize = 4 * 1024;

/// Something a connection reads from.
pub trait Source: Send + Unpin {
    /// Reads once into `buf` (growing it as needed); `Ok(0)` is end of stream. Cancel-safe.
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

impl Source for OwnedReadHalf {
    /// Waits through the socket's own read-readiness slot (`poll_read_ready`, one waker)
    /// rather than a `readable()` future: the wait sits in every idle connection's task, and
    /// this one is a few bytes instead of two hundred.
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        std::future::poll_fn(move |cx| {
            loop {
                std::task::ready!(self.as_ref().poll_read_ready(cx))?;
                reserve(buf);
                match self.try_read_buf(buf) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Readiness was stale (and is cleared now). Wait without holding the
                        // buffer we just reserved.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        })
    }
}

/// Any `AsyncRead` as a [`Source`].
pub struct Reader<R>(pub R);

impl<R: AsyncRead + Unpin + Send> Source for Reader<R> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        reserve(buf);
        self.0.read_buf(buf).await
    }
}
