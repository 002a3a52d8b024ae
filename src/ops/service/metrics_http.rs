//! `--metrics-addr IP:PORT`: Prometheus scrapes `GET /metrics` (or `HEAD`) over HTTP/1.1,
//! served by hyper on the daemon's runtime. Each connection is its own task, so a slow or idle
//! client never holds up a scrape; a request head must arrive within [`HEADER_TIMEOUT`] and a
//! connection lasts at most [`CONNECTION_LIMIT`]. Everything else gets 404 (another path) or 405
//! (another method). The body is rendered from a fresh snapshot per request
//! ([`super::metrics::render_source`]).

use super::control::StatusSource;
use super::metrics::{render_source, CONTENT_TYPE};
use crate::error::WsfsError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a client may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection may stay open (keep-alive included).
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Binds `--metrics-addr` (before mounting, so a taken port fails the mount as a usage error).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, WsfsError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics are served on a non-loopback address");
    }
    std::net::TcpListener::bind(addr)
        .map_err(|e| WsfsError::Usage(format!("--metrics-addr {addr}: cannot listen: {e}")))
}

/// Serves `listener` on `rt` until the process exits.
pub fn serve(
    listener: std::net::TcpListener,
    source: Arc<StatusSource>,
    rt: &tokio::runtime::Handle,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = {
        let _in_rt = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    rt.spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: pause rather than spin.
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let source = source.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let source = source.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &source)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_LIMIT, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics request failed"),
                    Err(_) => tracing::debug!("metrics connection closed after its time limit"),
                }
            });
        }
    });
    Ok(())
}

fn answer<B>(req: &Request<B>, source: &StatusSource) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    match *req.method() {
        // hyper sends no body in answer to HEAD, and keeps the Content-Length of the GET.
        Method::GET | Method::HEAD => {
            let mut r = Response::new(Full::new(Bytes::from(render_source(source, true))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            r
        }
    }
}

fn plain(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
