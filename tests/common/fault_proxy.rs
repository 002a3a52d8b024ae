//! Fault-injecting HTTP/1.1 reverse proxy for tests.
//!
//! Sits between an object_store client and a local object-store emulator (moto for S3,
//! fake-gcs-server for GCS) and, for the requests a [`Rule`] selects, misbehaves in one of
//! the ways a real store or network does: error statuses, requests that are never answered,
//! bodies that hang, drip, get cut short, get reset, or come back corrupted. Requests no rule
//! selects are forwarded faithfully.
//!
//! Needs (as dev-dependencies):
//! ```toml
//! tokio = { version = "1.50", features = ["rt", "macros", "net", "time", "sync"] }
//! hyper = { version = "1", features = ["http1", "server", "client"] }
//! hyper-util = { version = "0.1", features = ["tokio"] }
//! http-body-util = "0.1"
//! ```
//! (tokio >= 1.50 for `TcpStream::set_zero_linger`; `Bytes` and the `http` types come from
//! hyper's re-exports, so neither `bytes` nor `http` is a direct dependency.)
//!
//! Design notes:
//! - Request and response bodies are buffered. Test objects are at most a few MB, and having
//!   the whole upstream body in hand is what lets a fault cut it in half, flip its bytes or
//!   drip it out at a fixed rate while still announcing the real `Content-Length`.
//! - Each upstream request uses a fresh upstream connection. No pool means no stale pooled
//!   connection can ever turn into a spurious error that a test would blame on a fault.
//! - The client side is a normal hyper HTTP/1.1 server, so keep-alive and pooled clients
//!   (reqwest, object_store) work; faults that break a connection break only that one.
//! - Everything a connection does (its handler, the fault timers, the response body) is polled
//!   inside that connection's task, and that task races the connection against a per-connection
//!   kill switch and the proxy-wide shutdown signal. Dropping the task therefore releases every
//!   hung request at once, which is what keeps test teardown from hanging.

// Test binaries that include this module use only part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Sleep};

/// How long a cut-short body waits between handing its last bytes to hyper and killing the
/// connection. hyper flushes what it was given as soon as the body returns `Pending`, so this
/// only has to outlast one trip through the kernel on loopback; it is generous so that the
/// client has read the status line and headers before the FIN/RST arrives, which makes the
/// failure show up as a *body* error rather than a request error.
const CUT_GRACE: Duration = Duration::from_millis(100);

/// Which requests a [`Rule`] applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// Every request.
    Any,
    /// Requests whose path+query contains this string, either as sent or percent-decoded
    /// (object_store's GCS client sends `chunks/ab/x-y` as `chunks%2Fab%2Fx%2Dy`).
    PathContains(String),
    /// Requests with this method (case-insensitive, e.g. "GET", "HEAD", "PUT").
    Method(String),
    /// Requests with this method whose path+query contains the string (as for
    /// `PathContains`).
    MethodAndPath(String, String),
    /// The n-th request the proxy received (1-based, counted over all requests, matched or
    /// not, across all connections).
    NthRequest(usize),
}

impl Matcher {
    fn matches(&self, method: &str, target: &Target, nth: usize) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::PathContains(s) => target.contains(s),
            Matcher::Method(m) => method.eq_ignore_ascii_case(m),
            Matcher::MethodAndPath(m, s) => method.eq_ignore_ascii_case(m) && target.contains(s),
            Matcher::NthRequest(n) => nth == *n,
        }
    }
}

/// A request's path+query, as sent and percent-decoded.
struct Target<'a> {
    raw: &'a str,
    decoded: String,
}

