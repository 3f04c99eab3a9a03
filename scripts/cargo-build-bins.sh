#!/usr/bin/env bash
# Runs `cargo build ARGS…` and prints the path of every binary it built or found up to date,
# one per line, on stdout: wherever cargo puts them (CARGO_TARGET_DIR, build.target-dir,
# --release, …). Cargo's progress and diagnostics go to stderr as usual.
#
#   bins=$(scripts/cargo-build-bins.sh --locked -p lease-sync) || exit 1
#
# No jq needed: the paths are read from the `"executable":"…"` fields of cargo's JSON messages.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust (https://rustup.rs) and open a new shell" >&2
  exit 1
fi
status=0
messages=$(cargo build --message-format=json-render-diagnostics "$@") || status=$?
if [ "$status" -ne 0 ]; then
  echo "error: \`cargo build $*\` failed (exit status $status); see the messages above" >&2
  exit "$status"
fi
bins=$(printf '%s\n' "$messages" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
if [ -z "$bins" ]; then
  echo "error: \`cargo build $*\` reported no binary" >&2
  exit 1
fi
printf '%s\n' "$bins"
