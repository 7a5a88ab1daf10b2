//! One provider's way out: hyper's pooled client over [`Connector`], a bound on the requests in
//! flight to each origin, the request's timeouts, and bounded reading of the answer.
//!
//! Connection reuse is hyper's: an HTTP/1.1 connection goes back to the pool only after one
//! complete, well-framed response was read to its end; a response dropped before its end, an
//! unsolicited byte on an idle connection, or a malformed message closes it. Interim (1xx)
//! responses before the final one are read and skipped (RFC 9110 15.2).
//!
//! Timeouts:
//! - the wait for a free slot (`max_connections_per_host`): at most `first_byte` (and `total`);
//! - `connect`: TCP, proxy tunnel and TLS of a new connection (`Connector`);
//! - `first_byte`: from sending the request to the final response's head;
//! - `idle`: the longest wait for the next chunk of a body;
//! - `total`: the whole attempt (a deadline every wait is cut to).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::client_socket::ClientSocket;
use crate::connect::{chain, Connector, ProxyPolicy};
use crate::decode::{BodyDecoder, DecodeLimits};
use crate::error::{ConfigError, NetError};
use crate::pump::{Framing, Pump};
use crate::tls::{client_config, TlsSettings};

/// How long a pooled connection may stay idle before it is closed rather than reused: many
/// servers close idle keep-alive connections after 5 to 60 seconds.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// HTTP/1.1 responses may carry at most this many header lines (hyper's default is 100).
const MAX_HEADER_LINES: usize = 256;
/// A request that waited this long for a slot checks that its caller is still there.
const WAITED: Duration = Duration::from_millis(1);

/// What a transport is built from; transports with equal settings can be shared.
pub struct TransportSettings {
    pub tls: TlsSettings,
    pub proxy: ProxyPolicy,
    pub connect_timeout: Duration,
    /// Requests in flight to one origin at once (HTTP/1.1: connections; HTTP/2: streams).
    pub max_in_flight: usize,
    /// The most bytes of a response head (status line and headers).
    pub max_header_bytes: usize,
}

pub struct Transport {
    client: Client<Connector, Full<Bytes>>,
    proxy: ProxyPolicy,
    max_in_flight: usize,
    max_header_bytes: usize,
    /// One slot pool per origin (`scheme://authority`), made when an endpoint is first resolved.
    origins: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Transport {
    /// Build a transport. Must run where a tokio runtime is current (hyper-util spawns its
    /// connection tasks on it).
    pub fn new(settings: TransportSettings) -> Result<Self, ConfigError> {
        let tls = client_config(&settings.tls)?;
        let connector = Connector::new(tls, settings.proxy.clone(), settings.connect_timeout);
        // hyper's read buffer is also the most a response head may take: a head that does not
        // end within it is "message head is too large". Its floor is 8 KiB.
        let max_buf = settings.max_header_bytes.max(8192);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(settings.max_in_flight)
            .http1_max_buf_size(max_buf)
            .http1_max_headers(MAX_HEADER_LINES)
            .http2_max_header_list_size(
                u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX),
            )
            .build(connector);
        Ok(Transport {
            client,
            proxy: settings.proxy,
            max_in_flight: settings.max_in_flight.max(1),
            max_header_bytes: max_buf,
            origins: Mutex::new(HashMap::new()),
        })
    }

