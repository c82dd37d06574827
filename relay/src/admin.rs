//! The admin listener: `/healthz`, `/readyz` and `/metrics`, on their own port.
//!
//! Kept off the public port so that a load balancer exposing the relay never
//! exposes its counters. hyper serves it (HTTP/1.1, one request per connection,
//! each connection bounded in time), so probes and scrapers get a real HTTP server.

use crate::conn::Ctx;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The longest an admin connection may take, request and answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves admin requests until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, _)) => {
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer(&req, &ctx);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(REQUEST_TIMEOUT)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(sock), service);
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn answer(req: &Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if ctx.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n".into())
            } else if let Err(why) = ctx.upstream.ready() {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
            } else {
                text(StatusCode::OK, "ready\n".into())
            }
        }
        "/metrics" => {
            let body = ctx.metrics.render(ctx.upstream.open_rooms(), ctx.upstream.ready().is_ok());
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(prometheus::TEXT_FORMAT));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found: /healthz, /readyz, /metrics\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
