//! The node ↔ controller link of the embedded setup, where the controller hosts the registry
//! and the bus so that one machine needs nothing installed. [`hub`] is the controller's end,
//! [`client`] the node's; the frames are in `protocol::link`.

pub mod client;
pub mod hub;

pub use client::LinkClient;
pub use hub::{HubBus, LinkHub};

/// How much a link socket reads at a time, on both ends. tungstenite zeroes this much of its
/// buffer before every read, so the default (128 KiB) cost each small frame a 128 KiB memset;
/// a frame larger than this takes more reads.
pub const READ_BUFFER: usize = 16 * 1024;

/// The link's WebSocket settings on the node's end (the controller's end sets the same read
/// size on its upgrade).
pub(crate) fn socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::State;
    use axum::extract::ws::WebSocketUpgrade;
    use axum::routing::get;
    use bytes::Bytes;
    use protocol::link::Targets;
    use protocol::{NodeId, UserId};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::auth::KeyRing;
    use crate::bus::{Bus, SharedBus};
    use crate::ids::now_ms;
    use crate::registry::memory::MemoryRegistry;
    use crate::registry::{
        DeadNode, Lease, Load, NodeInfo, Registry, RegistryError, RegistryResult,
    };
    use protocol::Millis;
    use protocol::http::{AssignResponse, NodeState, NodeStatus};

    struct TestHub {
        url: String,
        registry: Arc<MemoryRegistry>,
        hub: Arc<LinkHub>,
        server: tokio::task::JoinHandle<()>,
    }

    impl TestHub {
        async fn start(listener: TcpListener) -> TestHub {
            TestHub::with_lease(listener, 60_000).await
        }

        async fn with_lease(listener: TcpListener, lease_ms: u64) -> TestHub {
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let registry = Arc::new(MemoryRegistry::new(lease_ms));
            let (dead, _) = tokio::sync::mpsc::unbounded_channel();
            let hub = LinkHub::new(registry.clone(), dead);
            let app = axum::Router::new()
                .route(
                    "/internal/link",
                    get(
                        |State(hub): State<Arc<LinkHub>>, ws: WebSocketUpgrade| async move {
                            ws.on_upgrade(move |s| hub.serve(s))
                        },
                    ),
                )
                .with_state(hub.clone());
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            TestHub {
                url,
                registry,
                hub,
                server,
            }
        }

        fn stop(self) {
            self.hub.close_all();
            self.server.abort();
        }
    }

    fn secret() -> KeyRing {
        KeyRing::derive(b"link test master", "node admission")
    }

    async fn registered(url: &str, name: &str) -> (NodeId, LinkClient) {
        let id = NodeId::new(name).expect("id");
        let client = LinkClient::start(url, secret(), None, CancellationToken::new());
        client
            .register(&NodeInfo {
                id: id.clone(),
                ws_url: format!("ws://{name}"),
                http_url: format!("http://{name}"),
                started_at: now_ms(),
            })
            .await
            .expect("register");
        (id, client)
    }

    crate::bus_suite!(|n: usize| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hub = TestHub::start(listener).await;
        let mut out: Vec<(NodeId, SharedBus)> = Vec::new();
        for i in 0..n {
            let (id, client) = registered(&hub.url, &format!("bus{i}")).await;
            out.push((id, Arc::new(client)));
        }
        // The hub lives as long as the test process; each test has its own.
        std::mem::forget(hub);
        out
    });

    /// The registry as the nodes of an embedded cluster use it: each node's own calls through
    /// its own link client, questions about the cluster through any of them, and reaping by
    /// the controller's registry, which is where an embedded cluster reaps.
    struct LinkedNodes {
        hub: TestHub,
        clients: parking_lot::Mutex<Vec<(NodeId, LinkClient)>>,
    }

    impl LinkedNodes {
        /// The link client of `node`; for a node no client registered, any client, which
        /// must then refuse to speak for it.
        fn client(&self, node: &NodeId) -> RegistryResult<LinkClient> {
            let clients = self.clients.lock();
            clients
                .iter()
                .find(|(id, _)| id == node)
                .or(clients.first())
                .map(|(_, c)| c.clone())
                .ok_or_else(|| RegistryError::Unavailable("no node registered yet".into()))
        }

        fn any(&self) -> RegistryResult<LinkClient> {
            self.clients
                .lock()
                .first()
                .map(|(_, c)| c.clone())
                .ok_or_else(|| RegistryError::Unavailable("no node registered yet".into()))
        }
    }

    #[async_trait::async_trait]
    impl Registry for LinkedNodes {
        fn kind(&self) -> &'static str {
            "embedded"
        }

        async fn register(&self, node: &NodeInfo) -> RegistryResult<Lease> {
            let known = self
                .clients
                .lock()
                .iter()
                .find(|(id, _)| *id == node.id)
                .map(|(_, c)| c.clone());
            let client = known.unwrap_or_else(|| {
                let c = LinkClient::start(&self.hub.url, secret(), None, CancellationToken::new());
                self.clients.lock().push((node.id.clone(), c.clone()));
                c
            });
            client.register(node).await
        }

        async fn heartbeat(&self, node: &NodeId, load: Load) -> RegistryResult<()> {
            self.client(node)?.heartbeat(node, load).await
        }

        async fn set_state(&self, node: &NodeId, state: NodeState) -> RegistryResult<()> {
            self.client(node)?.set_state(node, state).await
        }

        async fn deregister(&self, node: &NodeId) -> RegistryResult<Vec<UserId>> {
            let went_offline = self.client(node)?.deregister(node).await?;
            // Its link no longer speaks for any node: questions go through the others.
            self.clients.lock().retain(|(id, _)| id != node);
            Ok(went_offline)
        }

        async fn attach(
            &self,
            node: &NodeId,
            user: UserId,
            reservation: Option<&str>,
        ) -> RegistryResult<bool> {
            self.client(node)?.attach(node, user, reservation).await
        }

        async fn detach(&self, node: &NodeId, user: UserId) -> RegistryResult<bool> {
            self.client(node)?.detach(node, user).await
        }

        async fn locate(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>> {
            self.any()?.locate(users).await
        }

        async fn online(&self, users: &[UserId]) -> RegistryResult<Vec<UserId>> {
            self.any()?.online(users).await
        }

        async fn assign(&self, exclude: &[NodeId]) -> RegistryResult<Option<AssignResponse>> {
            self.any()?.assign(exclude).await
        }

        async fn nodes(&self) -> RegistryResult<Vec<NodeStatus>> {
            self.any()?.nodes().await
        }

        async fn reap(&self, now: Millis) -> RegistryResult<Vec<DeadNode>> {
            self.hub.registry.reap(now).await
        }
    }

    crate::registry_suite!(|lease_ms: u64| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let nodes = LinkedNodes {
            hub: TestHub::with_lease(listener, lease_ms).await,
            clients: parking_lot::Mutex::new(Vec::new()),
        };
        let registry: crate::registry::SharedRegistry = Arc::new(nodes);
        registry
    });

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registry_calls_go_through_the_link() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hub = TestHub::start(listener).await;
        let (a, ca) = registered(&hub.url, "na").await;
        let (b, _cb) = registered(&hub.url, "nb").await;
        assert!(ca.attach(&a, UserId(7), None).await.expect("attach"));
        assert!(!ca.attach(&a, UserId(7), None).await.expect("attach"));
        assert_eq!(
            hub.registry.locate(&[UserId(7)]).await.expect("locate")[0],
            vec![a.clone()]
        );
        assert_eq!(
            ca.locate(&[UserId(7), UserId(8)]).await.expect("locate"),
            vec![vec![a.clone()], vec![]]
        );
        let nodes = ca.nodes().await.expect("nodes");
        assert_eq!(nodes.len(), 2);
        assert!(nodes.iter().any(|n| n.id == b));
        assert!(!ca.detach(&a, UserId(7)).await.expect("detach"));
        assert!(ca.detach(&a, UserId(7)).await.expect("detach"));
        assert!(ca.online(&[UserId(7)]).await.expect("online").is_empty());
        hub.stop();
    }

    /// A publish to users reaches the nodes holding their devices, as the registry says when
    /// it is routed, and never comes back to its publisher.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_to_users_find_their_nodes_as_they_are_routed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hub = TestHub::start(listener).await;
        let (a, ca) = registered(&hub.url, "ua").await;
        let (b, cb) = registered(&hub.url, "ub").await;
        let (c, cc) = registered(&hub.url, "uc").await;
        let mut inboxes = Vec::new();
        for (id, client) in [(&a, &ca), (&b, &cb), (&c, &cc)] {
            inboxes.push(client.subscribe(id).await.expect("subscribe"));
        }
        assert!(ca.resolves_users());
        // User 1 on a (the publisher) and b; user 2 nowhere yet.
        ca.attach(&a, UserId(1), None).await.expect("attach");
        cb.attach(&b, UserId(1), None).await.expect("attach");
        let to = Targets::Users(vec![UserId(1), UserId(2)]);
        ca.publish(&to, b"k", Bytes::from_static(b"first"))
            .await
            .expect("publish");
        // User 2 comes online on c: the next publish finds it there.
        cc.attach(&c, UserId(2), None).await.expect("attach");
        ca.publish(&to, b"k", Bytes::from_static(b"second"))
            .await
            .expect("publish");
        async fn recv(inbox: &mut crate::bus::Inbox) -> Option<Bytes> {
            tokio::time::timeout(Duration::from_secs(5), inbox.recv())
                .await
                .ok()
                .flatten()
        }
        assert_eq!(recv(&mut inboxes[1]).await.as_deref(), Some(&b"first"[..]));
        assert_eq!(recv(&mut inboxes[1]).await.as_deref(), Some(&b"second"[..]));
        // A publish returns once the link has it, not once the controller routed it: the
        // attach on c's own link may overtake "first", which then reaches c as well (harmless:
        // devices drop what they had). "second" was published after the attach was answered,
        // so it must reach c.
        let mut on_c = recv(&mut inboxes[2]).await;
        if on_c.as_deref() == Some(&b"first"[..]) {
            on_c = recv(&mut inboxes[2]).await;
        }
        assert_eq!(on_c.as_deref(), Some(&b"second"[..]));
        // Nothing for the publisher.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), inboxes[0].recv())
                .await
                .is_err()
        );
        hub.stop();
    }

    /// The controller acknowledges publishes even when nothing else goes to the publisher to
    /// carry the acknowledgement: the node's resend buffer empties, and its oldest unpublished
    /// time (which a survivor would start from if it died) goes back to none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_are_acknowledged_with_nothing_to_ride_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hub = TestHub::start(listener).await;
        let (_a, ca) = registered(&hub.url, "pa").await;
        let (b, cb) = registered(&hub.url, "pb").await;
        let mut inbox = cb.subscribe(&b).await.expect("subscribe");
        for text in [&b"one"[..], b"two", b"three"] {
            ca.publish(
                &Targets::Nodes(vec![b.clone()]),
                b"k",
                Bytes::from_static(text),
            )
            .await
            .expect("publish");
        }
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(5), inbox.recv())
                .await
                .expect("delivered")
                .expect("inbox open");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ca.oldest_unacked().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishes still unacknowledged after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        hub.stop();
    }

    /// A controller hands over what it held for a node as the node registers, and those
    /// envelopes can reach the node before the answer to its registration: they are delivered,
    /// not taken for noise while the node waits for its lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envelopes_before_the_registration_answer_are_delivered() {
        use axum::extract::ws::Message;
        use futures::StreamExt;
        use protocol::link::{LinkReply, LinkRequest, LinkServerFrame};

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        // A stand-in controller that sends a held envelope first, then the answer.
        let app = axum::Router::new().route(
            "/internal/link",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(msg)) = socket.next().await {
                        let Message::Text(t) = msg else { continue };
                        let Ok(req) = serde_json::from_str::<LinkRequest>(t.as_str()) else {
                            break;
                        };
                        if !matches!(req.op, protocol::link::LinkOp::Register { .. }) {
                            continue;
                        }
                        let answer = LinkServerFrame::Reply {
                            id: req.id,
                            reply: LinkReply::Registered {
                                worker_id: 1,
                                lease_ms: 60_000,
                            },
                        };
                        let answer = serde_json::to_string(&answer).expect("answer");
                        let held = Message::Binary(Bytes::from_static(b"held"));
                        if socket.send(held).await.is_err()
                            || socket.send(Message::Text(answer.into())).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let (id, client) = registered(&url, "early").await;
        let mut inbox = client.subscribe(&id).await.expect("subscribe");
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("the held envelope is delivered");
        assert_eq!(got.as_deref(), Some(&b"held"[..]));
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_controller_gets_registrations_devices_and_publishes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hub = TestHub::start(listener).await;
        let url = hub.url.clone();
        let (a, ca) = registered(&url, "ra").await;
        let (b, cb) = registered(&url, "rb").await;
        let mut inbox_b = cb.subscribe(&b).await.expect("subscribe");
        ca.attach(&a, UserId(42), None).await.expect("attach");
        ca.attach(&a, UserId(42), None).await.expect("attach");

        hub.stop();
        // Wait for both links to notice.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ca.is_up() || cb.is_up() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "links never noticed the controller died"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Published while the controller is down: kept and sent after the reconnect.
        ca.publish(
            &Targets::Nodes(vec![b.clone()]),
            b"k",
            Bytes::from_static(b"while-down"),
        )
        .await
        .expect("buffered");

        let listener = TcpListener::bind(addr).await.expect("rebind the same port");
        let hub2 = TestHub::start(listener).await;
        let got = tokio::time::timeout(Duration::from_secs(10), inbox_b.recv())
            .await
            .expect("the buffered publish arrives after the reconnect");
        assert_eq!(got.as_deref(), Some(&b"while-down"[..]));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let nodes = hub2.registry.nodes().await.expect("nodes");
            let located = hub2.registry.locate(&[UserId(42)]).await.expect("locate");
            if nodes.len() == 2 && located[0] == vec![a.clone()] {
                let ra = nodes.iter().find(|n| n.id == a).expect("ra");
                assert_eq!(ra.connections, 2, "both devices replayed, once each");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "state not replayed: {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Both devices leave: the user is offline on the new controller.
        assert!(!ca.detach(&a, UserId(42)).await.expect("detach"));
        assert!(ca.detach(&a, UserId(42)).await.expect("detach"));
        hub2.stop();
    }
}
