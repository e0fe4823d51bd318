//! `agentpool healthcheck`: probes `GET /healthz` of the `serve` in this container, for images
//! that have no HTTP client (Docker's `HEALTHCHECK`, compose's `healthcheck`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the whole probe may take: connect, ask, read the status line.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// `Ok` when `127.0.0.1:<port>/healthz` answers 200; otherwise what went wrong.
pub async fn probe(port: u16) -> Result<(), String> {
    tokio::time::timeout(TIMEOUT, ask(port))
        .await
        .map_err(|_| format!("no answer from 127.0.0.1:{port} within {TIMEOUT:?}"))?
}

async fn ask(port: u16) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    // The status line is all that is needed; `Connection: close` ends the reply.
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("reading the reply: {e}"))?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("/healthz answered {status:?}")),
    }
}
