//! Uploads against a real controller: what can be refused without the body is refused before
//! the body is sent (membership, declared size, quota), and the bytes must be what the type
//! says, so nothing is served inline as a type it is not.

use anyhow::{Context, Result, anyhow, ensure};
use protocol::ws::ErrorCode;
use tests::{Device, PATIENCE, cluster_with, register};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A one-pixel PNG's first bytes (its signature and header chunk).
const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

/// Sends the head of an upload of `length` bytes and only `sent` of them, and reads the
/// status line the controller answers with, without sending the rest.
async fn head_only(
    controller: &str,
    token: &str,
    conv: i64,
    length: u64,
    sent: usize,
) -> Result<String> {
    let addr = controller
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http URL: {controller}"))?;
    let mut tcp = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/conversations/{conv}/attachments?name=big.bin HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(&vec![0u8; sent]).await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .context("no answer while the body was still to come: the body is awaited before checks")??;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Membership, size and quota are checked before the body is read; the type against the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_checked_before_and_after_their_bytes() -> Result<()> {
    let quota = 64 * 1024;
    let cluster = cluster_with(1, |c| {
        c.controller_args
            .extend(["--attachment-quota-bytes".to_owned(), quota.to_string()])
    })
    .await?;
    for n in ["alice", "bob", "mallory"] {
        register(&cluster, n).await?;
    }
    let alice = Device::connect(&cluster, "alice", "laptop").await?;
    let bob = Device::connect(&cluster, "bob", "phone").await?;
    let mallory = Device::connect(&cluster, "mallory", "evil").await?;
    let dm = alice.api().open_direct("bob").await?;
    let url = cluster.controller_url().to_owned();

    // A stranger's upload is refused at its head: 20 MB announced, 1 KiB sent.
    let status = head_only(&url, &mallory.session.token, dm.id.0, 20_000_000, 1024).await?;
    ensure!(
        status.contains(" 403 "),
        "a stranger's upload got {status:?}"
    );
    // A member's upload over the size limit, too.
    let status = head_only(&url, &alice.session.token, dm.id.0, 1 << 40, 1024).await?;
    ensure!(status.contains(" 413 "), "a huge upload got {status:?}");
    // And one over the member's quota (well under the size limit).
    let status = head_only(&url, &alice.session.token, dm.id.0, quota + 1, 1024).await?;
    ensure!(
        status.contains(" 413 "),
        "an upload over the quota got {status:?}"
    );

    // A type smuggled behind a parameter: refused when the bytes are not an image...
    let api = alice.api();
    let html = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    let err = api
        .upload(dm.id, "x.png", "image/png;,text/html", html.clone())
        .await
        .err()
        .ok_or_else(|| anyhow!("HTML bytes were accepted as image/png;,text/html"))?;
    ensure!(
        err.status() == Some(400) && err.code() == Some(ErrorCode::Invalid),
        "{err}"
    );
    // ...and stored and served by its essence when they are.
    let png = api
        .upload(dm.id, "dot.png", "image/png;,text/html", PNG.to_vec())
        .await?;
    ensure!(png.mime == "image/png", "stored as {:?}", png.mime);
    let got = bob.api().download(&png.id).await?;
    ensure!(got.mime == "image/png", "served as {:?}", got.mime);
    ensure!(got.bytes.as_ref() == PNG, "other bytes came back");
    // HTML as what it claims to be, an opaque download, is fine.
    let blob = api
        .upload(dm.id, "page.html", "application/octet-stream", html)
        .await?;
    ensure!(blob.mime == "application/octet-stream", "{:?}", blob.mime);

    // The quota counts what is stored: fill it, then the next upload is refused.
    let used = PNG.len() + blob.size as usize;
    let rest = usize::try_from(quota)? - used;
    api.upload(
        dm.id,
        "fill.bin",
        "application/octet-stream",
        vec![7u8; rest],
    )
    .await?;
    let err = api
        .upload(dm.id, "one.bin", "application/octet-stream", vec![7u8; 1])
        .await
        .err()
        .ok_or_else(|| anyhow!("an upload past the quota was stored"))?;
    ensure!(
        err.status() == Some(413) && err.code() == Some(ErrorCode::TooLarge),
        "{err}"
    );
    // Another user's quota is their own.
    bob.api()
        .upload(dm.id, "mine.txt", "text/plain", b"hello".to_vec())
        .await?;
    cluster.shutdown().await?;
    Ok(())
}
