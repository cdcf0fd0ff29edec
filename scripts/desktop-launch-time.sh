#!/usr/bin/env bash
# Prints how long `scripts/run` takes to open the app's window when nothing changed since the
# last build: from starting the script to the window being on the X server (`xwininfo`). One
# untimed run first (it builds whatever is stale), then RUNS timed runs on a fresh data folder
# each (the first-run screen; no cluster is started), and their median.
#
# usage: scripts/desktop-launch-time.sh          (under Xvfb if there is no $DISPLAY)
# env:   RUNS (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a -s "-screen 0 1920x1080x24" "$0" "$@"
fi
runs="${RUNS:-5}"

now_ms() { date +%s%3N; }

# one_launch: starts scripts/run, waits for its window, quits the app; prints the milliseconds.
one_launch() {
  local data pid start shown
  data="$(mktemp -d)"
  start="$(now_ms)"
  CHAT_DESKTOP_DATA_DIR="$data" scripts/run >"$data/app.log" 2>&1 &
  pid=$!
  until xwininfo -root -tree 2>/dev/null | grep -q '"Cluster Chat'; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "desktop-launch-time: the app exited; its log:" >&2
      cat "$data/app.log" >&2
      exit 1
    fi
    sleep 0.02
  done
  shown="$(now_ms)"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  echo $((shown - start))
}

echo "warm-up (builds what is stale): $(one_launch) ms"
times=()
for _ in $(seq "$runs"); do
  t="$(one_launch)"
  times+=("$t")
  echo "scripts/run to window: $t ms"
done
median="$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")"
echo "median of $runs: $median ms"
