//! MLLP over real TCP on 127.0.0.1:0: the client against `serve`, and against hand-written peers
//! that misbehave (silent, closing, slow, oversized, split replies).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use ehr_core::Classify;
use ehr_hl7v2::net::{MllpClient, MllpServerOptions, MllpTimeouts, send_message, serve};
use ehr_hl7v2::{AckBuilder, AckCode, Charset, ControlId, Hl7Error, Message, ReplyCode, Timestamp, charset, parse_ack};

const ORDER: &str = "MSH|^~\\&|HIS|HOSP|LAB|LABCO|20240401093000||OML^O33^OML_O33|MSG0001|P|2.5||||||~ISO IR87||ISO 2022-1994\r\
PID|1||0001000052^^^^PI||山田^太郎^^^^^L^I~ヤマダ^タロウ^^^^^L^P\r";

/// `ORDER` on the wire: ISO-2022-JP, as its MSH-18 declares.
fn wire() -> Vec<u8> {
    charset::encode_declared(ORDER).unwrap().into_owned()
}

fn quick() -> MllpTimeouts {
    MllpTimeouts { connect: Duration::from_secs(2), write: Duration::from_secs(2), reply: Duration::from_millis(300) }
}

fn framed(message: &[u8]) -> Vec<u8> {
    [&[0x0B][..], message, &[0x1C, 0x0D]].concat()
}

/// Answers an HL7 frame with AA in its own character set, anything else with `None` (close).
async fn ack_handler(frame: Vec<u8>, _peer: SocketAddr) -> Option<Vec<u8>> {
    let text = charset::decode(&frame).ok()?;
    let message = Message::parse(&text).ok()?;
    let ack = AckBuilder::new(&message, AckCode::Accept)
        .build(&ControlId::new("ACK1").ok()?, &Timestamp::new("20240401093001").ok()?)
        .ok()?;
    Some(charset::encode_declared(&ack).ok()?.into_owned())
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<ehr_hl7v2::Result<()>>,
}

async fn spawn_server<H: ehr_hl7v2::MllpHandler>(handler: H, options: MllpServerOptions) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, Arc::new(handler), options, shutdown.clone()));
    Server { addr, shutdown, task }
}

/// A peer that reads one frame and then does `then` with the socket.
async fn raw_peer<F, Fut>(then: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut read = Vec::new();
        // Up to the CR after the end block: closing with unread bytes would send a reset.
        while !read.windows(2).any(|w| w == [0x1C, 0x0D]) {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            read.extend_from_slice(&buf[..n]);
        }
        then(socket).await;
    });
    addr
}

#[tokio::test]
async fn round_trip_with_iso_2022_jp_on_the_wire() {
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = Arc::clone(&seen);
    let server = spawn_server(
        move |frame: Vec<u8>, peer: SocketAddr| {
            record.lock().unwrap().push(frame.clone());
            async move { ack_handler(frame, peer).await }
        },
        MllpServerOptions::default(),
    )
    .await;

    let wire = charset::encode_declared(ORDER).unwrap().into_owned();
    assert!(wire.is_ascii() && wire.windows(3).any(|w| w == b"\x1B$B"), "kanji go out as JIS X 0208");
    let reply = send_message(server.addr, &wire, quick()).await.unwrap();

    // The server got the exact bytes; the reply is in ISO-2022-JP and acknowledges MSG0001.
    assert_eq!(seen.lock().unwrap().as_slice(), std::slice::from_ref(&wire));
    assert_eq!(charset::detect(&reply).unwrap(), Charset::Iso2022Jp);
    let text = charset::decode(&reply).unwrap();
    let ack = parse_ack(&Message::parse(&text).unwrap()).unwrap();
    assert_eq!(ack.code, ReplyCode::ApplicationAccept);
    assert!(ack.acknowledges(&ControlId::new("MSG0001").unwrap()));

    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
    let err = send_message(server.addr, &wire, quick()).await.unwrap_err();
    assert!(matches!(err, Hl7Error::ConnectFailed(ref io) if io.kind() == std::io::ErrorKind::ConnectionRefused));
    assert_eq!(err.code(), "EHR-HL7-023");
    assert!(err.is_transport_failure());
}

