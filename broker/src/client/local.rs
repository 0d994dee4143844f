//! A [`Client`] connected to this broker through an in-memory pipe: the broker serves the
//! other end with the same code as a socket, so the session is an ordinary one.

use std::net::SocketAddr;
use std::sync::Arc;

use rookery_codec::ConnAck;
use tokio::sync::mpsc;

use super::{Client, ClientError, Incoming, Options};
use crate::broker::Broker;
use crate::connection::ConnInfo;
use crate::listener::ListenerKind;

/// Bytes buffered in each direction of the pipe.
const PIPE_BYTES: usize = 64 * 1024;

/// Connects to `broker` in-process. `peer` is the address the session is reported with
/// (the device's, for the CoAP gateway); `listener` labels it in metrics and logs.
/// `trusted_as` authenticates the session as that username without a password, as a
/// verified client certificate would (the bridge's own session); `None` leaves the CONNECT's
/// credentials to the password file (a CoAP device's). `address_verified`: see
/// [`ConnInfo::address_verified`] (false for a UDP source).
pub async fn connect(
    broker: &Arc<Broker>,
    peer: SocketAddr,
    listener: ListenerKind,
    trusted_as: Option<&str>,
    address_verified: bool,
    options: Options,
) -> Result<(Client, ConnAck, mpsc::Receiver<Incoming>), ClientError> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let info = ConnInfo {
        peer,
        listener,
        cert_identity: trusted_as.map(str::to_owned),
        cert_verified: trusted_as.is_some(),
        address_verified,
    };
    broker
        .tasks
        .spawn(crate::connection::serve(theirs, info, broker.clone()));
    Client::connect(ours, options).await
}
