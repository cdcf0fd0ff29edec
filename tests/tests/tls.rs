//! A cluster on its own certificate authority: the controller and the nodes serve HTTPS and
//! WSS with `--tls-cert/--tls-key` (a certificate made here with rcgen), nodes join the
//! controller's link over WSS trusting that authority (`--ca-cert`), and two users chat across
//! nodes through the client core; a client that does not trust the authority, and plain HTTP
//! to the same port, get nowhere.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use client::{ClientConfig, ClientState, Session};
use protocol::http::{LoginRequest, ReadyLine, RegisterRequest};
use tests::{Device, PASSWORD, PATIENCE, client_config};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A certificate authority and a certificate for localhost and 127.0.0.1 signed by it, as
/// PEM files in `dir`: (authority, certificate, key).
fn certificates(
    dir: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &ca, &ca_key)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

async fn spawn(args: &[&str], data: &Path) -> Result<(Child, ReadyLine)> {
    let mut cmd = Command::new(lab::find::server_binary()?);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("CHAT_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(out).lines();
    let ready = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(r) = ReadyLine::parse(&line) {
                return Ok(r);
            }
        }
        anyhow::bail!("{args:?} exited before it was ready")
    })
    .await
    .context("not ready in time")??;
    // Keep reading stdout so that the process never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, ready))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_its_own_certificates_chats_over_tls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = certificates(dir.path())?;
    let (ca, cert, key) = (
        ca.to_string_lossy().into_owned(),
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let data = dir.path().join("data");
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let mut args = vec![
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--password-hash",
        "fast",
    ];
    args.extend(tls);
    let (_controller, ready) = spawn(&args, &data).await?;
    let base = ready.http_url.clone();
    ensure!(base.starts_with("https://127.0.0.1:"), "{base}");
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut args = vec!["node", "--listen", "127.0.0.1:0", "--controller", &base];
        args.extend(["--ca-cert", ca.as_str()]);
        args.extend(tls);
        let (child, ready) = spawn(&args, &data).await?;
        let ws = ready.ws_url.clone().unwrap_or_default();
        ensure!(ws.starts_with("wss://127.0.0.1:"), "{ws}");
        nodes.push(child);
    }

    // Without the authority, or in clear, nothing gets through.
    let stranger = client::Api::new(&base)?.health().await;
    ensure!(
        stranger.is_err(),
        "a client trusting only public roots got {stranger:?}"
    );
    let clear = reqwest::get(base.replacen("https://", "http://", 1)).await;
    ensure!(
        clear.is_err() || clear.as_ref().is_ok_and(|r| !r.status().is_success()),
        "plain HTTP got {clear:?}"
    );

    let trust = client::api::tls_trusting(&std::fs::read(&ca)?)?;
    let http = client::api::http_client_with_tls(trust.clone())?;
    let api = client::Api::with_http(&base, http.clone())?;
    let mut sessions = Vec::new();
    for name in ["alice", "bob"] {
        api.register(&RegisterRequest {
            username: name.into(),
            password: PASSWORD.into(),
        })
        .await?;
        let device = client::new_device_id();
        let r = api
            .login(&LoginRequest {
                username: name.into(),
                password: PASSWORD.into(),
                device_id: device.clone(),
                device_name: "laptop".into(),
            })
            .await?;
        sessions.push(Session {
            server: base.clone(),
            token: r.token,
            user: r.user,
            device,
            expires_at: r.expires_at,
        });
    }
    let config = || ClientConfig {
        tls: Some(trust.clone()),
        http: Some(http.clone()),
        ..client_config()
    };
    let bob_session = sessions.pop().context("bob")?;
    let alice_session = sessions.pop().context("alice")?;
    let alice_api =
        client::Api::with_http(&base, http.clone())?.with_token(alice_session.token.clone());
    let alice = Device::start_with(
        alice_session,
        ClientState::default(),
        "alice".into(),
        config(),
    )
    .await?;
    let mut bob =
        Device::start_with(bob_session, ClientState::default(), "bob".into(), config()).await?;
    ensure!(
        alice.node() != bob.node(),
        "both on {:?}: the least-loaded answer should spread two devices",
        alice.node()
    );
    let conv = alice_api.open_direct("bob").await?.id;
    alice.say(conv, "over tls").await?;
    bob.until_texts(conv, &["over tls".to_owned()], PATIENCE)
        .await?;
    Ok(())
}
