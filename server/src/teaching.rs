//! Teaching modes on a node or the controller (see [`protocol::teaching`]): which one is on,
//! whether this process may turn one on at all (only when started with `--teaching`), and
//! the `PUT /v1/teaching` answer both roles share.
//!
//! Invariant: a process started without `--teaching` never has a mode on; every switch it is
//! asked for is refused with `409 Conflict`, and nothing in its behaviour changes.

use std::sync::atomic::{AtomicU8, Ordering};

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::http::ErrorBody;
use protocol::teaching::{Teaching, TeachingSwitch};
use protocol::ws::ErrorCode;

use crate::auth::OperatorToken;

/// Where a switch is asked for: the modes each role carries out differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A chat node.
    Node,
    /// The controller.
    Controller,
}

/// The mode in force, and whether one may be turned on.
#[derive(Debug)]
pub struct TeachingState {
    allowed: bool,
    /// 0: none; else 1 + the index in [`Teaching::ALL`].
    mode: AtomicU8,
}

fn encode(mode: Option<Teaching>) -> u8 {
    mode.and_then(|m| Teaching::ALL.iter().position(|t| *t == m))
        .map_or(0, |i| i as u8 + 1)
}

impl TeachingState {
    /// `allowed`: the process was started with `--teaching`. `initial` is the mode chosen at
    /// start (only when allowed).
    pub fn new(allowed: bool, initial: Option<Teaching>) -> TeachingState {
        TeachingState {
            allowed,
            mode: AtomicU8::new(if allowed { encode(initial) } else { 0 }),
        }
    }

    /// Whether the process was started with `--teaching`.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The mode on, if any.
    pub fn get(&self) -> Option<Teaching> {
        match self.mode.load(Ordering::Relaxed) {
            0 => None,
            i => Teaching::ALL.get(usize::from(i) - 1).copied(),
        }
    }

    /// Whether `mode` is on.
    pub fn is(&self, mode: Teaching) -> bool {
        self.get() == Some(mode)
    }

    /// Turns `wanted` on (or teaching off) if this role may; the refusal says why not.
    pub fn switch(&self, role: Role, wanted: Option<Teaching>) -> Result<(), Refusal> {
        if !self.allowed {
            return Err(Refusal {
                status: StatusCode::CONFLICT,
                code: ErrorCode::Conflict,
                message: "teaching modes are only for a cluster started with --teaching".into(),
            });
        }
        let current = self.get();
        if current == wanted {
            return Ok(());
        }
        for mode in [current, wanted].into_iter().flatten() {
            if mode.at_start() {
                return Err(Refusal {
                    status: StatusCode::CONFLICT,
                    code: ErrorCode::Conflict,
                    message: format!(
                        "{mode} is chosen when a node starts (--teaching-mode {mode}): restart it"
                    ),
                });
            }
        }
        if let Some(mode) = wanted {
            let here = match role {
                Role::Node => !mode.on_controller(),
                Role::Controller => mode.on_controller(),
            };
            if !here {
                return Err(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    code: ErrorCode::Invalid,
                    message: format!(
                        "{mode} is carried out by the {}",
                        if mode.on_controller() {
                            "controller"
                        } else {
                            "nodes"
                        }
                    ),
                });
            }
        }
        self.mode.store(encode(wanted), Ordering::Relaxed);
        Ok(())
    }
}

/// Why a switch was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, &self.message))).into_response()
    }
}

/// `PUT /v1/teaching` for either role: the operator only; `Ok` carries the mode now on.
pub fn put(
    state: &TeachingState,
    role: Role,
    operator: &OperatorToken,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Teaching>, Refusal> {
    if !operator.admits(headers) {
        return Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            code: ErrorCode::Unauthorized,
            message: "the operator's token is needed".into(),
        });
    }
    let switch: TeachingSwitch = serde_json::from_slice(body).map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: ErrorCode::Malformed,
        message: format!("expected {{\"mode\": …}}: {e}"),
    })?;
    state.switch(role, switch.mode)?;
    if let Some(mode) = switch.mode {
        tracing::warn!(%mode, "teaching mode on: {}", mode.broken());
    } else {
        tracing::info!("teaching mode off");
    }
    Ok(switch.mode)
}

/// The answer to a switch that was made.
pub fn answer(mode: Option<Teaching>) -> Response {
    Json(TeachingSwitch { mode }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_started_without_teaching_refuses_every_mode() {
        let s = TeachingState::new(false, Some(Teaching::NoBus));
        assert_eq!(s.get(), None);
        for mode in Teaching::ALL {
            let role = if mode.on_controller() {
                Role::Controller
            } else {
                Role::Node
            };
            let refused = s.switch(role, Some(mode));
            assert_eq!(refused.map_err(|r| r.status), Err(StatusCode::CONFLICT));
            assert_eq!(s.get(), None);
        }
    }

    #[test]
    fn each_role_takes_its_own_modes() {
        let s = TeachingState::new(true, None);
        assert_eq!(s.switch(Role::Node, Some(Teaching::BusOnly)), Ok(()));
        assert!(s.is(Teaching::BusOnly));
        let wrong = s.switch(Role::Node, Some(Teaching::NaiveLeastConnections));
        assert_eq!(wrong.map_err(|r| r.status), Err(StatusCode::BAD_REQUEST));
        assert!(s.is(Teaching::BusOnly));
        assert_eq!(s.switch(Role::Node, None), Ok(()));
        assert_eq!(s.get(), None);
        let c = TeachingState::new(true, None);
        assert_eq!(
            c.switch(Role::Controller, Some(Teaching::NaiveLeastConnections)),
            Ok(())
        );
    }

    #[test]
    fn the_shared_queue_is_chosen_at_start_only() {
        let s = TeachingState::new(true, Some(Teaching::SharedQueue));
        assert!(s.is(Teaching::SharedQueue));
        assert!(s.switch(Role::Node, None).is_err());
        let t = TeachingState::new(true, None);
        assert!(t.switch(Role::Node, Some(Teaching::SharedQueue)).is_err());
    }
}