impl<'a> Target<'a> {
    fn new(raw: &'a str) -> Target<'a> {
        Target {
            raw,
            decoded: percent_decode(raw),
        }
    }

    fn contains(&self, needle: &str) -> bool {
        self.raw.contains(needle) || self.decoded.contains(needle)
    }
}

/// `%XX` -> byte; anything else (including a malformed `%`) is kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // hi and lo are < 16, so this fits in a byte.
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What to do to a selected request.
///
/// Faults that spoil a body (`HeadersThenHang`, `SlowDrip`, `ResetMidBody`, `TruncatedBody`,
/// `WrongBytes`) have nothing to spoil on a response without a body (HEAD, 204, 304, or an
/// empty upstream body): such responses are forwarded unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status without contacting upstream. The body is a small S3-style XML
    /// error (`NoSuchKey` for 404, `AccessDenied` for 403, ...), or a GCS JSON-API error for
    /// `/storage/v1/...` paths. (GCS object GETs go through its XML API, whose errors are
    /// S3-shaped XML too.) An invalid status code becomes 500.
    Status(u16),
    /// Read the request, then never send a byte; the connection stays open until the proxy
    /// is dropped (or the client gives up).
    NeverAnswer,
    /// Forward upstream, send the upstream status and headers (with the real
    /// `Content-Length`), then never send the body.
    HeadersThenHang,
    /// Forward upstream and send the real body at about this many bytes per second
    /// (never faster: each chunk waits its share of time before it is sent).
    SlowDrip { bytes_per_sec: u64 },
    /// Forward upstream, send the headers and the first half of the body, then reset the
    /// TCP connection (SO_LINGER 0, so the close sends RST).
    ResetMidBody,
    /// Forward upstream, send the headers with the real `Content-Length` and the first half
    /// of the body, then close the connection cleanly (FIN).
    TruncatedBody,
    /// Forward upstream, send the real status and headers and a body of the same length with
    /// every byte XOR 0xFF.
    WrongBytes,
    /// Forward upstream, then answer 200 with the upstream's headers (so ETag, Last-Modified
    /// and the like are still there for the client to parse) but `Content-Length: 0`, no
    /// `Content-Range` and an empty body.
    EmptyOk,
    /// Wait this long, then forward normally.
    Delay(Duration),
}

/// A matcher, a fault, and how many more times the rule may fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matcher: Matcher,
    pub fault: Fault,
    /// `None`: forever. `Some(n)`: the first n requests that match, then the rule is inert.
    pub times: Option<usize>,
}

impl Rule {
    /// A rule that fires on every matching request.
    pub fn always(matcher: Matcher, fault: Fault) -> Rule {
        Rule {
            matcher,
            fault,
            times: None,
        }
    }

    /// A rule that fires on the first `n` matching requests only.
    pub fn times(matcher: Matcher, fault: Fault, n: usize) -> Rule {
        Rule {
            matcher,
            fault,
            times: Some(n),
        }
    }
}

/// What Host header the upstream gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HostHeader {
    /// Keep the client's Host if the request carries an AWS SigV4 signature (an
    /// `Authorization: AWS4-...` header or an `X-Amz-Signature` query parameter), since the
    /// signature covers Host; otherwise rewrite it to the upstream's `host:port`.
    ///
    /// Why not always keep: fake-gcs-server started with `-public-host 127.0.0.1:PORT` routes
    /// XML-API object GETs (the ones object_store's GCS client makes) only when Host equals
    /// that public host, and answers 404 to anything else, so a kept proxy Host turns every
    /// GCS read into a 404. Why not always rewrite: a signature-verifying S3 server would
    /// reject a rewritten Host. (moto verifies no signatures and serves path-style requests
    /// under any Host, so S3 through moto works either way.)
    #[default]
    Auto,
    /// Always forward the client's Host header unchanged.
    Keep,
    /// Always replace Host with the upstream's `host:port`.
    Rewrite,
}

impl HostHeader {
    fn rewrite(self, headers: &HeaderMap, target: &str) -> bool {
        match self {
            HostHeader::Keep => !headers.contains_key(header::HOST),
            HostHeader::Rewrite => true,
            HostHeader::Auto => {
                let sigv4_header = headers
                    .get(header::AUTHORIZATION)
                    .is_some_and(|v| v.as_bytes().starts_with(b"AWS4-"));
                let sigv4_query = target
                    .split_once('?')
                    .is_some_and(|(_, q)| q.to_ascii_lowercase().contains("x-amz-signature="));
                !(sigv4_header || sigv4_query) || !headers.contains_key(header::HOST)
            }
        }
    }
}

