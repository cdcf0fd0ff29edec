//! The cluster's credentials at rest: the data dir is its owner's alone (0700, its files
//! 0600), and a weak or example secret stops a process at start with an error that says so.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use tests::{PATIENCE, cluster_with};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

/// Every entry of `dir` and `dir` itself, with the mode each should have and has.
fn open_entries(dir: &Path) -> Result<Vec<String>> {
    let mut open = Vec::new();
    if mode(dir)? != 0o700 {
        open.push(format!("{} {:o}", dir.display(), mode(dir)?));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let want = if kind.is_dir() { 0o700 } else { 0o600 };
        let have = mode(&entry.path())?;
        if (kind.is_dir() || kind.is_file()) && have & 0o077 != 0 {
            open.push(format!(
                "{} {have:o} (want {want:o})",
                entry.path().display()
            ));
        }
    }
    Ok(open)
}

/// A `server controller` on a free loopback port with this data dir and these variables, and
/// nothing of the test's own `CHAT_*` environment.
fn controller(data_dir: &Path, env: &[(&str, &str)]) -> Result<Child> {
    let mut cmd = Command::new(lab::find::server_binary()?);
    cmd.args([
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--password-hash",
        "fast",
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("CHAT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    Ok(cmd.spawn()?)
}

/// Waits for the ready line (`Ok(true)`) or the end of stdout, i.e. the process exiting
/// (`Ok(false)`).
async fn ready(child: &mut Child) -> Result<bool> {
    let out = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(out).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .context("neither ready nor gone")??;
    Ok(first.is_some())
}

/// A controller left to its defaults keeps its data dir private; one left open by an earlier
/// version is closed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_its_files_are_the_owners_alone() -> Result<()> {
    let top = tempfile::tempdir()?;
    // As an earlier version left it: a 0755 folder and a world-readable secret.
    let data = top.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(
        data.join("secret"),
        "a-secret-an-earlier-version-wrote-0123456789",
    )?;
    std::fs::set_permissions(data.join("secret"), std::fs::Permissions::from_mode(0o644))?;

    let mut c = controller(&data, &[])?;
    ensure!(ready(&mut c).await?, "the controller did not start");
    let listed: Vec<String> = std::fs::read_dir(&data)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let open = open_entries(&data)?;
    println!("data dir {listed:?}: open entries {open:?}");
    ensure!(open.is_empty(), "readable by others: {open:?}");
    for wanted in ["chat.db", "token-keys", "node-keys", "operator-token"] {
        ensure!(
            listed.iter().any(|f| f == wanted),
            "{wanted} not in {listed:?}"
        );
    }
    c.start_kill()?;
    c.wait().await?;

    // The lab's data folder, when it is given one.
    let lab_dir = top.path().join("lab");
    let cluster = cluster_with(1, |c| c.data_dir = Some(lab_dir.clone())).await?;
    let open = open_entries(&lab_dir)?;
    ensure!(open.is_empty(), "the lab's data dir: {open:?}");
    cluster.shutdown().await
}

/// The README's example secret of an earlier version, a short one and a one-character one are
/// refused at start, with the variable named; so is a weak key in a ring and a weak operator
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_or_example_secrets_stop_the_process_at_start() -> Result<()> {
    let top = tempfile::tempdir()?;
    let cases: [(&str, &str, &str); 5] = [
        (
            "CHAT_SECRET",
            "change-me-to-a-long-random-string",
            "CHAT_SECRET is too weak",
        ),
        ("CHAT_SECRET", "hunter2", "CHAT_SECRET is too weak"),
        (
            "CHAT_SECRET",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "CHAT_SECRET is too weak",
        ),
        (
            "CHAT_TOKEN_KEYS",
            "k1:tooshort",
            "CHAT_TOKEN_KEYS (key k1) is too weak",
        ),
        (
            "CHAT_OPERATOR_TOKEN",
            "operator-token",
            "CHAT_OPERATOR_TOKEN is too weak",
        ),
    ];
    for (i, (var, value, says)) in cases.iter().enumerate() {
        let mut c = controller(&top.path().join(format!("d{i}")), &[(var, value)])?;
        if ready(&mut c).await? {
            bail!("{var}={value:?} was accepted");
        }
        let status = c.wait().await?;
        let mut err = String::new();
        c.stderr
            .take()
            .context("stderr")?
            .read_to_string(&mut err)
            .await?;
        ensure!(!status.success(), "{var}={value:?}: {status}");
        ensure!(err.contains(says), "{var}={value:?}: {err}");
        ensure!(err.contains("openssl rand -hex 32"), "{err}");
    }
    // A strong secret starts.
    let mut c = controller(
        &top.path().join("good"),
        &[("CHAT_SECRET", "5c1e9a7f3b8d2e6c0a4f9b1d7e3c8a5f")],
    )?;
    ensure!(ready(&mut c).await?, "a strong secret was refused");
    c.start_kill()?;
    c.wait().await?;
    Ok(())
}
