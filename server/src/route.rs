//! Turning "these users must get this" into bus publishes: in routed mode, one `locate` for a
//! whole batch and a publish to exactly the nodes holding a recipient's device (or, on a bus
//! that hosts the registry, a publish to the users, whose nodes the bus finds as it routes);
//! in fanout mode, one publish to every node. Used by nodes, the controller and the recovery
//! task alike.

use bytes::Bytes;
use protocol::bus::{BusHeader, BusKind, Envelope};
use protocol::link::Targets;
use protocol::{NodeId, UserId};

use crate::bus::{BusError, Routing, SharedBus, order_key};
use crate::ids::now_ms;
use crate::registry::{RegistryError, SharedRegistry};

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The registry could not say where the recipients are.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The bus refused or is down.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Publishes on behalf of one process (a node, or a controller).
#[derive(Clone)]
pub struct Router {
    /// Who publishes (the envelope's origin; a node skips its own envelopes).
    pub me: NodeId,
    /// Where recipients are.
    pub registry: SharedRegistry,
    /// The bus.
    pub bus: SharedBus,
    /// Routed or fanout.
    pub routing: Routing,
}

impl Router {
    /// The targets for each recipient list, in order, with one registry round trip for all.
    /// `None` means nobody else needs it (every recipient is local or offline).
    pub async fn targets(&self, lists: &[&[UserId]]) -> Result<Vec<Option<Targets>>, RouteError> {
        if self.routing == Routing::Fanout {
            return Ok(lists.iter().map(|_| Some(Targets::All)).collect());
        }
        if self.bus.resolves_users() {
            // The bus looks the users up as it routes: no round trip here.
            return Ok(lists
                .iter()
                .map(|list| (!list.is_empty()).then(|| Targets::Users(list.to_vec())))
                .collect());
        }
        let mut users: Vec<UserId> = lists.iter().flat_map(|l| l.iter().copied()).collect();
        users.sort_unstable();
        users.dedup();
        let located = self.registry.locate(&users).await?;
        Ok(lists
            .iter()
            .map(|list| {
                let mut nodes: Vec<NodeId> = Vec::new();
                for u in list.iter() {
                    if let Ok(i) = users.binary_search(u) {
                        for n in &located[i] {
                            if *n != self.me && !nodes.contains(n) {
                                nodes.push(n.clone());
                            }
                        }
                    }
                }
                (!nodes.is_empty()).then_some(Targets::Nodes(nodes))
            })
            .collect())
    }

    /// Frames an envelope from this publisher.
    pub fn envelope(&self, recipients: Vec<UserId>, kind: BusKind, frame: Bytes) -> Bytes {
        Envelope {
            header: BusHeader {
                origin: self.me.clone(),
                sent_at: now_ms(),
                recipients,
                kind,
            },
            frame,
        }
        .encode()
    }

    /// Publishes one frame for `recipients` (a lone publish; nodes batch theirs).
    pub async fn publish(
        &self,
        recipients: &[UserId],
        kind: BusKind,
        frame: Bytes,
    ) -> Result<(), RouteError> {
        let targets = self.targets(&[recipients]).await?;
        if let Some(Some(t)) = targets.into_iter().next() {
            let key = order_key(&kind);
            let env = self.envelope(recipients.to_vec(), kind, frame);
            self.bus.publish(&t, &key, env).await?;
        }
        Ok(())
    }
}
