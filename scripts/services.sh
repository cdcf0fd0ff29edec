#!/usr/bin/env bash
# Makes sure the services the tests use are installed and running on 127.0.0.1:
# Redis (6379), RabbitMQ (5672, guest/guest), PostgreSQL (5432, trust auth, database `test`)
# and ZooKeeper (2181, see scripts/zookeeper.sh).
# Installs a missing one with apt, starts a stopped one, and waits until each answers.
# Idempotent: on a machine where everything runs it only checks.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local port=$1 name=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do port_open "$port" && return 0; sleep 0.5; done
  log "$name did not open port $port"; return 1
}
apt_updated=0
need_pkg() {
  local cmd=$1; shift
  if ! command -v "$cmd" >/dev/null 2>&1; then
    if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# Redis
need_pkg redis-server redis-server redis-tools
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379 Redis
fi
for _ in $(seq 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.25; done
log "Redis: $(redis-cli -h 127.0.0.1 -p 6379 ping)"

# RabbitMQ
need_pkg rabbitmq-server rabbitmq-server
if ! port_open 5672; then
  log "starting RabbitMQ"
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 rabbitmq-server -detached
  rabbitmqctl await_startup >/dev/null
  wait_port 5672 RabbitMQ
fi
log "RabbitMQ: port 5672 open"

# PostgreSQL
need_pkg pg_ctlcluster postgresql
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start \
    || pg_ctlcluster "$(ls /etc/postgresql | sort -V | tail -n1)" main start
  for _ in $(seq 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.5; done
fi
if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  # A fresh install: local connections over TCP without a password, and a `test` database.
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    pg_ctlcluster "$ver" main reload || true
  fi
  su postgres -c "psql -Atc \"select 1 from pg_database where datname='test'\"" | grep -q 1 \
    || su postgres -c "createdb test"
fi
log "PostgreSQL: $(psql -h 127.0.0.1 -U postgres -d test -Atc 'select version()' | cut -d' ' -f1-2)"

# ZooKeeper
"$(dirname "$0")/zookeeper.sh" start
