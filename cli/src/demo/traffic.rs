//! Requests of the demo and the end to end tests: plain HTTP/1.1 GETs on fresh
//! connections (so kubesim's balancer spreads them over the pods), and who answered.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One GET of `path` at `addr` with optional extra headers; (status, body).
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path)
            .header("host", addr.to_string())
            .header("connection", "close");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = sender.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .with_context(|| format!("GET {path} at {addr} took longer than {REQUEST_TIMEOUT:?}"))?
}

/// The body of a 200 answer to GET `path`.
pub async fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let (status, body) = get(addr, path, &[]).await?;
    anyhow::ensure!(status == 200, "GET {path} at {addr}: {status} {body}");
    Ok(body)
}

/// Who served a request: the echo servers (pods and developers' local apps) name
/// themselves in `served_by`.
pub async fn served_by(addr: SocketAddr, header: Option<(&str, &str)>) -> anyhow::Result<String> {
    let headers: Vec<(&str, &str)> = header.into_iter().collect();
    let (status, body) = get(addr, "/", &headers).await?;
    anyhow::ensure!(status == 200, "answered {status}: {}", body.trim());
    let doc: serde_json::Value = serde_json::from_str(body.trim()).context("the answer is not the echo's JSON")?;
    doc["served_by"]
        .as_str()
        .map(str::to_owned)
        .context("the answer names no server")
}
