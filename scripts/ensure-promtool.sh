#!/usr/bin/env bash
# Installs promtool (Debian/Ubuntu's prometheus package) when it is missing.
# Used by CI (.ci/run) and tests/alerts.rs, which check and unit-test the alerting rules in
# deploy/prometheus/; does nothing when promtool is installed.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
echo "promtool not found; installing Debian's prometheus package" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "error: promtool is missing and this user cannot install packages; run: apt-get install prometheus" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package may start a Prometheus server on 9090 where an init system runs; only promtool is
# used.
command -v promtool >/dev/null
