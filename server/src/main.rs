//! The `server` binary: `server controller` or `server node`. Turns flags and environment into
//! a config, starts the library's controller or node on its listener, prints the ready line
//! a supervisor waits for, and drains on SIGTERM or Ctrl-C.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use protocol::NodeId;
use protocol::http::ReadyLine;
use server::auth::{ClusterKeys, HashCost, OperatorToken};
use server::backends::{BusChoice, RegistryChoice};
use server::bus::Routing;
use server::controller::{AuthLimits, Controller, ControllerConfig};
use server::node::{Fault, Node, NodeConfig, NodeLimits};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    // A flag given twice takes its last value: a supervisor's defaults can be overridden.
    args_override_self = true,
    name = "server",
    version,
    about = "Chat cluster: the controller and the chat node"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Accounts, conversations, attachments, the least-loaded answer; in the embedded setup
    /// also the registry and the bus.
    Controller(ControllerArgs),
    /// A chat node: devices' WebSocket sessions and cross-node delivery.
    Node(NodeArgs),
}

#[derive(Args)]
struct Common {
    /// Directory for the SQLite history, the key rings and the operator token (each read from
    /// the environment instead when set: CHAT_TOKEN_KEYS, CHAT_NODE_KEYS, or both derived from
    /// CHAT_SECRET; CHAT_OPERATOR_TOKEN). Kept private: 0700, its files 0600.
    #[arg(long, env = "CHAT_DATA_DIR", default_value = ".chat-data")]
    data_dir: PathBuf,
    /// History store: sqlite://PATH or postgres://… (default: SQLite in the data dir).
    #[arg(long, env = "CHAT_STORE")]
    store: Option<String>,
    /// Registry: embedded (in the controller), redis://HOST:PORT or
    /// zookeeper://HOST:PORT.
    #[arg(long, env = "CHAT_REGISTRY", default_value = "embedded")]
    registry: String,
    /// Bus between nodes: embedded (through the controller), redis://… or amqp://….
    #[arg(long, env = "CHAT_BUS", default_value = "embedded")]
    bus: String,
    /// Routed (only nodes holding a recipient) or fanout (every node).
    #[arg(long, env = "CHAT_ROUTING", default_value_t = Routing::Routed)]
    routing: Routing,
    /// Node lease in milliseconds: a silent node is gone after this long.
    #[arg(long, env = "CHAT_LEASE_MS", default_value_t = server::registry::DEFAULT_LEASE_MS)]
    lease_ms: u64,
    /// Let the operator turn teaching modes on (`PUT /v1/teaching`), which break a guarantee
    /// on purpose for a class (the lab's lessons). Never in production.
    #[arg(long)]
    teaching: bool,
    /// Serve HTTPS (and, on a node, WSS) with this certificate chain (PEM, leaf first).
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl Common {
    /// Makes the data dir private, then reads the keys and the operator's token.
    fn credentials(&self) -> anyhow::Result<(ClusterKeys, OperatorToken)> {
        server::auth::secrets::private_dir(&self.data_dir)?;
        Ok((
            ClusterKeys::load(&self.data_dir)?,
            OperatorToken::load(&self.data_dir)?,
        ))
    }

    /// The server TLS configuration, when a certificate is given.
    fn tls(&self) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(server::conn::tls_config(cert, key)?)),
            _ => Ok(None),
        }
    }

    fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("chat.db").display()))
    }
}