    /// A URL resolved once: where requests go, the slots of its origin, and what a plain-HTTP
    /// proxy needs on each request.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, ConfigError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| ConfigError(format!("`{url}` is not a URL")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(ConfigError(format!(
                "`{url}`: expected an http:// or https:// URL"
            )));
        };
        if scheme != "http" && scheme != "https" {
            return Err(ConfigError(format!(
                "`{url}`: expected an http:// or https:// URL"
            )));
        }
        if authority.as_str().contains('@') {
            return Err(ConfigError(format!(
                "`{url}`: credentials do not belong in the URL"
            )));
        }
        let origin = format!("{scheme}://{authority}");
        let slots = {
            let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
            origins
                .entry(origin)
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_in_flight)))
                .clone()
        };
        // An http:// destination behind a proxy is sent to the proxy in absolute form, with
        // the proxy's credentials on the request itself (https goes through a tunnel instead).
        let proxy_auth = if scheme == "http" {
            self.proxy.route(&uri).and_then(|r| r.auth)
        } else {
            None
        };
        Ok(Endpoint {
            uri,
            slots,
            proxy_auth,
        })
    }

    /// Send a POST and wait for the final response's head. `caller`: where the gateway's own
    /// client is connected from (the listener's port, its address); a request that had to wait
    /// for a slot is not sent if that client has left meanwhile (many clients leaving at once
    /// free slots faster than their requests can be cancelled).
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        headers: HeaderMap,
        body: Bytes,
        timeouts: Timeouts,
        caller: Option<(u16, SocketAddr)>,
    ) -> Result<Head, NetError> {
        let started = Instant::now();
        let deadline = started + timeouts.total;
        let wait = timeouts.first_byte.min(timeouts.total);
        let permit = match tokio::time::timeout(wait, endpoint.slots.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed.
            Ok(Err(_)) => return Err(NetError::Connect("the transport is closed".into())),
            Err(_) => {
                return Err(NetError::PoolTimeout {
                    waited: wait,
                    limit: self.max_in_flight,
                })
            }
        };
        let pool_wait = started.elapsed();
        if let Some((port, peer)) = caller {
            if pool_wait >= WAITED && ClientSocket::gone(port, peer) {
                return Err(NetError::CallerGone);
            }
        }
        let mut request = Request::post(endpoint.uri.clone())
            .body(Full::new(body))
            .map_err(|e| NetError::Connect(e.to_string()))?;
        let sent = request.headers_mut();
        *sent = headers;
        sent.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        if let Some(auth) = &endpoint.proxy_auth {
            sent.insert(PROXY_AUTHORIZATION, auth.clone());
        }
        let now = Instant::now();
        let (limit, on_timeout) = if now + timeouts.first_byte <= deadline {
            (
                timeouts.first_byte,
                NetError::FirstByteTimeout(timeouts.first_byte),
            )
        } else {
            (
                deadline.saturating_duration_since(now),
                NetError::TotalTimeout(timeouts.total),
            )
        };
        let response = match tokio::time::timeout(limit, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return Err(self.request_error(&err)),
            Err(_) => return Err(on_timeout),
        };
        let (parts, body) = response.into_parts();
        Ok(Head {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Some(body),
            permit: Some(permit),
            deadline,
            timeouts,
            pool_wait,
        })
    }

    fn request_error(&self, err: &hyper_util::client::legacy::Error) -> NetError {
        if let Some(net) = cause::<NetError>(err) {
            return net.clone(); // the connector's own error (connect, TLS, proxy)
        }
        if let Some(tls) = cause::<rustls::Error>(err) {
            // A TLS 1.3 server that refuses the client certificate says so after the handshake,
            // on the first read: the request fails here, not in the connector.
            return NetError::Tls(tls.to_string());
        }
        if let Some(hyper_err) = cause::<hyper::Error>(err) {
            if hyper_err.is_parse_too_large() {
                return NetError::HeadersTooLarge(self.max_header_bytes);
            }
            if hyper_err.is_parse() || hyper_err.is_parse_status() {
                return NetError::Protocol(hyper_err.to_string());
            }
            if hyper_err.is_incomplete_message() || hyper_err.is_canceled() || hyper_err.is_closed()
            {
                return NetError::ClosedBeforeResponse;
            }
            if let Some(io) = cause::<std::io::Error>(err) {
                return NetError::Connect(io.to_string());
            }
            return NetError::Protocol(chain(hyper_err));
        }
        NetError::Connect(chain(err))
    }
}

/// The first error of type `T` in `err`'s chain of causes, looking inside I/O errors too
/// (`io::Error::source` skips the error it wraps).
pub(crate) fn cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|inner| cause::<T>(inner)) {
                return Some(found);
            }
        }
        next = current.source();
    }
    None
}

/// A URL requests are sent to (see [`Transport::endpoint`]).
pub struct Endpoint {
    uri: Uri,
    slots: Arc<Semaphore>,
    proxy_auth: Option<HeaderValue>,
}

