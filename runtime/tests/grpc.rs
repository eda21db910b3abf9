//! The coordinator over gRPC, against worker daemons on loopback ports: the same bits as in
//! process, sections shipped once, frames in flight in order, and every way a session can go
//! wrong refused clearly while the worker keeps serving.

mod support;

use std::io::Write;
use std::time::Duration;

use adcnn_compiler::plan::{Compression, Strategy};
use adcnn_runtime::coordinator::RunError;
use adcnn_runtime::net::PROTOCOL_VERSION;
use adcnn_runtime::net::client::ConnectError;
use adcnn_runtime::net::proto::{self, worker_client::WorkerClient};
use adcnn_runtime::net::server::MAX_MESSAGE_BYTES;
use support::{TOKEN, TempDir, Workers, certificates, grpc, input, local, plan_bytes};

/// The workers serve a coordinator (plain text, `alexnet` halo): it connects and runs a frame.
fn serves_a_frame(workers: &Workers, what: &str) {
    let bytes = plan_bytes("alexnet", Strategy::Halo, Compression::None);
    grpc(&bytes, &workers.options(TOKEN, None))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .run(&input(&bytes, 1))
        .expect("runs");
}

#[test]
fn grpc_gives_the_in_process_bits_for_every_strategy() {
    let workers = Workers::start(3, TOKEN, None);
    for strategy in Strategy::ALL {
        let bytes = plan_bytes("resnet18", strategy, Compression::None);
        let x = input(&bytes, 3);
        let want = local(&bytes).run(&x).expect("in process");
        let mut c = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
        let got = c.run(&x).expect("over gRPC");
        let same = got
            .output
            .iter()
            .zip(want.output.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{}: outputs differ", strategy.name());
        assert_eq!(got.wire_bytes, want.wire_bytes, "{}", strategy.name());
    }
}

#[test]
fn compressed_plans_give_the_in_process_bits_too() {
    let workers = Workers::start(3, TOKEN, None);
    for how in [Compression::Q8, Compression::Q4] {
        let bytes = plan_bytes("mobilenetv2", Strategy::Halo, how);
        let x = input(&bytes, 4);
        let want = local(&bytes).run(&x).expect("in process");
        let got = grpc(&bytes, &workers.options(TOKEN, None))
            .expect("connects")
            .run(&x)
            .expect("over gRPC");
        assert_eq!(got.output, want.output, "{how:?}");
        assert_eq!(got.compression_error, want.compression_error, "{how:?}");
    }
}

#[test]
fn a_second_run_ships_and_compiles_nothing() {
    let workers = Workers::start(3, TOKEN, None);
    // A plan no other test here runs: in-process workers share one process-wide kernel
    // cache, so a plan another test's workers hold compiled would count as cached at once.
    let bytes = plan_bytes("alexnet", Strategy::Fdsp, Compression::None);
    let first = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
    let links = first.transport().links.clone();
    drop(first);
    assert!(
        links.iter().all(|l| l.shipped_sections > 0 && !l.cached),
        "{links:?}"
    );
    let second = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
    for l in &second.transport().links {
        assert_eq!(l.shipped_sections, 0, "{l:?}");
        assert_eq!(l.shipped_bytes, 0, "{l:?}");
        assert!(l.cached, "{l:?}");
    }
    drop(second);
    // Another plan ships only what the workers lack: its own segments.
    let other = plan_bytes("alexnet", Strategy::Layerwise, Compression::None);
    let third = grpc(&other, &workers.options(TOKEN, None)).expect("connects");
    assert!(
        third
            .transport()
            .links
            .iter()
            .any(|l| l.shipped_sections > 0)
    );
}

#[test]
fn frames_in_flight_come_back_complete_in_order_once() {
    let workers = Workers::start(3, TOKEN, None);
    let bytes = plan_bytes("mobilenetv2", Strategy::Auto, Compression::None);
    let inputs: Vec<_> = (0..8).map(|s| input(&bytes, 100 + s)).collect();
    let mut one = local(&bytes);
    let want: Vec<_> = inputs
        .iter()
        .map(|x| one.run(x).expect("runs").output)
        .collect();
    for in_flight in [1, 3, 8] {
        let mut c = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
        let mut got = Vec::new();
        c.run_stream(inputs.iter().cloned().map(Ok), in_flight, |r| {
            got.push(r);
            Ok(())
        })
        .expect("runs");
        assert_eq!(got.len(), inputs.len(), "{in_flight} in flight");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(
                r.frame, i as u64,
                "{in_flight} in flight: frames out of order"
            );
            assert_eq!(r.output, want[i], "{in_flight} in flight, frame {i}");
        }
    }
}

