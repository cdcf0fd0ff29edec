//! What a run reports: each phase's figures, the memory an idle connection costs, and the
//! tables that set the systems measured side by side.

/// One phase's figures.
#[derive(Clone, Debug)]
pub struct PhaseReport {
    /// Offered rate (messages/s).
    pub offered: u32,
    /// Messages sent per second, as achieved by the generator.
    pub sent_rate: f64,
    /// Messages received by their recipients per second.
    pub delivered_rate: f64,
    /// Messages sent in the phase.
    pub sent: u64,
    /// Sent but not received within the drain time.
    pub lost: u64,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub latency_us: [u64; 5],
    /// Server CPU (all cluster processes, plus external ones) as a share of one core.
    pub cpu_cores: f64,
    /// Server CPU microseconds per delivered message.
    pub cpu_us_per_message: f64,
    /// The load generator's own CPU, as a share of one core (if it nears the machine's cores,
    /// the figures measure the generator, not the cluster).
    pub generator_cores: f64,
    /// The server CPU split by process group (controller, each node, each external command),
    /// as shares of one core.
    pub cpu_by_group: Vec<(String, f64)>,
}

/// Memory figures. The idle connections are opened in two halves: the first half also pays
/// for what a node allocates once as it gets busy (caches filling, allocator arenas, tables
/// growing), the second half only for the connections themselves.
#[derive(Clone, Debug)]
pub struct MemoryReport {
    /// Idle connections opened.
    pub connections: usize,
    /// Increase of the nodes' resident memory over all of them, in bytes.
    pub rss_increase: i64,
    /// Connections in the second half.
    pub marginal_connections: usize,
    /// Increase of the nodes' resident memory over the second half, in bytes.
    pub marginal_increase: i64,
}

impl MemoryReport {
    /// Bytes per idle connection, the one-time costs included.
    pub fn per_connection(&self) -> f64 {
        self.rss_increase as f64 / self.connections.max(1) as f64
    }

    /// Bytes one more idle connection costs (second half).
    pub fn marginal(&self) -> f64 {
        self.marginal_increase as f64 / self.marginal_connections.max(1) as f64
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The CPU split of a phase, on a line of its own.
pub fn format_cpu(r: &PhaseReport) -> String {
    let groups: Vec<String> = r
        .cpu_by_group
        .iter()
        .map(|(name, cores)| format!("{name} {cores:.2}"))
        .collect();
    format!("             cpu cores: {}", groups.join(" · "))
}

/// The figures of every phase as one table, for reports.
pub fn format_summary(memory: Option<&MemoryReport>, phases: &[PhaseReport]) -> String {
    let mut out = String::new();
    if let Some(m) = memory {
        out.push_str(&format!(
            "memory per idle connection: {:.2} KiB for one more ({:.2} KiB on average over {} connections)\n",
            m.marginal() / 1024.0,
            m.per_connection() / 1024.0,
            m.connections
        ));
    }
    out.push_str(
        "  rate/s  sent/s deliv/s   lost  p50 ms  p90 ms  p99 ms p99.9 ms   max ms  cores  µs/msg\n",
    );
    for r in phases {
        let [p50, p90, p99, p999, max] = r.latency_us.map(ms);
        out.push_str(&format!(
            "{:>8} {:>7.0} {:>7.0} {:>6} {p50:>7} {p90:>7} {p99:>7} {p999:>8} {max:>8} {:>6.2} {:>7.1}\n",
            r.offered, r.sent_rate, r.delivered_rate, r.lost, r.cpu_cores, r.cpu_us_per_message,
        ));
    }
    out
}

/// What one system did over a run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Memory per idle connection, if measured.
    pub memory: Option<MemoryReport>,
    /// One report per phase.
    pub phases: Vec<PhaseReport>,
}

impl PhaseReport {
    /// Whether the system held the rate: nothing lost, at least 98% of the offered rate
    /// delivered, p99 under 100 ms (past that, a queue is growing).
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.delivered_rate >= 0.98 * f64::from(self.offered)
            && self.latency_us[2] < 100_000
    }
}

