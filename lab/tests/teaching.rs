//! Teaching modes on real processes: a cluster started without `--teaching` refuses every
//! mode, on its nodes and its controller; one started with it takes them, and its devices are
//! told. Needs the `server` binary (`cargo build -p server`).

use std::time::Duration;

use client::{Client, ClientConfig, ClientEvent};
use protocol::teaching::Teaching;

async fn cluster(teaching: bool) -> lab::Cluster {
    let mut config = lab::ClusterConfig::new(2);
    config.teaching = teaching;
    config.controller_args = vec!["--password-hash".into(), "fast".into()];
    match lab::Cluster::start(config).await {
        Ok(c) => c,
        Err(e) => panic!("starting a cluster (is the server built?): {e}"),
    }
}

#[tokio::test]
async fn a_cluster_started_without_teaching_refuses_every_mode() {
    let c = cluster(false).await;
    let token = c.operator_token().to_owned();
    for mode in Teaching::ALL {
        let base = if mode.on_controller() {
            c.controller_url().to_owned()
        } else {
            c.node(0).expect("a node").http_url
        };
        let refused = lab::teach::put(&base, &token, Some(mode)).await;
        let why = refused.expect_err("refused");
        assert!(why.contains("409"), "{mode}: {why}");
        assert!(why.contains("--teaching"), "{mode}: {why}");
    }
    // The lab says so before asking, too.
    let mut c = c;
    assert!(
        lab::teach::switch(&mut c, Some(Teaching::NoBus))
            .await
            .is_err()
    );
    c.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_teaching_cluster_takes_modes_and_tells_its_devices() {
    let mut c = cluster(true).await;
    let token = c.operator_token().to_owned();
    // Without the operator's token, nothing.
    let node = c.node(0).expect("a node").http_url;
    let anonymous = lab::teach::put(&node, "wrong", Some(Teaching::NoBus)).await;
    assert!(anonymous.expect_err("refused").contains("401"));
    // A node mode on the controller, and the other way round, are refused.
    let misplaced = lab::teach::put(c.controller_url(), &token, Some(Teaching::NoBus)).await;
    assert!(misplaced.expect_err("refused").contains("400"));

    let session = tests_session(&c).await;
    let (client, mut events) =
        Client::start(&session, Default::default(), ClientConfig::default()).expect("client");
    lab::teach::switch(&mut c, Some(Teaching::NoBus))
        .await
        .expect("no bus on");
    let told = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = events.recv().await {
            if let ClientEvent::Teaching { mode } = ev {
                return mode;
            }
        }
        None
    })
    .await
    .expect("the device is told");
    assert_eq!(told, Some(Teaching::NoBus));
    assert_eq!(client.teaching(), Some(Teaching::NoBus));
    lab::teach::switch(&mut c, None).await.expect("off");
    client.shutdown().await;
    c.shutdown().await.expect("clean shutdown");
}

/// A fresh user logged in on one device.
async fn tests_session(c: &lab::Cluster) -> client::Session {
    let api = client::Api::new(c.controller_url()).expect("api");
    let name = format!("t{:08x}", rand::random::<u32>());
    let password = "teaching passwords".to_owned();
    api.register(&protocol::http::RegisterRequest {
        username: name.clone(),
        password: password.clone(),
    })
    .await
    .expect("register");
    let device = protocol::DeviceId::new("d1").expect("device id");
    let resp = api
        .login(&protocol::http::LoginRequest {
            username: name,
            password,
            device_id: device.clone(),
            device_name: "d1".into(),
        })
        .await
        .expect("login");
    client::Session {
        server: api.base_url().trim_end_matches('/').to_owned(),
        token: resp.token,
        user: resp.user,
        device: resp.device.id,
        expires_at: resp.expires_at,
    }
}
