//! Turning teaching modes on and off in a cluster the lab started with `--teaching` (see
//! [`protocol::teaching`]): `PUT /v1/teaching` on the controller or on every running node,
//! or, for the mode a node can only start in (the shared queue), every node restarted in it.

use std::time::Duration;

use protocol::http::ErrorBody;
use protocol::teaching::{Teaching, TeachingSwitch};

use crate::{Cluster, NodeInfo, ProcessState};

/// Puts the cluster in `wanted` (or out of every mode), leaving no other mode on. Says what
/// was done; the error quotes the process that refused.
pub async fn switch(cluster: &mut Cluster, wanted: Option<Teaching>) -> Result<String, String> {
    if !cluster.config().teaching {
        return Err(
            "this cluster was started without --teaching: its processes refuse teaching modes"
                .into(),
        );
    }
    let at_start = wanted.filter(|m| m.at_start());
    if cluster.config().teaching_at_start != at_start {
        cluster
            .set_teaching_at_start(at_start)
            .await
            .map_err(|e| e.to_string())?;
    }
    let runtime = wanted.filter(|m| !m.at_start());
    let token = cluster.operator_token().to_owned();
    put(
        cluster.controller_url(),
        &token,
        runtime.filter(|m| m.on_controller()),
    )
    .await?;
    if at_start.is_none() {
        for n in running(cluster) {
            put(&n.http_url, &token, runtime.filter(|m| !m.on_controller())).await?;
        }
    }
    Ok(match wanted {
        Some(mode) if mode.at_start() => {
            format!(
                "every node restarted in teaching mode {mode}: {}",
                mode.broken()
            )
        }
        Some(mode) => format!("teaching mode {mode}: {}", mode.broken()),
        None => "teaching mode off: every guarantee is back".into(),
    })
}

/// Gives a node that just started the run-time node mode the others have.
pub async fn reapply(
    cluster: &Cluster,
    mode: Option<Teaching>,
    node: &NodeInfo,
) -> Result<(), String> {
    match mode {
        Some(m) if !m.at_start() && !m.on_controller() => {
            put(&node.http_url, cluster.operator_token(), Some(m)).await
        }
        _ => Ok(()),
    }
}

fn running(cluster: &Cluster) -> Vec<NodeInfo> {
    cluster
        .nodes()
        .into_iter()
        .filter(|n| n.process == ProcessState::Running)
        .collect()
}

/// `PUT /v1/teaching` on one process.
pub async fn put(base: &str, operator: &str, mode: Option<Teaching>) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/v1/teaching", base.trim_end_matches('/'));
    let response = http
        .put(&url)
        .bearer_auth(operator)
        .json(&TeachingSwitch { mode })
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let why = response
        .json::<ErrorBody>()
        .await
        .map(|b| b.error.message)
        .unwrap_or_default();
    Err(format!("{url} refused ({status}): {why}"))
}
