#!/usr/bin/env bash
# The lab panel's browser tests (lab/panel/tests): Debian's Chromium driven by playwright-core
# against a real `lab up` (target/debug/lab, with the panel built in). Installs Chromium with
# apt when it is missing; never downloads a browser otherwise. Screenshots: artifacts/lab/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
npm ci --prefix lab/panel --no-audit --no-fund
# Build the panel, then the lab that embeds it (a no-op when both are current).
npm run build --prefix lab/panel
cargo build -p lab -p server --bins
npm test --prefix lab/panel
