//! The transport against raw TCP servers that answer exactly as each test needs: interim
//! responses, a second unsolicited response, endless headers, bodies cut short, the per-origin
//! slots and their bounded wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollway_net::connect::ProxyPolicy;
use tollway_net::decode::DecodeLimits;
use tollway_net::pump::{Batch, Framing, Taken};
use tollway_net::tls::TlsSettings;
use tollway_net::transport::{exchange, Answer, Timeouts, Transport, TransportSettings, Want};
use tollway_net::NetError;

const TIMEOUTS: Timeouts = Timeouts {
    first_byte: Duration::from_secs(2),
    idle: Duration::from_secs(1),
    total: Duration::from_secs(5),
};
const LIMITS: DecodeLimits = DecodeLimits {
    max_output: Some(1 << 20),
    max_ratio: 100,
};

fn transport(max_in_flight: usize) -> Transport {
    Transport::new(TransportSettings {
        tls: TlsSettings::default(),
        proxy: ProxyPolicy::Direct,
        connect_timeout: Duration::from_secs(2),
        max_in_flight,
        max_header_bytes: 16 * 1024,
    })
    .unwrap()
}

/// The end of an answer that closes its connection (`serve` stops there).
const CLOSE: &[u8] = b"<close>";

/// What the server writes back for one request (its body, the connection's index).
type Respond = Arc<dyn Fn(&[u8], usize) -> Vec<u8> + Send + Sync>;

/// Serve each connection with `answer(request_body, connection_index)`: the bytes to write back
/// for one request; the connection is kept open for more, unless the answer ends with `CLOSE`.
async fn serve<F>(answer: F) -> (u16, Arc<AtomicUsize>)
where
    F: Fn(&[u8], usize) -> Vec<u8> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let seen = connections.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let index = seen.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move { handle(socket, index, answer).await });
        }
    });
    (port, connections)
}

