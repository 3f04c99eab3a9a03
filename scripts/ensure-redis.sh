#!/usr/bin/env bash
# Installs redis-server from Debian/Ubuntu packages when it is missing.
# Used by the quick start, the test command and CI; does nothing when Redis is installed.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found; installing Debian's redis-server package" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "error: redis-server is missing and this user cannot install packages; run: apt-get install redis-server" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq redis-server >/dev/null
# The package may start a system Redis on 6379; the tests never use it (they start their own).
command -v redis-server >/dev/null
