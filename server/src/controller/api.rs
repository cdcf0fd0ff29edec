//! The controller's HTTP routes. Every body is a `protocol::http` type; every failure an
//! `ErrorBody` (see [`super::error`]). Membership changes are persisted as conversation events
//! and published like messages, so every member device (the new member's included) learns of
//! them in order.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use protocol::bus::BusKind;
use protocol::http::{
    AssignResponse, ConversationsResponse, CreateRoomRequest, DeviceInfo, DevicesResponse,
    DirectRequest, Health, HistoryPage, InviteRequest, MembersResponse, NodesResponse,
    RoomsResponse, ServerInfo, UserLookup,
};
use protocol::limits::{self, HISTORY_PAGE_MAX, NAME_MAX_CHARS};
use protocol::model::{ConversationSummary, MemberAction, MemberInfo, UserInfo};
use protocol::trace::NodeLoad;
use protocol::ws::ServerFrame;
use protocol::{ConvId, DeviceId, NodeId, UserId};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, Authed, Body, PathOf, QueryOf};
use crate::ids::now_ms;
use crate::store::{Appended, Creation, DeviceRecord, NewBody, NewEvent, NewRoom, Page};

type Api<T> = Result<T, ApiError>;

/// The routes, with their state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .route("/v1/info", get(info))
        .route("/v1/auth/register", post(super::accounts::register))
        .route("/v1/auth/login", post(super::accounts::login))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{device}", delete(revoke))
        .route("/v1/assign", get(assign))
        .route("/v1/nodes", get(nodes))
        .route("/v1/users/{username}", get(user))
        .route("/v1/conversations", get(conversations))
        .route("/v1/conversations/direct", post(direct))
        .route("/v1/conversations/{id}", get(conversation))
        .route("/v1/conversations/{id}/members", get(members))
        .route("/v1/conversations/{id}/events", get(history))
        .route(
            "/v1/conversations/{id}/attachments",
            post(super::uploads::upload),
        )
        .route("/v1/attachments/{id}", get(super::uploads::download))
        .route("/v1/rooms", post(create_room).get(rooms))
        .route("/v1/rooms/{id}/join", post(join))
        .route("/v1/rooms/{id}/invite", post(invite))
        .route("/v1/rooms/{id}/leave", post(leave))
        .route("/internal/link", get(super::link))
        .route("/trace", get(trace))
        .route("/v1/teaching", axum::routing::put(teach))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        role: "controller".into(),
        node: None,
    })
}

async fn info(State(s): State<Arc<AppState>>) -> Json<ServerInfo> {
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: protocol::PROTOCOL_VERSION,
        max_attachment_bytes: s.uploads.max_bytes,
        attachment_types: limits::ATTACHMENT_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
        max_text_bytes: limits::MAX_TEXT_BYTES,
        max_frame_bytes: limits::MAX_FRAME_BYTES,
        backends: s.backends.clone(),
    })
}

pub(super) fn device_info(d: DeviceRecord, current: &DeviceId) -> DeviceInfo {
    DeviceInfo {
        current: d.id == *current,
        id: d.id,
        name: d.name,
        created_at: d.created_at,
        last_login: d.last_login,
        state: d.state,
    }
}

pub(super) fn clean_name(name: &str, what: &str) -> Api<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS {
        return Err(ApiError::Invalid(format!(
            "{what}: 1 to {NAME_MAX_CHARS} characters"
        )));
    }
    Ok(name.to_owned())
}

async fn devices(State(s): State<Arc<AppState>>, Authed(me): Authed) -> Api<Json<DevicesResponse>> {
    let list = s.store.devices(me.user).await?;
    Ok(Json(DevicesResponse {
        devices: list
            .into_iter()
            .map(|d| device_info(d, &me.device))
            .collect(),
    }))
}

async fn revoke(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(device): PathOf<String>,
) -> Api<StatusCode> {
    let device = DeviceId::new(device).map_err(|e| ApiError::Malformed(e.to_string()))?;
    s.store
        .revoke_device(me.user, &device)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound("no such device".into()),
            other => other.into(),
        })?;
    // Close its sockets wherever they are; a failure here still leaves its token dead.
    let router = s.router.clone();
    let user = me.user;
    s.tasks.spawn(async move {
        let kind = BusKind::Revoke { user, device };
        if let Err(e) = router.publish(&[user], kind, Bytes::new()).await {
            tracing::warn!(error = %e, "could not tell nodes about a revoked device");
        }
    });
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AssignQuery {
    #[serde(default)]
    exclude: String,
}

