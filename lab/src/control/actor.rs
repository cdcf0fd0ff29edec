//! The task that owns the cluster: it carries out the lab's operations one at a time (so they
//! never overlap), starts and stops the virtual users, and switches the cluster to another
//! backend set.

use super::*;

/// The task that owns the cluster and the virtual users.
pub(super) struct Actor {
    pub(super) lab: Lab,
    pub(super) cluster: Option<Cluster>,
    pub(super) users: Option<VirtualUsers>,
    pub(super) users_config: Option<UsersConfig>,
    pub(super) traffic: Traffic,
    pub(super) leftovers: Option<stacks::Leftovers>,
    pub(super) observe: mpsc::UnboundedSender<Observation>,
    pub(super) slots: watch::Sender<Vec<NodeInfo>>,
    pub(super) controller: watch::Sender<String>,
    pub(super) operator: watch::Sender<String>,
    pub(super) users_running: watch::Sender<bool>,
    pub(super) known: HashMap<String, ProcessState>,
    /// The teaching mode the lab turned on (given again to nodes that start meanwhile).
    pub(super) teaching: Option<protocol::teaching::Teaching>,
}

impl Actor {
    pub(super) async fn run(
        mut self,
        mut ops: mpsc::Receiver<Job>,
        mut stop: mpsc::Receiver<oneshot::Sender<Result<bool, LabError>>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let reply = loop {
            tokio::select! {
                reply = stop.recv() => break reply,
                _ = self.lab.inner.kill.cancelled() => break None,
                job = ops.recv() => {
                    let Some((op, reply)) = job else { break None };
                    let what = describe(&op);
                    self.lab.inner.world.lock().set_busy(Some(what));
                    let kill = self.lab.inner.kill.clone();
                    let result = tokio::select! {
                        r = self.execute(op) => r,
                        _ = kill.cancelled() => Err("killed".into()),
                    };
                    self.lab.inner.world.lock().set_busy(None);
                    self.refresh();
                    let result = match result {
                        Ok(message) => OpResult { ok: true, message },
                        Err(message) => {
                            self.lab.log(Level::Bad, format!("error: {message}"));
                            OpResult { ok: false, message }
                        }
                    };
                    let _ = reply.send(result);
                }
                _ = tick.tick() => self.refresh(),
            }
        };
        let result = self.stop_all().await;
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Stops the users and the cluster; a second Ctrl-C (kill) drops them at once.
    async fn stop_all(&mut self) -> Result<bool, LabError> {
        let kill = self.lab.inner.kill.clone();
        let users = self.users.take();
        let cluster = self.cluster.take();
        let graceful = async move {
            if let Some(users) = users {
                users.shutdown().await;
            }
            match cluster {
                Some(c) => c
                    .shutdown()
                    .await
                    .map(|exits| exits.iter().all(crate::process::Exit::is_clean)),
                None => Ok(true),
            }
        };
        tokio::select! {
            r = graceful => r,
            // Dropping the future dropped the cluster, which SIGKILLed every process.
            _ = kill.cancelled() => Ok(false),
        }
    }

    fn cluster(&mut self) -> Result<&mut Cluster, String> {
        self.cluster
            .as_mut()
            .ok_or_else(|| "no cluster runs (it failed to start on the last backend set)".into())
    }

    /// Notices processes that died on their own and hands the slots to the world.
    fn refresh(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let nodes = cluster.refresh();
        for n in &nodes {
            let before = self.known.insert(n.id.to_string(), n.process.clone());
            if let ProcessState::Exited { status } = &n.process
                && before.as_ref() != Some(&n.process)
            {
                self.lab.log(
                    Level::Bad,
                    format!(
                        "{} died on its own ({})",
                        n.id,
                        crate::process::describe_status(*status)
                    ),
                );
            }
        }
        if !cluster.controller_running() {
            self.lab.log(Level::Bad, "the controller died");
        }
        self.lab.inner.world.lock().set_slots(nodes.clone());
        self.slots.send_replace(nodes);
    }

    pub(super) fn publish_setup(&mut self) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let setup = Setup {
            controller: cluster.controller_url().to_owned(),
            backends: stacks::describe(&cluster.config().backends),
            choices: stacks::choices(),
            lease_ms: cluster.config().lease().as_millis() as u64,
            cuttable: cluster.config().cuttable_bus,
        };
        self.operator
            .send_replace(cluster.operator_token().to_owned());
        self.controller.send_replace(setup.controller.clone());
        let mut world = self.lab.inner.world.lock();
        world.set_setup(setup);
        world.set_slots(cluster.nodes());
        drop(world);
        self.publish_traffic(false);
    }

