//! The gateway's one HTTP client, for deliveries to Loomis and to the tools, the
//! simulator's callbacks and the operators' CLI: hyper's pooled client over
//! TCP or TLS (rustls, with the system's trusted roots and the Mozilla roots), and nothing
//! between the delivery layer and the wire. It never follows redirects and retries on its
//! own only a request it had not begun to send (a pooled connection the server had
//! closed): every attempt is the delivery layer's, counted, persisted and classified.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A pooled HTTP/1.1 and HTTP/2 (by ALPN over TLS) client; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<TimedConnector, Full<Bytes>>,
}

/// Connects directly or through the proxy the environment names for the destination
/// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, as curl reads them; never for
/// loopback), by an HTTP CONNECT tunnel (with `Proxy-Authorization` from the proxy URL's
/// user and password), then TLS end to end for `https`. The whole of connecting (TCP,
/// tunnel, TLS handshake) is bounded by the connect timeout: a server that accepts the
/// connection but stalls the handshake has seen no request, so its attempt must end as a
/// connect failure, not as an uncertain timeout.
#[derive(Clone)]
struct TimedConnector {
    direct: Connector,
    http: HttpConnector,
    tls: Arc<rustls::ClientConfig>,
    proxies: Arc<Matcher>,
    timeout: Duration,
}

impl TimedConnector {
    /// The proxy for `dst`, if one is configured and `dst` is not loopback.
    fn proxy_for(&self, dst: &http::Uri) -> Option<hyper_util::client::proxy::matcher::Intercept> {
        let host = dst.host()?.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return None;
        }
        self.proxies.intercept(dst)
    }
}

impl tower::Service<http::Uri> for TimedConnector {
    type Response = <Connector as tower::Service<http::Uri>>::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let connecting: Self::Future = match self.proxy_for(&dst) {
            None => Box::pin(self.direct.call(dst)),
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), self.http.clone());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let mut through = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*self.tls).clone())
                    .https_or_http()
                    .enable_all_versions()
                    .wrap_connector(tunnel);
                Box::pin(through.call(dst))
            }
        };
        let limit = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(format!(
                    "connecting (TCP and TLS handshake) took longer than {} ms",
                    limit.as_millis()
                )
                .into()),
            }
        })
    }
}

/// Why an exchange produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request never reached the receiver (no connection, refused, TLS failed).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The request may have reached the receiver.
    #[error("{0}")]
    Exchange(String),
    #[error("timed out")]
    Timeout,
}

impl HttpError {
    /// Whether the receiver cannot have seen the request.
    pub fn is_connect(&self) -> bool {
        matches!(self, HttpError::Connect(_))
    }
}

/// The error and its sources, joined by ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let next = inner.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        src = inner.source();
    }
    s
}

/// TLS with the Mozilla roots, the system's trusted roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured, for a private CA) and `extra` roots.
fn tls_config(extra: Vec<rustls::pki_types::CertificateDer<'static>>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let (_added, _ignored) = roots.add_parsable_certificates(extra);
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system certificate could not be loaded");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

impl Client {
    /// Pooled connections, closed when idle for `pool_idle`; connecting bounded by
    /// `connect_timeout`.
    pub fn new(connect_timeout: Duration, pool_idle: Duration) -> Client {
        Self::with_roots(connect_timeout, pool_idle, Vec::new())
    }

    /// [`Client::new`] that also trusts the `extra` root certificates.
    pub fn with_roots(
        connect_timeout: Duration,
        pool_idle: Duration,
        extra: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Client {
        Self::build(connect_timeout, pool_idle, extra, Matcher::from_env())
    }

    fn build(
        connect_timeout: Duration,
        pool_idle: Duration,
        extra: Vec<rustls::pki_types::CertificateDer<'static>>,
        proxies: Matcher,
    ) -> Client {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let tls = tls_config(extra);
        let connector = TimedConnector {
            direct: hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(http.clone()),
            http,
            tls: Arc::new(tls),
            proxies: Arc::new(proxies),
            timeout: connect_timeout,
        };
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool_idle)
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Client { inner }
    }

    /// POSTs `body` to `uri` with `headers`, and reads at most `max_body` bytes of the
    /// answer, all within `timeout`. A body that breaks off after the status line keeps
    /// what arrived, and says why in `cut_short`.
    pub async fn post(
        &self,
        uri: &http::Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        self.request(http::Method::POST, uri, headers, body, timeout, max_body)
            .await
    }

    /// [`Client::post`] with any method.
    pub async fn request(
        &self,
        method: http::Method,
        uri: &http::Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let mut req = http::Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = method;
        *req.uri_mut() = uri.clone();
        let h = req.headers_mut();
        h.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        // One deadline for the whole exchange. Once the status line is in, the answer is
        // known: a body that stalls past the deadline is cut short, not a timeout.
        let deadline = tokio::time::Instant::now() + timeout;
        // Which connection the request went to: none when the deadline came while still
        // connecting (or waiting for a pooled connection), so nothing was sent.
        let assigned = capture_connection(&mut req);
        let resp = match tokio::time::timeout_at(deadline, self.inner.request(req)).await {
            Err(_) if assigned.connection_metadata().is_none() => {
                return Err(HttpError::Connect(format!(
                    "no connection within the request's {} ms",
                    timeout.as_millis()
                )))
            }
            Err(_) => return Err(HttpError::Timeout),
            Ok(Err(e)) if e.is_connect() => return Err(HttpError::Connect(chain(&e))),
            Ok(Err(e)) => return Err(HttpError::Exchange(chain(&e))),
            Ok(Ok(resp)) => resp,
        };
        let (parts, mut incoming) = resp.into_parts();
        let mut body = Vec::new();
        let mut cut_short = None;
        while body.len() < max_body {
            let frame = http_body_util::BodyExt::frame(&mut incoming);
            match tokio::time::timeout_at(deadline, frame).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let room = max_body - body.len();
                        body.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Ok(Some(Err(e))) => {
                    cut_short = Some(chain(&e));
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    cut_short = Some(format!(
                        "the body did not arrive within {} ms",
                        timeout.as_millis()
                    ));
                    break;
                }
            }
        }
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            cut_short,
        })
    }
}

