//! Registration and login against guessing and floods: failed logins close an account for a
//! while (a `429` that says when to retry), attempts from one address are limited, password
//! checks run a few at a time whatever comes in, and a name that does not exist costs a check
//! like one that does.

use anyhow::{Context, Result, ensure};
use protocol::DeviceId;
use protocol::http::{ErrorBody, LoginRequest};
use protocol::ws::ErrorCode;
use tests::{PASSWORD, TestCluster, cluster, cluster_with, metric, register};

/// A login attempt's status, error code and `Retry-After` (seconds), if any.
struct Answer {
    status: u16,
    code: Option<ErrorCode>,
    retry_after: Option<u64>,
}

async fn try_login(cluster: &TestCluster, username: &str, password: &str) -> Result<Answer> {
    let req = LoginRequest {
        username: username.into(),
        password: password.into(),
        device_id: DeviceId::new(client::new_device_id())?,
        device_name: "guesser".into(),
    };
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/auth/login", cluster.controller_url()))
        .json(&req)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let code = if status == 200 {
        None
    } else {
        Some(resp.json::<ErrorBody>().await?.error.code)
    };
    Ok(Answer {
        status,
        code,
        retry_after,
    })
}

fn throttled(a: &Answer) -> bool {
    a.status == 429 && a.code == Some(ErrorCode::RateLimited) && a.retry_after.unwrap_or(0) >= 1
}

/// Ten wrong passwords close the account to logins — the right password too — with a `429`
/// that says when to retry; a name that does not exist is closed alike. Other accounts are not
/// touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_close_the_account_for_a_while() -> Result<()> {
    let cluster = cluster(1).await?;
    register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    for name in ["alice", "nobody-here"] {
        for i in 0..10 {
            let a = try_login(&cluster, name, &format!("guess number {i}")).await?;
            ensure!(
                a.status == 401,
                "{name}: guess {i} answered {} {:?}",
                a.status,
                a.code
            );
        }
        let a = try_login(&cluster, name, "guess number 11").await?;
        ensure!(
            throttled(&a),
            "{name}: the 11th guess answered {} {:?} (retry after {:?})",
            a.status,
            a.code,
            a.retry_after
        );
    }
    let a = try_login(&cluster, "alice", PASSWORD).await?;
    ensure!(
        throttled(&a),
        "alice's right password went through a closed account: {}",
        a.status
    );
    let a = try_login(&cluster, "bob", PASSWORD).await?;
    ensure!(
        a.status == 200,
        "bob was caught by alice's limit: {}",
        a.status
    );
    cluster.shutdown().await
}

/// Attempts from one address beyond its limit get a `429` with `Retry-After`, whatever they
/// try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_from_one_address_are_limited() -> Result<()> {
    let cluster = cluster_with(1, |c| {
        c.controller_args
            .extend(["--auth-per-address".into(), "5".into()])
    })
    .await?;
    for i in 0..5 {
        let a = try_login(&cluster, &format!("someone{i}"), "whatever it is").await?;
        ensure!(a.status == 401, "attempt {i} answered {}", a.status);
    }
    let a = try_login(&cluster, "someone-else", "whatever it is").await?;
    ensure!(
        throttled(&a),
        "the 6th attempt from the address answered {} {:?}",
        a.status,
        a.code
    );
    let registered = reqwest::Client::new()
        .post(format!("{}/v1/auth/register", cluster.controller_url()))
        .json(&protocol::http::RegisterRequest {
            username: "newcomer".into(),
            password: PASSWORD.into(),
        })
        .send()
        .await?
        .status()
        .as_u16();
    ensure!(
        registered == 429,
        "a registration past the address's limit answered {registered}"
    );
    cluster.shutdown().await
}

/// Two dozen logins at once, at the real hashing cost: no more than the allowed checks run at
/// once (each holds 19 MiB); and a login that names nobody costs a check like one that names
/// somebody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_run_a_few_at_a_time_whoever_is_named() -> Result<()> {
    let cluster = cluster_with(1, |c| {
        c.controller_args = vec![
            "--password-hash".into(),
            "standard".into(),
            "--hash-concurrency".into(),
            "2".into(),
        ];
    })
    .await?;
    register(&cluster, "alice").await?;
    let url = cluster.controller_url().to_owned();
    let hashes = || metric(&cluster, &url, "chat_password_hashes_total");

    let before = hashes().await?;
    ensure!(
        try_login(&cluster, "alice", "not her password")
            .await?
            .status
            == 401
    );
    let known = hashes().await? - before;
    let before = hashes().await?;
    ensure!(
        try_login(&cluster, "nobody-at-all", "not a password")
            .await?
            .status
            == 401
    );
    let unknown = hashes().await? - before;
    ensure!(
        known == 1.0 && unknown == 1.0,
        "a login cost {known} hashes for a known name and {unknown} for an unknown one"
    );

    let storm = (0..24).map(|i| {
        let cluster = &cluster;
        async move { try_login(cluster, &format!("storm{i}"), "wrong password").await }
    });
    for a in futures::future::join_all(storm).await {
        let a = a.context("a login of the storm")?;
        ensure!(
            a.status == 401,
            "a login of the storm answered {}",
            a.status
        );
    }
    let peak = metric(&cluster, &url, "chat_password_hashes_peak").await?;
    ensure!(
        (1.0..=2.0).contains(&peak),
        "{peak} password checks ran at once (2 allowed)"
    );
    cluster.shutdown().await
}
