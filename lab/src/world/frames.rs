//! What the world shows: the panel's frames ([`World::update`]: the state now plus what changed
//! since the panel's cursor) and the run's report ([`World::report`]), built from what
//! `world.rs` took in.

use super::*;

impl World {
    pub(super) fn live_nodes(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.process == ProcessState::Running)
            .count()
    }

    pub(super) fn live_devices(&self) -> u32 {
        self.devices
            .iter()
            .filter(|d| d.state == DeviceState::Live)
            .count() as u32
    }

    fn registry_entry(&self, id: &str) -> Option<&NodeStatus> {
        self.registry
            .as_ref()
            .and_then(|r| r.nodes.iter().find(|n| n.id.as_str() == id))
    }

    /// The cluster as drawn.
    pub fn cluster_view(&self) -> ClusterView {
        let mut per_slot: HashMap<&str, u32> = HashMap::new();
        for d in &self.devices {
            if let Some(n) = &d.node
                && matches!(d.state, DeviceState::Live | DeviceState::Resyncing)
            {
                *per_slot.entry(n.as_str()).or_default() += 1;
            }
        }
        let now = self.registry.as_ref().map_or(0, |r| r.now);
        let nodes = self
            .slots
            .iter()
            .map(|s| {
                let entry = self.registry_entry(s.id.as_str());
                let rates = self.rates.get(s.id.as_str()).copied().unwrap_or_default();
                let state = match (&s.process, entry.map(|e| e.state)) {
                    (ProcessState::Killed | ProcessState::Exited { .. }, _) => NodeState::Dead,
                    (ProcessState::Stopped { .. }, _) => NodeState::Stopped,
                    (ProcessState::Paused, _) => NodeState::Frozen,
                    (ProcessState::Running, Some(RegistryState::Draining)) => NodeState::Draining,
                    (ProcessState::Running, Some(RegistryState::Live)) => NodeState::Live,
                    // The embedded registry forgets a node whose link is cut: it still runs.
                    (ProcessState::Running, None) if s.bus_cut => NodeState::Live,
                    (ProcessState::Running, None) => NodeState::Starting,
                };
                let running = s.process == ProcessState::Running;
                NodeView {
                    slot: s.name.clone(),
                    id: s.id.to_string(),
                    pid: s.pid,
                    state,
                    bus_cut: s.bus_cut,
                    registered: entry.is_some(),
                    connections: entry.map_or(0, |e| e.connections),
                    reserved: entry.map_or(0, |e| e.reserved),
                    lease_left_ms: entry
                        .map(|e| self.setup.lease_ms as i64 - (now - e.last_heartbeat)),
                    in_per_sec: if running { rates.in_per_sec } else { 0.0 },
                    out_per_sec: if running { rates.out_per_sec } else { 0.0 },
                    devices: per_slot.get(s.name.as_str()).copied().unwrap_or(0),
                }
            })
            .collect();
        ClusterView {
            controller: self.setup.controller.clone(),
            backends: self.setup.backends.clone(),
            choices: self.setup.choices.clone(),
            lease_ms: self.setup.lease_ms,
            nodes,
            registry_error: self.registry_error.clone(),
            cuttable: self.setup.cuttable,
            teaching: self.teaching,
        }
    }

    fn devices_view(&self) -> DevicesView {
        DevicesView {
            users: self.users.clone(),
            devices: self
                .devices
                .iter()
                .map(|d| DeviceDot(d.user, d.node.clone(), d.state, d.id.clone()))
                .collect(),
        }
    }

    fn traffic_view(&self) -> TrafficView {
        TrafficView {
            devices: self.devices.len() as u32,
            live: self.live_devices(),
            ..self.traffic.clone()
        }
    }

    pub(super) fn presence_view(&self) -> PresenceView {
        let mut names: Vec<String> = self
            .online
            .keys()
            .filter_map(|u| self.user_ids.get(u).cloned())
            .collect();
        names.sort();
        names.truncate(ONLINE_LISTED);
        PresenceView {
            online: self.online.len() as u32,
            users: self.user_ids.len() as u32,
            online_names: names,
            notices: self.notices.clone(),
        }
    }

    /// The next frame for the panel at `cursor`, which it advances.
    pub fn update(&self, cursor: &mut Cursor, now_us: i64) -> Update {
        let full = cursor.run != self.run;
        if full {
            *cursor = Cursor {
                run: self.run.clone(),
                ..Cursor::default()
            };
        }
        let mut changed: Vec<&Tracked> = self
            .message_order
            .iter()
            .filter_map(|id| self.messages.get(id))
            .filter(|t| t.changed > cursor.counter)
            .collect();
        let limit = if full {
            MESSAGES_FULL
        } else {
            MESSAGES_PER_FRAME
        };
        let skipped = changed.len().saturating_sub(limit) as u64;
        let changed = changed.split_off(changed.len().saturating_sub(limit));
        let messages = changed.into_iter().map(|t| t.view.clone()).collect();
        let mut assignments: Vec<AssignmentView> = self
            .assignments
            .iter()
            .filter(|(c, _)| *c > cursor.counter)
            .map(|(_, a)| a.clone())
            .collect();
        if full {
            assignments = assignments.split_off(assignments.len().saturating_sub(50));
        }
        let log = self
            .log
            .iter()
            .filter(|(c, _)| *c > cursor.counter)
            .map(|(_, l)| l.clone())
            .collect();
        let devices = (full || cursor.devices != self.devices_version).then(|| self.devices_view());
        let narration = (full || cursor.narration != self.narration_version)
            .then(|| self.narration.clone().unwrap_or_default());
        cursor.counter = self.counter;
        cursor.devices = self.devices_version;
        cursor.narration = self.narration_version;
        Update {
            now_us,
            run: self.run.clone(),
            full,
            cluster: self.cluster_view(),
            devices,
            messages,
            assignments,
            log,
            checker: self.checker.view(),
            traffic: self.traffic_view(),
            presence: self.presence_view(),
            narration,
            busy: self.busy.clone(),
            skipped_messages: skipped,
        }
    }

    /// The run so far, for export.
    pub fn report(&self, now_us: i64) -> Report {
        Report {
            run: self.run.clone(),
            started_us: self.started_us,
            made_us: now_us,
            cluster: self.cluster_view(),
            checker: self.checker.view(),
            traffic: self.traffic_view(),
            presence: self.presence_view(),
            series: self.series.iter().cloned().collect(),
            log: self.log.iter().map(|(_, l)| l.clone()).collect(),
            messages: self
                .message_order
                .iter()
                .rev()
                .take(50)
                .filter_map(|id| self.messages.get(id).map(|t| t.view.clone()))
                .collect(),
            assignments: self
                .assignments
                .iter()
                .rev()
                .take(50)
                .map(|(_, a)| a.clone())
                .collect(),
            lessons: self.lessons.clone(),
        }
    }
}
