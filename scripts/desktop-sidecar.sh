#!/usr/bin/env bash
# Builds the `server` binary and puts it where Tauri expects the desktop app's sidecar:
# src-tauri/binaries/chat-server-<target-triple>. tauri-build copies it beside the app binary
# (as `chat-server`) and the .deb bundles it, so "Start a local cluster" works anywhere.
#
# usage: scripts/desktop-sidecar.sh [debug|release]     (default: debug)
# Honours CARGO_TARGET_DIR. Run it before building src-tauri; `npm run tauri build` does.
set -euo pipefail

profile="${1:-debug}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

case "$profile" in
  debug) cargo build -p server ;;
  release) cargo build --release -p server ;;
  *) echo "desktop-sidecar: unknown profile '$profile' (debug or release)" >&2; exit 2 ;;
esac

triple="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
src="$target_dir/$profile/server"
dest="$root/src-tauri/binaries/chat-server-$triple"
[ -x "$src" ] || { echo "desktop-sidecar: $src was not built" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
# Copy to a temp name and rename, so a build reading the sidecar never sees half a file. A
# release sidecar goes into the .deb: without its debug info it is a fifth of the size.
if [ "$profile" = release ] && command -v strip >/dev/null; then
  strip --strip-debug -o "$dest.tmp" "$src"
else
  cp "$src" "$dest.tmp"
fi
mv -f "$dest.tmp" "$dest"
echo "desktop-sidecar: $dest ($profile)"
