#!/usr/bin/env bash
# A Kafka-protocol broker for the `kafka://` bus: tansu (a broker written in Rust, from
# crates.io; Apache Kafka itself cannot be downloaded here), on 127.0.0.1:9092 with its
# in-memory storage engine. The bus keeps nothing that must outlive the broker (a node starts
# from the end of its topics and catches up from the store), so memory is enough; a restart
# of the broker loses its topics and groups, which the bus creates again.
#   - the binary is cached in /var/cache/chat-cluster/tansu-$VERSION (built once with cargo,
#     its build directory deleted afterwards), so CI does not rebuild it each run;
#   - the broker runs in the background, its pid in /var/lib/chat-cluster/kafka/tansu.pid and
#     its log in /var/lib/chat-cluster/kafka/tansu.log.
# Usage: scripts/kafka.sh start|stop|restart|status. `start` builds the binary if it is
# missing, starts the broker if nothing answers on the port, and waits until it does.
set -euo pipefail

version=0.6.0
root=/var/cache/chat-cluster/tansu-$version
bin=$root/bin/tansu
build_dir=/var/cache/chat-cluster/tansu-build
home=/var/lib/chat-cluster/kafka
pidfile=$home/tansu.pid
logfile=$home/tansu.log
port=9092
log() { printf '[kafka] %s\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q tansu "/proc/$pid/cmdline" 2>/dev/null \
    && echo "$pid"
}

install_broker() {
  [ -x "$bin" ] && return 0
  log "building tansu $version (once; cached in $root)"
  mkdir -p /var/cache/chat-cluster
  cargo install "tansu@$version" --locked --features dynostore --root "$root" \
    --target-dir "$build_dir"
  rm -rf "$build_dir"
}

start() {
  install_broker
  if port_open; then
    log "serving on 127.0.0.1:$port"
    return 0
  fi
  mkdir -p "$home"
  log "starting"
  # setsid: the broker outlives the shell that started it (and CI's process group).
  setsid "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ \
    >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 120); do
    if port_open; then log "serving on 127.0.0.1:$port"; return 0; fi
    running_pid >/dev/null || break
    sleep 0.25
  done
  log "did not start; see $logfile"
  tail -n 20 "$logfile" >&2 || true
  return 1
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid"
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
  for _ in $(seq 40); do port_open || return 0; sleep 0.25; done
  log "something else still serves on port $port"
  return 1
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status)
    if port_open; then log "serving on 127.0.0.1:$port"; else log "not serving"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac
