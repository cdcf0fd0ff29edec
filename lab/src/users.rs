//! Virtual users: N users × D devices, each device a real client core ([`client::Client`])
//! that asks the controller for the least-loaded node, connects, resyncs and fails over like
//! the desktop app does; a sender that makes them talk at the rate asked for, in direct
//! conversations and rooms; and what every device saw, as [`Observation`]s for the checker
//! and the panel.
//!
//! Conversations: each user has a direct conversation with the next one (a ring), and users
//! are grouped into rooms of [`UsersConfig::room_size`]. Every device of a member follows
//! each conversation, so the sender's other devices are checked too.
//!
//! Invariant: a send's [`Observation::Sent`] is queued before the client core can send it, so
//! the checker always knows a send before its acknowledgement or any delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use client::{Client, ClientConfig, ClientEvent, ClientState, Draft, Session, Status};
use futures::StreamExt;
use parking_lot::Mutex;
use protocol::http::{CreateRoomRequest, LoginRequest, RegisterRequest};
use protocol::lab::DeviceState;
use protocol::model::Event;
use protocol::ws::Ack;
use protocol::{ClientMsgId, ConvId, DeviceId, NodeId, UserId};
use rand::Rng;
use rand::seq::IndexedRandom;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::now_us;

/// The password of every virtual user.
pub const PASSWORD: &str = "virtual users only";

/// How many users and devices, and how they are grouped.
#[derive(Clone, Debug)]
pub struct UsersConfig {
    /// Users.
    pub users: usize,
    /// Devices per user.
    pub devices_per_user: usize,
    /// Users per room.
    pub room_size: usize,
    /// Start of every user name (`v3f9-u007`): unique per run, so that a store shared between
    /// runs (PostgreSQL) never has the names already.
    pub prefix: String,
    /// Requests at once while creating users and logging devices in.
    pub parallel: usize,
}

impl UsersConfig {
    /// `users` users of `devices_per_user` devices, rooms of 4, a fresh prefix.
    pub fn new(users: usize, devices_per_user: usize) -> Self {
        let tag: u16 = rand::rng().random();
        UsersConfig {
            users,
            devices_per_user,
            room_size: 4,
            prefix: format!("v{tag:04x}"),
            parallel: 32,
        }
    }
}

/// What the virtual devices do and see, in the order each device saw it.
#[derive(Clone, Debug)]
pub enum Observation {
    /// A device exists (logged in) and is followed from now on.
    Device {
        /// The device.
        device: DeviceId,
        /// Its user's index among the virtual users (burst users come after them).
        user_index: u32,
        /// Its user's name.
        user: String,
        /// Its user's id.
        user_id: UserId,
        /// When.
        at_us: i64,
    },
    /// A device must get a conversation's messages.
    Joined {
        /// The conversation.
        conv: ConvId,
        /// A direct conversation (false: a room).
        direct: bool,
        /// The device.
        device: DeviceId,
    },
    /// A device's connection changed.
    Status {
        /// The device.
        device: DeviceId,
        /// How it is.
        state: DeviceState,
        /// The node of its session, when it has one.
        node: Option<NodeId>,
        /// When.
        at_us: i64,
    },
    /// A device handed a message to its client core.
    Sent {
        /// The device.
        device: DeviceId,
        /// Where to.
        conv: ConvId,
        /// Its client id.
        client_id: ClientMsgId,
        /// When.
        at_us: i64,
    },
    /// The sending device got its acknowledgement.
    Acked {
        /// The device.
        device: DeviceId,
        /// The acknowledgement.
        ack: Ack,
        /// When.
        at_us: i64,
    },
    /// A send was refused for good.
    Refused {
        /// The device.
        device: DeviceId,
        /// Which send.
        client_id: ClientMsgId,
    },
    /// A device showed an event to its user.
    Shown {
        /// The device.
        device: DeviceId,
        /// The event.
        event: Box<Event>,
        /// When.
        at_us: i64,
    },
    /// A device was logged out by the lab (the end of a burst).
    Gone {
        /// The device.
        device: DeviceId,
    },
}

/// Why virtual users could not start.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// A controller request failed.
    #[error("{what}: {source}")]
    Api {
        /// What we were doing.
        what: String,
        /// Why.
        source: client::ApiError,
    },
    /// A client core would not start.
    #[error("starting a client: {0}")]
    Client(#[from] client::ClientError),
    /// Stopped while starting.
    #[error("stopped while starting")]
    Cancelled,
}