#[test]
fn a_wrong_token_is_refused_and_the_worker_serves_the_next_session() {
    let workers = Workers::start(3, TOKEN, None);
    let bytes = plan_bytes("alexnet", Strategy::Single, Compression::None);
    let e = grpc(
        &bytes,
        &workers.options(b"not the cluster's token at all", None),
    )
    .expect_err("refused");
    assert!(matches!(e, ConnectError::WrongToken { .. }), "{e}");
    assert!(
        e.to_string().contains("does not hold this cluster's token"),
        "{e}"
    );
    let x = input(&bytes, 1);
    grpc(&bytes, &workers.options(TOKEN, None))
        .expect("the next session connects")
        .run(&x)
        .expect("and runs");
}

#[test]
fn a_wrong_protocol_version_is_refused_naming_both() {
    let workers = Workers::start(1, TOKEN, None);
    let address = format!("http://{}", workers.addresses[0]);
    let status = workers.runtime().block_on(async {
        let mut client = WorkerClient::connect(address).await.expect("connects");
        client
            .hello(proto::HelloRequest {
                protocol: 999,
                coordinator_nonce: vec![0u8; 32].into(),
            })
            .await
            .expect_err("refused")
    });
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("protocol version 999"),
        "{status:?}"
    );
    let ours = format!("speaks version {PROTOCOL_VERSION}");
    assert!(status.message().contains(&ours), "{status:?}");
}

/// Hellos never followed by Open: one peer address may hold `MAX_HANDSHAKES_PER_PEER` of
/// them, so a host sending Hellos (127.0.0.2) cannot lock out the coordinator (127.0.0.1).
#[test]
fn handshakes_are_bounded_per_peer_and_the_coordinator_still_gets_in() {
    use adcnn_runtime::net::server::{MAX_HANDSHAKES, MAX_HANDSHAKES_PER_PEER};
    let workers = Workers::start(3, TOKEN, None);
    let address = format!("http://{}", workers.addresses[0]);
    let hello = |client: &mut WorkerClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            client
                .hello(proto::HelloRequest {
                    protocol: PROTOCOL_VERSION,
                    coordinator_nonce: vec![7u8; 32].into(),
                })
                .await
        }
    };
    let refused = workers.runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(address)
            .expect("address")
            .local_address(Some([127, 0, 0, 2].into()))
            .connect()
            .await
            .expect("connects from 127.0.0.2");
        let mut client = WorkerClient::new(channel);
        for _ in 0..MAX_HANDSHAKES_PER_PEER {
            hello(&mut client).await.expect("a handshake");
        }
        hello(&mut client).await.expect_err("one too many")
    });
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("the most one peer may"),
        "{refused:?}"
    );
    const { assert!(MAX_HANDSHAKES > MAX_HANDSHAKES_PER_PEER) };
    serves_a_frame(&workers, "the coordinator connects");
}

