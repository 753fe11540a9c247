#!/usr/bin/env bash
# Installs what drc's scripts need and is missing. Idempotent; sourced by
# scripts/test and scripts/demo. Safe to run again and again.
set -euo pipefail

need_cmd() { command -v "$1" >/dev/null 2>&1; }

if ! need_cmd cargo; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "install: no Rust toolchain found; install rustup (https://rustup.rs) first" >&2
    exit 1
  fi
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

# Debian packages the scripts use directly.
apt_need=""
need_cmd curl || apt_need="$apt_need curl"
need_cmd python3 || apt_need="$apt_need python3"
if [ -n "$apt_need" ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q $apt_need
  else
    echo "install: missing packages:$apt_need (run as root or install them)" >&2
    exit 1
  fi
fi