/// One request as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// 1-based arrival number (the number [`Matcher::NthRequest`] matches on).
    pub nth: usize,
    pub method: String,
    /// Path and query, as sent by the client.
    pub target: String,
    /// The fault applied, if a rule matched.
    pub fault: Option<Fault>,
}

/// State shared by the accept loop, every connection and the [`FaultProxy`] handle.
struct Shared {
    /// `host:port` of the upstream, for connecting and for a rewritten Host header.
    upstream: String,
    host_header: Mutex<HostHeader>,
    connections: AtomicUsize,
    /// One lock over the counter, the rules and the log, so that numbering a request,
    /// picking its rule and using up one of the rule's `times` happen as one step even
    /// when requests arrive concurrently on several connections.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    received: usize,
    rules: Vec<Rule>,
    log: Vec<Seen>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that
        // matters to a test, so a poisoned lock is used as is rather than panicking again.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers the request, picks the first live matching rule (using up one of its
    /// `times`), logs the request and returns the fault to apply.
    fn classify(&self, method: &str, target: &str) -> Option<Fault> {
        let parsed = Target::new(target);
        let mut st = self.state();
        st.received += 1;
        let nth = st.received;
        let fault = st
            .rules
            .iter_mut()
            .find(|r| r.times != Some(0) && r.matcher.matches(method, &parsed, nth))
            .map(|r| {
                if let Some(left) = r.times.as_mut() {
                    *left -= 1;
                }
                r.fault.clone()
            });
        st.log.push(Seen {
            nth,
            method: method.to_owned(),
            target: target.to_owned(),
            fault: fault.clone(),
        });
        fault
    }
}

/// A running proxy. Dropping it stops the listener and closes every connection it holds.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts on 127.0.0.1 on a free port, forwarding to `upstream`
    /// (`"http://127.0.0.1:PORT"` or `"127.0.0.1:PORT"`; only host and port are used).
    /// Must be called within a tokio runtime; the proxy runs on that runtime.
    pub async fn start(upstream: &str) -> io::Result<FaultProxy> {
        let upstream = parse_upstream(upstream)?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            host_header: Mutex::new(HostHeader::default()),
            connections: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
        });
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop));
        Ok(FaultProxy {
            addr,
            shared,
            shutdown,
            task,
        })
    }

    /// Like [`FaultProxy::start`], but on a thread and runtime of its own, so that the proxy
    /// keeps serving while the caller blocks. Use this from sync tests, and from any test
    /// whose thread does blocking I/O that ends in the proxy (reads on a FUSE mount served
    /// through it, say): a proxy on the test's current-thread runtime would not be polled
    /// while that thread is blocked, and the test would deadlock. The thread ends when the
    /// proxy is dropped, which also drops its runtime and every connection.
    pub fn start_in_thread(upstream: &str) -> io::Result<FaultProxy> {
        let upstream = upstream.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match FaultProxy::start(&upstream).await {
                        Ok(proxy) => {
                            let stop = proxy.shutdown.subscribe();
                            if tx.send(Ok(proxy)).is_ok() {
                                stopped(stop).await;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
                // Leaving here drops the runtime, and with it every task of the proxy.
            })?;
        rx.recv()
            .map_err(|_| io::Error::other("fault proxy thread exited before starting"))?
    }

    /// `"http://127.0.0.1:PORT"`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a rule after the existing ones. Rules are checked in insertion order; the first
    /// live one that matches wins.
    pub fn add_rule(&self, rule: Rule) {
        self.shared.state().rules.push(rule);
    }

    /// Removes all rules: from now on every request is forwarded faithfully. Requests
    /// already being faulted keep their fault.
    pub fn clear_rules(&self) {
        self.shared.state().rules.clear();
    }

    /// Chooses the Host header the upstream gets; see [`HostHeader`]. Default
    /// [`HostHeader::Auto`], which works for object_store against both moto and
    /// fake-gcs-server.
    pub fn set_host_header(&self, mode: HostHeader) {
        *self
            .shared
            .host_header
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.state().log.clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.state().received
    }

    /// Number of client TCP connections accepted so far (lets a test check that its client
    /// reuses connections).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Both calls are non-blocking and need no runtime context, so this is safe inside
        // an async test, in plain sync code, and after the runtime is gone. The signal makes
        // every connection task return (closing its socket); the abort also tears down the
        // accept loop, whose JoinSet aborts any connection task that has not yet noticed.
        self.shutdown.send_replace(true);
        self.task.abort();
    }
}