#[derive(Args)]
struct ControllerArgs {
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    common: Common,
    /// Password hashing cost; `fast` is for test clusters only.
    #[arg(long, env = "CHAT_PASSWORD_HASH", value_enum, default_value_t = HashCost::Standard)]
    password_hash: HashCost,
    /// Registration and login attempts from one address per minute (and in a burst).
    #[arg(long, env = "CHAT_AUTH_PER_ADDRESS", default_value_t = AuthLimits::default().per_address_per_minute)]
    auth_per_address: u32,
    /// Failed logins of one account per hour (and in a burst).
    #[arg(long, env = "CHAT_AUTH_FAILURES_PER_ACCOUNT", default_value_t = AuthLimits::default().failures_per_account_per_hour)]
    auth_failures_per_account: u32,
    /// Password hashes that may run at once (default: one per core).
    #[arg(long, env = "CHAT_HASH_CONCURRENCY")]
    hash_concurrency: Option<usize>,
    /// A reverse proxy whose X-Forwarded-For names the client (repeat for several).
    #[arg(
        long = "trusted-proxy",
        env = "CHAT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Largest attachment accepted, in bytes.
    #[arg(long, env = "CHAT_MAX_ATTACHMENT_BYTES", default_value_t = protocol::limits::MAX_ATTACHMENT_BYTES)]
    max_attachment_bytes: u64,
    /// Most bytes of attachments one user may store.
    #[arg(long, env = "CHAT_ATTACHMENT_QUOTA_BYTES", default_value_t = protocol::limits::ATTACHMENT_QUOTA_BYTES)]
    attachment_quota_bytes: u64,
    /// Token lifetime in seconds.
    #[arg(long, env = "CHAT_TOKEN_TTL_SECS", default_value_t = server::auth::TOKEN_TTL_SECS)]
    token_ttl_secs: i64,
    /// Controller id (the origin of the events it persists).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Args)]
struct NodeArgs {
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, env = "CHAT_NODE_LISTEN", default_value = "127.0.0.1:0")]
    listen: String,
    /// The controller's HTTP base (for the embedded registry and bus).
    #[arg(long, env = "CHAT_CONTROLLER", default_value = "http://127.0.0.1:8080")]
    controller: String,
    /// Trust only this certificate authority (PEM) for an https:// controller, instead of the
    /// public roots: for a cluster with certificates of its own.
    #[arg(long, env = "CHAT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
    /// Node id, unique for the life of the process (default: random).
    #[arg(long)]
    id: Option<String>,
    /// Host to advertise in the node's URLs (default: the bound address).
    #[arg(long)]
    advertise_host: Option<String>,
    /// Frames per second a device may send on average.
    #[arg(long, default_value_t = protocol::limits::RATE_PER_SEC)]
    rate_per_sec: u32,
    /// Frames a device may send in a burst.
    #[arg(long, default_value_t = protocol::limits::RATE_BURST)]
    rate_burst: u32,
    /// Frames queued per device before it is dropped as too slow.
    #[arg(long, default_value_t = protocol::limits::DEVICE_QUEUE_FRAMES)]
    queue_frames: usize,
    /// How long one write to a device may wait before the device is closed as too slow, in
    /// milliseconds.
    #[arg(long, default_value_t = protocol::limits::WRITE_STALL_MS)]
    write_stall_ms: u64,
    /// Sockets one device may hold open on this node.
    #[arg(long, default_value_t = server::node::sockets::PER_DEVICE)]
    sockets_per_device: u32,
    /// Sockets one user's devices may hold open on this node together.
    #[arg(long, default_value_t = server::node::sockets::PER_USER)]
    sockets_per_user: u32,
    /// How long a drain waits for devices and pending events, in milliseconds.
    #[arg(long, default_value_t = 8_000)]
    drain_timeout_ms: u64,
    /// Fault injection for tests (crash-after-ack=N). Never in production.
    #[arg(long, hide = true)]
    fault: Option<Fault>,
    /// Start in this teaching mode (`shared-queue` is chosen only here); needs --teaching.
    #[arg(long, requires = "teaching")]
    teaching_mode: Option<protocol::teaching::Teaching>,
}

/// mimalloc instead of the system allocator: a message's path allocates and frees small
/// buffers on several threads, where glibc's malloc cost more CPU per message (the figures:
/// docs/performance.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // No transparent huge pages: the allocator asks for them on its arenas, and then a node's
    // memory grows in steps of 2 MiB, each page resident in full however little of it is used
    // and zeroed at the first touch, on whatever task touches it (the figures:
    // docs/performance.md, "Memory per idle connection"). A refusal (a kernel without the
    // switch) only leaves the system's default.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    // Everything the process creates (the store's files, keys, logs of its own) is its owner's
    // alone, whatever the shell's umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // `CHAT_WORKER_THREADS`: 0 runs every task on one thread (no wakeups across threads); N
    // uses N worker threads; unset, one per core. The lab, which packs a controller and its
    // nodes onto one machine, gives each process its share of the cores.
    let threads: usize = std::env::var("CHAT_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().role {
        Role::Controller(args) => controller(args).await,
        Role::Node(args) => node(args).await,
    }
}