async fn assign(
    State(s): State<Arc<AppState>>,
    _me: Authed,
    QueryOf(q): QueryOf<AssignQuery>,
) -> Api<Json<AssignResponse>> {
    let exclude: Vec<NodeId> = q
        .exclude
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| NodeId::new(p).ok())
        .collect();
    metrics::counter!("chat_assignments_total").increment(1);
    // The nodes this client lost: knock on their doors, so that a dead one is offered to
    // nobody else (see `suspects`).
    let due = s.suspects.due(&exclude, std::time::Instant::now());
    if !due.is_empty() {
        match s.router.registry.nodes().await {
            Ok(listed) => s.suspects.probe(due, &listed).await,
            Err(e) => tracing::debug!(error = %e, "cannot list the nodes to probe"),
        }
    }
    let mut leave_out = exclude.clone();
    for dead in s.suspects.dead(std::time::Instant::now()) {
        if !leave_out.contains(&dead) {
            leave_out.push(dead);
        }
    }
    let answer = if s
        .teaching
        .is(protocol::teaching::Teaching::NaiveLeastConnections)
    {
        naive_assign(&s, &leave_out).await?
    } else {
        s.router.registry.assign(&leave_out).await?
    }
    .ok_or(ApiError::NoNode)?;
    if s.tracer.enabled() {
        trace_assignment(&s, &answer.node, exclude).await;
    }
    Ok(Json(answer))
}

/// How long the naive least-connections teaching mode answers from the counts it last read:
/// the article's counts came from each server's periodic report, so a storm saw one snapshot
/// (and how much the counts lag must not depend on how fast this machine is).
const NAIVE_COUNTS_LAG: std::time::Duration = std::time::Duration::from_secs(2);

/// The node counts the naive least-connections teaching mode answers from, and when it read
/// them.
#[derive(Default)]
pub struct NaiveCounts {
    read_at: Option<std::time::Instant>,
    nodes: Vec<protocol::http::NodeStatus>,
}

/// The naive least-connections teaching mode, as the article (`000_*`) wrote it: under one
/// global lock, a scan of every node for the fewest connections, without a reservation. A
/// thousand clients asking before any of them connected all get the same node.
async fn naive_assign(s: &AppState, exclude: &[NodeId]) -> Api<Option<AssignResponse>> {
    let mut counts = s.naive_lock.lock().await;
    let stale = counts
        .read_at
        .is_none_or(|at| at.elapsed() >= NAIVE_COUNTS_LAG);
    if stale {
        counts.nodes = s.router.registry.nodes().await?;
        counts.read_at = Some(std::time::Instant::now());
    }
    Ok(counts
        .nodes
        .iter()
        .filter(|n| n.state == protocol::http::NodeState::Live && !exclude.contains(&n.id))
        .min_by_key(|n| (n.connections, n.id.clone()))
        .map(|n| AssignResponse {
            node: n.id.clone(),
            ws_url: n.ws_url.clone(),
            reservation: String::new(),
            expires_at: now_ms(),
        }))
}

/// `PUT /v1/teaching`: turns the controller's teaching mode on or off (the operator only, and
/// only in a controller started with `--teaching`).
async fn teach(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    match crate::teaching::put(
        &s.teaching,
        crate::teaching::Role::Controller,
        &s.operator,
        &headers,
        &body,
    ) {
        Ok(mode) => crate::teaching::answer(mode),
        Err(refusal) => refusal.into_response(),
    }
}

/// Streams an answer with the loads it was chosen over. Only while somebody watches: it costs
/// a read of every node's load (a round trip with a shared registry).
async fn trace_assignment(s: &AppState, chosen: &NodeId, excluded: Vec<NodeId>) {
    let nodes = match s.router.registry.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::debug!(error = %e, "no loads to trace an assignment with");
            return;
        }
    };
    let load = |n: &protocol::http::NodeStatus| NodeLoad {
        node: n.id.clone(),
        connections: n.connections,
        reserved: n.reserved,
    };
    let Some(chosen) = nodes.iter().find(|n| n.id == *chosen).map(load) else {
        return;
    };
    let mut others: Vec<NodeLoad> = nodes
        .iter()
        .filter(|n| {
            n.id != chosen.node
                && n.state == protocol::http::NodeState::Live
                && !excluded.contains(&n.id)
        })
        .map(load)
        .collect();
    others.sort_by_key(|l| (l.total(), l.node.clone()));
    s.tracer.assigned(chosen, others, excluded);
}

