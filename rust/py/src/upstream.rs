//! The upstream transport for Python: `Transport`, `Endpoint`, `Upstream` (a worker's bridge
//! to asyncio), `UpstreamCall` and `UpstreamStream`; conversions around `tollway_net`.
//!
//! A request is handed to the runtime thread (`tollway_net::runtime`) with the asyncio future
//! that will receive its answer; the GIL is not needed again until the answer is delivered.
//! Answers reach the event loop without the runtime thread ever taking the GIL: finished
//! exchanges go into a queue, and the first one into an empty queue writes a byte to a socket
//! pair whose read end the loop watches (`loop.add_reader(upstream.fileno(), upstream.drain)`).
//! `drain`, on the loop's thread, converts each answer and completes its future, so a burst of
//! answers costs one wake-up.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tollway_core::eventstream::DEFAULT_MAX_MESSAGE_BYTES;
use tollway_net::connect::ProxyPolicy;
use tollway_net::decode::DecodeLimits;
use tollway_net::pump::{Batch, Framing, Pump, Taken};
use tollway_net::tls::TlsSettings;
use tollway_net::transport::{self as net, exchange, Answer, Timeouts, TransportSettings, Want};
use tollway_net::NetError;

use crate::errors::{config_error, transport_error};
use crate::eventstream::EventStreamMessage;
use crate::sse::events_to_py;

/// The framings `Upstream.request` takes (`stream=`), as small integers.
const WHOLE: u8 = 0;
const BYTES: u8 = 1;
const SSE: u8 = 2;
const OPENAI_CHAT: u8 = 3;
const EVENT_STREAM: u8 = 4;

fn runtime() -> PyResult<Handle> {
    tollway_net::runtime::handle().map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))
}

/// One provider's way out (see `tollway_net::transport`): its pool, TLS, proxy and bounds.
#[pyclass(frozen, module = "tollway._native")]
pub struct Transport {
    inner: Arc<net::Transport>,
}

#[pymethods]
impl Transport {
    #[new]
    #[pyo3(signature = (*, http2, connect_timeout, max_connections, max_header_bytes, ca_pem=None, client_cert_pem=None, client_key_pem=None, proxy=None, proxy_username=None, proxy_password=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        http2: bool,
        connect_timeout: f64,
        max_connections: usize,
        max_header_bytes: usize,
        ca_pem: Option<Vec<u8>>,
        client_cert_pem: Option<Vec<u8>>,
        client_key_pem: Option<Vec<u8>>,
        proxy: Option<&str>,
        proxy_username: Option<&str>,
        proxy_password: Option<&str>,
    ) -> PyResult<Self> {
        let proxy = match proxy {
            None => ProxyPolicy::from_env(),
            Some("none") => ProxyPolicy::Direct,
            Some(url) => {
                ProxyPolicy::fixed(url, proxy_username, proxy_password).map_err(config_error)?
            }
        };
        let settings = TransportSettings {
            tls: TlsSettings {
                ca_pem,
                client_cert_pem,
                client_key_pem,
                http2,
            },
            proxy,
            connect_timeout: seconds(connect_timeout)?,
            max_in_flight: max_connections,
            max_header_bytes,
        };
        let handle = runtime()?;
        // hyper-util's client is built inside the runtime (it keeps a handle for its timers).
        let inner = py.detach(|| {
            let _guard = handle.enter();
            net::Transport::new(settings)
        });
        Ok(Transport {
            inner: Arc::new(inner.map_err(config_error)?),
        })
    }

    /// A URL requests can be sent to, resolved once.
    fn endpoint(&self, url: &str) -> PyResult<Endpoint> {
        let endpoint = self.inner.endpoint(url).map_err(config_error)?;
        Ok(Endpoint {
            transport: self.inner.clone(),
            inner: Arc::new(endpoint),
            url: url.to_owned(),
        })
    }

    /// Raise `ConfigError` if a provider's `proxy` (an URL, or `"none"`) cannot be used.
    #[staticmethod]
    #[pyo3(signature = (url, username=None, password=None))]
    fn check_proxy(url: &str, username: Option<&str>, password: Option<&str>) -> PyResult<()> {
        if url != "none" {
            ProxyPolicy::fixed(url, username, password).map_err(config_error)?;
        }
        Ok(())
    }

    /// Raise `ConfigError` if these PEM texts do not make a TLS client configuration (a
    /// certificate that does not parse, a key that does not match its certificate). The message
    /// never holds the texts.
    #[staticmethod]
    #[pyo3(signature = (ca_pem=None, client_cert_pem=None, client_key_pem=None))]
    fn check_tls(
        ca_pem: Option<Vec<u8>>,
        client_cert_pem: Option<Vec<u8>>,
        client_key_pem: Option<Vec<u8>>,
    ) -> PyResult<()> {
        tollway_net::tls::client_config(&TlsSettings {
            ca_pem,
            client_cert_pem,
            client_key_pem,
            http2: true,
        })
        .map(|_| ())
        .map_err(config_error)
    }

    /// How many trusted roots the system provides (0: only a provider's `ca_file` works).
    #[staticmethod]
    fn system_root_count() -> usize {
        tollway_net::tls::system_root_count()
    }
}

