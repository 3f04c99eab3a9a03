#!/usr/bin/env bash
# Regenerates the console screenshots in docs/console/ from the browser test (tests/e2e/browser.rs),
# which drives headless Chromium through the console against real Redis and the sandbox OpenApp.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
scripts/ensure-chromium.sh
CONSOLE_SCREENSHOTS="$PWD/docs/console" cargo test --locked --test e2e browser::
ls -l docs/console/*.png
