//! A TCP relay between a client and the API server that a test can cut, as
//! a network partition would: open connections drop, new ones are refused.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Partition {
    addr: SocketAddr,
    cut: CancellationToken,
}

impl Partition {
    /// Relay from a loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let cut = CancellationToken::new();
        let token = cut.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Partition { addr, cut }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cut every connection and refuse new ones, for good.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}
