//! The one HTTP client Ghostwire needs: a bounded GET on a relay's admin listener.
//!
//! `ghostwire-relay --probe` (the image's health check), the benchmark (waiting for a relay to be
//! ready) and the tests (reading `/metrics`) all ask the same question; hyper answers it.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// The largest answer read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// GETs `path` from `addr` within `limit`: the status code and the body.
///
/// # Errors
/// A sentence saying what failed: the connection, the HTTP exchange, the body, or the time limit.
pub async fn get(addr: SocketAddr, path: &str, limit: Duration) -> Result<(u16, String), String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(limit, exchange).await.unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}