fn api_err(what: impl Into<String>) -> impl FnOnce(client::ApiError) -> UsersError {
    let what = what.into();
    move |source| UsersError::Api { what, source }
}

/// The traffic asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    /// Messages per second, all devices together.
    pub rate: f64,
    /// Share of messages sent in rooms (the rest in direct conversations).
    pub room_share: f64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            rate: 0.0,
            room_share: 0.3,
        }
    }
}

/// One virtual device.
struct VDevice {
    client: Client,
    user: usize,
    task: JoinHandle<()>,
}

/// One virtual user's conversations.
#[derive(Clone, Debug, Default)]
struct UserConvs {
    direct: Vec<ConvId>,
    rooms: Vec<ConvId>,
}

/// Running virtual users. Stop them with [`VirtualUsers::shutdown`]; dropping them stops
/// every client core too, without the clean close.
pub struct VirtualUsers {
    config: UsersConfig,
    server: String,
    http: reqwest::Client,
    devices: Vec<VDevice>,
    convs: Arc<Vec<UserConvs>>,
    burst: Mutex<Vec<VDevice>>,
    bursts: AtomicU64,
    traffic: watch::Sender<Traffic>,
    sent: Arc<AtomicU64>,
    observe: mpsc::UnboundedSender<Observation>,
    cancel: CancellationToken,
    sender: JoinHandle<()>,
}

impl std::fmt::Debug for VirtualUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualUsers")
            .field("users", &self.config.users)
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl VirtualUsers {
    /// Registers the users, opens their conversations, logs every device in and starts its
    /// client core; returns once every device is started (not necessarily live). Nothing is
    /// sent until [`VirtualUsers::set_traffic`].
    pub async fn start(
        server: &str,
        config: UsersConfig,
        observe: mpsc::UnboundedSender<Observation>,
        cancel: CancellationToken,
    ) -> Result<VirtualUsers, UsersError> {
        let http = client::api::http_client().map_err(api_err("an HTTP client"))?;
        let names: Vec<String> = (0..config.users)
            .map(|i| format!("{}-u{:03}", config.prefix, i + 1))
            .collect();
        let parallel = config.parallel.max(1);
        // Users, then every device's session.
        let registered = futures::stream::iter(names.clone().into_iter().map(|name| {
            let api = client::Api::with_http(server, http.clone());
            boxed(async move {
                api.map_err(api_err("the controller's URL"))?
                    .register(&RegisterRequest {
                        username: name.clone(),
                        password: PASSWORD.into(),
                    })
                    .await
                    .map_err(api_err(format!("registering {name}")))
            })
        }))
        .buffer_unordered(parallel)
        .collect::<Vec<_>>();
        or_cancelled(registered, &cancel)
            .await?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let logins =
            (0..config.users).flat_map(|u| (0..config.devices_per_user).map(move |d| (u, d)));
        let sessions = futures::stream::iter(logins.map(|(u, d)| {
            let name = names[u].clone();
            let (server, http) = (server.to_owned(), http.clone());
            boxed(async move {
                let device = DeviceId::new(format!("{name}-d{}", d + 1))
                    .unwrap_or_else(|_| client::new_device_id());
                login(&server, &http, &name, &device).await.map(|s| (u, s))
            })
        }))
        .buffer_unordered(parallel)
        .collect::<Vec<_>>();
        let mut sessions = or_cancelled(sessions, &cancel)
            .await?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        sessions.sort_by(|a, b| a.1.device.cmp(&b.1.device));
        let first: HashMap<usize, Session> =
            sessions.iter().map(|(u, s)| (*u, s.clone())).collect();
        let convs =
            or_cancelled(open_conversations(&http, &config, &names, &first), &cancel).await??;
        for (u, s) in &sessions {
            let _ = observe.send(Observation::Device {
                device: s.device.clone(),
                user_index: *u as u32,
                user: names[*u].clone(),
                user_id: s.user.id,
                at_us: now_us(),
            });
            for (conv, direct) in convs[*u]
                .direct
                .iter()
                .map(|c| (*c, true))
                .chain(convs[*u].rooms.iter().map(|c| (*c, false)))
            {
                let _ = observe.send(Observation::Joined {
                    conv,
                    direct,
                    device: s.device.clone(),
                });
            }
        }
        let mut devices = Vec::with_capacity(sessions.len());
        for (u, session) in sessions {
            devices.push(start_device(&session, u, &http, &observe, &cancel)?);
        }
        let convs = Arc::new(convs);
        let traffic = watch::channel(Traffic::default()).0;
        let sent = Arc::new(AtomicU64::new(0));
        let sender = tokio::spawn(send_loop(
            devices.iter().map(|d| (d.user, d.client.clone())).collect(),
            convs.clone(),
            traffic.subscribe(),
            sent.clone(),
            observe.clone(),
            cancel.clone(),
        ));
        Ok(VirtualUsers {
            config,
            server: server.to_owned(),
            http,
            devices,
            convs,
            burst: Mutex::new(Vec::new()),
            bursts: AtomicU64::new(0),
            traffic,
            sent,
            observe,
            cancel,
            sender,
        })
    }

    /// The configuration they started with.
    pub fn config(&self) -> &UsersConfig {
        &self.config
    }

    /// User names, by index.
    pub fn user_names(&self) -> Vec<String> {
        (0..self.config.users)
            .map(|i| format!("{}-u{:03}", self.config.prefix, i + 1))
            .collect()
    }

    /// Direct conversations and rooms.
    pub fn conversations(&self) -> usize {
        let mut all: Vec<ConvId> = self
            .convs
            .iter()
            .flat_map(|c| c.direct.iter().chain(c.rooms.iter()).copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }

    /// Devices, burst devices included.
    pub fn device_count(&self) -> usize {
        self.devices.len() + self.burst.lock().len()
    }

    /// Sends so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sets the traffic.
    pub fn set_traffic(&self, traffic: Traffic) {
        self.traffic.send_replace(Traffic {
            rate: traffic.rate.clamp(0.0, 5000.0),
            room_share: traffic.room_share.clamp(0.0, 1.0),
        });
    }

    /// The traffic asked for.
    pub fn traffic(&self) -> Traffic {
        *self.traffic.borrow()
    }

    /// Logs `n` more devices in at once (those of a burst user of their own, in no
    /// conversation), so the class sees how the controller spreads a login storm. They stay
    /// until [`VirtualUsers::end_burst`].
    pub async fn burst(&self, n: usize) -> Result<usize, UsersError> {
        let k = self.bursts.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("{}-burst{k}", self.config.prefix);
        client::Api::with_http(&self.server, self.http.clone())
            .map_err(api_err("the controller's URL"))?
            .register(&RegisterRequest {
                username: name.clone(),
                password: PASSWORD.into(),
            })
            .await
            .map_err(api_err(format!("registering {name}")))?;
        let sessions = futures::stream::iter((0..n).map(|d| {
            let (server, http, name) = (self.server.clone(), self.http.clone(), name.clone());
            boxed(async move {
                let device = DeviceId::new(format!("{name}-d{}", d + 1))
                    .unwrap_or_else(|_| client::new_device_id());
                login(&server, &http, &name, &device).await
            })
        }))
        .buffer_unordered(self.config.parallel.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        let user = self.config.users + k as usize - 1;
        for s in &sessions {
            let _ = self.observe.send(Observation::Device {
                device: s.device.clone(),
                user_index: user as u32,
                user: name.clone(),
                user_id: s.user.id,
                at_us: now_us(),
            });
        }
        // Every client core starts at once: their assignments race, as in a login storm.
        let mut started = Vec::with_capacity(sessions.len());
        for s in &sessions {
            started.push(start_device(
                s,
                user,
                &self.http,
                &self.observe,
                &self.cancel,
            )?);
        }
        let count = started.len();
        self.burst.lock().extend(started);
        Ok(count)
    }

    /// Logs the burst devices out.
    pub async fn end_burst(&self) -> usize {
        let gone: Vec<VDevice> = std::mem::take(&mut *self.burst.lock());
        let count = gone.len();
        stop_devices(gone, &self.observe).await;
        count
    }

    /// Stops sending, closes every client core cleanly and waits for them.
    pub async fn shutdown(self) {
        self.sender.abort();
        let burst = std::mem::take(&mut *self.burst.lock());
        stop_devices(burst, &self.observe).await;
        stop_devices(self.devices, &self.observe).await;
    }
}

/// A future with a type of its own: futures made in a closure and driven by a stream
/// combinator must be, for the whole to be `Send` when spawned.
fn boxed<'a, T>(
    f: impl std::future::Future<Output = T> + Send + 'a,
) -> futures::future::BoxFuture<'a, T> {
    Box::pin(f)
}