#[pyclass(frozen, module = "tollway._native")]
pub struct Endpoint {
    transport: Arc<net::Transport>,
    inner: Arc<net::Endpoint>,
    url: String,
}

#[pymethods]
impl Endpoint {
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    fn __repr__(&self) -> String {
        format!("Endpoint({:?})", self.url)
    }
}

enum Done {
    Answer {
        future: Py<PyAny>,
        result: Result<(Answer, Duration), NetError>,
    },
    Ready {
        future: Py<PyAny>,
    },
}

struct Bridge {
    done: Mutex<Vec<Done>>,
    signal: UnixStream,
    wake: UnixStream,
}

impl Bridge {
    fn push(&self, item: Done) {
        let first = {
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            done.push(item);
            done.len() == 1
        };
        if first {
            // A full socket buffer means a wake-up is already pending: nothing is lost.
            let _ = (&self.signal).write(&[1]);
        }
    }
}

/// A worker's bridge between its event loop and the runtime thread. One per event loop.
#[pyclass(frozen, module = "tollway._native")]
pub struct Upstream {
    bridge: Arc<Bridge>,
    handle: Handle,
}

#[pymethods]
impl Upstream {
    #[new]
    fn new() -> PyResult<Self> {
        let (signal, wake) = UnixStream::pair()?;
        signal.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        Ok(Upstream {
            bridge: Arc::new(Bridge {
                done: Mutex::new(Vec::new()),
                signal,
                wake,
            }),
            handle: runtime()?,
        })
    }

    /// The descriptor the event loop watches for finished exchanges.
    fn fileno(&self) -> i32 {
        self.bridge.wake.as_raw_fd()
    }

