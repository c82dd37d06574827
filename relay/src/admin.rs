//! The admin listener: `/healthz`, `/readyz` and `/metrics`, on their own port.
//!
//! Kept off the public port so that a load balancer exposing the relay never
//! exposes its counters. Requests are tiny GETs from probes and scrapers, so a
//! bounded read, `httparse` and a one-shot response are all it needs.

use crate::conn::Ctx;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const MAX_REQUEST: usize = 8 * 1024;
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
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(sock, &ctx)).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(mut sock: TcpStream, ctx: &Ctx) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let path = loop {
        let mut chunk = [0u8; 1024];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("").to_owned(),
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => continue,
            _ => return respond(&mut sock, 400, "text/plain", "bad request\n").await,
        }
    };
    match path.split('?').next().unwrap_or("") {
        "/healthz" => respond(&mut sock, 200, "text/plain", "ok\n").await,
        "/readyz" => {
            if ctx.shutdown.is_cancelled() {
                respond(&mut sock, 503, "text/plain", "not ready: shutting down\n").await
            } else if let Err(why) = ctx.upstream.ready() {
                respond(&mut sock, 503, "text/plain", &format!("not ready: {why}\n")).await
            } else {
                respond(&mut sock, 200, "text/plain", "ready\n").await
            }
        }
        "/metrics" => {
            let body = ctx.metrics.render(ctx.upstream.open_rooms(), ctx.upstream.name());
            respond(&mut sock, 200, "text/plain; version=0.0.4", &body).await
        }
        _ => respond(&mut sock, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(sock: &mut TcpStream, status: u16, content_type: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
