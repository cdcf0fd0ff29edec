#!/usr/bin/env bash
# Before bundling (Tauri's beforeBundleCommand): drops the debug info the workspace's release
# profile keeps (`debug = 1`) from the app binary, so the .deb is a fraction of the size.
# Backtraces keep function names (symbols stay); only DWARF line info goes.
# Honours CARGO_TARGET_DIR.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
app="${CARGO_TARGET_DIR:-$root/target}/release/chat-desktop"
[ -f "$app" ] || { echo "desktop-strip: $app not found" >&2; exit 1; }
if command -v strip >/dev/null; then
  strip --strip-debug "$app"
  echo "desktop-strip: $app ($(du -h "$app" | cut -f1))"
else
  echo "desktop-strip: no strip(1) here; bundling $app as it is" >&2
fi