/// One coordinator at a time: a second is refused as busy, naming the first, while the
/// first runs on.
#[test]
fn a_second_coordinator_is_refused_while_the_first_runs() {
    let workers = Workers::start(3, TOKEN, None);
    let bytes = plan_bytes("alexnet", Strategy::Halo, Compression::None);
    let x = input(&bytes, 1);
    let mut first = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
    first.run(&x).expect("runs");
    let e = grpc(&bytes, &workers.options(TOKEN, None)).expect_err("busy");
    assert!(matches!(e, ConnectError::Refused { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("serving another coordinator at 127.0.0.1:"),
        "{e}"
    );
    first.run(&x).expect("the first runs on");
}

#[test]
fn a_certificate_of_another_cluster_is_refused() {
    let (ours, theirs) = (TempDir::new("certs-ours"), TempDir::new("certs-theirs"));
    certificates(&ours.0);
    certificates(&theirs.0);
    let names = ["w1", "w2", "w3"];
    let workers = Workers::start(3, TOKEN, Some((&ours.0, &names)));
    let bytes = plan_bytes("alexnet", Strategy::Single, Compression::None);
    let e = grpc(&bytes, &workers.options(TOKEN, Some(&theirs.0))).expect_err("refused");
    assert!(matches!(e, ConnectError::Handshake { .. }), "{e}");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    assert!(e.to_string().contains("ca.pem"), "{e}");
    // Plain text to a TLS worker is refused too, with the advice to pass --tls-dir.
    let e = grpc(&bytes, &workers.options(TOKEN, None)).expect_err("plain text refused");
    assert!(matches!(e, ConnectError::Handshake { .. }), "{e}");
    assert!(e.to_string().contains("pass --tls-dir"), "{e}");
    // TLS to plain-text workers: told that they answer in plain text.
    let plain = Workers::start(3, TOKEN, None);
    let e = grpc(&bytes, &plain.options(TOKEN, Some(&ours.0))).expect_err("TLS to plain text");
    assert!(matches!(e, ConnectError::Handshake { .. }), "{e}");
    assert!(e.to_string().contains("answers in plain text"), "{e}");
    let x = input(&bytes, 1);
    grpc(&bytes, &workers.options(TOKEN, Some(&ours.0)))
        .expect("the cluster's own certificates connect")
        .run(&x)
        .expect("and run");
}

#[test]
fn an_oversize_message_is_refused_and_the_worker_serves_on() {
    let workers = Workers::start(1, TOKEN, None);
    let address = format!("http://{}", workers.addresses[0]);
    let status = workers.runtime().block_on(async {
        let mut client = WorkerClient::connect(address)
            .await
            .expect("connects")
            .max_encoding_message_size(usize::MAX);
        client
            .hello(proto::HelloRequest {
                protocol: 1,
                coordinator_nonce: vec![0u8; MAX_MESSAGE_BYTES + 1].into(),
            })
            .await
            .expect_err("refused")
    });
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    let mut three = Workers::start(2, TOKEN, None);
    three.addresses.insert(0, workers.addresses[0].clone());
    serves_a_frame(&three, "connects");
}

/// Another host (127.0.0.2) holding more connections than a peer may: the worker closes
/// the excess at once and keeps serving its coordinator (127.0.0.1).
#[test]
fn a_peer_holding_too_many_connections_is_cut_off_and_the_coordinator_served() {
    use adcnn_runtime::net::admit::MAX_CONNECTIONS_PER_PEER;
    use std::io::Read;
    use std::net::{SocketAddr, TcpStream};
    let workers = Workers::start(3, TOKEN, None);
    let target: SocketAddr = workers.addresses[0].parse().expect("address");
    let from = |_| -> TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
            .expect("127.0.0.2");
        s.connect(&target.into()).expect("connects");
        s.into()
    };
    let extra = 8;
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS_PER_PEER + extra).map(from).collect();
    for s in &held {
        s.set_nonblocking(true).expect("nonblocking");
    }
    // The worker closes `extra` of them (reading gives end of file); the rest stay open,
    // waiting for an HTTP/2 preface that never comes.
    let closed = |s: &TcpStream| match (&*s).read(&mut [0u8; 256]) {
        Ok(0) => true,
        Ok(_) => false, // the server's HTTP/2 settings
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while held.iter().filter(|s| closed(s)).count() < extra {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not close the connections past {MAX_CONNECTIONS_PER_PEER}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serves_a_frame(
        &workers,
        "the coordinator connects while another host holds its share",
    );
    drop(held);
}

#[test]
fn garbage_bytes_on_the_port_leave_the_worker_serving() {
    let workers = Workers::start(3, TOKEN, None);
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x01\x00\x00\x00\x00\x00"[..],
    ] {
        for a in &workers.addresses {
            let mut s = std::net::TcpStream::connect(a).expect("connects");
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let _ = s.write_all(garbage);
        }
    }
    serves_a_frame(&workers, "connects");
}

#[test]
fn a_coordinator_that_leaves_mid_frame_leaves_the_worker_serving() {
    let workers = Workers::start(3, TOKEN, None);
    let bytes = plan_bytes("resnet18", Strategy::Halo, Compression::None);
    let x = input(&bytes, 9);
    {
        let mut c = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
        // Tiles go out; the coordinator is dropped before any result is read.
        let header = c.header().clone();
        let seg = &header.plan.segments[0];
        use adcnn_runtime::transport::{TileInput, TileJob, Transport};
        let (_, h, w) = x.dim();
        let full = adcnn_core::plan::Region {
            r0: 0,
            r1: h,
            c0: 0,
            c1: w,
        };
        for (i, t) in seg.tiles.iter().enumerate() {
            let job = TileJob {
                frame: 0,
                layout: 0,
                segment: 0,
                tile: i as u32,
                input: TileInput::Values(adcnn_core::tensor::crop(&x, &full, &t.input)),
            };
            c.transport_mut().send(t.node, job).expect("sent");
        }
    }
    let want = local(&bytes).run(&x).expect("in process").output;
    let got = grpc(&bytes, &workers.options(TOKEN, None))
        .expect("the next session connects")
        .run(&x)
        .expect("and runs")
        .output;
    assert_eq!(got, want);
}

#[test]
fn a_worker_that_goes_away_costs_no_frame() {
    // A halo plan gives every segment's tiles to all three workers: when w2 goes away between
    // frames, its tiles go to w1 and w3, and the frames still come out right.
    let mut workers = Workers::start(3, TOKEN, None);
    let bytes = plan_bytes("alexnet", Strategy::Halo, Compression::None);
    let inputs: Vec<_> = (0..6).map(|s| input(&bytes, 200 + s)).collect();
    let mut one = local(&bytes);
    let want: Vec<_> = inputs
        .iter()
        .map(|x| one.run(x).expect("runs").output)
        .collect();
    let mut c = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
    let mut got = Vec::new();
    // One frame at a time: w2 stops after frame 1 is delivered, before frame 2 goes out.
    // Whether its loss shows first as a broken stream or as a job that cannot be sent,
    // frames 2–5 must come out on the other two.
    c.run_stream(inputs.iter().cloned().map(Ok), 1, |r| {
        if r.frame == 1 {
            workers.stop(1);
        }
        got.push(r);
        Ok(())
    })
    .expect("the run survives the lost worker");
    assert_eq!(c.lost_nodes(), [false, false, true, false]);
    assert_eq!(got.len(), inputs.len());
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.frame, i as u64);
        let e = adcnn_core::tensor::rel_l2(r.output.iter(), want[i].iter());
        assert!(e <= 1e-5, "frame {i}: relative L2 {e:.2e}");
    }
    for r in &got[3..] {
        assert_eq!(
            r.node_busy_ms[2], 0.0,
            "frame {} used the lost worker",
            r.frame
        );
    }
}