/// `work`, unless `cancel` fires first.
async fn or_cancelled<T>(
    work: impl std::future::Future<Output = T>,
    cancel: &CancellationToken,
) -> Result<T, UsersError> {
    tokio::select! {
        r = work => Ok(r),
        _ = cancel.cancelled() => Err(UsersError::Cancelled),
    }
}

/// Closes client cores and their tasks, all at once.
async fn stop_devices(devices: Vec<VDevice>, observe: &mpsc::UnboundedSender<Observation>) {
    futures::future::join_all(devices.into_iter().map(|d| async move {
        d.client.shutdown().await;
        d.task.abort();
        let _ = observe.send(Observation::Gone {
            device: d.client.device().clone(),
        });
    }))
    .await;
}

async fn login(
    server: &str,
    http: &reqwest::Client,
    name: &str,
    device: &DeviceId,
) -> Result<Session, UsersError> {
    let api =
        client::Api::with_http(server, http.clone()).map_err(api_err("the controller's URL"))?;
    let resp = api
        .login(&LoginRequest {
            username: name.to_owned(),
            password: PASSWORD.into(),
            device_id: device.clone(),
            device_name: device.to_string(),
        })
        .await
        .map_err(api_err(format!("logging {name} in on {device}")))?;
    Ok(Session {
        server: api.base_url().trim_end_matches('/').to_owned(),
        token: resp.token,
        user: resp.user,
        device: resp.device.id,
        expires_at: resp.expires_at,
    })
}

/// Each user's direct conversation with the next one, and rooms of `room_size`.
async fn open_conversations(
    http: &reqwest::Client,
    config: &UsersConfig,
    names: &[String],
    sessions: &HashMap<usize, Session>,
) -> Result<Vec<UserConvs>, UsersError> {
    let n = names.len();
    let mut convs = vec![UserConvs::default(); n];
    let api_of = |u: usize| -> Result<client::Api, UsersError> {
        let s = sessions.get(&u).ok_or(UsersError::Cancelled)?;
        s.api_with(http.clone())
            .map_err(api_err("the controller's URL"))
    };
    let pairs: Vec<(usize, usize)> = match n {
        0 | 1 => Vec::new(),
        2 => vec![(0, 1)],
        _ => (0..n).map(|u| (u, (u + 1) % n)).collect(),
    };
    let direct = futures::stream::iter(pairs.into_iter().map(|(a, b)| {
        let api = api_of(a);
        let other = names[b].clone();
        boxed(async move {
            let conv = api?.open_direct(&other).await.map_err(api_err(format!(
                "opening a direct conversation with {other}"
            )))?;
            Ok::<_, UsersError>((a, b, conv.id))
        })
    }))
    .buffer_unordered(config.parallel.max(1))
    .collect::<Vec<_>>()
    .await;
    for r in direct {
        let (a, b, conv) = r?;
        convs[a].direct.push(conv);
        convs[b].direct.push(conv);
    }
    let size = config.room_size.max(2);
    if n >= 3 {
        let groups: Vec<Vec<usize>> = (0..n)
            .collect::<Vec<_>>()
            .chunks(size)
            .filter(|g| g.len() >= 2)
            .map(<[usize]>::to_vec)
            .collect();
        let rooms =
            futures::stream::iter(groups.clone().into_iter().enumerate().map(|(i, group)| {
                let api = api_of(group[0]);
                let members: Vec<String> = group[1..].iter().map(|&u| names[u].clone()).collect();
                let name = format!("{}-room{}", config.prefix, i + 1);
                boxed(async move {
                    let room = api?
                        .create_room(&CreateRoomRequest {
                            name: name.clone(),
                            public: false,
                            members,
                        })
                        .await
                        .map_err(api_err(format!("creating room {name}")))?;
                    Ok::<_, UsersError>((i, room.id))
                })
            }))
            .buffer_unordered(config.parallel.max(1))
            .collect::<Vec<_>>()
            .await;
        for r in rooms {
            let (i, room) = r?;
            for &u in &groups[i] {
                convs[u].rooms.push(room);
            }
        }
    }
    Ok(convs)
}