fn parse_upstream(upstream: &str) -> io::Result<String> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad upstream {upstream:?}: {why}"),
        )
    };
    let with_scheme = if upstream.contains("://") {
        upstream.to_owned()
    } else {
        format!("http://{upstream}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid("only http:// upstreams are supported"));
    }
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    Ok(format!("{host}:{port}"))
}

/// Resolves once shutdown is signalled or the [`FaultProxy`] (the sender) is gone.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    // Connection tasks live in this set so that dropping the set (when this loop returns or
    // is aborted) aborts them all.
    let mut conns = JoinSet::new();
    let shutdown = stopped(stop.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(serve_connection(stream, shared.clone(), stop.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning; the
                // client will see a slow connect, which a test would notice.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow over a long test.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Per-connection kill switch, pulled by a cut-short body once its partial bytes are out.
#[derive(Default)]
struct ConnCtl {
    kill: Notify,
    /// Close with RST instead of FIN.
    reset: AtomicBool,
}

impl ConnCtl {
    fn kill(&self, reset: bool) {
        if reset {
            self.reset.store(true, Ordering::SeqCst);
        }
        // notify_one keeps a permit if the connection task is not waiting right now.
        self.kill.notify_one();
    }
}

/// The client socket, wrapped so that it can be closed with RST: the socket is owned by
/// hyper's connection, and this Drop is the one place that still sees it when it closes.
struct ConnIo {
    inner: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.ctl.reset.load(Ordering::SeqCst) {
            // SO_LINGER 0: close() discards the socket and sends RST. A zero linger never
            // blocks, unlike a positive one. Failing to set it only downgrades RST to FIN.
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let ctl = Arc::new(ConnCtl::default());
    let io = TokioIo::new(ConnIo {
        inner: stream,
        ctl: ctl.clone(),
    });
    let svc_ctl = ctl.clone();
    let svc_stop = stop.clone();
    let service =
        service_fn(move |req| handle(req, shared.clone(), svc_ctl.clone(), svc_stop.clone()));
    // No timer is configured, so hyper applies no header-read or idle timeouts: an idle
    // keep-alive connection stays up until the client closes it or the proxy is dropped.
    let conn = http1::Builder::new().serve_connection(io, service);
    // Whichever comes first, the connection future (and with it the handler, its timers,
    // the response body and the socket) is dropped here.
    tokio::select! {
        _ = conn => {}
        _ = ctl.kill.notified() => {}
        _ = stopped(stop) => {}
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    ctl: Arc<ConnCtl>,
    stop: watch::Receiver<bool>,
) -> Result<Response<FaultBody>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let fault = shared.classify(req.method().as_str(), &target);
    let (parts, body) = req.into_parts();
    // Read the whole request body first, for every fault: a client that is still
    // uploading would otherwise see a write error instead of the fault it is being given.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(text_response(
                StatusCode::BAD_REQUEST,
                format!("fault_proxy: reading request body: {e}"),
            ))
        }
    };
    match &fault {
        Some(Fault::Status(code)) => return Ok(status_response(*code, &target)),
        Some(Fault::NeverAnswer) => {
            // Parks this request for good; serve_connection drops it when the proxy is
            // dropped or the client goes away.
            let never: Infallible = std::future::pending().await;
            match never {}
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }

    let is_head = parts.method == Method::HEAD;
    let (mut head, data) = match forward(&shared, &stop, parts, &target, body).await {
        Ok(upstream) => upstream,
        Err(e) => {
            return Ok(text_response(
                StatusCode::BAD_GATEWAY,
                format!("fault_proxy: upstream {}: {e}", shared.upstream),
            ))
        }
    };
    strip_hop_by_hop(&mut head.headers);
    let has_body = !is_head && body_allowed(head.status);
    if has_body {
        // The upstream may have sent the body chunked; give the client (and every fault)
        // the real length.
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    }

    let kind = match fault {
        Some(Fault::EmptyOk) => {
            head.status = StatusCode::OK;
            head.headers.remove(header::CONTENT_RANGE);
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            BodyKind::Full(None)
        }
        _ if !has_body || data.is_empty() => BodyKind::Full(Some(data)),
        Some(Fault::HeadersThenHang) => BodyKind::Hang,
        Some(Fault::SlowDrip { bytes_per_sec }) => BodyKind::drip(data, bytes_per_sec),
        Some(Fault::ResetMidBody) => BodyKind::cut(data, ctl, true),
        Some(Fault::TruncatedBody) => BodyKind::cut(data, ctl, false),
        Some(Fault::WrongBytes) => BodyKind::Full(Some(
            data.iter().map(|b| b ^ 0xFF).collect::<Vec<u8>>().into(),
        )),
        None | Some(Fault::Delay(_) | Fault::Status(_) | Fault::NeverAnswer) => {
            BodyKind::Full(Some(data))
        }
    };
    Ok(Response::from_parts(head, FaultBody(kind)))
}

/// Sends the request to the upstream on a fresh connection and buffers the response.
async fn forward(
    shared: &Shared,
    stop: &watch::Receiver<bool>,
    parts: hyper::http::request::Parts,
    target: &str,
    body: Bytes,
) -> Result<(hyper::http::response::Parts, Bytes), BoxError> {
    let stream = TcpStream::connect(shared.upstream.as_str()).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection driver must run beside send_request. It ends by itself once the
    // response is read and `sender` is dropped; the stop signal covers an upstream that hangs.
    tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = conn => {}
                _ = stopped(stop) => {}
            }
        }
    });

    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // The body is already here in full, so there is nothing left to ask permission for.
    headers.remove(header::EXPECT);
    let mode = *shared.host_header.lock().unwrap_or_else(|e| e.into_inner());
    if mode.rewrite(&headers, target) {
        headers.insert(header::HOST, HeaderValue::from_str(&shared.upstream)?);
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method;
    // Origin-form request target, exactly as the client sent path and query.
    *req.uri_mut() = target.parse::<Uri>()?;
    *req.headers_mut() = headers;

    let resp = sender.send_request(req).await?;
    let (head, body) = resp.into_parts();
    let data = body.collect().await?.to_bytes();
    Ok((head, data))
}

