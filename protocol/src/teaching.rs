//! Teaching modes: switches that break one guarantee on purpose, so that a class sees the
//! mistake an article made before it sees the fix. Only a cluster started with `--teaching`
//! (the lab starts its own so) accepts one; any other refuses with `409 Conflict`.
//!
//! - `PUT /v1/teaching` with a [`TeachingSwitch`] (the operator's `Authorization: Bearer`),
//!   on a node or the controller: turns a mode on (or every mode off, `{"mode":null}`);
//!   answered with the switch now in force. A node takes the node modes, the controller
//!   [`Teaching::NaiveLeastConnections`]; [`Teaching::SharedQueue`] is chosen when a node
//!   starts (`--teaching-mode shared-queue`), since it decides which queue the node consumes.
//! - While a mode is on, a node tells each of its devices with a
//!   [`crate::ws::ServerFrame::Teaching`] frame (after `welcome`, and again when it changes),
//!   and a client shows "teaching mode: <what is broken>" on its status line.

use serde::{Deserialize, Serialize};

/// One mistake a cluster can be switched to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Teaching {
    /// No bus: a node delivers to its own devices only (a load balancer alone, `002_*`).
    NoBus,
    /// The bus only: no resync when the bus comes back and no gap filling from the store, so
    /// what pub/sub drops is lost to the user (`001_*`). The client core fills no gap either.
    BusOnly,
    /// Every node consumes one shared queue (one consumer group): each sees a share (`003_*`).
    SharedQueue,
    /// Events go to devices as they arrive, not in `seq` order (`004_*`).
    ArrivalOrder,
    /// The controller's least-connections as the article wrote it: a scan of every node under
    /// one global lock, no reservations, counts as the last heartbeat left them (`000_*`).
    NaiveLeastConnections,
}

impl Teaching {
    /// Every mode.
    pub const ALL: [Teaching; 5] = [
        Teaching::NoBus,
        Teaching::BusOnly,
        Teaching::SharedQueue,
        Teaching::ArrivalOrder,
        Teaching::NaiveLeastConnections,
    ];

    /// Its kebab-case name (`no-bus`).
    pub fn as_str(self) -> &'static str {
        match self {
            Teaching::NoBus => "no-bus",
            Teaching::BusOnly => "bus-only",
            Teaching::SharedQueue => "shared-queue",
            Teaching::ArrivalOrder => "arrival-order",
            Teaching::NaiveLeastConnections => "naive-least-connections",
        }
    }

    /// What is broken while it is on, for a status line ("teaching mode: …").
    pub fn broken(self) -> &'static str {
        match self {
            Teaching::NoBus => "no bus between nodes: only devices on the same node get messages",
            Teaching::BusOnly => "no resync and no gap filling: what the bus drops is lost",
            Teaching::SharedQueue => {
                "one shared queue for every node: each node sees only a share of the messages"
            }
            Teaching::ArrivalOrder => "messages shown in arrival order, not by seq",
            Teaching::NaiveLeastConnections => {
                "least connections by a locked scan of lagging counts, without reservations"
            }
        }
    }

    /// Whether the controller carries it out (else the nodes do).
    pub fn on_controller(self) -> bool {
        self == Teaching::NaiveLeastConnections
    }

    /// Whether it is chosen when a node starts rather than switched at run time.
    pub fn at_start(self) -> bool {
        self == Teaching::SharedQueue
    }

    /// The status line while it is on.
    pub fn status_line(self) -> String {
        format!("teaching mode: {}", self.broken())
    }
}

impl std::fmt::Display for Teaching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Teaching {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Teaching::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Teaching::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown teaching mode {s:?} (known: {})", known.join(", "))
            })
    }
}

/// `PUT /v1/teaching`'s body and answer: the mode to turn on, or none (every mode off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeachingSwitch {
    /// The mode; `null` turns teaching off.
    pub mode: Option<Teaching>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for t in Teaching::ALL {
            let json = serde_json::to_string(&t).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(t.as_str().parse::<Teaching>(), Ok(t));
        }
        assert!("fast".parse::<Teaching>().is_err());
        let off: TeachingSwitch =
            serde_json::from_str(r#"{"mode":null}"#).unwrap_or(TeachingSwitch {
                mode: Some(Teaching::NoBus),
            });
        assert_eq!(off.mode, None);
    }
}