/// Starts one device's client core and the task that reports what it sees.
fn start_device(
    session: &Session,
    user: usize,
    http: &reqwest::Client,
    observe: &mpsc::UnboundedSender<Observation>,
    cancel: &CancellationToken,
) -> Result<VDevice, UsersError> {
    let config = ClientConfig {
        http: Some(http.clone()),
        event_capacity: 1024,
        ..ClientConfig::default()
    };
    let (client, events) = Client::start(session, ClientState::default(), config)?;
    let task = tokio::spawn(watch_device(
        client.device().clone(),
        client.watch_status(),
        events,
        observe.clone(),
        cancel.clone(),
    ));
    Ok(VDevice { client, user, task })
}

/// Reports a device's status changes and events until it stops.
async fn watch_device(
    device: DeviceId,
    mut status: watch::Receiver<Status>,
    mut events: mpsc::Receiver<ClientEvent>,
    observe: mpsc::UnboundedSender<Observation>,
    cancel: CancellationToken,
) {
    let report = |s: &Status| {
        let state = match s {
            Status::Connecting => DeviceState::Connecting,
            Status::Resyncing { .. } => DeviceState::Resyncing,
            Status::Live { .. } => DeviceState::Live,
            Status::Reconnecting { .. } => DeviceState::Reconnecting,
            Status::Stopped { .. } => DeviceState::Stopped,
        };
        let _ = observe.send(Observation::Status {
            device: device.clone(),
            state,
            node: s.node().cloned(),
            at_us: now_us(),
        });
    };
    report(&status.borrow_and_update());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                report(&status.borrow_and_update());
            }
            event = events.recv() => {
                let Some(event) = event else { return };
                let at_us = now_us();
                let obs = match event {
                    ClientEvent::Event(event) => Observation::Shown {
                        device: device.clone(),
                        event: Box::new(event),
                        at_us,
                    },
                    ClientEvent::Acked(ack) => Observation::Acked {
                        device: device.clone(),
                        ack,
                        at_us,
                    },
                    ClientEvent::SendFailed { client_id, .. } => Observation::Refused {
                        device: device.clone(),
                        client_id,
                    },
                    _ => continue,
                };
                let _ = observe.send(obs);
            }
        }
    }
}

/// Sends at the rate asked for: every 10 ms, as many messages as the rate owes, each from a
/// random device of a random user, in one of that user's conversations.
async fn send_loop(
    devices: Vec<(usize, Client)>,
    convs: Arc<Vec<UserConvs>>,
    mut traffic: watch::Receiver<Traffic>,
    sent: Arc<AtomicU64>,
    observe: mpsc::UnboundedSender<Observation>,
    cancel: CancellationToken,
) {
    if devices.is_empty() {
        return;
    }
    let mut by_user: HashMap<usize, Vec<Client>> = HashMap::new();
    for (u, c) in devices {
        by_user.entry(u).or_default().push(c);
    }
    let users: Vec<usize> = by_user.keys().copied().collect();
    let mut owed = 0.0f64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut count = 0u64;
    loop {
        let t = *traffic.borrow_and_update();
        if t.rate <= 0.0 {
            owed = 0.0;
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = traffic.changed() => if r.is_err() { return },
            }
            last = tokio::time::Instant::now();
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        owed = (owed + t.rate * (now - last).as_secs_f64()).min(t.rate.max(1.0));
        last = now;
        while owed >= 1.0 {
            owed -= 1.0;
            let mut rng = rand::rng();
            let Some(&u) = users.choose(&mut rng) else {
                return;
            };
            let mine = &convs[u];
            let room = rng.random_bool(t.room_share) && !mine.rooms.is_empty();
            let pool = if room || mine.direct.is_empty() {
                &mine.rooms
            } else {
                &mine.direct
            };
            let (Some(&conv), Some(client)) = (
                pool.choose(&mut rng),
                by_user.get(&u).and_then(|d| d.choose(&mut rng)),
            ) else {
                continue;
            };
            count += 1;
            let client_id = client::new_client_id();
            let _ = observe.send(Observation::Sent {
                device: client.device().clone(),
                conv,
                client_id: client_id.clone(),
                at_us: now_us(),
            });
            sent.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = client.send_with_id(
                client_id.clone(),
                Draft::text(conv, format!("hello #{count}")),
            ) {
                tracing::debug!(error = %e, "a virtual device could not send");
                let _ = observe.send(Observation::Refused {
                    device: client.device().clone(),
                    client_id,
                });
            }
        }
    }
}
