#!/usr/bin/env bash
# ZooKeeper for the `zookeeper://` registry: Debian's `zookeeperd` package, run on 127.0.0.1:2181
# with a configuration of its own (not the package's):
#   - loopback only, and no admin server (it would take port 8080);
#   - a tick of 500 ms, so that sessions from 1 s (2 ticks) to 10 s (20 ticks) are allowed: a
#     node's session lasts one lease, and the tests use leases of 2 s;
#   - its data in /var/lib/chat-cluster/zookeeper, kept across restarts, so that sessions and
#     their ephemeral znodes survive a restart of the server shorter than a session.
# Usage: scripts/zookeeper.sh start|stop|status. `start` installs the package if it is missing,
# starts the server if it does not answer, and waits until it serves.
set -euo pipefail

home=/var/lib/chat-cluster/zookeeper
cfg=$home/zoo.cfg
server=/usr/share/zookeeper/bin/zkServer.sh
log() { printf '[zookeeper] %s\n' "$*"; }

# The four-letter word `srvr` answers with the mode once the server serves requests.
serving() {
  timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2181; printf srvr >&3; cat <&3' 2>/dev/null \
    | grep -q '^Mode: '
}

write_config() {
  mkdir -p "$home/data" "$home/logs"
  cat >"$cfg" <<EOF
tickTime=500
initLimit=10
syncLimit=5
dataDir=$home/data
clientPort=2181
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr,cons
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
EOF
}

run_server() {
  ZOO_LOG_DIR=$home/logs SERVER_JVMFLAGS="-Xmx256m" "$server" "$1" "$cfg" >/dev/null 2>&1
}

case "${1:-start}" in
  start)
    if [ ! -x "$server" ]; then
      log "installing zookeeperd"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeperd >/dev/null
    fi
    if serving; then
      log "serving on 127.0.0.1:2181"
      exit 0
    fi
    write_config
    log "starting"
    run_server start || true
    for _ in $(seq 120); do serving && { log "serving on 127.0.0.1:2181"; exit 0; }; sleep 0.25; done
    log "did not start; see $home/logs"
    exit 1
    ;;
  stop)
    write_config
    run_server stop || true
    for _ in $(seq 80); do serving || exit 0; sleep 0.25; done
    log "still serving after stop"
    exit 1
    ;;
  status)
    serving && log "serving" || { log "not serving"; exit 1; }
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