    fn publish_traffic(&self, starting: bool) {
        let (users, per_user) = self
            .users_config
            .as_ref()
            .map_or((0, 0), |c| (c.users as u32, c.devices_per_user as u32));
        let view = TrafficView {
            users,
            devices_per_user: per_user,
            rate: self.traffic.rate,
            room_share: self.traffic.room_share,
            conversations: self.users.as_ref().map_or(0, |u| u.conversations() as u32),
            starting,
            ..TrafficView::default()
        };
        self.lab.inner.world.lock().set_traffic(view);
    }

    /// Starts the configured virtual users (logging what fails).
    pub(super) async fn start_users(&mut self) {
        if let Err(e) = self.try_start_users().await {
            self.lab.log(Level::Bad, format!("virtual users: {e}"));
        }
    }

    async fn try_start_users(&mut self) -> Result<String, String> {
        if let Some(old) = self.users.take() {
            old.shutdown().await;
        }
        self.users_running.send_replace(false);
        let Some(config) = self.users_config.clone().filter(|c| c.users > 0) else {
            self.publish_traffic(false);
            return Ok("virtual users stopped".into());
        };
        let url = self.cluster()?.controller_url().to_owned();
        self.publish_traffic(true);
        self.lab.inner.world.lock().checker_mut().reset(now_us());
        let started = Instant::now();
        let devices = config.users * config.devices_per_user;
        self.lab.log(
            Level::Ok,
            format!(
                "logging {} virtual users in on {devices} devices…",
                config.users
            ),
        );
        // Watching from the first login on: the assignments are part of the show.
        self.users_running.send_replace(true);
        let users = VirtualUsers::start(
            &url,
            config.clone(),
            self.observe.clone(),
            self.lab.inner.cancel.child_token(),
        )
        .await
        .map_err(|e| e.to_string());
        let users = match users {
            Ok(u) => u,
            Err(e) => {
                self.users_running.send_replace(false);
                self.publish_traffic(false);
                return Err(e);
            }
        };
        users.set_traffic(self.traffic);
        let message = format!(
            "{} users × {} devices started ({} conversations) in {}",
            config.users,
            config.devices_per_user,
            users.conversations(),
            human(started.elapsed())
        );
        self.users = Some(users);
        self.publish_traffic(false);
        Ok(message)
    }

    fn slot(&mut self, target: &str) -> Result<(usize, NodeInfo), String> {
        let cluster = self.cluster()?;
        let index = resolve_target(target, &cluster.nodes())?;
        let node = cluster.node(index).map_err(|e| e.to_string())?;
        Ok((index, node))
    }

    async fn execute(&mut self, op: Op) -> Result<String, String> {
        let err = |e: LabError| e.to_string();
        let message = match op {
            Op::Kill { node } => {
                let (index, n) = self.slot(&node)?;
                self.cluster()?.kill_node(index).await.map_err(err)?;
                self.notice(&n, "kill");
                format!(
                    "{} killed (SIGKILL, pid {}): its devices reconnect elsewhere; watch the \
                     registry drop it",
                    n.id, n.pid
                )
            }
            Op::Stop { node } => {
                let (index, n) = self.slot(&node)?;
                self.lab.log(
                    Level::Warn,
                    format!("{}: SIGTERM sent (pid {}); it drains…", n.id, n.pid),
                );
                self.notice(&n, "stop");
                let exit = self.cluster()?.stop_node(index).await.map_err(err)?;
                format!(
                    "{} stopped (SIGTERM): {} after {}",
                    n.id,
                    crate::process::describe_status(exit.status),
                    human(exit.took)
                )
            }
            Op::Freeze { node } => {
                let (index, n) = self.slot(&node)?;
                self.cluster()?.pause_node(index).map_err(err)?;
                self.notice(&n, "freeze");
                let lease = self.cluster()?.config().lease().as_secs_f64();
                format!(
                    "{} frozen (SIGSTOP, pid {}): no heartbeats; the registry drops it when \
                     its lease ({lease:.1} s) runs out",
                    n.id, n.pid
                )
            }
            Op::Thaw { node } => {
                let (index, n) = self.slot(&node)?;
                self.cluster()?.resume_node(index).map_err(err)?;
                format!("{} thawed (SIGCONT, pid {})", n.id, n.pid)
            }
            Op::Restart { node } => {
                let (index, n) = self.slot(&node)?;
                let started = Instant::now();
                let new = self.cluster()?.restart_node(index).await.map_err(err)?;
                let mode = self.teaching;
                crate::teach::reapply(self.cluster()?, mode, &new).await?;
                format!(
                    "{} restarted as {} (pid {}); live after {}",
                    n.id,
                    new.id,
                    new.pid,
                    human(started.elapsed())
                )
            }
            Op::CutBus { node } => {
                let (index, n) = self.slot(&node)?;
                let embedded = self.cluster()?.config().backends.bus == "embedded";
                self.cluster()?.cut_bus(index).map_err(err)?;
                if embedded {
                    format!(
                        "{}'s link to the controller cut (it carries the embedded bus and \
                         registry): the node runs on, the controller drops it until it is back",
                        n.id
                    )
                } else {
                    format!(
                        "{}'s bus connection cut: the node runs on without its bus",
                        n.id
                    )
                }
            }
            Op::RestoreBus { node } => {
                let (index, n) = self.slot(&node)?;
                self.cluster()?.restore_bus(index).map_err(err)?;
                format!(
                    "{}'s bus connection restored: it reconnects, and its devices catch up",
                    n.id
                )
            }
            Op::AddNode => {
                let started = Instant::now();
                let new = self.cluster()?.add_node().await.map_err(err)?;
                let mode = self.teaching;
                crate::teach::reapply(self.cluster()?, mode, &new).await?;
                format!(
                    "{} added (pid {}); live after {}",
                    new.id,
                    new.pid,
                    human(started.elapsed())
                )
            }
            Op::SetRouting { routing } => {
                let routing: Routing = routing.parse()?;
                let started = Instant::now();
                let nodes = self.cluster()?.set_routing(routing).await.map_err(err)?;
                let mode = self.teaching;
                for n in &nodes {
                    crate::teach::reapply(self.cluster()?, mode, n).await?;
                }
                self.publish_setup();
                format!(
                    "every node restarted with {} routing in {}",
                    routing.as_str(),
                    human(started.elapsed())
                )
            }
            Op::SetBackends { name } => self.switch_stack(&name).await?,
            Op::Users {
                users,
                devices_per_user,
            } => {
                let mut config = self
                    .users_config
                    .clone()
                    .unwrap_or_else(|| UsersConfig::new(0, 1));
                config.users = users as usize;
                config.devices_per_user = devices_per_user.max(1) as usize;
                self.users_config = Some(config);
                self.try_start_users().await?
            }
            Op::Rate {
                per_sec,
                room_share,
            } => {
                self.traffic.rate = per_sec.clamp(0.0, 5000.0);
                if let Some(share) = room_share {
                    self.traffic.room_share = share.clamp(0.0, 1.0);
                }
                if let Some(users) = &self.users {
                    users.set_traffic(self.traffic);
                }
                self.publish_traffic(false);
                format!(
                    "traffic: {} messages/s, {:.0}% in rooms",
                    self.traffic.rate,
                    self.traffic.room_share * 100.0
                )
            }
            Op::Burst { logins } => {
                let users = self
                    .users
                    .as_ref()
                    .ok_or_else(|| "start virtual users first".to_owned())?;
                let started = Instant::now();
                let n = users
                    .burst(logins.min(5000) as usize)
                    .await
                    .map_err(|e| e.to_string())?;
                format!(
                    "burst: {n} devices logged in at once in {}; see where the controller sent them",
                    human(started.elapsed())
                )
            }
            Op::EndBurst => {
                let users = self
                    .users
                    .as_ref()
                    .ok_or_else(|| "no virtual users".to_owned())?;
                format!("burst over: {} devices logged out", users.end_burst().await)
            }
            Op::Settle => {
                let mut world = self.lab.inner.world.lock();
                world.checker_mut().settle(now_us());
                world.checker().view().headline
            }
            Op::ResetChecker => {
                self.lab.inner.world.lock().checker_mut().reset(now_us());
                "the checker starts counting again".into()
            }
            Op::Teach { mode } => {
                let switched = crate::teach::switch(self.cluster()?, mode).await;
                // Whatever failed half-way, the world shows the mode asked for only if it
                // is on.
                if switched.is_ok() {
                    self.teaching = mode;
                    self.lab.inner.world.lock().set_teaching(mode);
                }
                self.publish_setup();
                switched?
            }
            Op::DelayBus { node, ms } => {
                let (index, n) = self.slot(&node)?;
                let delay = Duration::from_millis(ms.min(10_000));
                self.cluster()?.delay_bus(index, delay).map_err(err)?;
                if ms == 0 {
                    format!("{}'s bus connection runs at full speed again", n.id)
                } else {
                    format!(
                        "{}'s bus connection delayed by {} ms each way: one path slower than \
                         the others",
                        n.id,
                        delay.as_millis()
                    )
                }
            }
        };
        self.lab.log(Level::Ok, message.clone());
        Ok(message)
    }

