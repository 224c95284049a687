//! A TCP relay between a client and the API server that a test can break,
//! as a network partition would: `cut` drops open connections and refuses
//! new ones (the client sees errors at once); `stall` keeps connections open
//! but carries nothing more (the client's requests hang, as behind a
//! firewall that drops packets).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Partition {
    addr: SocketAddr,
    cut: CancellationToken,
    stalled: CancellationToken,
}

impl Partition {
    /// Relay from a loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let cut = CancellationToken::new();
        let stalled = CancellationToken::new();
        let (token, stall) = (cut.clone(), stalled.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let (token, stall) = (token.clone(), stall.clone());
                tokio::spawn(async move {
                    if stall.is_cancelled() {
                        // Accepted, never answered.
                        token.cancelled().await;
                        drop(client);
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let hold = tokio::select! {
                        () = token.cancelled() => false,
                        () = stall.cancelled() => true,
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                    };
                    if hold {
                        // Both sockets stay open and silent until cut.
                        token.cancelled().await;
                    }
                });
            }
        });
        Partition { addr, cut, stalled }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cut every connection and refuse new ones, for good.
    pub fn cut(&self) {
        self.cut.cancel();
    }

    /// Carry nothing more, on open connections or new ones, without closing
    /// any: requests through the relay hang.
    pub fn stall(&self) {
        self.stalled.cancel();
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}
