//! A TCP forwarder the test cuts like a cable: while cut, nothing passes either way and
//! nothing is refused (connections hang, as across a pulled cable); once mended, connections
//! that were open across the cut are closed (what they carried meanwhile is lost) and new
//! ones pass.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// See the module's documentation.
pub(crate) struct Cable {
    addr: SocketAddr,
    /// (cut, how many times it was mended).
    state: watch::Sender<(bool, u64)>,
}

impl Cable {
    /// A cable to `target`, passing.
    pub(crate) async fn to(target: SocketAddr) -> Cable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = watch::channel((false, 0));
        let states = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pipe(client, target, states.subscribe()));
            }
        });
        Cable { addr, state }
    }

    /// Where to connect to reach the target through the cable.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn cut(&self) {
        self.state.send_modify(|s| s.0 = true);
    }

    pub(crate) fn mend(&self) {
        self.state.send_modify(|s| *s = (false, s.1 + 1));
    }
}

/// Forwards one connection both ways while the cable passes, born in the cable's current
/// life (it waits for a mend if it came during a cut); ends when either side closes or the
/// cable is mended after a cut it lived through.
async fn pipe(client: TcpStream, target: SocketAddr, mut state: watch::Receiver<(bool, u64)>) {
    let Ok(life) = state.wait_for(|s| !s.0).await.map(|s| s.1) else {
        return;
    };
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 << 10], vec![0u8; 16 << 10]);
    let mut lost = state.clone();
    let mended = async move {
        let _ = lost.wait_for(|s| s.1 != life).await;
    };
    tokio::pin!(mended);
    loop {
        tokio::select! {
            n = client_in.read(&mut up) => {
                let Ok(n @ 1..) = n else { return };
                if !passes(&mut state, life).await
                    || server_out.write_all(&up[..n]).await.is_err()
                {
                    return;
                }
            }
            n = server_in.read(&mut down) => {
                let Ok(n @ 1..) = n else { return };
                if !passes(&mut state, life).await
                    || client_out.write_all(&down[..n]).await.is_err()
                {
                    return;
                }
            }
            _ = &mut mended => return,
        }
    }
}

/// Waits while the cable is cut; false when it was mended since `life` began.
async fn passes(state: &mut watch::Receiver<(bool, u64)>, life: u64) -> bool {
    match state.wait_for(|s| !s.0).await {
        Ok(s) => s.1 == life,
        Err(_) => false,
    }
}