async fn handle(mut socket: TcpStream, index: usize, answer: Respond) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() < end + 4 + length {
                break;
            }
            let body = buf[end + 4..end + 4 + length].to_vec();
            buf.drain(..end + 4 + length);
            let out = answer(&body, index);
            let (out, close) = match out.strip_suffix(CLOSE) {
                Some(rest) => (rest.to_vec(), true),
                None => (out, false),
            };
            if socket.write_all(&out).await.is_err() || close {
                return;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn ok(body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

async fn post(t: &Transport, port: u16, body: &str) -> Result<(u16, Bytes), NetError> {
    let endpoint = t
        .endpoint(&format!("http://127.0.0.1:{port}/v1/chat"))
        .unwrap();
    let (answer, _) = exchange(
        t,
        &endpoint,
        HeaderMap::new(),
        Bytes::from(body.to_owned()),
        TIMEOUTS,
        Want::Whole(LIMITS),
        None,
    )
    .await?;
    match answer {
        Answer::Whole { status, body, .. } => Ok((status, body)),
        Answer::Stream { .. } => unreachable!(),
    }
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let (port, connections) = serve(|body, _| ok(&[b"echo:", body].concat())).await;
    let t = transport(4);
    for i in 0..5 {
        let (status, body) = post(&t, port, &format!("r{i}")).await.unwrap();
        assert_eq!((status, &body[..]), (200, format!("echo:r{i}").as_bytes()));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_responses_are_skipped_and_each_caller_gets_its_own_answer() {
    let (port, connections) = serve(|body, _| {
        let mut out = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\n".to_vec();
        out.extend(ok(body));
        out
    })
    .await;
    let t = transport(1);
    for caller in ["alice", "bob", "carol"] {
        let (status, body) = post(&t, port, caller).await.unwrap();
        assert_eq!((status, &body[..]), (200, caller.as_bytes()));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the connection stays usable after interim responses"
    );
}

#[tokio::test]
async fn a_second_unsolicited_response_never_reaches_the_next_caller() {
    let (port, connections) = serve(|body, _| [ok(body), ok(b"stray answer")].concat()).await;
    let t = transport(1);
    for caller in ["alice", "bob", "carol"] {
        let (status, body) = post(&t, port, caller).await.unwrap();
        assert_eq!((status, &body[..]), (200, caller.as_bytes()));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "a connection with stray bytes is never reused"
    );
}

#[tokio::test]
async fn endless_headers_fail_at_the_bound() {
    let (port, _) = serve(|_, _| {
        let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..10_000 {
            out.extend(format!("x-filler-{i}: {}\r\n", "a".repeat(50)).as_bytes());
        }
        out
    })
    .await;
    let err = post(&transport(1), port, "x").await.unwrap_err();
    assert_eq!(err, NetError::HeadersTooLarge(16 * 1024));
}

#[tokio::test]
async fn a_body_cut_short_is_broken_and_the_next_request_gets_a_fresh_connection() {
    let (port, connections) = serve(|body, index| {
        if index == 0 {
            [
                &b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly part"[..],
                CLOSE,
            ]
            .concat()
        } else {
            ok(body)
        }
    })
    .await;
    let t = transport(1);
    let err = tokio::time::timeout(Duration::from_secs(3), post(&t, port, "first"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, NetError::BrokenBody(_)), "{err}");
    let (_, body) = post(&t, port, "second").await.unwrap();
    assert_eq!(&body[..], b"second");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_wait_for_a_slot_is_bounded_by_the_first_byte_timeout() {
    // The server never answers: the one slot stays taken.
    let (port, _) = serve(|_, _| Vec::new()).await;
    let t = Arc::new(transport(1));
    let endpoint = Arc::new(t.endpoint(&format!("http://127.0.0.1:{port}/v1")).unwrap());
    let timeouts = Timeouts {
        first_byte: Duration::from_millis(300),
        ..TIMEOUTS
    };
    let (t1, e1) = (t.clone(), endpoint.clone());
    let holding = Timeouts {
        first_byte: Duration::from_millis(1500),
        ..TIMEOUTS
    };
    let holder = tokio::spawn(async move {
        exchange(
            &t1,
            &e1,
            HeaderMap::new(),
            Bytes::new(),
            holding,
            Want::Whole(LIMITS),
            None,
        )
        .await
        .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let err = exchange(
        &t,
        &endpoint,
        HeaderMap::new(),
        Bytes::new(),
        timeouts,
        Want::Whole(LIMITS),
        None,
    )
    .await
    .map(|_| ())
    .unwrap_err();
    assert!(
        matches!(err, NetError::PoolTimeout { limit: 1, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        holder.await.unwrap(),
        Err(NetError::FirstByteTimeout(_))
    ));
}

#[tokio::test]
async fn a_stream_is_framed_as_events_and_ends_properly() {
    let (port, _) = serve(|_, _| {
        let events = "data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";
        format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{events}\r\n0\r\n\r\n", events.len()).into_bytes()
    })
    .await;
    let t = transport(1);
    let endpoint = t.endpoint(&format!("http://127.0.0.1:{port}/v1")).unwrap();
    let want = Want::Stream {
        framing: Framing::Sse {
            max_line_bytes: 1024,
        },
        bound: 1 << 16,
        limits: LIMITS,
        error_limits: LIMITS,
    };
    let (answer, _) = exchange(
        &t,
        &endpoint,
        HeaderMap::new(),
        Bytes::new(),
        TIMEOUTS,
        want,
        None,
    )
    .await
    .unwrap();
    let Answer::Stream { pump, .. } = answer else {
        panic!("expected a stream")
    };
    let mut data = Vec::new();
    loop {
        match pump.take() {
            Taken::Batch(Batch::Events(events)) => data.extend(events.into_iter().map(|e| e.data)),
            Taken::Batch(_) => panic!("events expected"),
            Taken::Empty => tokio::time::sleep(Duration::from_millis(5)).await,
            Taken::End(end) => {
                end.unwrap();
                break;
            }
        }
    }
    assert_eq!(data, ["{\"a\":1}", "{\"a\":2}", "[DONE]"]);
}
