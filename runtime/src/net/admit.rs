//! Which TCP connections a worker takes: per peer address, at most
//! [`MAX_CONNECTIONS_PER_PEER`] open at once and [`NEW_CONNECTIONS_PER_SECOND`] new ones a
//! second (a token bucket holding [`NEW_CONNECTIONS_BURST`]), and at most [`MAX_PEERS`]
//! peers with open connections. A connection past any of these is closed at once, before TLS
//! or HTTP/2 reads a byte of it, so a host flooding a worker with connections (garbage,
//! half-open, stalled handshakes) cannot use up its file descriptors or starve the
//! coordinator's connection. A coordinator uses one connection a session.
//!
//! The first refusal of a burst is logged (at warn), then nothing until that peer is
//! admitted again.
//!
//! An admitted connection must then *speak*: send its first bytes (the HTTP/2 client
//! preface in plain text, a TLS record's first byte with TLS) within
//! [`FIRST_BYTES_TIMEOUT`], or it is closed ([`speaking`]). Each connection waits apart, so
//! one that stalls holds up no other.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connections one peer address may hold open at once.
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
/// New connections one peer address may open a second, on average…
pub const NEW_CONNECTIONS_PER_SECOND: f64 = 20.0;
/// …and at once after a quiet spell.
pub const NEW_CONNECTIONS_BURST: f64 = 40.0;
/// How long an admitted connection may take to send its first bytes.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// The HTTP/2 client preface's length: what a plain-text connection must send first.
pub const H2_PREFACE_BYTES: usize = 24;

/// Peer addresses tracked at once (those with open connections or a bucket not yet full);
/// connections from further new addresses are refused.
pub const MAX_PEERS: usize = 4096;

#[derive(Debug)]
struct Peer {
    open: usize,
    tokens: f64,
    refilled: Instant,
    /// Refusing since the last admission (the refusal was logged).
    refusing: bool,
}

/// The worker's admission state, shared by its connections.
#[derive(Debug, Default)]
pub struct Admission {
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyOpen,
    TooFast,
    TooManyPeers,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooManyOpen => write!(
                f,
                "it holds {MAX_CONNECTIONS_PER_PEER} connections already (the most one peer may)"
            ),
            Refusal::TooFast => write!(
                f,
                "it opens more than {NEW_CONNECTIONS_PER_SECOND} connections a second"
            ),
            Refusal::TooManyPeers => write!(f, "{MAX_PEERS} other peers are connected"),
        }
    }
}

impl Admission {
    /// Takes a connection from `ip` at `now`, or says why not. The first refusal of a burst
    /// is returned as `Err((why, true))`: log it.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), (Refusal, bool)> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&ip) {
            // Forget peers with nothing open and a full bucket before counting.
            if peers.len() >= MAX_PEERS {
                peers.retain(|_, p| p.open > 0 || Self::refill(p, now) < NEW_CONNECTIONS_BURST);
            }
            if peers.len() >= MAX_PEERS {
                return Err((Refusal::TooManyPeers, false));
            }
        }
        let peer = peers.entry(ip).or_insert(Peer {
            open: 0,
            tokens: NEW_CONNECTIONS_BURST,
            refilled: now,
            refusing: false,
        });
        Self::refill(peer, now);
        let refusal = if peer.open >= MAX_CONNECTIONS_PER_PEER {
            Some(Refusal::TooManyOpen)
        } else if peer.tokens < 1.0 {
            Some(Refusal::TooFast)
        } else {
            None
        };
        if let Some(why) = refusal {
            let first = !peer.refusing;
            peer.refusing = true;
            return Err((why, first));
        }
        peer.tokens -= 1.0;
        peer.open += 1;
        peer.refusing = false;
        Ok(())
    }

    /// Tops up `peer`'s bucket for the time since its last refill; returns its tokens.
    fn refill(peer: &mut Peer, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(peer.refilled).as_secs_f64();
        peer.tokens = (peer.tokens + dt * NEW_CONNECTIONS_PER_SECOND).min(NEW_CONNECTIONS_BURST);
        peer.refilled = now;
        peer.tokens
    }

    /// A connection from `ip` closed.
    fn release(&self, ip: IpAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = peers.get_mut(&ip) {
            p.open = p.open.saturating_sub(1);
        }
    }

    /// Open connections from `ip`.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&ip).map_or(0, |p| p.open)
    }
}

/// An admitted connection; it counts as open for its peer until dropped.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    ip: IpAddr,
    admission: Arc<Admission>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// The connections of `incoming` that `admission` takes; the others are closed (dropped)
/// as they arrive.
pub fn admitted<S>(
    incoming: S,
    admission: Arc<Admission>,
) -> impl Stream<Item = io::Result<Admitted>>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    incoming.filter_map(move |accepted| {
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let Ok(peer) = stream.peer_addr() else {
            return None; // already gone
        };
        let ip = peer.ip();
        match admission.admit(ip, Instant::now()) {
            Ok(()) => Some(Ok(Admitted {
                stream,
                ip,
                admission: admission.clone(),
            })),
            Err((why, first)) => {
                if first {
                    tracing::warn!(peer = %ip, "refusing connections from {ip}: {why}");
                }
                None
            }
        }
    })
}

