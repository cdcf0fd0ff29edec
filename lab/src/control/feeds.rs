//! What feeds the world while a lab runs: the virtual devices' observations, the registry's
//! and the nodes' counters polled, and the trace streams followed while somebody watches.

use super::*;

/// Feeds what the devices and the traces report into the world, in batches.
pub(super) async fn ingest(
    lab: Lab,
    mut observations: mpsc::UnboundedReceiver<Observation>,
    mut traces: mpsc::UnboundedReceiver<crate::observe::Observed>,
) {
    let cancel = lab.inner.cancel.clone();
    let mut obs_buf = Vec::with_capacity(256);
    let mut trace_buf = Vec::with_capacity(256);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            n = observations.recv_many(&mut obs_buf, 256) => {
                if n == 0 { return; }
                let mut world = lab.inner.world.lock();
                for obs in obs_buf.drain(..) {
                    world.observe(obs);
                }
            }
            n = traces.recv_many(&mut trace_buf, 256) => {
                if n == 0 { return; }
                let mut world = lab.inner.world.lock();
                for (slot, ev) in trace_buf.drain(..) {
                    world.trace(&slot, ev);
                }
            }
        }
    }
}

/// Asks the registry for its nodes ten times a second: how long it takes to notice a node
/// that went away is measured to that precision.
pub(super) async fn poll_registry(lab: Lab) {
    let cancel = lab.inner.cancel.clone();
    let mut controller = lab.inner.controller.clone();
    let connect = |url: String| {
        crate::ControllerClient::new(url)
            .ok()
            .map(|c| c.with_operator(&lab.operator_token()))
    };
    let mut client = connect(controller.borrow_and_update().clone());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if controller.has_changed().unwrap_or(false) {
            client = connect(controller.borrow_and_update().clone());
        }
        let Some(c) = &client else { continue };
        let answer = c.nodes().await.map_err(|e| e.to_string());
        let mut world = lab.inner.world.lock();
        world.registry(answer, now_us());
        world.tick(now_us());
    }
}

/// Reads every running node's counters once a second (messages per second in and out).
pub(super) async fn poll_counters(lab: Lab) {
    let cancel = lab.inner.cancel.clone();
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let nodes: Vec<NodeInfo> = lab
            .nodes()
            .into_iter()
            .filter(|n| n.process == ProcessState::Running)
            .collect();
        let operator = lab.operator_token();
        let reads = nodes.iter().map(|n| {
            let http = http.clone();
            let operator = &operator;
            async move {
                let text = http
                    .get(format!("{}/metrics", n.http_url.trim_end_matches('/')))
                    .bearer_auth(operator)
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                Some((n.id.to_string(), NodeCounters::parse(&text)))
            }
        });
        let read = futures::future::join_all(reads).await;
        let mut world = lab.inner.world.lock();
        for (id, counters) in read.into_iter().flatten() {
            world.counters(&id, counters, now_us());
        }
    }
}

/// Keeps the observer on the cluster's current processes while somebody watches, and its
/// sampling in step with the traffic.
/// `forced`: always (`Some(true)`) or never (`Some(false)`) observe, whoever watches.
pub(super) async fn keep_observing(
    lab: Lab,
    observer: Arc<Observer>,
    drawn_per_sec: f64,
    forced: Option<bool>,
) {
    let cancel = lab.inner.cancel.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let watching = forced.unwrap_or_else(|| {
            lab.inner.watchers.load(Ordering::Relaxed) > 0 || *lab.inner.users_running.borrow()
        });
        if !watching {
            observer.set_targets(&[]);
            continue;
        }
        let operator_token = lab.operator_token();
        let mut targets = vec![Target {
            name: "controller".into(),
            http_url: lab.controller_url(),
            operator_token: operator_token.clone(),
        }];
        targets.extend(
            lab.nodes()
                .into_iter()
                .filter(|n| matches!(n.process, ProcessState::Running | ProcessState::Paused))
                .map(|n| Target {
                    name: n.name,
                    http_url: n.http_url,
                    operator_token: operator_token.clone(),
                }),
        );
        observer.set_targets(&targets);
        // Resubscribe only when the sampling should change by more than half: each change
        // costs the nodes a reconnect.
        let want = lab.inner.world.lock().wanted_sample(drawn_per_sec);
        let have = observer.sample();
        if want > have * 2 || want * 2 < have {
            observer.set_sample(want);
        }
        lab.inner.world.lock().set_sample(observer.sample());
    }
}