/// The two systems' figures side by side, rate by rate, with the ratios the project is
/// judged by.
pub fn format_comparison(ours: &Outcome, peer: &Outcome) -> String {
    let mut out = String::from(
        "side by side (ours vs socket.io + redis adapter; same generator, phases interleaved):\n\
         \x20 rate/s  p99 ours  p99 peer  µs/msg ours  µs/msg peer  cpu ours/peer  held ours  held peer\n",
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for (o, p) in ours.phases.iter().zip(&peer.phases) {
        out.push_str(&format!(
            "{:>8} {:>9} {:>9} {:>12.1} {:>12.1} {:>14.2} {:>10} {:>10}\n",
            o.offered,
            ms(o.latency_us[2]),
            ms(p.latency_us[2]),
            o.cpu_us_per_message,
            p.cpu_us_per_message,
            o.cpu_us_per_message / p.cpu_us_per_message.max(f64::MIN_POSITIVE),
            yes(o.holds()),
            yes(p.holds()),
        ));
    }
    let best = |o: &Outcome| {
        o.phases
            .iter()
            .filter(|r| r.holds())
            .map(|r| r.offered)
            .max()
            .unwrap_or(0)
    };
    out.push_str(&format!(
        "highest rate held: ours {}/s, socket.io {}/s\n",
        best(ours),
        best(peer)
    ));
    if let (Some(o), Some(p)) = (&ours.memory, &peer.memory) {
        out.push_str(&format!(
            "memory per idle connection (one more): ours {:.2} KiB, socket.io {:.2} KiB (ours/peer {:.2})\n",
            o.marginal() / 1024.0,
            p.marginal() / 1024.0,
            o.marginal() / p.marginal().max(f64::MIN_POSITIVE)
        ));
    }
    out
}

/// Ours against the floor (a bare relay that persists each message), rate by rate; with the
/// peer's figures, also the floor against a third of the peer's CPU per message, the bar the
/// project set itself. A ratio above 1 there means that even the floor spends more.
pub fn format_floor(ours: &Outcome, floor: &Outcome, peer: Option<&Outcome>) -> String {
    let mut out = String::from(
        "against the floor (a bare relay persisting each message; same generator, phases interleaved):\n\
         \x20 rate/s  µs/msg ours  µs/msg floor  ours/floor  p99 floor",
    );
    if peer.is_some() {
        out.push_str("  peer/3 µs  floor/(peer/3)");
    }
    out.push('\n');
    for (i, (o, f)) in ours.phases.iter().zip(&floor.phases).enumerate() {
        out.push_str(&format!(
            "{:>8} {:>12.1} {:>13.1} {:>11.2} {:>10}",
            o.offered,
            o.cpu_us_per_message,
            f.cpu_us_per_message,
            o.cpu_us_per_message / f.cpu_us_per_message.max(f64::MIN_POSITIVE),
            ms(f.latency_us[2]),
        ));
        if let Some(p) = peer.and_then(|p| p.phases.get(i)) {
            let allowance = p.cpu_us_per_message / 3.0;
            out.push_str(&format!(
                " {:>9.1} {:>15.2}",
                allowance,
                f.cpu_us_per_message / allowance.max(f64::MIN_POSITIVE)
            ));
        }
        out.push('\n');
    }
    if let (Some(o), Some(f)) = (&ours.memory, &floor.memory) {
        out.push_str(&format!(
            "memory per idle connection (one more): ours {:.2} KiB, floor {:.2} KiB\n",
            o.marginal() / 1024.0,
            f.marginal() / 1024.0,
        ));
    }
    out
}

/// One line per phase.
pub fn format_phase(r: &PhaseReport) -> String {
    let [p50, p90, p99, p999, max] = r.latency_us.map(ms);
    format!(
        "rate {:>6}/s: sent {:>8.0}/s delivered {:>8.0}/s lost {:>5}  latency ms p50 {p50:>6} p90 {p90:>6} p99 {p99:>7} p99.9 {p999:>7} max {max:>7}  server cpu {:>4.2} cores, {:>5.1} µs/msg  (generator {:.2} cores)",
        r.offered,
        r.sent_rate,
        r.delivered_rate,
        r.lost,
        r.cpu_cores,
        r.cpu_us_per_message,
        r.generator_cores,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(offered: u32, delivered: f64, lost: u64, p99_us: u64, cpu: f64) -> PhaseReport {
        PhaseReport {
            offered,
            sent_rate: f64::from(offered),
            delivered_rate: delivered,
            sent: u64::from(offered) * 10,
            lost,
            latency_us: [1000, 2000, p99_us, p99_us, p99_us],
            cpu_cores: 1.0,
            cpu_us_per_message: cpu,
            generator_cores: 0.1,
            cpu_by_group: Vec::new(),
        }
    }

    #[test]
    fn a_rate_is_held_only_without_loss_backlog_or_a_growing_queue() {
        assert!(report(1000, 1000.0, 0, 5_000, 1.0).holds());
        assert!(!report(1000, 1000.0, 1, 5_000, 1.0).holds());
        assert!(!report(1000, 900.0, 0, 5_000, 1.0).holds());
        assert!(!report(1000, 1000.0, 0, 150_000, 1.0).holds());
    }

    #[test]
    fn the_floor_comparison_sets_the_floor_against_a_third_of_the_peer() {
        let outcome = |cpu: f64| Outcome {
            memory: None,
            phases: vec![report(1000, 1000.0, 0, 2_000, cpu)],
        };
        let (ours, floor, peer) = (outcome(120.0), outcome(60.0), outcome(150.0));
        let text = format_floor(&ours, &floor, Some(&peer));
        // ours/floor 2.00; a third of the peer 50.0; the floor spends 1.20 of it.
        assert!(text.contains("2.00"), "{text}");
        assert!(text.contains("50.0"), "{text}");
        assert!(text.contains("1.20"), "{text}");
        let without_peer = format_floor(&ours, &floor, None);
        assert!(!without_peer.contains("peer/3"), "{without_peer}");
    }

    #[test]
    fn the_comparison_gives_the_cpu_ratio_and_the_highest_rates_held() {
        let ours = Outcome {
            memory: None,
            phases: vec![
                report(1000, 1000.0, 0, 2_000, 100.0),
                report(2000, 2000.0, 0, 3_000, 80.0),
            ],
        };
        let peer = Outcome {
            memory: None,
            phases: vec![
                report(1000, 1000.0, 0, 4_000, 300.0),
                report(2000, 1500.0, 0, 500_000, 320.0),
            ],
        };
        let text = format_comparison(&ours, &peer);
        assert!(text.contains("0.33"), "{text}");
        assert!(text.contains("0.25"), "{text}");
        assert!(
            text.contains("highest rate held: ours 2000/s, socket.io 1000/s"),
            "{text}"
        );
    }
}