/// `GET /trace?sample=N`: the controller's trace stream (see [`crate::trace`]), to the operator
/// only.
async fn trace(
    State(s): State<Arc<AppState>>,
    axum::extract::Query(q): axum::extract::Query<crate::trace::TraceQuery>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    crate::trace::upgrade(&s.operator, &headers, ws, s.tracer.clone(), q.sample())
}

async fn metrics_page(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    crate::metrics::page(&s.operator, &headers)
}

/// `GET /v1/nodes`: for signed-in users (the lab's status, `chat nodes`) and the operator; a
/// stranger learns nothing of the cluster's shape.
async fn nodes(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Api<Json<NodesResponse>> {
    if !s.operator.admits(&headers) {
        let token = crate::node::bearer(&headers).ok_or(crate::auth::AuthError::Missing)?;
        s.keys.verify(&*s.store, &token).await?;
    }
    Ok(Json(NodesResponse {
        nodes: s.router.registry.nodes().await?,
        now: now_ms(),
    }))
}

async fn user(
    State(s): State<Arc<AppState>>,
    _me: Authed,
    PathOf(username): PathOf<String>,
) -> Api<Json<UserLookup>> {
    let u = s
        .store
        .user_by_name(&username)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
    let online = !s.router.registry.online(&[u.id]).await?.is_empty();
    Ok(Json(UserLookup {
        user: UserInfo {
            id: u.id,
            username: u.username,
        },
        online,
    }))
}

async fn conversations(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
) -> Api<Json<ConversationsResponse>> {
    Ok(Json(ConversationsResponse {
        conversations: s.store.conversations_of(me.user).await?,
    }))
}

async fn summary_of(s: &AppState, user: UserId, conv: ConvId) -> Api<ConversationSummary> {
    s.store
        .conversations_of(user)
        .await?
        .into_iter()
        .find(|c| c.id == conv)
        .ok_or(ApiError::NotMember)
}

async fn conversation(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(id): PathOf<i64>,
) -> Api<Json<ConversationSummary>> {
    Ok(Json(summary_of(&s, me.user, ConvId(id)).await?))
}

/// Publishes a persisted event to every member device, in the background, retrying a while:
/// the event is already durable, so the HTTP answer does not wait for the bus.
fn publish_event(s: &AppState, appended: Appended) {
    let router = s.router.clone();
    let cancel = s.cancel.clone();
    s.tasks.spawn(async move {
        let ev = appended.event;
        let frame = Bytes::from(ServerFrame::Event(ev.clone()).to_json());
        let kind = BusKind::Event {
            conv: ev.conv,
            seq: ev.seq,
            id: ev.id,
        };
        let mut delay = std::time::Duration::from_millis(100);
        for _ in 0..8 {
            match router
                .publish(&appended.recipients, kind.clone(), frame.clone())
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing a membership event failed; retrying")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay *= 2;
        }
        tracing::error!(conv = %ev.conv, seq = ev.seq, "membership event not published; devices get it on resync");
    });
}

async fn append_one(s: &AppState, conv: ConvId, sender: UserId, body: NewBody) -> Api<Appended> {
    let event = NewEvent {
        conv,
        id: s.ids.next(),
        at: now_ms(),
        sender,
        device: None,
        client_id: None,
        body,
        origin: s.id.clone(),
    };
    let appended = s
        .store
        .append(vec![event])
        .await
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("append returned nothing".into()))??;
    publish_event(s, appended.clone());
    Ok(appended)
}