impl Endpoint {
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// A response whose head has arrived. Its slot is held until the body is read or dropped.
pub struct Head {
    pub status: u16,
    pub headers: HeaderMap,
    body: Option<Incoming>,
    permit: Option<OwnedSemaphorePermit>,
    deadline: Instant,
    timeouts: Timeouts,
    /// How long the request waited for a free slot of its origin.
    pub pool_wait: Duration,
}

impl Head {
    /// The body, decoded as its `Content-Encoding` says, bounded by `limits`.
    pub fn into_body(mut self, limits: DecodeLimits) -> Result<Body, NetError> {
        let encoding = self
            .headers
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        let decoder = BodyDecoder::new(encoding, limits)?;
        Ok(Body {
            incoming: self.body.take(),
            decoder,
            _permit: self.permit.take(),
            deadline: self.deadline,
            timeouts: self.timeouts,
            finished: false,
        })
    }
}

/// A response body being read.
pub struct Body {
    incoming: Option<Incoming>,
    decoder: BodyDecoder,
    _permit: Option<OwnedSemaphorePermit>,
    deadline: Instant,
    timeouts: Timeouts,
    finished: bool,
}

impl Body {
    /// The next decoded chunk (`None` at the end), within the idle timeout and the deadline.
    /// Empty chunks are skipped.
    pub async fn next(&mut self) -> Result<Option<Bytes>, NetError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let Some(incoming) = self.incoming.as_mut() else {
                return Ok(None);
            };
            let now = Instant::now();
            let (limit, on_timeout) = if now + self.timeouts.idle < self.deadline {
                (
                    self.timeouts.idle,
                    NetError::IdleTimeout(self.timeouts.idle),
                )
            } else {
                (
                    self.deadline.saturating_duration_since(now),
                    NetError::TotalTimeout(self.timeouts.total),
                )
            };
            let frame = match tokio::time::timeout(limit, incoming.frame()).await {
                Err(_) => return Err(on_timeout),
                Ok(None) => {
                    self.finished = true;
                    let tail = self.decoder.finish()?;
                    self.release();
                    return Ok(if tail.is_empty() { None } else { Some(tail) });
                }
                Ok(Some(Err(err))) => return Err(body_error(&err)),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers: nothing the gateway uses
            };
            let decoded = self.decoder.feed(data)?;
            if !decoded.is_empty() {
                return Ok(Some(decoded));
            }
        }
    }

    /// The whole body, within the deadline (the idle timeout is not applied: `total` bounds a
    /// non-streamed answer, as a provider may think before the first byte of its body).
    pub async fn read_all(mut self) -> Result<Bytes, NetError> {
        self.timeouts.idle = self.timeouts.total;
        let mut parts: Vec<Bytes> = Vec::new();
        while let Some(chunk) = self.next().await? {
            parts.push(chunk);
        }
        Ok(match parts.len() {
            0 => Bytes::new(),
            1 => parts.pop().unwrap_or_default(),
            _ => Bytes::from(parts.concat()),
        })
    }

    /// The deadline of the attempt this body belongs to.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn release(&mut self) {
        self.incoming = None;
        self._permit = None;
    }
}

fn body_error(err: &hyper::Error) -> NetError {
    if let Some(tls) = cause::<rustls::Error>(err) {
        return NetError::BrokenBody(format!("TLS: {tls}"));
    }
    if err.is_incomplete_message() || err.is_closed() || err.is_canceled() {
        NetError::BrokenBody("the connection closed before the end of the body".into())
    } else if err.is_parse() {
        NetError::Protocol(err.to_string())
    } else {
        NetError::BrokenBody(chain(err))
    }
}

/// Header names a request may carry (checked once per name by `http`).
pub fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    let value = HeaderValue::from_str(value).map_err(|_| {
        format!("the value of header `{name}` is not valid (a line break or control character)")
    })?;
    Ok((name, value))
}

/// What the caller wants of an answer.
pub enum Want {
    /// The whole body, within these bounds.
    Whole(DecodeLimits),
    /// A successful (2xx) answer as a stream, framed and queued up to `bound` bytes; any other
    /// status is read whole (within `error_limits`), as its body is an error message.
    Stream {
        framing: Framing,
        bound: usize,
        limits: DecodeLimits,
        error_limits: DecodeLimits,
    },
}

pub enum Answer {
    Whole {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
    Stream {
        status: u16,
        headers: HeaderMap,
        pump: Pump,
    },
}

/// One request and its answer, as `want` asks; and how long it waited for a free slot.
pub async fn exchange(
    transport: &Transport,
    endpoint: &Endpoint,
    headers: HeaderMap,
    body: Bytes,
    timeouts: Timeouts,
    want: Want,
    caller: Option<(u16, SocketAddr)>,
) -> Result<(Answer, Duration), NetError> {
    let head = transport
        .send(endpoint, headers, body, timeouts, caller)
        .await?;
    let (status, pool_wait) = (head.status, head.pool_wait);
    let answer = match want {
        Want::Stream {
            framing,
            bound,
            limits,
            ..
        } if (200..300).contains(&status) => {
            let headers = head.headers.clone();
            let body = head.into_body(limits)?;
            Answer::Stream {
                status,
                headers,
                pump: Pump::spawn(body, framing, bound),
            }
        }
        Want::Whole(limits)
        | Want::Stream {
            error_limits: limits,
            ..
        } => {
            let headers = head.headers.clone();
            let body = head.into_body(limits)?.read_all().await?;
            Answer::Whole {
                status,
                headers,
                body,
            }
        }
    };
    Ok((answer, pool_wait))
}