#[tokio::test]
async fn a_reply_split_across_reads_is_reassembled() {
    let addr = raw_peer(|mut socket| async move {
        let reply = framed(b"MSH|^~\\&|LAB|LABCO|HIS|HOSP|20240401||ACK^O33^ACK|A1|P|2.5\rMSA|AA|MSG0001\r");
        for chunk in reply.chunks(5) {
            socket.write_all(chunk).await.unwrap();
            socket.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Keep the socket open: the reply must be complete without waiting for EOF.
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    let timeouts = MllpTimeouts { reply: Duration::from_secs(2), ..quick() };
    let reply = send_message(addr, &wire(), timeouts).await.unwrap();
    assert!(reply.ends_with(b"MSA|AA|MSG0001\r"));
    assert!(reply.starts_with(b"MSH|"));
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let addr = raw_peer(|socket| async move {
        let _open = socket;
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    let started = tokio::time::Instant::now();
    let err = send_message(addr, &wire(), quick()).await.unwrap_err();
    assert!(matches!(err, Hl7Error::Timeout { phase: "reply" }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err.code(), "EHR-HL7-024");
    assert_eq!(err.to_string(), "mllp reply timed out");
}

#[tokio::test]
async fn a_peer_that_closes_without_replying() {
    let addr = raw_peer(|socket| async move { drop(socket) }).await;
    let err = send_message(addr, &wire(), quick()).await.unwrap_err();
    assert!(matches!(err, Hl7Error::ClosedWithoutReply), "{err:?}");
    assert_eq!(err.code(), "EHR-HL7-025");

    let addr = raw_peer(|mut socket| async move { socket.write_all(b"\x0BMSH|^~\\&|half").await.unwrap() }).await;
    let err = send_message(addr, &wire(), quick()).await.unwrap_err();
    assert!(matches!(err, Hl7Error::TruncatedFrame), "{err:?}");
}

#[tokio::test]
async fn an_oversized_reply_is_refused() {
    let addr = raw_peer(|mut socket| async move {
        let _ = socket.write_all(&framed(&vec![b'x'; 4096])).await;
    })
    .await;
    let mut client = MllpClient::new(addr.to_string(), quick()).with_max_frame_size(1024);
    let err = client.send(&wire()).await.unwrap_err();
    assert!(matches!(err, Hl7Error::FrameTooLarge { limit: 1024 }), "{err:?}");
    assert!(!client.is_connected(), "a broken connection is not kept");
}

#[tokio::test]
async fn the_client_keeps_its_connection_and_reconnects_after_the_server_closes_it() {
    let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let record = Arc::clone(&peers);
    // Long enough that three quick sends fit in it even on a loaded machine.
    let options = MllpServerOptions { idle_timeout: Duration::from_millis(600), ..MllpServerOptions::default() };
    let server = spawn_server(
        move |frame: Vec<u8>, peer: SocketAddr| {
            record.lock().unwrap().insert(peer);
            async move { ack_handler(frame, peer).await }
        },
        options,
    )
    .await;
    let mut client = MllpClient::new(server.addr.to_string(), quick());
    for _ in 0..3 {
        let reply = client.send(&wire()).await.unwrap();
        assert!(reply.windows(7).any(|w| w == b"MSA|AA|"));
    }
    assert_eq!(peers.lock().unwrap().len(), 1, "three messages, one connection");
    assert!(client.is_connected());

    // The server drops the idle connection; the next send notices and reconnects once.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    client.send(&wire()).await.unwrap();
    assert_eq!(peers.lock().unwrap().len(), 2);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_server_survives_garbage_and_closes_on_oversized_frames() {
    let options = MllpServerOptions { max_frame_size: 512, ..MllpServerOptions::default() };
    // The handler decides what garbage gets: here, a fixed reply.
    let server = spawn_server(
        |frame: Vec<u8>, peer: SocketAddr| async move {
            match ack_handler(frame, peer).await {
                Some(reply) => Some(reply),
                None => Some(b"not hl7".to_vec()),
            }
        },
        options,
    )
    .await;
    let reply = send_message(server.addr, &[0x00, 0xFF, b'|', 0x7F], quick()).await.unwrap();
    assert_eq!(reply, b"not hl7");

    // Noise outside frames is skipped; the frame after it is answered.
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"noise\r\n").await.unwrap();
    socket.write_all(&framed(&wire())).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.contains(&0x1C) {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.windows(7).any(|w| w == b"MSA|AA|"));

    // Too large: the connection is closed, the server goes on.
    socket.write_all(&framed(&vec![b'x'; 2048])).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server closes a connection that sent an oversized frame");
    assert!(send_message(server.addr, &wire(), quick()).await.is_ok());
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn idle_connections_are_closed_and_shutdown_waits_for_the_reply_in_progress() {
    let options = MllpServerOptions { idle_timeout: Duration::from_millis(100), ..MllpServerOptions::default() };
    let server = spawn_server(
        |frame: Vec<u8>, peer: SocketAddr| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            ack_handler(frame, peer).await
        },
        options,
    )
    .await;

    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, 0, "an idle connection is closed by the server");

    // Shut down while a handler is working: its reply still goes out, then serve returns.
    let addr = server.addr;
    let pending = tokio::spawn(async move { send_message(addr, &wire(), quick_slow()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown.cancel();
    let reply = pending.await.unwrap().unwrap();
    assert!(reply.windows(7).any(|w| w == b"MSA|AA|"));
    tokio::time::timeout(Duration::from_secs(2), server.task).await.unwrap().unwrap().unwrap();
}

fn quick_slow() -> MllpTimeouts {
    MllpTimeouts { reply: Duration::from_secs(2), ..quick() }
}
