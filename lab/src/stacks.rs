//! Backend sets the lab can run a cluster on, whether their services answer on this machine,
//! and what a run leaves in them (removed when the run ends).
//!
//! Each set names a bus (which decides the registry: the embedded bus goes with the embedded
//! registry, a real bus with Redis) and a store. Services are the shared local ones: Redis on
//! 6379, RabbitMQ on 5672, PostgreSQL on 5432 (its `test` database, one schema per run).

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use protocol::lab::{BackendChoice, BackendsView};

use crate::Routing;
use crate::cluster::Backends;

const REDIS: &str = "127.0.0.1:6379";
const RABBITMQ: &str = "127.0.0.1:5672";
const POSTGRES: &str = "127.0.0.1:5432";

/// A bus and a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    /// `embedded`, `redis`, `rabbitmq`, each `+postgres` with PostgreSQL.
    pub name: &'static str,
    /// For people.
    pub label: &'static str,
    bus: Bus,
    postgres: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bus {
    Embedded,
    Redis,
    RabbitMq,
}

/// Every set the lab offers.
pub const STACKS: &[Stack] = &[
    Stack {
        name: "embedded",
        label: "embedded registry and bus (in the controller), SQLite",
        bus: Bus::Embedded,
        postgres: false,
    },
    Stack {
        name: "redis",
        label: "Redis registry, Redis pub/sub bus, SQLite",
        bus: Bus::Redis,
        postgres: false,
    },
    Stack {
        name: "rabbitmq",
        label: "Redis registry, RabbitMQ bus, SQLite",
        bus: Bus::RabbitMq,
        postgres: false,
    },
    Stack {
        name: "redis+postgres",
        label: "Redis registry, Redis pub/sub bus, PostgreSQL",
        bus: Bus::Redis,
        postgres: true,
    },
    Stack {
        name: "rabbitmq+postgres",
        label: "Redis registry, RabbitMQ bus, PostgreSQL",
        bus: Bus::RabbitMq,
        postgres: true,
    },
];

/// The set called `name`.
pub fn find(name: &str) -> Option<Stack> {
    STACKS.iter().copied().find(|s| s.name == name)
}

fn answers(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
}

fn has_program(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Stack {
    /// What is missing for it to run here, if anything.
    pub fn missing(&self) -> Option<String> {
        let mut missing = Vec::new();
        if self.bus != Bus::Embedded && !answers(REDIS) {
            missing.push(format!("Redis on {REDIS}"));
        }
        if self.bus == Bus::RabbitMq && !answers(RABBITMQ) {
            missing.push(format!("RabbitMQ on {RABBITMQ}"));
        }
        if self.postgres && !(answers(POSTGRES) && has_program("psql")) {
            missing.push(format!("PostgreSQL on {POSTGRES} (and psql)"));
        }
        if self.bus != Bus::Embedded && !has_program("redis-cli") {
            missing.push("redis-cli (to clean up afterwards)".to_owned());
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// The backends of a run tagged `tag` (letters, digits, `_`), with what it leaves behind.
    /// Creates the run's PostgreSQL schema.
    pub fn backends(&self, tag: &str, routing: Routing) -> Result<(Backends, Leftovers), String> {
        let mut leftovers = Leftovers::default();
        let redis = format!("redis://{REDIS}/?prefix={tag}:");
        let (registry, bus) = match self.bus {
            Bus::Embedded => ("embedded".to_owned(), "embedded".to_owned()),
            Bus::Redis => (redis.clone(), redis),
            Bus::RabbitMq => (
                redis,
                format!("amqp://guest:guest@{RABBITMQ}/%2f?prefix={tag}."),
            ),
        };
        if self.bus != Bus::Embedded {
            leftovers.redis_prefix = Some(format!("{tag}:"));
        }
        let store = if self.postgres {
            psql(&format!("CREATE SCHEMA {tag}"))?;
            leftovers.pg_schema = Some(tag.to_owned());
            Some(format!(
                "postgres://postgres@{POSTGRES}/test?options[search_path]={tag}"
            ))
        } else {
            None
        };
        Ok((
            Backends {
                store,
                registry,
                bus,
                routing,
            },
            leftovers,
        ))
    }
}

/// Every set, with whether it can run here.
pub fn choices() -> Vec<BackendChoice> {
    STACKS
        .iter()
        .map(|s| {
            let missing = s.missing();
            BackendChoice {
                name: s.name.to_owned(),
                label: s.label.to_owned(),
                available: missing.is_none(),
                missing,
            }
        })
        .collect()
}

/// Short names of a run's backends, for the panel.
pub fn describe(b: &Backends) -> BackendsView {
    let kind = |url: &str| {
        url.split("://")
            .next()
            .filter(|k| *k != url)
            .unwrap_or(url)
            .to_owned()
    };
    BackendsView {
        registry: kind(&b.registry),
        bus: kind(&b.bus),
        routing: b.routing.as_str().to_owned(),
        store: b.store.as_deref().map_or_else(|| "sqlite".to_owned(), kind),
    }
}

/// The name of the set these backends are (None for a set given by hand).
pub fn name_of(b: &Backends) -> Option<&'static str> {
    let v = describe(b);
    let bus = match v.bus.as_str() {
        "embedded" => Bus::Embedded,
        "redis" => Bus::Redis,
        "amqp" => Bus::RabbitMq,
        _ => return None,
    };
    let postgres = v.store == "postgres";
    STACKS
        .iter()
        .find(|s| s.bus == bus && s.postgres == postgres)
        .map(|s| s.name)
}

fn psql(sql: &str) -> Result<(), String> {
    let status = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-qc",
            sql,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running psql: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("psql could not run {sql:?} on {POSTGRES}/test"))
    }
}

/// What a run leaves in shared services: its Redis keys and its PostgreSQL schema (RabbitMQ
/// queues expire by themselves). Removed on drop, best effort.
#[derive(Debug, Default)]
pub struct Leftovers {
    redis_prefix: Option<String>,
    pg_schema: Option<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(prefix) = &self.redis_prefix {
            let script = format!(
                "redis-cli -h 127.0.0.1 --scan --pattern '{prefix}*' | xargs -r redis-cli -h 127.0.0.1 del"
            );
            let _ = Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(schema) = &self.pg_schema {
            let _ = psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in STACKS {
            if s.postgres {
                continue;
            }
            let (b, _) = s
                .backends("lab_stacks_unit_test", Routing::Fanout)
                .expect("no service needed");
            assert_eq!(name_of(&b), Some(s.name));
            assert_eq!(describe(&b).routing, "fanout");
        }
        let b = Backends::default();
        assert_eq!(
            describe(&b),
            BackendsView {
                registry: "embedded".into(),
                bus: "embedded".into(),
                routing: "routed".into(),
                store: "sqlite".into()
            }
        );
        assert_eq!(find("rabbitmq+postgres").map(|s| s.postgres), Some(true));
        assert!(find("kafka-someday").is_none());
    }
}
