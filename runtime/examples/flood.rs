//! A flood of bad connections against a worker, for `bench/flood.sh` (a benchmark tool, not
//! a test): until killed, it keeps
//! - `--garbage N` threads connecting, sending 4 KiB of pseudo-random bytes, waiting for the
//!   worker to close (at most 1 s), pausing `--pace-ms` (default 0) and connecting again;
//! - `--half-open N` connections open that never send a byte (those the worker closed are
//!   re-opened every second);
//! - `--tls-stall N` connections that send the first 5 bytes of a TLS ClientHello record and
//!   then nothing (likewise re-opened).
//!
//! Every 5 s it prints how many connections of each kind it made and how many the worker
//! closed. It connects from 127.0.0.2, so the worker sees another host than its coordinator
//! (127.0.0.1), and only to loopback addresses (the project's network rule).
//!
//!   cargo run --release -p adcnn-runtime --example flood -- 127.0.0.1:7301 \
//!       --garbage 4 --half-open 200 --tls-stall 200

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The flood's source address: not the coordinator's 127.0.0.1, as if from another host.
const FROM: [u8; 4] = [127, 0, 0, 2];

#[derive(Default)]
struct Counts {
    garbage: AtomicU64,
    held: AtomicU64,
    closed_by_worker: AtomicU64,
    refused: AtomicU64,
}

/// A connection from `FROM` (another host, as the worker sees it, on loopback).
fn connect(addr: SocketAddr, counts: &Counts) -> Option<TcpStream> {
    let attempt = || -> std::io::Result<TcpStream> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::from((FROM, 0)).into())?;
        s.connect_timeout(&addr.into(), Duration::from_secs(2))?;
        Ok(s.into())
    };
    match attempt() {
        Ok(s) => Some(s),
        Err(_) => {
            counts.refused.fetch_add(1, Relaxed);
            std::thread::sleep(Duration::from_millis(50));
            None
        }
    }
}

/// Connects, sends garbage, waits for the close, again.
fn garbage(addr: SocketAddr, seed: u64, pace: Duration, counts: Arc<Counts>) {
    let mut x = seed | 1;
    let mut bytes = vec![0u8; 4096];
    loop {
        let Some(mut s) = connect(addr, &counts) else {
            continue;
        };
        for b in bytes.iter_mut() {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let _ = s.write_all(&bytes);
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        counts.garbage.fetch_add(1, Relaxed);
        std::thread::sleep(pace);
    }
}

/// Holds `n` connections that send `prefix` and then nothing; re-opens those the worker
/// closes.
fn hold(addr: SocketAddr, n: usize, prefix: &'static [u8], counts: Arc<Counts>) {
    let mut open: Vec<TcpStream> = Vec::new();
    loop {
        open.retain(|s| {
            let _ = s.set_nonblocking(true);
            let mut b = [0u8; 64];
            match (&*s).read(&mut b) {
                Ok(0) => {
                    counts.closed_by_worker.fetch_add(1, Relaxed);
                    false
                }
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    counts.closed_by_worker.fetch_add(1, Relaxed);
                    false
                }
                _ => true,
            }
        });
        while open.len() < n {
            let Some(mut s) = connect(addr, &counts) else {
                break;
            };
            let _ = s.write_all(prefix);
            counts.held.fetch_add(1, Relaxed);
            open.push(s);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: flood 127.0.0.1:PORT [--garbage N] [--pace-ms MS] [--half-open N] [--tls-stall N]";
    let Some(addr) = args.first().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    if !addr.is_ipv4() || !addr.ip().is_loopback() {
        eprintln!(
            "flood: {addr} is not an IPv4 loopback address; this tool floods only this machine"
        );
        std::process::exit(2);
    }
    let count = |flag: &str| -> usize {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse().unwrap_or_else(|_| {
                    eprintln!("{flag} wants a number\n{usage}");
                    std::process::exit(2)
                })
            })
            .unwrap_or(0)
    };
    let (g, h, t) = (
        count("--garbage"),
        count("--half-open"),
        count("--tls-stall"),
    );
    let pace = Duration::from_millis(count("--pace-ms") as u64);
    let counts = Arc::new(Counts::default());
    for i in 0..g {
        let c = counts.clone();
        std::thread::spawn(move || garbage(addr, 0x9e37_79b9_7f4a_7c15 ^ i as u64, pace, c));
    }
    if h > 0 {
        let c = counts.clone();
        std::thread::spawn(move || hold(addr, h, b"", c));
    }
    if t > 0 {
        // A TLS record header: handshake (0x16), TLS 1.0 record version, 512 bytes to come.
        let c = counts.clone();
        std::thread::spawn(move || hold(addr, t, &[0x16, 0x03, 0x01, 0x02, 0x00], c));
    }
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(5));
        eprintln!(
            "flood {addr}: {:.0} s, {} garbage connections, {} held opened, {} closed by the worker, {} connects failed",
            start.elapsed().as_secs_f64(),
            counts.garbage.load(Relaxed),
            counts.held.load(Relaxed),
            counts.closed_by_worker.load(Relaxed),
            counts.refused.load(Relaxed),
        );
    }
}
