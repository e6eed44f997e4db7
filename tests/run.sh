#!/usr/bin/env bash
# Installs what the tests need (idempotent: only what is missing) and runs every test once,
# in one profile. Real parts: PostgreSQL 15 (run as the `postgres` OS user), a local
# moto[server] for the S3 API, the fs store.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { printf '\n== %s\n' "$*" >&2; }

# PostgreSQL 15 server binaries (initdb, pg_ctl, pgbench, pg_waldump, pg_controldata).
if [ ! -x /usr/lib/postgresql/15/bin/postgres ] || [ ! -x /usr/lib/postgresql/15/bin/pgbench ]; then
  say "installing PostgreSQL 15"
  apt-get update -q
  apt-get install -y -q --no-install-recommends postgresql-15
fi
id postgres >/dev/null 2>&1 || { say "no postgres OS user after install"; exit 1; }

# moto[server] in a venv under target/, so the system Python is left alone.
venv=$root/target/test-venv
if [ ! -x "$venv/bin/moto_server" ]; then
  say "installing moto[server] into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]>=5,<6'
fi
export TEST_MOTO_SERVER=$venv/bin/moto_server
export TEST_PG_BIN=/usr/lib/postgresql/15/bin
# Never let the AWS SDK reach for instance metadata or real credentials.
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN || true

say "cargo fmt --check"
cargo fmt --check

say "building tests"
# Debug info of the AWS SDKs is what fills a disk (see [profile.dev] in Cargo.toml); say
# how much room the build had, and on failure show the compiler's own messages.
df -h . | tail -n 1
build_log=$(mktemp)
if ! cargo test --no-run --locked >"$build_log" 2>&1; then
  grep -v -E '^\s+(Compiling|Checking|Downloaded|Downloading) ' "$build_log" | tail -n 80
  df -h . | tail -n 1
  exit 1
fi
tail -n 3 "$build_log"
rm -f "$build_log"

say "running tests"
cargo test --locked --no-fail-fast -- --test-threads=2
