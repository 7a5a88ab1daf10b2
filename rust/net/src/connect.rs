//! Opening a connection to a provider: TCP (no Nagle delay), through a proxy when one applies,
//! then TLS for `https`. The HTTP exchange itself is hyper's.
//!
//! Proxies (`ProxyPolicy`): the environment's `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` /
//! `NO_PROXY` (and their lower-case forms, as curl reads them), a provider's own proxy URL, or
//! none. An `https` destination goes through an HTTP `CONNECT` tunnel (then TLS to the provider
//! inside it, so the proxy sees only the host name); an `http` destination is sent to the proxy
//! in absolute form with `Proxy-Authorization` on each request. The tunnel is opened with
//! hyper's own HTTP/1.1 client connection and its upgrade, so a refusal keeps the proxy's
//! status. Only `http://` proxies are supported: TLS to the proxy itself and SOCKS are refused
//! with a clear error, never bypassed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HOST, PROXY_AUTHORIZATION};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::upgrade::Upgraded;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower_service::Service;

use crate::error::{ConfigError, NetError};

/// A proxy to use for one destination.
#[derive(Clone)]
pub struct ProxyRoute {
    /// `http://host:port/` (no userinfo).
    pub uri: Uri,
    /// `Proxy-Authorization` (marked sensitive: never printed by `http`'s Debug).
    pub auth: Option<HeaderValue>,
}

impl ProxyRoute {
    /// The proxy as errors name it: scheme, host and port only.
    fn name(&self) -> String {
        let authority = self.uri.authority().map_or("", |a| a.as_str());
        format!("{}://{authority}", self.uri.scheme_str().unwrap_or("http"))
    }
}

/// Which proxy a transport's connections go through.
#[derive(Clone)]
pub enum ProxyPolicy {
    /// Connect directly.
    Direct,
    /// The same proxy for every destination.
    Fixed(ProxyRoute),
    /// From the process environment, read once when the transport is built.
    Env(Arc<Matcher>),
}

impl ProxyPolicy {
    /// A provider's `proxy` setting: an `http://host[:port]` URL, with the credentials given
    /// apart (never in the URL, where they would show in errors and logs).
    pub fn fixed(
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let uri: Uri = url.parse().map_err(|_| {
            ConfigError(format!(
                "`proxy`: `{url}` is not a URL; expected `http://host:port`"
            ))
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(ConfigError(format!(
                    "`proxy`: only `http://` proxies are supported, not `{other}://`"
                )))
            }
            None => {
                return Err(ConfigError(format!(
                    "`proxy`: `{url}` has no scheme; expected `http://host:port`"
                )))
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(ConfigError(format!(
                "`proxy`: `{url}` has no host; expected `http://host:port`"
            )));
        };
        if authority.as_str().contains('@') {
            return Err(ConfigError(
                "`proxy`: credentials go in `proxy_username` and `proxy_password`, not in the URL"
                    .into(),
            ));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(ConfigError(format!(
                "`proxy`: `{url}` has a path; expected `http://host:port`"
            )));
        }
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ConfigError(format!("`proxy`: {e}")))?;
        let auth = match (username, password) {
            (None, None) => None,
            (Some(user), password) => Some(basic_auth(user, password.unwrap_or(""))?),
            (None, Some(_)) => {
                return Err(ConfigError(
                    "`proxy_password` needs `proxy_username`".into(),
                ))
            }
        };
        Ok(ProxyPolicy::Fixed(ProxyRoute { uri, auth }))
    }

    pub fn from_env() -> Self {
        ProxyPolicy::Env(Arc::new(Matcher::from_env()))
    }

    /// The proxy for `dst`, if any.
    pub fn route(&self, dst: &Uri) -> Option<ProxyRoute> {
        match self {
            ProxyPolicy::Direct => None,
            ProxyPolicy::Fixed(route) => Some(route.clone()),
            ProxyPolicy::Env(matcher) => matcher.intercept(dst).map(|found| ProxyRoute {
                uri: found.uri().clone(),
                auth: found.basic_auth().cloned(),
            }),
        }
    }
}

fn basic_auth(user: &str, password: &str) -> Result<HeaderValue, ConfigError> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| {
        ConfigError(
            "`proxy_username` or `proxy_password` holds a character not allowed in a header".into(),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Opens connections for hyper's client: the `Service<Uri>` it calls for each new connection.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    tcp: HttpConnector,
    tls: TlsConnector,
    proxy: ProxyPolicy,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        proxy: ProxyPolicy,
        connect_timeout: Duration,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        // `https` URIs reach this connector too: TLS is added here, after any tunnel.
        tcp.enforce_http(false);
        // Without it a request written in two segments waits for the peer's delayed ACK
        // (40 ms on Linux) before its second part leaves.
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        // The whole connect (TCP, proxy tunnel, TLS) is bounded in `connect`.
        tcp.set_connect_timeout(None);
        Connector {
            inner: Arc::new(ConnectorInner {
                tcp,
                tls: TlsConnector::from(tls),
                proxy,
                connect_timeout,
            }),
        }
    }
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = NetError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, NetError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), NetError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let limit = inner.connect_timeout;
            match tokio::time::timeout(limit, inner.connect(dst)).await {
                Ok(result) => result,
                Err(_) => Err(NetError::ConnectTimeout(limit)),
            }
        })
    }
}

