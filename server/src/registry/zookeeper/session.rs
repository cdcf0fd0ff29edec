//! The registry's own ZooKeeper sessions: connecting, the cluster's configuration znode, and
//! the task that keeps a process's main session (a new one when it expires) and, for a
//! controller, follows the watch that feeds the load index.

use super::*;

/// A new session with the given timeout (the lease, for a node's own session).
pub(super) async fn connect(hosts: &str, timeout: Duration) -> RegistryResult<zk::Client> {
    zk::Client::connector()
        .with_session_timeout(timeout)
        .with_connection_timeout(Duration::from_secs(3))
        .connect(hosts)
        .await
        .map_err(|e| RegistryError::Unavailable(format!("zookeeper at {hosts}: {e}")))
}

/// Writes the cluster's configuration znode (its lease), creating it the first time.
pub(super) async fn write_config(
    client: &zk::Client,
    tree: &Tree,
    lease_ms: u64,
) -> RegistryResult<()> {
    let bytes = serde_json::to_vec(&ClusterConfig { lease_ms }).unwrap_or_default();
    match client.set_data(&tree.config(), &bytes, None).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NoNode) => match client
            .create(&tree.config(), &bytes, &opts(zk::CreateMode::Persistent))
            .await
        {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(map_err(e)),
        },
        Err(e) => Err(map_err(e)),
    }
}

/// Keeps the process's own session: a new one when it expires, and, for a controller, the
/// watch that feeds the index (reloaded in full after every reconnect).
pub(super) async fn keep_main(
    shared: std::sync::Weak<Shared>,
    cancel: CancellationToken,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut fresh = false;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let (client, tree, index, hosts) = (
            s.main.read().clone(),
            s.tree.clone(),
            s.index.clone(),
            s.hosts.clone(),
        );
        drop(s);
        if fresh {
            tracing::info!("zookeeper session renewed");
        }
        let ended = tokio::select! {
            _ = cancel.cancelled() => return,
            ended = follow(&client, &tree, index.as_deref(), &mut ready) => ended,
        };
        tracing::warn!(state = ?ended, "zookeeper session ended; opening a new one");
        let mut backoff = Duration::from_millis(100);
        let client = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                c = connect(&hosts, MAIN_SESSION_TIMEOUT) => match c {
                    Ok(c) => break c,
                    Err(e) => tracing::warn!(error = %e, "zookeeper unreachable"),
                },
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        };
        let Some(s) = shared.upgrade() else { return };
        *s.main.write() = client;
        fresh = true;
    }
}

/// Follows one session until it ends: for a controller, applies watch events to the index and
/// reloads it after every reconnect. Returns the terminal state.
pub(super) async fn follow(
    client: &zk::Client,
    tree: &Tree,
    index: Option<&Index>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> zk::SessionState {
    let Some(index) = index else {
        let mut states = client.state_watcher();
        loop {
            let s = states.changed().await;
            if s.is_terminated() {
                return s;
            }
        }
    };
    let mut watcher = loop {
        match client
            .watch(&tree.nodes(), zk::AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(w) => break w,
            Err(e) if is_transient(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the nodes");
                return client.state();
            }
        }
    };
    let mut reload = true;
    loop {
        if reload {
            match ZkRegistry::read_records(client, tree).await {
                Ok(all) => {
                    index.reload(all);
                    reload = false;
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the nodes failed; retrying"),
            }
        }
        let event = if reload {
            match tokio::time::timeout(Duration::from_millis(200), watcher.changed()).await {
                Ok(e) => e,
                Err(_) => continue,
            }
        } else {
            watcher.changed().await
        };
        match event.event_type {
            zk::EventType::Session => match event.session_state {
                s if s.is_terminated() => return s,
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    reload = true
                }
                _ => {}
            },
            kind => {
                let Some(what) = tree.classify(&event.path) else {
                    continue;
                };
                let id = match &what {
                    Watched::Record(id) | Watched::Live(id) => id.clone(),
                };
                match (what, kind) {
                    (Watched::Record(_), zk::EventType::NodeDeleted) => {
                        index.remove(&id);
                        continue;
                    }
                    (Watched::Live(_), zk::EventType::NodeDeleted) => index.set_live(&id, false),
                    _ => {}
                }
                match client.get_data(&tree.node(&id)).await {
                    Ok((bytes, stat)) => {
                        if let Ok(record) = NodeRecord::decode(&bytes) {
                            index.apply(&id, snapshot(record, &stat));
                        }
                    }
                    Err(zk::Error::NoNode) => index.remove(&id),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading a node record failed; reloading");
                        reload = true;
                    }
                }
            }
        }
    }
}
