#!/usr/bin/env bash
# Builds the desktop app and runs all of its tests on a Debian/Ubuntu machine:
#   - installs what is missing (apt packages for WebKitGTK and Xvfb, tauri-driver, npm deps);
#   - UI: type check, vitest, production build;
#   - Rust: the server sidecar, the app's lints (clippy, warnings denied), the app, its unit
#     tests;
#   - end to end: the real app under Xvfb, driven by tauri-driver + WebKitWebDriver through
#     the scenarios in ui/e2e/ (screenshots and logs in artifacts/desktop/).
#
# usage: scripts/desktop-e2e.sh [--deb]
#   --deb   also build the release .deb bundle (slow: a release build of the app and server)
# env:    CARGO_TARGET_DIR (default: target/), E2E_FILTER (a vitest name filter)
#
# Idempotent: each install step checks first, so a warm run only builds what changed and
# runs the tests. Exits non-zero, loudly, at the first failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
deb=0
for arg in "$@"; do
  case "$arg" in
    --deb) deb=1 ;;
    *) echo "desktop-e2e: unknown argument $arg (try --deb)" >&2; exit 2 ;;
  esac
done

started=$SECONDS
step() { printf '\n==> [%4ss] %s\n' "$((SECONDS - started))" "$*"; }
fail() { printf '\ndesktop-e2e: FAILED: %s\n' "$*" >&2; exit 1; }
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else fail "need root (or sudo) to run: $*"
  fi
}

# 1. System packages -----------------------------------------------------------------------
apt_packages=(
  libwebkit2gtk-4.1-dev libgtk-3-dev librsvg2-dev libayatana-appindicator3-dev libssl-dev
  pkg-config build-essential file xvfb xauth webkit2gtk-driver
  # The scenarios read native window titles (xwininfo) and record notifications on a session
  # bus of their own (dbus-daemon, dbus-monitor).
  x11-utils dbus-daemon dbus-bin
)
step "system packages"
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "all present"
fi

# 2. Tools ---------------------------------------------------------------------------------
step "tools"
command -v cargo >/dev/null || fail "cargo not found (install Rust from https://rustup.rs)"
command -v node >/dev/null || fail "node not found (Node.js 20.19+ is needed for Vite 7)"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' \
  || fail "Node.js $(node --version) is too old: Vite 7 needs 20.19 or newer"
if ! command -v tauri-driver >/dev/null; then
  echo "installing tauri-driver"
  cargo install tauri-driver --locked --version '^2'
fi
command -v WebKitWebDriver >/dev/null || fail "WebKitWebDriver not found (apt package webkit2gtk-driver)"
echo "cargo $(cargo --version | cut -d' ' -f2), node $(node --version), tauri-driver $(command -v tauri-driver)"

# 3. UI --------------------------------------------------------------------------------------
step "npm ci (ui/)"
lock_hash="$(sha256sum ui/package-lock.json | cut -d' ' -f1)"
if [ "$(cat ui/node_modules/.lock-hash 2>/dev/null || true)" != "$lock_hash" ]; then
  (cd ui && npm ci --no-audit --no-fund)
  echo "$lock_hash" > ui/node_modules/.lock-hash
else
  echo "node_modules matches package-lock.json"
fi
step "UI: type check, unit tests, build"
(cd ui && npm run --silent check && npm test --silent && npm run --silent build)

# 4. Rust ------------------------------------------------------------------------------------
step "server sidecar"
scripts/desktop-sidecar.sh debug
# Its build script needs the built UI and the sidecar, so its lints come only now.
step "desktop app lints (cargo clippy -p src-tauri, warnings denied)"
cargo clippy -p src-tauri --all-targets -- -D warnings
step "desktop app (cargo build -p src-tauri)"
cargo build -p src-tauri
step "desktop app unit tests"
cargo test -p src-tauri --quiet
if cargo tree -p src-tauri -e normal 2>/dev/null | grep -qE ' (axum|lapin|redis) '; then
  fail "src-tauri must not depend on axum, lapin or redis"
fi

# 5. End to end ------------------------------------------------------------------------------
step "end to end under Xvfb (artifacts/desktop/)"
rm -rf artifacts/desktop
mkdir -p artifacts/desktop
export CHAT_DESKTOP_BIN="$CARGO_TARGET_DIR/debug/chat-desktop"
(cd ui && xvfb-run -a -s "-screen 0 1920x1080x24" npx vitest run -c e2e/vitest.config.ts ${E2E_FILTER:+-t "$E2E_FILTER"}) \
  || fail "end-to-end tests (see artifacts/desktop/*.log and the screenshots there)"

# 6. Optional: the .deb ---------------------------------------------------------------------
if [ "$deb" -eq 1 ]; then
  step "release .deb bundle"
  (cd ui && npm run --silent tauri build -- --bundles deb)
  ls -l "$CARGO_TARGET_DIR"/release/bundle/deb/*.deb
fi

step "desktop: all green"