async fn user_named(s: &AppState, username: &str) -> Api<UserId> {
    Ok(s.store
        .user_by_name(username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user named {username:?}")))?
        .id)
}

async fn direct(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    Body(req): Body<DirectRequest>,
) -> Api<Json<ConversationSummary>> {
    let other = user_named(&s, &req.username).await?;
    if other == me.user {
        return Err(ApiError::Invalid(
            "a direct conversation needs another user".into(),
        ));
    }
    let creation = Creation {
        id: s.ids.next(),
        origin: &s.id,
        at: now_ms(),
    };
    let (conv, created) = s.store.open_direct(me.user, other, creation).await?;
    if let Some(appended) = created {
        publish_event(&s, appended);
    }
    Ok(Json(summary_of(&s, me.user, conv).await?))
}

async fn create_room(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    Body(req): Body<CreateRoomRequest>,
) -> Api<(StatusCode, Json<ConversationSummary>)> {
    let name = clean_name(&req.name, "room name")?;
    let mut invitees = Vec::new();
    for username in &req.members {
        let id = user_named(&s, username).await?;
        if id != me.user && !invitees.contains(&id) {
            invitees.push(id);
        }
    }
    let room = NewRoom {
        creator: me.user,
        name: &name,
        public: req.public,
        creation: Creation {
            id: s.ids.next(),
            origin: &s.id,
            at: now_ms(),
        },
    };
    let (conv, created) = s.store.create_room(room).await?;
    publish_event(&s, created);
    for user in invitees {
        append_one(
            &s,
            conv,
            me.user,
            NewBody::Member {
                action: MemberAction::Invited,
                user,
            },
        )
        .await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(summary_of(&s, me.user, conv).await?),
    ))
}

#[derive(Deserialize)]
struct RoomsQuery {
    #[serde(default)]
    q: String,
}

async fn rooms(
    State(s): State<Arc<AppState>>,
    _me: Authed,
    QueryOf(q): QueryOf<RoomsQuery>,
) -> Api<Json<RoomsResponse>> {
    Ok(Json(RoomsResponse {
        rooms: s.store.public_rooms(q.q.trim(), 100).await?,
    }))
}

async fn join(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(id): PathOf<i64>,
) -> Api<Json<ConversationSummary>> {
    let conv = ConvId(id);
    if !s.store.is_member(conv, me.user).await? {
        append_one(
            &s,
            conv,
            me.user,
            NewBody::Member {
                action: MemberAction::Joined,
                user: me.user,
            },
        )
        .await?;
    }
    Ok(Json(summary_of(&s, me.user, conv).await?))
}

async fn invite(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(id): PathOf<i64>,
    Body(req): Body<InviteRequest>,
) -> Api<StatusCode> {
    let user = user_named(&s, &req.username).await?;
    append_one(
        &s,
        ConvId(id),
        me.user,
        NewBody::Member {
            action: MemberAction::Invited,
            user,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn leave(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(id): PathOf<i64>,
) -> Api<StatusCode> {
    append_one(
        &s,
        ConvId(id),
        me.user,
        NewBody::Member {
            action: MemberAction::Left,
            user: me.user,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn must_be_member(s: &AppState, conv: ConvId, user: UserId) -> Api<()> {
    if s.store.is_member(conv, user).await? {
        Ok(())
    } else {
        Err(ApiError::NotMember)
    }
}

async fn members(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(id): PathOf<i64>,
) -> Api<Json<MembersResponse>> {
    let conv = ConvId(id);
    must_be_member(&s, conv, me.user).await?;
    let list = s.store.members(conv).await?;
    let ids: Vec<UserId> = list.iter().map(|m| m.user).collect();
    let online = s.router.registry.online(&ids).await.unwrap_or_default();
    Ok(Json(MembersResponse {
        members: list
            .into_iter()
            .map(|m| MemberInfo {
                online: online.contains(&m.user),
                user: UserInfo {
                    id: m.user,
                    username: m.username,
                },
                read_seq: m.read_seq,
                joined_seq: m.joined_seq,
            })
            .collect(),
    }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

async fn history(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(id): PathOf<i64>,
    QueryOf(q): QueryOf<HistoryQuery>,
) -> Api<Json<HistoryPage>> {
    let conv = ConvId(id);
    must_be_member(&s, conv, me.user).await?;
    let page = match (q.before, q.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Malformed("give before or after, not both".into()));
        }
        (Some(b), None) => Page::Before(b),
        (None, Some(a)) => Page::After(a),
        (None, None) => Page::Latest,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, HISTORY_PAGE_MAX);
    let (events, has_more) = s.store.events(conv, page, limit).await?;
    Ok(Json(HistoryPage { events, has_more }))
}