/// Headers that describe one hop's connection, not the message (RFC 9110 §7.6.1); the
/// proxy has its own connections on each side, and hyper frames the bodies itself.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

fn body_allowed(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

fn text_response(status: StatusCode, text: String) -> Response<FaultBody> {
    let mut resp = Response::new(FaultBody(BodyKind::Full(Some(text.into()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An error response shaped like the store's own, so clients that parse error bodies see
/// something plausible. Clients map on the status code; the body is a courtesy.
fn status_response(code: u16, target: &str) -> Response<FaultBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = status.as_u16();
    let message = format!("fault_proxy injected HTTP {code}");
    let (content_type, body) = if target.starts_with("/storage/v1/") {
        let reason = match code {
            403 => "forbidden",
            404 => "notFound",
            412 => "conditionNotMet",
            429 => "rateLimitExceeded",
            500..=599 => "backendError",
            _ => "injectedFault",
        };
        (
            "application/json; charset=UTF-8",
            format!(
                r#"{{"error":{{"code":{code},"message":"{message}","errors":[{{"domain":"global","reason":"{reason}","message":"{message}"}}]}}}}"#
            ),
        )
    } else {
        let s3_code = match code {
            400 => "InvalidRequest",
            403 => "AccessDenied",
            404 => "NoSuchKey",
            412 => "PreconditionFailed",
            416 => "InvalidRange",
            500 => "InternalError",
            503 => "SlowDown",
            _ => "InjectedFault",
        };
        (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3_code}</Code><Message>{message}</Message></Error>"
            ),
        )
    };
    let mut resp = text_response(status, body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The response body the proxy serves. It is polled by hyper inside the connection task, so
/// its timers and hangs die with the connection.
struct FaultBody(BodyKind);

enum BodyKind {
    /// The whole body in one frame (`None` once sent).
    Full(Option<Bytes>),
    /// Never yields: headers are out, the body never comes.
    Hang,
    /// `rest` goes out `chunk` bytes at a time, each after waiting `interval`.
    Drip {
        rest: Bytes,
        chunk: usize,
        interval: Duration,
        sleep: Pin<Box<Sleep>>,
    },
    /// Sends `first`, waits for it to reach the socket, then kills the connection.
    Cut {
        first: Option<Bytes>,
        /// Started once `first` has been handed to hyper.
        grace: Option<Pin<Box<Sleep>>>,
        ctl: Arc<ConnCtl>,
        reset: bool,
    },
}

impl BodyKind {
    fn drip(data: Bytes, bytes_per_sec: u64) -> BodyKind {
        let rate = bytes_per_sec.max(1);
        // About 20 chunks a second, at least one byte each; the interval is the chunk's
        // exact share of a second, so the total never beats the asked-for rate.
        let chunk = (rate / 20).max(1);
        let interval = Duration::from_secs_f64(chunk as f64 / rate as f64);
        BodyKind::Drip {
            rest: data,
            chunk: usize::try_from(chunk).unwrap_or(usize::MAX),
            interval,
            sleep: Box::pin(tokio::time::sleep(interval)),
        }
    }

    fn cut(data: Bytes, ctl: Arc<ConnCtl>, reset: bool) -> BodyKind {
        BodyKind::Cut {
            first: Some(data.slice(..data.len() / 2)),
            grace: None,
            ctl,
            reset,
        }
    }
}

impl Body for FaultBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            BodyKind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            // Pending without a waker on purpose: nothing will ever wake it; the
            // connection task drops it.
            BodyKind::Hang => Poll::Pending,
            BodyKind::Drip {
                rest,
                chunk,
                interval,
                sleep,
            } => {
                if rest.is_empty() {
                    return Poll::Ready(None);
                }
                ready!(sleep.as_mut().poll(cx));
                let piece = rest.split_to((*chunk).min(rest.len()));
                sleep.as_mut().reset(Instant::now() + *interval);
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            BodyKind::Cut {
                first,
                grace,
                ctl,
                reset,
            } => {
                if let Some(piece) = first.take() {
                    *grace = Some(Box::pin(tokio::time::sleep(CUT_GRACE)));
                    if !piece.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(piece))));
                    }
                }
                // Returning Pending lets hyper flush the headers and the piece to the
                // socket; once the grace has passed, pull the kill switch.
                if let Some(grace) = grace.as_mut() {
                    ready!(grace.as_mut().poll(cx));
                }
                ctl.kill(*reset);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Full(data) => data.as_ref().is_none_or(|d| d.is_empty()),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            // Unknown: hyper then frames the body by the Content-Length header, which
            // carries the *real* length even though fewer bytes may follow.
            _ => SizeHint::default(),
        }
    }
}