#[test]
fn a_lost_worker_that_held_a_segment_alone_is_a_clear_error() {
    let mut workers = Workers::start(3, TOKEN, None);
    let bytes = plan_bytes("alexnet", Strategy::Single, Compression::None);
    let header = adcnn_core::format::PlanFile::parse(&bytes)
        .and_then(|f| f.header())
        .expect("plan");
    let node = header.plan.segments[0].tiles[0].node;
    let x = input(&bytes, 1);
    let mut c = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
    c.run(&x).expect("runs");
    workers.stop(node - 1);
    let e = c.run(&x).expect_err("its only worker is gone");
    assert!(matches!(e, RunError::WorkerLost { segment: 0, .. }), "{e}");
    let name = &header.plan.cluster.nodes[node].name;
    assert!(
        e.to_string().contains(&format!("node {name} was lost")),
        "{e}"
    );
}

#[test]
fn an_unreachable_worker_names_its_address_and_how_to_start_one() {
    // A loopback port where nothing listens: bind one, note it, close it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = free.local_addr().expect("address").to_string();
    drop(free);
    let workers = Workers::start(3, TOKEN, None);
    let mut opts = workers.options(TOKEN, None);
    opts.addresses[3] = Some(address.clone());
    opts.connect_timeout = Duration::from_secs(5);
    let bytes = plan_bytes("alexnet", Strategy::Halo, Compression::None);
    let e = grpc(&bytes, &opts).expect_err("unreachable");
    let m = e.to_string();
    assert!(
        m.contains(&format!("cannot reach worker `w3` at {address}")),
        "{m}"
    );
    assert!(m.contains("adcnn-run worker --listen"), "{m}");
    assert!(m.contains("--local"), "{m}");
    // The workers that did set up were released: a coordinator with the right addresses
    // gets all three now, rather than two that still hold the abandoned session.
    grpc(&bytes, &workers.options(TOKEN, None)).expect("the workers serve the next session");
}

#[test]
fn an_image_travels_as_pixels_to_the_same_bits() {
    let workers = Workers::start(3, TOKEN, None);
    let bytes = plan_bytes("resnet18", Strategy::Auto, Compression::None);
    let header = adcnn_core::format::PlanFile::parse(&bytes)
        .and_then(|f| f.header())
        .expect("plan");
    let image = support::root().join("dsl-examples/images/chelsea.jpg");
    let frame = adcnn_core::input::load_frame(&image, &header.network.input).expect("an image");
    assert!(frame.pixels.is_some());
    let first_tiles = header.plan.segments[0].tiles.len();
    let mut c = grpc(&bytes, &workers.options(TOKEN, None)).expect("connects");
    let as_values = c.run(&frame.tensor).expect("runs");
    let as_pixels = c.run_frame(frame.clone()).expect("runs");
    assert_eq!(as_pixels.output, as_values.output);
    let inputs = |r: &adcnn_runtime::coordinator::RunReport| -> u64 {
        r.telemetry
            .iter()
            .filter_map(|t| match t {
                adcnn_runtime::telemetry::Telemetry::Tile {
                    segment: 0,
                    bytes_in,
                    ..
                } => Some(*bytes_in),
                _ => None,
            })
            .sum()
    };
    let (v, p) = (inputs(&as_values), inputs(&as_pixels));
    // A quarter of the raw bytes; after the lossless coder (which shrinks the floats more
    // than the pixels) measured 181 KB against 387 KB on this image.
    assert!(
        first_tiles > 1 && p * 2 < v,
        "{p} bytes as pixels, {v} as values"
    );
    // In process, too.
    let mut l = local(&bytes);
    assert_eq!(l.run_frame(frame).expect("runs").output, as_values.output);
}