impl ConnectorInner {
    async fn connect(&self, dst: Uri) -> Result<Conn, NetError> {
        let https = dst.scheme_str() == Some("https");
        let host = dst
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        match self.proxy.route(&dst) {
            None => {
                let tcp = self
                    .tcp
                    .clone()
                    .call(dst)
                    .await
                    .map_err(|e| NetError::Connect(chain(&e)))?;
                if https {
                    self.tls(tcp.into_inner(), &host).await
                } else {
                    Ok(Conn::Plain {
                        io: tcp,
                        proxied: false,
                    })
                }
            }
            Some(route) => {
                if route.uri.scheme_str() != Some("http") {
                    // `HTTPS_PROXY=https://...` or `socks5://...` from the environment.
                    return Err(NetError::Proxy {
                        proxy: route.name(),
                        reason: "only `http://` proxies are supported".into(),
                    });
                }
                if https {
                    let tunnel = self.tunnel(&route, &dst).await?;
                    self.tls(TokioIo::new(tunnel), &host).await
                } else {
                    let tcp = self
                        .tcp
                        .clone()
                        .call(route.uri.clone())
                        .await
                        .map_err(|e| NetError::Proxy {
                            proxy: route.name(),
                            reason: chain(&e),
                        })?;
                    Ok(Conn::Plain {
                        io: tcp,
                        proxied: true,
                    })
                }
            }
        }
    }

    /// A `CONNECT` tunnel through `route` to `dst`, made with hyper's own HTTP/1.1 client
    /// connection (so a refusal keeps the proxy's status, which the error names).
    async fn tunnel(&self, route: &ProxyRoute, dst: &Uri) -> Result<Upgraded, NetError> {
        let proxy = route.name();
        let failed = |reason: String| NetError::Proxy {
            proxy: proxy.clone(),
            reason,
        };
        let tcp = self
            .tcp
            .clone()
            .call(route.uri.clone())
            .await
            .map_err(|e| failed(format!("could not connect to the proxy: {}", chain(&e))))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(tcp)
                .await
                .map_err(|e| failed(format!("the CONNECT request failed: {}", chain(&e))))?;
        tokio::spawn(connection.with_upgrades());
        let authority = format!(
            "{}:{}",
            dst.host().unwrap_or_default(),
            dst.port_u16().unwrap_or(443)
        );
        let mut request = Request::connect(authority.as_str())
            .header(HOST, authority.as_str())
            .body(Empty::new())
            .map_err(|e| failed(format!("the destination is not valid for CONNECT: {e}")))?;
        if let Some(auth) = &route.auth {
            request
                .headers_mut()
                .insert(PROXY_AUTHORIZATION, auth.clone());
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(format!("the CONNECT request failed: {}", chain(&e))))?;
        match response.status() {
            status if status.is_success() => hyper::upgrade::on(response)
                .await
                .map_err(|e| failed(format!("the tunnel failed: {}", chain(&e)))),
            StatusCode::PROXY_AUTHENTICATION_REQUIRED => Err(failed(
                "the proxy wants credentials it was not given, or refused them (407 Proxy Authentication Required)".into(),
            )),
            status => Err(failed(format!("the proxy refused the tunnel: it answered {status} to CONNECT"))),
        }
    }

    async fn tls<S>(&self, tcp: S, host: &str) -> Result<Conn, NetError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| NetError::Tls(format!("`{host}` is not a valid TLS server name")))?;
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| NetError::Tls(chain(&e)))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Conn::Tls {
            io: Box::new(TokioIo::new(stream)),
            h2,
        })
    }
}

/// An error and its causes, `: `-joined (hyper-util's connect errors say "tcp connect error"
/// and keep the reason, such as "Connection refused (os error 111)", in their source).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// What a TLS connection is read and written through.
pub trait Io: Read + Write + Unpin + Send {}
impl<T: Read + Write + Unpin + Send> Io for T {}

/// A connection to a provider (or to a proxy, for `http` destinations behind one).
pub enum Conn {
    Plain {
        io: TokioIo<TcpStream>,
        proxied: bool,
    },
    /// TLS over TCP, or over a proxy's tunnel. Boxed: a TLS session is large, a plain stream
    /// small (one allocation per connection).
    Tls { io: Box<dyn Io>, h2: bool },
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain { proxied, .. } => Connected::new().proxy(*proxied),
            Conn::Tls { h2: true, .. } => Connected::new().negotiated_h2(),
            Conn::Tls { h2: false, .. } => Connected::new(),
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain { io, .. } => Pin::new(io).poll_read(cx, buf),
            Conn::Tls { io, .. } => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain { io, .. } => Pin::new(io).poll_write(cx, buf),
            Conn::Tls { io, .. } => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain { io, .. } => Pin::new(io).poll_flush(cx),
            Conn::Tls { io, .. } => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain { io, .. } => Pin::new(io).poll_shutdown(cx),
            Conn::Tls { io, .. } => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain { io, .. } => io.is_write_vectored(),
            Conn::Tls { io, .. } => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain { io, .. } => Pin::new(io).poll_write_vectored(cx, bufs),
            Conn::Tls { io, .. } => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_proxy_urls_are_checked() {
        assert!(ProxyPolicy::fixed("http://proxy:3128", None, None).is_ok());
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "proxy:3128",
            "http://u:p@proxy:3128",
            "http://p:1/x",
        ] {
            assert!(ProxyPolicy::fixed(bad, None, None).is_err(), "{bad}");
        }
        assert!(ProxyPolicy::fixed("http://proxy:3128", None, Some("pw")).is_err());
        let ProxyPolicy::Fixed(route) =
            ProxyPolicy::fixed("http://proxy:3128", Some("gw"), Some("pw")).unwrap()
        else {
            panic!("expected a fixed proxy")
        };
        assert_eq!(route.auth.unwrap().to_str().unwrap(), "Basic Z3c6cHc=");
        assert_eq!(route.uri.to_string(), "http://proxy:3128/");
    }
}
