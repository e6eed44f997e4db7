#!/usr/bin/env bash
# Builds the Debian package into target/debian/: the two executables, then the man pages and
# shell completions made from their command-line definitions, then `cargo deb` over both.
#   packaging/build-deb.sh                   # cargo build --release first
#   packaging/build-deb.sh --no-build dev --fast   # package what target/debug holds (tests)
# cargo-deb: `cargo install --locked cargo-deb` (tests/run.sh puts it in target/tools/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
if [ "${1:-}" = "--no-build" ]; then build=0; shift; fi
profile=${1:-release}
shift || true
case $profile in dev) dir=target/debug ;; *) dir=target/$profile ;; esac
PATH=$PWD/target/tools/bin:$PATH

if [ "$build" = 1 ]; then
  cargo build --locked --profile "$profile" --bins
fi
rm -rf "$dir/assets"
"$dir/tidemark-agent" dist-assets --out "$dir/assets"
# Compressed as Debian policy asks (cargo-deb compresses man pages, but not ones it takes
# from the target directory).
gzip -9n "$dir"/assets/man/*.1
# The dev profile draws cargo-deb's warning that it is meant for releases: here it only
# packages the test build, so CI compiles nothing twice. Further arguments go to cargo deb.
cargo deb --locked --no-build --profile "$profile" --strip --no-separate-debug-symbols --no-dbgsym \
  --output target/debian/ "$@"
