#!/usr/bin/env bash
# Builds the desktop app's .deb from the workspace's release build, and prints how long each
# step took. Only a .deb: AppImage and the other formats download their tools at build time.
#
#   1. the server in release (`cargo build --release -p server`, shared with the benchmark's
#      `cargo build --release`), stripped of its debug info, as the app's sidecar;
#   2. the UI (ui/dist), if ui/ changed since it was built;
#   3. the app in release (`cargo build --release -p src-tauri`);
#   4. `tauri bundle --bundles deb`: packs what 1-3 built (no second build), after
#      scripts/desktop-strip.sh.
#
# usage: scripts/desktop-deb.sh      → target/release/bundle/deb/Cluster Chat_<version>_amd64.deb
# Honours CARGO_TARGET_DIR. Needs what scripts/desktop-e2e.sh installs (WebKitGTK dev packages,
# ui/node_modules). scripts/desktop-deb-test.sh installs the result and chats with it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

started=$SECONDS
step_start=$SECONDS
report=()
done_step() {
  report+=("$(printf '%-34s %5ss' "$1" "$((SECONDS - step_start))")")
  step_start=$SECONDS
}

scripts/desktop-sidecar.sh release
done_step "server (release) + sidecar"

[ -d ui/node_modules ] || (cd ui && npm ci --no-audit --no-fund)
if [ ! -f ui/dist/index.html ] || [ -n "$(find ui/src ui/index.html ui/vite.config.ts ui/package-lock.json -newer ui/dist/index.html -type f -print -quit)" ]; then
  (cd ui && npm run --silent build)
fi
done_step "UI"

cargo build --release -p src-tauri
done_step "app (release)"

# `tauri bundle` packs the binaries built above; its beforeBundleCommand strips the app.
(cd ui && npm run --silent tauri -- bundle --bundles deb)
done_step "bundle (.deb)"

deb="$(ls -t "$CARGO_TARGET_DIR"/release/bundle/deb/*.deb | head -n 1)"
echo
printf '%s\n' "${report[@]}"
printf '%-34s %5ss\n' "total" "$((SECONDS - started))"
echo "desktop-deb: $deb ($(du -h "$deb" | cut -f1))"
