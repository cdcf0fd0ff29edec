//! The cluster panel: the nodes as the controller (and, for a local cluster, the lab) sees
//! them; killing and restarting a local node.

use tauri::State;

use super::Caller;
use crate::backend::ClusterView;
use crate::error::Result;
use crate::state::AppState;

/// The nodes of the cluster, for the cluster panel.
#[tauri::command]
pub async fn cluster_status(caller: Caller<'_>) -> Result<ClusterView> {
    // Before sign-in the window has no token: a local cluster still answers the operator's.
    let device_api = caller.api().await.ok();
    caller
        .state
        .backend
        .cluster_view(&caller.state.http, device_api)
        .await
}

/// Kills a node of the local cluster (SIGKILL), as a crash would.
#[tauri::command]
pub async fn kill_node(state: State<'_, AppState>, id: String) -> Result<()> {
    state.backend.kill_node(&id).await
}

/// Starts a fresh process in a killed node's slot.
#[tauri::command]
pub async fn restart_node(state: State<'_, AppState>, id: String) -> Result<()> {
    state.backend.restart_node(&id).await
}
