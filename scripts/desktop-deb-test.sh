#!/usr/bin/env bash
# The .deb, end to end: builds it (scripts/desktop-deb.sh, unless --no-build and one exists),
# installs it with `dpkg -i`, starts the installed app (/usr/bin/chat-desktop, with its
# sidecar /usr/bin/chat-server) under Xvfb through tauri-driver, and chats with it: first
# run starts a local cluster, two users register, a message goes both ways
# (ui/e2e/installed.deb.ts; screenshots in artifacts/desktop/installed-*.png). The package is
# removed again at the end.
#
# Not in scripts/test: the release build takes tens of minutes on a small machine (see
# docs/performance.md). Run it before a release.
#
# usage: scripts/desktop-deb-test.sh [--no-build]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) echo "desktop-deb-test: unknown argument $arg (try --no-build)" >&2; exit 2 ;;
  esac
done
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

debs=("$CARGO_TARGET_DIR"/release/bundle/deb/*.deb)
if [ "$build" -eq 1 ] || [ ! -f "${debs[0]}" ]; then
  scripts/desktop-deb.sh
fi
deb="$(ls -t "$CARGO_TARGET_DIR"/release/bundle/deb/*.deb | head -n 1)"
package="$(dpkg-deb -f "$deb" Package)"

echo "desktop-deb-test: installing $deb ($package)"
as_root dpkg -i "$deb"
trap 'as_root dpkg -r "$package" >/dev/null || true' EXIT
for f in /usr/bin/chat-desktop /usr/bin/chat-server; do
  [ -x "$f" ] || { echo "desktop-deb-test: $f not installed by $deb" >&2; exit 1; }
done

mkdir -p artifacts/desktop
(cd ui && CHAT_DESKTOP_BIN=/usr/bin/chat-desktop E2E_DEB=1 \
  xvfb-run -a -s "-screen 0 1920x1080x24" npx vitest run -c e2e/vitest.config.ts)
echo "desktop-deb-test: the installed app started its cluster and chatted"