impl Admitted {
    /// Whether the peer has sent at least `bytes` bytes (looked at, not read), waiting for
    /// them; false when it closes first.
    async fn has_sent(&self, bytes: usize) -> bool {
        let mut buf = vec![0u8; bytes];
        loop {
            match self.stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= bytes => return true,
                // Part of it: the rest is on its way (peek would return at once again).
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

/// The connections of `incoming` that send their first `bytes` bytes within `deadline`;
/// the others are closed. Each connection waits in a task of its own, so a stalled one
/// holds up no other; the tasks end when the returned stream is dropped.
pub fn speaking<S>(
    incoming: S,
    bytes: usize,
    deadline: Duration,
) -> impl Stream<Item = io::Result<Admitted>>
where
    S: Stream<Item = io::Result<Admitted>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Admitted>>(64);
    tokio::spawn(async move {
        tokio::pin!(incoming);
        loop {
            let next = tokio::select! {
                next = incoming.next() => next,
                () = tx.closed() => return,
            };
            let conn = match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(conn)) => conn,
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let spoke = tokio::select! {
                    r = tokio::time::timeout(deadline, conn.has_sent(bytes)) => r.unwrap_or(false),
                    () = tx.closed() => false,
                };
                if spoke {
                    let _ = tx.send(Ok(conn)).await;
                } else {
                    tracing::debug!(peer = %conn.ip, "closing a connection that sent nothing in time");
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_peer_holds_at_most_its_share_and_others_are_not_affected() {
        let adm = Admission::default();
        let t = Instant::now();
        // Spread over time so the rate is not what refuses.
        for i in 0..MAX_CONNECTIONS_PER_PEER {
            assert_eq!(adm.admit(A, t + Duration::from_secs(i as u64)), Ok(()));
        }
        let later = t + Duration::from_secs(1000);
        assert_eq!(adm.admit(A, later), Err((Refusal::TooManyOpen, true)));
        assert_eq!(adm.admit(A, later), Err((Refusal::TooManyOpen, false)));
        assert_eq!(adm.admit(B, later), Ok(()));
        adm.release(A);
        assert_eq!(adm.admit(A, later), Ok(()));
        assert_eq!(adm.open(A), MAX_CONNECTIONS_PER_PEER);
    }

    #[test]
    fn a_peer_opening_too_fast_is_refused_until_its_bucket_refills() {
        let adm = Admission::default();
        let t = Instant::now();
        for _ in 0..NEW_CONNECTIONS_BURST as usize {
            assert_eq!(adm.admit(A, t), Ok(()));
            adm.release(A);
        }
        assert_eq!(adm.admit(A, t), Err((Refusal::TooFast, true)));
        // One token a 1/NEW_CONNECTIONS_PER_SECOND s.
        let next = t + Duration::from_secs_f64(1.0 / NEW_CONNECTIONS_PER_SECOND);
        assert_eq!(adm.admit(A, next), Ok(()));
        assert_eq!(adm.admit(A, next), Err((Refusal::TooFast, true)));
    }

    #[test]
    fn peers_past_the_table_are_refused_and_idle_ones_forgotten() {
        let adm = Admission::default();
        let t = Instant::now();
        let ip = |i: usize| IpAddr::V6(std::net::Ipv6Addr::from(i as u128 + 1));
        for i in 0..MAX_PEERS {
            assert_eq!(adm.admit(ip(i), t), Ok(()));
        }
        assert_eq!(
            adm.admit(ip(MAX_PEERS), t),
            Err((Refusal::TooManyPeers, false))
        );
        // One closes; once its bucket is full again, its place is free.
        adm.release(ip(0));
        let later = t + Duration::from_secs(10);
        assert_eq!(adm.admit(ip(MAX_PEERS), later), Ok(()));
    }

    #[test]
    fn a_connection_that_sends_nothing_in_time_is_closed_and_one_that_speaks_is_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            let address = listener.local_addr().expect("an address");
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let admitted = admitted(incoming, Arc::new(Admission::default()));
            let mut served = Box::pin(speaking(
                admitted,
                H2_PREFACE_BYTES,
                Duration::from_millis(200),
            ));
            // Silent first, then one that sends a preface's worth in two parts.
            let mut silent = tokio::net::TcpStream::connect(address)
                .await
                .expect("connects");
            let mut talker = tokio::net::TcpStream::connect(address)
                .await
                .expect("connects");
            talker.write_all(b"PRI * HTTP/2.0").await.expect("writes");
            tokio::time::sleep(Duration::from_millis(20)).await;
            talker
                .write_all(b"\r\n\r\nSM\r\n\r\n")
                .await
                .expect("writes");
            let conn = tokio::time::timeout(Duration::from_secs(30), served.next())
                .await
                .expect("a connection is served")
                .expect("the stream goes on")
                .expect("a connection");
            assert_eq!(conn.ip, IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            let mut first = [0u8; 24];
            let mut conn = conn;
            conn.read_exact(&mut first)
                .await
                .expect("its bytes are all there");
            assert_eq!(&first, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            // The silent one is closed by the worker: its read ends (EOF or reset).
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
                .await
                .expect("the worker closes it");
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        });
    }
}