const USER_AGENT: &str = concat!("safepoint-gateway/", env!("CARGO_PKG_VERSION"));

/// An answer, its body cut at the reader's limit.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// Why the body ended before its end, if it did.
    pub cut_short: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client() -> Client {
        Client::new(Duration::from_secs(2), Duration::from_secs(30))
    }

    /// POSTs `{}` without extra headers.
    async fn send(
        c: &Client,
        url: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let uri = url.parse().unwrap();
        c.post(&uri, &[], b"{}".to_vec(), timeout, max_body).await
    }

    /// Reads up to the end of a request head; None if the connection ends first.
    async fn read_head(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        Some(String::from_utf8_lossy(&seen).to_lowercase())
    }

    /// A server for one connection: whatever the client sends first is answered with
    /// `answer`, and the connection is closed.
    async fn answer_and_close(answer: &'static [u8]) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
        });
        addr
    }

    /// A loopback server that reads each connection's request head, hands it over, and
    /// leaves the connection to `then`.
    async fn head_server<F, Fut>(
        then: F,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    )
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, received) = tokio::sync::mpsc::unbounded_channel();
        let then = Arc::new(then);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (heads, then) = (heads.clone(), then.clone());
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut s).await else {
                        return;
                    };
                    let _ = heads.send(head);
                    then(s).await;
                });
            }
        });
        (addr, received)
    }

    /// A server that answers each connection with `answer` once it read the request head,
    /// and hands over each request head it read.
    async fn server(
        answer: &'static [u8],
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        head_server(move |mut s| async move {
            let _ = s.write_all(answer).await;
            // Hold the connection open: the client decides when it is done.
            let _ = s.read(&mut [0u8; 1]).await;
        })
        .await
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/x");
        let e = send(&client(), &url, Duration::from_secs(2), 10)
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        assert!(e.to_string().starts_with("connection failed"), "{e}");
    }

    #[tokio::test]
    async fn https_to_a_server_that_speaks_no_tls_never_sends_the_request() {
        let addr = answer_and_close(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let e = send(
            &client(),
            &format!("https://{addr}/x"),
            Duration::from_secs(5),
            10,
        )
        .await
        .unwrap_err();
        assert!(e.is_connect(), "a failed TLS handshake sent nothing: {e:?}");
    }

    /// A TLS server for `localhost` and `loomis.test` whose certificate a private CA
    /// signed; returns its port and the CA's certificate.
    async fn tls_server() -> (u16, rustls::pki_types::CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "loomis.test".to_string()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if read_head(&mut s).await.is_none() {
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure")
                        .await;
                    let _ = s.flush().await;
                    let _ = s.read(&mut [0u8; 1]).await;
                });
            }
        });
        (port, ca.der().clone())
    }

    #[tokio::test]
    async fn https_delivers_to_a_trusted_server_and_refuses_a_wrong_name() {
        let (port, ca) = tls_server().await;
        let trusting =
            Client::with_roots(Duration::from_secs(2), Duration::from_secs(30), vec![ca]);
        let localhost = format!("https://localhost:{port}/x");
        let five = Duration::from_secs(5);
        let r = send(&trusting, &localhost, five, 100).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"secure"[..]));
        // The certificate names localhost, not 127.0.0.1.
        let e = send(&trusting, &format!("https://127.0.0.1:{port}/x"), five, 100)
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        assert!(e.to_string().contains("certificate"), "{e}");
        // Without the private CA the server is not trusted.
        let e = send(&client(), &localhost, five, 100).await.unwrap_err();
        assert!(
            e.is_connect() && e.to_string().contains("certificate"),
            "{e}"
        );
    }

    /// An https exchange with a server that accepts and then stalls the TLS handshake
    /// (it waits for a request head the ClientHello never completes).
    async fn stalled_handshake(connect_timeout: Duration, request_timeout: Duration) -> HttpError {
        let (addr, _) = server(b"").await;
        let c = Client::new(connect_timeout, Duration::from_secs(30));
        let url = format!("https://localhost:{}/x", addr.port());
        send(&c, &url, request_timeout, 10).await.unwrap_err()
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_is_a_connect_failure_within_the_connect_timeout() {
        // The exchange's own limit is far longer: a timeout there would be uncertain.
        let e = stalled_handshake(Duration::from_millis(300), Duration::from_secs(10)).await;
        assert!(e.is_connect(), "nothing was sent: {e:?}");
        assert!(e.to_string().contains("TLS handshake"), "{e}");
    }

    /// An HTTP CONNECT proxy that tunnels every destination to `to` (so names need no
    /// DNS), and hands over each CONNECT request head it read.
    async fn connect_proxy(to: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        // The client sends nothing more before the proxy's answer.
        let (addr, received) = head_server(move |mut s| async move {
            let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", to))
                .await
                .unwrap();
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
        })
        .await;
        (addr.port(), received)
    }

    #[tokio::test]
    async fn a_configured_proxy_tunnels_https_and_loopback_goes_direct() {
        let (port, ca) = tls_server().await;
        let (proxy, mut connects) = connect_proxy(port).await;
        let proxies = Matcher::builder()
            .all(format!("http://gw:s3cret@127.0.0.1:{proxy}"))
            .build();
        let c = Client::build(
            Duration::from_secs(2),
            Duration::from_secs(30),
            vec![ca],
            proxies,
        );
        // loomis.test resolves nowhere: only the proxy's tunnel reaches the server.
        let five = Duration::from_secs(5);
        let r = send(&c, "https://loomis.test/x", five, 100).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"secure"[..]));
        let head = connects.recv().await.unwrap();
        assert!(
            head.starts_with("connect loomis.test:443 http/1.1\r\n"),
            "{head}"
        );
        // Basic base64("gw:s3cret")
        assert!(
            head.contains("proxy-authorization: basic z3c6cznjcmv0"),
            "{head}"
        );
        // A loopback destination never goes through the proxy.
        let r = send(&c, &format!("https://localhost:{port}/x"), five, 100)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(
            connects.try_recv().is_err(),
            "loopback went through the proxy"
        );
    }

    #[tokio::test]
    async fn a_request_timeout_shorter_than_connecting_is_still_a_connect_failure() {
        // Connecting may take 10 s, the request only 300 ms.
        let e = stalled_handshake(Duration::from_secs(10), Duration::from_millis(300)).await;
        assert!(e.is_connect(), "nothing was sent: {e:?}");
        assert!(e.to_string().contains("no connection within"), "{e}");
    }

    #[tokio::test]
    async fn an_answer_that_never_comes_times_out_as_uncertain() {
        let (addr, _) = server(b"").await;
        let e = send(
            &client(),
            &format!("http://{addr}/x"),
            Duration::from_millis(300),
            10,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HttpError::Timeout), "{e:?}");
        assert!(!e.is_connect());
    }

    #[tokio::test]
    async fn the_body_is_read_up_to_the_limit_and_headers_are_sent() {
        let (addr, mut heads) = server(
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 10\r\nretry-after: 3\r\n\r\n0123456789",
        )
        .await;
        let headers = [(
            HeaderName::from_static("x-test"),
            HeaderValue::from_static("yes"),
        )];
        let r = client()
            .post(
                &format!("http://{addr}/x").parse().unwrap(),
                &headers,
                b"{}".to_vec(),
                Duration::from_secs(5),
                4,
            )
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (202, &b"0123"[..]));
        assert_eq!(r.headers["retry-after"], "3");
        assert!(r.cut_short.is_none());
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("post /x http/1.1\r\n"), "{head}");
        for line in [
            "x-test: yes",
            "accept: */*",
            "content-length: 2",
            &format!("host: {addr}"),
            "user-agent: safepoint-gateway/",
        ] {
            assert!(head.contains(line), "{line:?} in {head}");
        }
    }

    #[tokio::test]
    async fn a_body_that_stalls_past_the_deadline_keeps_the_status() {
        let (addr, _) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nstart").await;
        let url = format!("http://{addr}/x");
        let r = send(&client(), &url, Duration::from_millis(300), 1000)
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"start"[..]));
        assert!(r.cut_short.unwrap().contains("did not arrive"));
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_keeps_what_arrived_and_says_why() {
        // The connection closes 96 bytes early.
        let addr = answer_and_close(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf").await;
        let r = send(
            &client(),
            &format!("http://{addr}/x"),
            Duration::from_secs(5),
            1000,
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"half"[..]));
        assert!(r.cut_short.is_some());
    }
}