    fn notice(&mut self, n: &NodeInfo, cause: &str) {
        self.lab
            .inner
            .world
            .lock()
            .expect_notice(n.id.as_str(), &n.name, cause, now_us());
    }

    /// Restarts the whole cluster on another backend set, and the virtual users with it.
    async fn switch_stack(&mut self, name: &str) -> Result<String, String> {
        let stack = stacks::find(name).ok_or_else(|| format!("no backend set {name:?}"))?;
        if let Some(missing) = stack.missing() {
            return Err(format!("{name} cannot run here: {missing} not found"));
        }
        let Some(old) = self.cluster.take() else {
            return Err("no cluster to restart".into());
        };
        let mut config = old.config().clone();
        let nodes = old.nodes().len().max(1);
        if let Some(users) = self.users.take() {
            users.shutdown().await;
        }
        self.users_running.send_replace(false);
        self.lab.log(
            Level::Warn,
            format!("stopping the cluster to restart it on {name}…"),
        );
        if let Err(e) = old.shutdown().await {
            self.lab.log(Level::Warn, e.to_string());
        }
        let tag = run_tag();
        let (backends, leftovers) = stack.backends(&tag, config.backends.routing)?;
        config.backends = backends;
        config.nodes = nodes;
        config.teaching_at_start = None;
        config.data_dir = None;
        let started = Instant::now();
        let cluster = Cluster::start(config).await.map_err(|e| e.to_string())?;
        self.leftovers = Some(leftovers);
        *self.lab.inner.dirs.lock() = (cluster.data_dir().to_owned(), cluster.log_dir().to_owned());
        self.cluster = Some(cluster);
        self.known.clear();
        self.lab.inner.world.lock().new_run(&tag, now_us());
        self.teaching = None;
        self.publish_setup();
        self.refresh();
        let mut message = format!(
            "the cluster runs on {} ({}), started in {}",
            stack.name,
            stack.label,
            human(started.elapsed())
        );
        if self.users_config.as_ref().is_some_and(|c| c.users > 0) {
            let users = self.try_start_users().await?;
            message.push_str(&format!("; {users}"));
        }
        Ok(message)
    }
}

/// What the panel shows while an operation runs.
fn describe(op: &Op) -> String {
    match op {
        Op::Kill { node } => format!("killing {node}…"),
        Op::Stop { node } => format!("stopping {node} (it drains)…"),
        Op::Freeze { node } => format!("freezing {node}…"),
        Op::Thaw { node } => format!("thawing {node}…"),
        Op::Restart { node } => format!("restarting {node}…"),
        Op::CutBus { node } => format!("cutting {node}'s bus…"),
        Op::RestoreBus { node } => format!("restoring {node}'s bus…"),
        Op::AddNode => "adding a node…".into(),
        Op::SetRouting { routing } => format!("restarting every node with {routing} routing…"),
        Op::SetBackends { name } => format!("restarting the cluster on {name}…"),
        Op::Users {
            users,
            devices_per_user,
        } => {
            format!("logging {users} users × {devices_per_user} devices in…")
        }
        Op::Rate { .. } => "setting the traffic…".into(),
        Op::Burst { logins } => format!("logging {logins} devices in at once…"),
        Op::EndBurst => "logging the burst out…".into(),
        Op::Settle => "judging…".into(),
        Op::ResetChecker => "resetting the checker…".into(),
        Op::Teach { mode: Some(mode) } => format!("turning teaching mode {mode} on…"),
        Op::Teach { mode: None } => "turning teaching mode off…".into(),
        Op::DelayBus { node, ms } => format!("delaying {node}'s bus by {ms} ms…"),
    }
}