fn ready(line: ReadyLine) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line.to_line())?;
    out.flush()?;
    Ok(())
}

async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let (keys, operator) = args.common.credentials()?;
    let id = args
        .id
        .unwrap_or_else(|| format!("controller-{}", std::process::id()));
    let config = ControllerConfig {
        id: NodeId::new(id)?,
        store: args.common.store_url(),
        registry: args.common.registry.parse::<RegistryChoice>()?,
        bus: args.common.bus.parse::<BusChoice>()?,
        routing: args.common.routing,
        lease_ms: args.common.lease_ms,
        keys,
        operator,
        hash_cost: args.password_hash,
        auth: AuthLimits {
            per_address_per_minute: args.auth_per_address,
            failures_per_account_per_hour: args.auth_failures_per_account,
            hash_concurrency: args
                .hash_concurrency
                .unwrap_or_else(|| AuthLimits::default().hash_concurrency),
            trusted_proxies: args.trusted_proxies,
        },
        max_attachment_bytes: args.max_attachment_bytes,
        attachment_quota_bytes: args.attachment_quota_bytes,
        token_ttl_secs: args.token_ttl_secs,
        teaching: args.common.teaching,
        tls: args.common.tls()?,
    };
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let controller = Controller::start(listener, config).await?;
    let stop = Stop::listen();
    ready(ReadyLine {
        role: "controller".into(),
        http_url: controller.http_url().to_owned(),
        node: None,
        ws_url: None,
        pid: std::process::id(),
    })?;
    stop.wait().await;
    tracing::info!("stopping");
    controller.shutdown().await;
    Ok(())
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let (keys, operator) = args.common.credentials()?;
    let id = args
        .id
        .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let config = NodeConfig {
        id: NodeId::new(id)?,
        controller: Some(args.controller),
        store: args.common.store_url(),
        registry: args.common.registry.parse::<RegistryChoice>()?,
        bus: args.common.bus.parse::<BusChoice>()?,
        routing: args.common.routing,
        advertise_host: args.advertise_host,
        keys,
        operator,
        limits: NodeLimits {
            rate_per_sec: args.rate_per_sec,
            rate_burst: args.rate_burst,
            queue_frames: args.queue_frames,
            write_stall: Duration::from_millis(args.write_stall_ms),
            sockets_per_device: args.sockets_per_device,
            sockets_per_user: args.sockets_per_user,
            ..NodeLimits::default()
        },
        fault: args.fault,
        drain_timeout: Duration::from_millis(args.drain_timeout_ms),
        teaching: args.common.teaching,
        teaching_mode: args.teaching_mode,
        tls: args.common.tls()?,
        link_tls: match &args.ca_cert {
            Some(path) => Some(server::conn::tls_trusting(path)?),
            None => None,
        },
    };
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let node = Node::start(listener, config).await?;
    let stop = Stop::listen();
    ready(ReadyLine {
        role: "node".into(),
        http_url: node.http_url().to_owned(),
        node: Some(node.id().clone()),
        ws_url: Some(node.ws_url().to_owned()),
        pid: std::process::id(),
    })?;
    stop.wait().await;
    tracing::info!("draining");
    node.shutdown().await;
    Ok(())
}

/// SIGTERM and Ctrl-C, listened for from the moment this is made: it must exist before the
/// ready line is printed, or a supervisor's SIGTERM right after it would kill the process
/// instead of draining it.
struct Stop {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Stop {
    fn listen() -> Stop {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Stop {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Stop {}
    }

    /// Waits for SIGTERM or Ctrl-C.
    async fn wait(mut self) {
        #[cfg(unix)]
        if let (Some(term), Some(int)) = (self.term.as_mut(), self.int.as_mut()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