    /// Deliver every finished exchange to its future (the event loop's reader callback).
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut sink = [0u8; 256];
        while matches!((&self.bridge.wake).read(&mut sink), Ok(n) if n > 0) {}
        let done = std::mem::take(&mut *self.bridge.done.lock().unwrap_or_else(|p| p.into_inner()));
        for item in done {
            match item {
                Done::Answer { future, result } => {
                    let future = future.into_bound(py);
                    let outcome = match result {
                        Ok((answer, pool_wait)) => {
                            answer_to_py(py, answer, pool_wait).map(|v| ("set_result", v))
                        }
                        Err(err) => Ok((
                            "set_exception",
                            transport_error(err)
                                .into_value(py)
                                .into_bound(py)
                                .into_any(),
                        )),
                    };
                    let (method, value) = outcome?;
                    // A future cancelled meanwhile refuses a result: its caller has gone.
                    let _ = future.call_method1(method, (value,));
                }
                Done::Ready { future } => {
                    let _ = future
                        .bind(py)
                        .call_method1(pyo3::intern!(py, "set_result"), (py.None(),));
                }
            }
        }
        Ok(())
    }

    /// Send a POST to `endpoint`; `future` receives `(status, headers, body, pool_wait_s)`,
    /// where `body` is `bytes`, or an `UpstreamStream` for a successful answer when `stream`
    /// names a framing; or the `TransportError` that ended the exchange.
    #[pyo3(signature = (future, endpoint, headers, body, first_byte, idle, total, max_body_bytes, max_ratio, *, stream=WHOLE, stream_bound=1 << 18, strip_usage=false, max_line_bytes=tollway_core::sse::DEFAULT_MAX_LINE_BYTES, caller=None))]
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        future: Py<PyAny>,
        endpoint: &Endpoint,
        headers: Vec<(String, String)>,
        body: PyBackedBytes,
        first_byte: f64,
        idle: f64,
        total: f64,
        max_body_bytes: u64,
        max_ratio: u64,
        stream: u8,
        stream_bound: usize,
        strip_usage: bool,
        max_line_bytes: usize,
        caller: Option<(u16, String, u16)>,
    ) -> PyResult<UpstreamCall> {
        // Where the gateway's client is connected from: a request that waits for a slot is not
        // sent once that client has left.
        let caller = caller.and_then(|(port, ip, peer_port)| {
            ip.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| (port, std::net::SocketAddr::new(ip, peer_port)))
        });
        let mut map = HeaderMap::with_capacity(headers.len() + 2);
        for (name, value) in &headers {
            let (name, value) = net::header(name, value).map_err(PyValueError::new_err)?;
            map.append(name, value);
        }
        let timeouts = Timeouts {
            first_byte: seconds(first_byte)?,
            idle: seconds(idle)?,
            total: seconds(total)?,
        };
        let whole = DecodeLimits {
            max_output: Some(max_body_bytes),
            max_ratio,
        };
        let streamed = DecodeLimits {
            max_output: None,
            max_ratio,
        };
        let framing = match stream {
            WHOLE => None,
            BYTES => Some(Framing::Bytes),
            SSE => Some(Framing::Sse { max_line_bytes }),
            OPENAI_CHAT => Some(Framing::OpenAIChat {
                strip_usage,
                max_line_bytes,
                max_pending_bytes: tollway_core::chat_stream::DEFAULT_MAX_PENDING_BYTES,
            }),
            EVENT_STREAM => Some(Framing::EventStream {
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            }),
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown stream framing {other}"
                )))
            }
        };
        let want = match framing {
            None => Want::Whole(whole),
            Some(framing) => Want::Stream {
                framing,
                bound: stream_bound,
                limits: streamed,
                error_limits: whole,
            },
        };
        let body = Bytes::from_owner(body);
        let transport = endpoint.transport.clone();
        let target = endpoint.inner.clone();
        let bridge = self.bridge.clone();
        let task = self.handle.spawn(async move {
            let result = exchange(&transport, &target, map, body, timeouts, want, caller).await;
            bridge.push(Done::Answer { future, result });
        });
        Ok(UpstreamCall { task })
    }

    /// Complete `future` once `stream` has something to take (at once if it has).
    fn wait(&self, future: Py<PyAny>, stream: &UpstreamStream) {
        let bridge = self.bridge.clone();
        stream
            .pump
            .wake_when_ready(Box::new(move || bridge.push(Done::Ready { future })));
    }
}

/// A client's TCP connection to this process (see `tollway_net::client_socket`), for keeping
/// pace with a client that reads slowly.
#[pyclass(frozen, module = "tollway._native")]
pub struct ClientSocket {
    inner: tollway_net::client_socket::ClientSocket,
}

#[pymethods]
impl ClientSocket {
    /// The socket connected from `peer_ip:peer_port` to this process's `local_port`, or `None`
    /// (not found, not TCP, not Linux).
    #[staticmethod]
    fn find(
        py: Python<'_>,
        local_port: u16,
        peer_ip: &str,
        peer_port: u16,
    ) -> Option<ClientSocket> {
        let ip: std::net::IpAddr = peer_ip.parse().ok()?;
        let peer = std::net::SocketAddr::new(ip, peer_port);
        py.detach(|| tollway_net::client_socket::ClientSocket::find(local_port, peer))
            .map(|inner| ClientSocket { inner })
    }

    /// `(written, queued)`: bytes the application has written to the socket since it opened,
    /// and how many of them the client has not acknowledged yet; `None` once it closed.
    fn state(&self) -> Option<(u64, u64)> {
        self.inner.state()
    }
}

/// An exchange in flight.
#[pyclass(frozen, module = "tollway._native")]
pub struct UpstreamCall {
    task: JoinHandle<()>,
}

#[pymethods]
impl UpstreamCall {
    /// Abandon the exchange: the request is not sent if it is still waiting, and a connection
    /// in use for it is closed (never returned to the pool half-read).
    fn cancel(&self) {
        self.task.abort();
    }
}

/// A successful answer being streamed (see `tollway_net::pump`). Dropping it, or `close`,
/// stops reading and closes the provider's connection if the answer was not read to its end.
#[pyclass(frozen, module = "tollway._native")]
pub struct UpstreamStream {
    pump: Pump,
    ended: std::sync::atomic::AtomicBool,
}

#[pymethods]
impl UpstreamStream {
    /// What arrived since the last call: `bytes` (bytes framings), a list of `SseEvent`, or a
    /// list of `EventStreamMessage`; `None` when nothing is ready (then see `ended`). Raises
    /// the `TransportError` that ended the stream, once everything before it was taken.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.pump.take() {
            Taken::Batch(Batch::Bytes(bytes)) => Ok(Some(PyBytes::new(py, &bytes).into_any())),
            Taken::Batch(Batch::Events(events)) => {
                Ok(Some(PyList::new(py, events_to_py(py, events))?.into_any()))
            }
            Taken::Batch(Batch::Messages(messages)) => Ok(Some(
                PyList::new(py, messages.into_iter().map(EventStreamMessage::from_core))?
                    .into_any(),
            )),
            Taken::Empty => Ok(None),
            Taken::End(Ok(())) => {
                self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(None)
            }
            Taken::End(Err(err)) => {
                self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(transport_error(err))
            }
        }
    }

    /// The stream reached its end and everything was taken.
    #[getter]
    fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// OpenAI relay: `data: [DONE]` arrived.
    #[getter]
    fn done(&self) -> bool {
        self.pump.with_chat(|chat| chat.done()).unwrap_or(false)
    }

    /// OpenAI relay: the stream's last `usage` object, as JSON text.
    #[getter]
    fn usage_json(&self) -> Option<String> {
        self.pump
            .with_chat(|chat| chat.usage_json().map(str::to_owned))
            .flatten()
    }

    /// OpenAI relay: bytes relayed whose output text was not taken yet.
    #[getter]
    fn pending_text_bytes(&self) -> usize {
        self.pump
            .with_chat(|chat| chat.pending_bytes())
            .unwrap_or(0)
    }

    /// OpenAI relay: the output text relayed since the last call.
    fn take_output_text(&self, py: Python<'_>) -> String {
        let mut text = String::new();
        py.detach(|| self.pump.with_chat(|chat| chat.take_output_text(&mut text)));
        text
    }

    /// Stop reading: the provider's connection is closed unless the answer was read to its end.
    fn close(&self) {
        self.pump.close();
    }

    /// Event stream: bytes of a message that never completed.
    #[getter]
    fn partial_message_bytes(&self) -> usize {
        self.pump.partial_message_bytes()
    }
}

fn answer_to_py<'py>(
    py: Python<'py>,
    answer: Answer,
    pool_wait: Duration,
) -> PyResult<Bound<'py, PyAny>> {
    let (status, headers, body) = match answer {
        Answer::Whole {
            status,
            headers,
            body,
        } => (status, headers, PyBytes::new(py, &body).into_any()),
        Answer::Stream {
            status,
            headers,
            pump,
        } => {
            let stream = UpstreamStream {
                pump,
                ended: false.into(),
            };
            (status, headers, Bound::new(py, stream)?.into_any())
        }
    };
    let dict = PyDict::new(py);
    for name in headers.keys() {
        // Repeated headers joined with ", " (RFC 9110 5.3); values as Latin-1, as HTTP has them.
        let mut joined = String::new();
        for (i, value) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.push_str(", ");
            }
            joined.extend(value.as_bytes().iter().map(|&b| char::from(b)));
        }
        dict.set_item(PyString::new(py, name.as_str()), joined)?;
    }
    Ok(PyTuple::new(
        py,
        [
            status.into_pyobject(py)?.into_any(),
            dict.into_any(),
            body,
            pool_wait.as_secs_f64().into_pyobject(py)?.into_any(),
        ],
    )?
    .into_any())
}

fn seconds(value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{value} is not a duration in seconds")))
}

/// Give memory the allocator holds free back to the system (glibc's `malloc_trim`: every
/// arena, the upstream thread's included, and free pages inside the heap, not only its top).
/// Returns whether anything was released. A no-op elsewhere.
#[pyfunction]
pub fn release_memory(py: Python<'_>) -> bool {
    py.detach(trim)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own arenas.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
