#!/usr/bin/env bash
# tidemark vs pgBackRest, in one run, on identical inputs and settings:
#   - zstd level 3 for both
#   - encryption on for both (pgBackRest's aes-256-cbc repo cipher)
#   - the same medium: a local directory repository
#   - equal parallelism: process-max = tidemark workers = $WORKERS
# The corpus is $SEGMENTS real WAL segments from pgbench, generated once and reused.
# Operations measured:
#   archive  the archiver's pattern: one archive_command call per segment, in order
#            (tidemark daemon read-ahead vs pgBackRest archive-async)
#   fetch    the restore_command pattern: serial calls
#            (tidemark prefetch vs pgBackRest async archive-get)
#   backup / restore   of a pgbench database of about $SCALE*15 MB
#            (tidemark files provider vs pgbackrest --type=full / restore, bundling and
#            block incremental on)
#   incremental        after one row in every 20th block of pgbench_accounts is updated
#            (5% of its blocks): bytes stored, time, and a restore from it
#            (tidemark backup create --incremental vs pgbackrest --type=incr with
#            repo1-bundle=y repo1-block=y)
#   S3=1 (default) repeats archive and fetch against one local moto S3 server (TLS).
# Prints one markdown table and writes it to benches/RESULTS.md.
# Runs as root; PostgreSQL and both tools run as the postgres user.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORKERS=${WORKERS:-4}
SEGMENTS=${SEGMENTS:-64}
SCALE=${SCALE:-140}
BENCH=${BENCH_DIR:-/var/tmp/tidemark-bench}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
CIPHER_PASS=benchmark-cipher-pass-0123456789

say() { printf '== %s\n' "$*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }

# The peer is pgBackRest 2.59.1 (the current release, with block incremental and bundling),
# built from its release tarball when absent; Debian's package is the old 2.45.
PGBR_VERSION=2.59.1
PGBR_TARBALL=${PGBR_TARBALL:-$root/../shared/peers/pgbackrest-release-$PGBR_VERSION.tar.gz}
PGBR_DIR=$BENCH/peer/pgbackrest-$PGBR_VERSION
if [ ! -x "$PGBR_DIR/bin/pgbackrest" ]; then
  say "building pgBackRest $PGBR_VERSION from $PGBR_TARBALL"
  [ -f "$PGBR_TARBALL" ] || { say "no pgBackRest tarball at $PGBR_TARBALL (set PGBR_TARBALL)"; exit 1; }
  missing=()
  for pkg in meson ninja-build gcc pkg-config libpq-dev libssl-dev libxml2-dev libyaml-dev libzstd-dev \
    liblz4-dev libbz2-dev zlib1g-dev libssh2-1-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then apt-get update -q; apt-get install -y -q --no-install-recommends "${missing[@]}"; fi
  rm -rf "$PGBR_DIR.build" && mkdir -p "$PGBR_DIR.build" "$PGBR_DIR/bin"
  tar -xzf "$PGBR_TARBALL" -C "$PGBR_DIR.build"
  meson setup "$PGBR_DIR.build/out" "$PGBR_DIR.build/pgbackrest-release-$PGBR_VERSION" --buildtype=release >/dev/null
  ninja -C "$PGBR_DIR.build/out" >/dev/null
  install -m 0755 "$PGBR_DIR.build/out/src/pgbackrest" "$PGBR_DIR/bin/pgbackrest"
  rm -rf "$PGBR_DIR.build"
fi
export PATH=$PGBR_DIR/bin:$PATH
[ "$(pgbackrest version)" = "pgBackRest $PGBR_VERSION" ] || { say "pgbackrest on PATH is not $PGBR_VERSION"; exit 1; }
say "building tidemark (release)"
cargo build --release --bins -q
TM=$BENCH/bin/tidemark
mkdir -p "$BENCH/bin"
install -m 0755 target/release/tidemark target/release/tidemark-agent "$BENCH/bin/"
# Installed sizes (issue 17): stripped, as the Debian package ships them, the front end within
# 3 MB and the agent within 30 MB. The packaging test packages the dev profile's binaries,
# so the limits are checked here, on a release build.
for spec in tidemark:3000000 tidemark-agent:30000000; do
  exe=${spec%%:*} limit=${spec#*:}
  strip -o "$BENCH/$exe.stripped" "target/release/$exe"
  size=$(stat -c %s "$BENCH/$exe.stripped")
  rm -f "$BENCH/$exe.stripped"
  say "installed size of $exe: $size bytes (limit $limit)"
  [ "$size" -le "$limit" ] || { say "$exe is over its size limit"; exit 1; }
done
chown postgres:postgres "$BENCH"

# ---------------------------------------------------------------- corpus + database
src=$BENCH/src
port=55432
pgsql() { as_pg "$PGBIN/psql" -h "$BENCH" -p $port -U postgres -XAtqc "$1" postgres; }
start_src() { as_pg "$PGBIN/pg_ctl" -D "$src" -l "$BENCH/src.log" -w start >/dev/null; }
stop_src() { as_pg "$PGBIN/pg_ctl" -D "$src" -w -m fast stop >/dev/null 2>&1 || true; }
trap stop_src EXIT
if [ ! -f "$BENCH/corpus.done" ]; then
  say "generating the corpus ($SEGMENTS segments) and a scale-$SCALE pgbench database"
  rm -rf "$src" "$BENCH/corpus"
  as_pg "$PGBIN/initdb" -A trust -U postgres -D "$src" >/dev/null
  cat >> "$src/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$BENCH'
archive_mode = on
archive_command = '/bin/true'
wal_keep_size = '4GB'
max_wal_size = '8GB'
EOF
  start_src
  as_pg "$PGBIN/pgbench" -h "$BENCH" -p $port -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  as_pg "$PGBIN/pgbench" -h "$BENCH" -p $port -U postgres -n -c 4 -t 5000 postgres >/dev/null 2>&1
  pgsql "select pg_switch_wal()" >/dev/null
  current=$(pgsql "select pg_walfile_name(pg_current_wal_lsn())")
  pgsql "checkpoint" >/dev/null
  mkdir -p "$BENCH/corpus"
  # The last $SEGMENTS completed segments (the newest may be a recycled, unwritten file):
  # real pgbench WAL, loads, updates and full-page images.
  last=$current
  ls "$src/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort | awk -v l="$last" '$0 < l' | tail -n "$SEGMENTS" |
    while read -r s; do cp "$src/pg_wal/$s" "$BENCH/corpus/"; done
  stop_src
  [ "$(ls "$BENCH/corpus" | wc -l)" -eq "$SEGMENTS" ] || { say "corpus has $(ls "$BENCH/corpus" | wc -l) segments, wanted $SEGMENTS: raise the pgbench load"; exit 1; }
  chown -R postgres:postgres "$BENCH/corpus"
  touch "$BENCH/corpus.done"
fi
corpus_mb=$(du -sm "$BENCH/corpus" | cut -f1)
mapfile -t segs < <(ls "$BENCH/corpus" | sort)

# A stopped copy of the cluster's data dir with pg_wal = the corpus, every segment .ready.
fake_datadir() {
  local d=$1
  rm -rf "$d"
  mkdir -p "$d/pg_wal/archive_status" "$d/global"
  cp "$src/global/pg_control" "$d/global/"
  cp "$src/PG_VERSION" "$d/"
  for s in "${segs[@]}"; do cp "$BENCH/corpus/$s" "$d/pg_wal/$s"; : > "$d/pg_wal/archive_status/$s.ready"; done
  chown -R postgres:postgres "$d"
  chmod 700 "$d"
  # The copy's 1 GiB of dirty pages is written back now, not during the timed leg.
  sync
}

# Times each command line of stdin the way PostgreSQL's archiver and startup process run
# archive_command / restore_command: as postgres, in directory $1, through `/bin/sh -c`.
# Prints one duration (us) per line. One setpriv starts the timer; no per-call wrapper.
# With $2, that file is removed before each call, as the startup process removes
# RECOVERYXLOG before it runs restore_command (RestoreArchivedFile).
cat > "$BENCH/time_calls.py" <<'EOF'
import os, subprocess, sys, time
for line in sys.stdin:
    line = line.strip()
    if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
        os.unlink(sys.argv[2])
    t0 = time.perf_counter_ns()
    rc = subprocess.call(["/bin/sh", "-c", line], cwd=sys.argv[1], stdout=subprocess.DEVNULL)
    t1 = time.perf_counter_ns()
    if rc != 0:
        print(f"FAILED ({rc}): {line}", file=sys.stderr)
        sys.exit(1)
    print((t1 - t0) // 1000, flush=True)
EOF
time_calls() { # dir [file to remove before each call]
  setpriv --reuid postgres --regid postgres --init-groups /usr/bin/python3 "$BENCH/time_calls.py" "$@" 2>>"$BENCH/errors.log" ||
    { echo "a timed call failed: see $BENCH/errors.log" >&2; tail -3 "$BENCH/errors.log" >&2; exit 1; }
}

stats() { # file of microseconds -> "total_s p50_ms p99_ms"
  python3 - "$1" <<'EOF'
import sys
v = sorted(int(x) for x in open(sys.argv[1]) if x.strip())
p = lambda q: v[min(len(v) - 1, int(round(q * (len(v) - 1))))] / 1000
print(f"{sum(v)/1e6:.3f} {p(0.5):.2f} {p(0.99):.2f}")
EOF
}

mbs() { python3 -c "print(f'{$1*1.048576/(($3-$2)/1e9):.1f}')"; } # MiB, start ns, end ns -> MB/s

peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

# ---------------------------------------------------------------- tidemark setup
tmw=$BENCH/tm
rm -rf "$tmw"; mkdir -p "$tmw"; chown postgres:postgres "$tmw"
as_pg "$TM" keygen --out "$tmw/keyring" >/dev/null
# Repository settings for tidemark: a directory, or (REPO_MODE=s3) a prefix in the bench bucket.
repo_block() {
  if [ "${REPO_MODE:-fs}" = s3 ]; then
    printf 'url = "s3://tmbench%s"\nregion = "us-east-1"\nendpoint = "%s"\n' "$1" "$S3_ENDPOINT"
  else
    printf 'url = "file://%s"\n' "$1"
  fi
}
tm_conf() { # data_dir repo [archive workers]
  cat > "$tmw/tidemark.toml" <<EOF
cluster = "bench"
[postgres]
data_dir = "$1"
conninfo = "host=$BENCH port=$port user=postgres dbname=postgres"
bin_dir = "$PGBIN"
[repository]
$(repo_block "$2")
[encryption]
keyring = "$tmw/keyring"
[archive]
compression_level = 3
workers = ${3:-$WORKERS}
[fetch]
prefetch = $((WORKERS * 4))
spool_dir = "$tmw/spool"
[backup]
schedule = "off"
workers = $WORKERS
[daemon]
socket = "$tmw/tidemark.sock"
state_dir = "$tmw/state"
EOF
  chown postgres:postgres "$tmw/tidemark.toml"
}

# ---------------------------------------------------------------- pgBackRest setup
pbw=$BENCH/pgbr
rm -rf "$pbw"; mkdir -p "$pbw/repo" "$pbw/spool" "$pbw/log" "$pbw/lock"; chown -R postgres:postgres "$pbw"
pb_repo_block() {
  if [ "${REPO_MODE:-fs}" = s3 ]; then
    printf 'repo1-type=s3\nrepo1-path=/repo%s\nrepo1-s3-bucket=pbbench\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port=%s\nrepo1-s3-region=us-east-1\nrepo1-s3-key=testing\nrepo1-s3-key-secret=testing\nrepo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\n' "${PB_REPO_N:-0}" "$S3_PORT"
  else
    printf 'repo1-path=%s\n' "$pbw/repo"
  fi
}
pb_conf() { # data_dir
  cat > "$pbw/pgbackrest.conf" <<EOF
[global]
$(pb_repo_block)
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$CIPHER_PASS
compress-type=zst
compress-level=3
process-max=$WORKERS
archive-async=y
archive-get-queue-max=1GiB
spool-path=$pbw/spool
log-path=$pbw/log
lock-path=$pbw/lock
log-level-console=warn
log-level-file=off
start-fast=y
$([ "${PB_BLOCK:-0}" = 1 ] && printf 'repo1-bundle=y\nrepo1-block=y\n')

[bench]
pg1-path=$1
pg1-port=$port
pg1-socket-path=$BENCH
EOF
  chown postgres:postgres "$pbw/pgbackrest.conf"
}
PB="$PGBR_DIR/bin/pgbackrest --config=$pbw/pgbackrest.conf --stanza=bench"

results=()
row() { results+=("| $1 | $2 | $3 | $4 | $5 |"); }
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }

say "ceiling: zstd-3 + AES-256-GCM in memory on all cores"
ceiling=$(BENCH_CORPUS=$BENCH/corpus cargo bench -q --bench ceiling 2>/dev/null | awk '/ceiling_mb_s/ {print $2}')

# The archive and fetch legs, on the repository medium REPO_MODE selects; $1 tags the rows.
legs() {
local tag=$1
rm -rf "${pbw:?}/spool"/*
# ---------------------------------------------------------------- archive
say "archive: tidemark (daemon read-ahead, $WORKERS workers)"
fake_datadir "$BENCH/arch-tm"
rm -rf "$tmw/repo"; tm_conf "$BENCH/arch-tm" "$tmw/repo"
runuser -u postgres -- "$TM" --config "$tmw/tidemark.toml" daemon 2>"$tmw/daemon.log" &
dpid=$!
until [ -S "$tmw/tidemark.sock" ]; do sleep 0.05; done
t0=$(date +%s%N)
for s in "${segs[@]}"; do echo "$TM --config $tmw/tidemark.toml wal-push pg_wal/$s"; done | time_calls "$BENCH/arch-tm" > "$BENCH/tm-archive.us"
t1=$(date +%s%N)
tm_rss=$(peak_rss_mb "$(pgrep -P $dpid -f 'tidemark.*daemon' || echo $dpid)")
kill $dpid; wait $dpid 2>/dev/null || true
read -r tm_tot tm_p50 tm_p99 < <(stats "$BENCH/tm-archive.us")
tm_arch_mbs=$(mbs "$corpus_mb" "$t0" "$t1")

say "archive: pgBackRest (archive-async, process-max $WORKERS)"
fake_datadir "$BENCH/arch-pb"
PB_REPO_N=1
# stanza-create needs the source cluster running; then point pgBackRest at data dir $1.
pb_stanza_for() { pb_conf "$src"; start_src; as_pg $PB stanza-create >/dev/null; stop_src; pb_conf "$1"; }
pb_stanza_for "$BENCH/arch-pb"
t0=$(date +%s%N)
for s in "${segs[@]}"; do echo "$PB archive-push $BENCH/arch-pb/pg_wal/$s"; done | time_calls "$BENCH/arch-pb" > "$BENCH/pb-archive.us"
t1=$(date +%s%N)
read -r pb_tot pb_p50 pb_p99 < <(stats "$BENCH/pb-archive.us")
pb_arch_mbs=$(mbs "$corpus_mb" "$t0" "$t1")

say "archive_command latency once read-ahead has pushed everything"
fake_datadir "$BENCH/arch-tm2"
# This daemon runs 8 workers: the memory target is set for 8.
rm -rf "$tmw/repo2"; tm_conf "$BENCH/arch-tm2" "$tmw/repo2" 8
runuser -u postgres -- "$TM" --config "$tmw/tidemark.toml" daemon 2>"$tmw/daemon2.log" &
dpid=$!
until [ -S "$tmw/tidemark.sock" ]; do sleep 0.05; done
until [ "$("$TM" --config "$tmw/tidemark.toml" daemon-stats 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored"])' 2>/dev/null)" = "$SEGMENTS" ]; do sleep 0.2; done
tm_rss8=$(peak_rss_mb "$(pgrep -P $dpid -f 'tidemark.*daemon' || echo $dpid)")
for s in "${segs[@]}"; do echo "$TM --config $tmw/tidemark.toml wal-push pg_wal/$s"; done | time_calls "$BENCH/arch-tm2" > "$BENCH/tm-archive-ready.us"
kill $dpid; wait $dpid 2>/dev/null || true
read -r _ tmr_p50 tmr_p99 < <(stats "$BENCH/tm-archive-ready.us")
fake_datadir "$BENCH/arch-pb2"
rm -rf "$pbw/spool"/* "$pbw/repo"; mkdir -p "$pbw/repo"; chown postgres:postgres "$pbw/repo"
PB_REPO_N=2
pb_stanza_for "$BENCH/arch-pb2"
# The first call starts the async pusher for every .ready file; wait until it acknowledged all.
(cd "$BENCH/arch-pb2" && as_pg $PB archive-push "$BENCH/arch-pb2/pg_wal/${segs[0]}" >/dev/null)
until [ "$(ls "$pbw/spool/archive/bench/out" 2>/dev/null | grep -c '\.ok$')" -ge "$SEGMENTS" ]; do sleep 0.2; done
for s in "${segs[@]}"; do echo "$PB archive-push $BENCH/arch-pb2/pg_wal/$s"; done | time_calls "$BENCH/arch-pb2" > "$BENCH/pb-archive-ready.us"
read -r _ pbr_p50 pbr_p99 < <(stats "$BENCH/pb-archive-ready.us")


row "archive MB/s ($SEGMENTS segments)$tag" "$tm_arch_mbs" "$pb_arch_mbs" "$(ratio "$tm_arch_mbs" "$pb_arch_mbs")" "$ceiling"
row "archive_command p50 / p99 ms$tag" "$tm_p50 / $tm_p99" "$pb_p50 / $pb_p99" "$(ratio "$pb_p50" "$tm_p50") (p50)" ""
row "archive_command p50 / p99 ms, already pushed$tag" "$tmr_p50 / $tmr_p99" "$pbr_p50 / $pbr_p99" "$(ratio "$pbr_p50" "$tmr_p50") (p50)" ""
row "archive daemon peak RSS MiB, $WORKERS / 8 workers$tag" "$tm_rss / $tm_rss8" "" "" ""

# ---------------------------------------------------------------- fetch
say "fetch$tag: tidemark (prefetch)"
# Back to $WORKERS: read-ahead runs archive.workers downloads, pgBackRest process-max.
tm_conf "$BENCH/arch-tm2" "$tmw/repo2"
fdir=$BENCH/fetch; rm -rf "$fdir"; mkdir -p "$fdir"; chown postgres:postgres "$fdir"
rm -rf "$tmw/spool"
t0=$(date +%s%N)
for s in "${segs[@]}"; do echo "$TM --config $tmw/tidemark.toml wal-fetch $s $fdir/RECOVERYXLOG"; done | time_calls "$fdir" "$fdir/RECOVERYXLOG" > "$BENCH/tm-fetch.us"
t1=$(date +%s%N)
read -r _ tmf_p50 tmf_p99 < <(stats "$BENCH/tm-fetch.us")
tm_fetch_mbs=$(mbs "$corpus_mb" "$t0" "$t1")

say "fetch: pgBackRest (async archive-get)"
rm -rf "$pbw/spool"/*
t0=$(date +%s%N)
for s in "${segs[@]}"; do echo "$PB archive-get $s $fdir/RECOVERYXLOG"; done | time_calls "$fdir" "$fdir/RECOVERYXLOG" > "$BENCH/pb-fetch.us"
t1=$(date +%s%N)
read -r _ pbf_p50 pbf_p99 < <(stats "$BENCH/pb-fetch.us")
pb_fetch_mbs=$(mbs "$corpus_mb" "$t0" "$t1")
row "fetch MB/s ($SEGMENTS segments, serial calls)$tag" "$tm_fetch_mbs" "$pb_fetch_mbs" "$(ratio "$tm_fetch_mbs" "$pb_fetch_mbs")" ""
row "restore_command p50 / p99 ms$tag" "$tmf_p50 / $tmf_p99" "$pbf_p50 / $pbf_p99" "$(ratio "$pbf_p50" "$tmf_p50") (p50)" ""

}

REPO_MODE=fs legs ""
if [ "${S3:-1}" = 1 ]; then
  # The same local S3 server (moto, on loopback, over TLS since pgBackRest speaks only
  # HTTPS to S3) for both tools; one bucket each. tidemark verifies the certificate;
  # pgBackRest 2.45 matches no IP address SAN, so it runs with verify-tls off.
  say "S3 leg: moto behind stunnel (TLS) on loopback"
  # A CA and a leaf for 127.0.0.1 (webpki refuses a self-signed CA as the server's cert).
  S3_CERT=$BENCH/s3-ca.pem
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$BENCH/s3-ca.key" -out "$S3_CERT" -days 2 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$BENCH/s3-key.pem" -out "$BENCH/s3.csr" -subj /CN=127.0.0.1 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$BENCH/s3-ext.cnf"
  openssl x509 -req -in "$BENCH/s3.csr" -CA "$S3_CERT" -CAkey "$BENCH/s3-ca.key" -CAcreateserial \
    -out "$BENCH/s3-cert.pem" -days 2 -extfile "$BENCH/s3-ext.cnf" 2>/dev/null
  chmod 644 "$S3_CERT" "$BENCH/s3-cert.pem" "$BENCH/s3-key.pem"
  S3_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  S3_ENDPOINT=https://127.0.0.1:$S3_PORT
  MOTO=${TEST_MOTO_SERVER:-$root/target/test-venv/bin/moto_server}
  if [ ! -x "$MOTO" ]; then
    python3 -m venv "$root/target/test-venv"
    "$root/target/test-venv/bin/pip" install -q "moto[server]>=5,<6"
  fi
  command -v stunnel >/dev/null || { say "installing stunnel"; apt-get install -y -q --no-install-recommends stunnel4; }
  # moto speaks plain HTTP; stunnel terminates TLS in front of it (moto's own TLS ends
  # connections without close_notify, which OpenSSL 3 in pgBackRest treats as an error).
  moto_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$MOTO" -H 127.0.0.1 -p "$moto_port" >/dev/null 2>&1 &
  moto_pid=$!
  printf 'foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
    "$S3_PORT" "$moto_port" "$BENCH/s3-cert.pem" "$BENCH/s3-key.pem" > "$BENCH/stunnel.conf"
  stunnel "$BENCH/stunnel.conf" >/dev/null 2>&1 &
  stunnel_pid=$!
  trap 'stop_src; kill $moto_pid $stunnel_pid 2>/dev/null || true' EXIT
  until curl -s --cacert "$S3_CERT" "$S3_ENDPOINT" >/dev/null; do sleep 0.2; done
  for b in tmbench pbbench; do curl -s --cacert "$S3_CERT" -X PUT "$S3_ENDPOINT/$b" >/dev/null; done
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true SSL_CERT_FILE=$S3_CERT
  REPO_MODE=s3 legs " [S3]"
  kill $moto_pid $stunnel_pid; wait $moto_pid $stunnel_pid 2>/dev/null || true
fi

# ---------------------------------------------------------------- backup and restore
if [ "${SKIP_BACKUP:-0}" != 1 ]; then
  db_mb=$(du -sm "$src/base" | cut -f1)
  say "backup: $db_mb MB database"
  # Both tools read the database from the page cache: warm it before each backup.
  warm() { find "$src/base" "$src/global" -type f -exec cat {} + >/dev/null; sync; }
  start_src
  tm_conf "$src" "$tmw/repo-backup"
  PB_BLOCK=1 pb_conf "$src"
  as_pg $PB stanza-create >/dev/null # the S3 legs wiped the directory repository
  # Both tools archive every segment from here on: the incremental backups need the WAL
  # since their full backups (tidemark reads its block references from it).
  sed -i "s#^archive_command = .*#archive_command = '$TM --config $tmw/tidemark.toml wal-push %p \&\& $PB archive-push %p'#" "$src/postgresql.conf"
  pgsql "select pg_reload_conf()" >/dev/null
  warm
  t0=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$BENCH/tm-backup.rss" runuser -u postgres -- "$TM" --config "$tmw/tidemark.toml" backup create --wait --output json > "$BENCH/tm-full.json"
  t1=$(date +%s%N); tm_b=$(mbs "$db_mb" "$t0" "$t1")
  tm_full=$(python3 -c "import json; print(json.load(open('$BENCH/tm-full.json'))['id'])")
  warm
  t0=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$BENCH/pb-backup.rss" runuser -u postgres -- $PB backup --type=full >/dev/null
  t1=$(date +%s%N); pb_b=$(mbs "$db_mb" "$t0" "$t1")
  pb_full=$(as_pg $PB info --output=json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['backup'][-1]['label'])")
  row "backup MB/s ($db_mb MB database)" "$tm_b" "$pb_b" "$(ratio "$tm_b" "$pb_b")" "$ceiling"
  row "backup peak RSS MiB" "$(($(cat "$BENCH/tm-backup.rss") / 1024))" "$(($(cat "$BENCH/pb-backup.rss") / 1024))" "" ""

  say "incremental: one row in every 20th block of pgbench_accounts updated"
  blocks=$(pgsql "select pg_relation_size('pgbench_accounts') / current_setting('block_size')::int")
  pgsql "update pgbench_accounts set abalance = abalance + 1 where ctid = any (array(select format('(%s,1)', b)::tid from generate_series(0, $blocks - 1, 20) b))" >/dev/null
  changed=$(pgsql "select count(*) from generate_series(0, $blocks - 1, 20)")
  warm
  t0=$(date +%s%N)
  runuser -u postgres -- "$TM" --config "$tmw/tidemark.toml" backup create --wait --incremental --output json > "$BENCH/tm-incr.json"
  t1=$(date +%s%N); tm_i_ms=$(( (t1 - t0) / 1000000 ))
  tm_incr=$(python3 -c "import json; print(json.load(open('$BENCH/tm-incr.json'))['id'])")
  python3 -c "import json,sys; i=json.load(open('$BENCH/tm-incr.json'))['incremental']; sys.exit(0 if i and i['base']=='$tm_full' else 1)" ||
    { say "tidemark's incremental backup did not build on $tm_full: $(cat "$BENCH/tm-incr.json")"; exit 1; }
  tm_i_bytes=$(du -sb "$tmw/repo-backup/clusters/bench/backups/$tm_incr" | cut -f1)
  warm
  t0=$(date +%s%N)
  runuser -u postgres -- $PB backup --type=incr >/dev/null
  t1=$(date +%s%N); pb_i_ms=$(( (t1 - t0) / 1000000 ))
  pb_incr=$(as_pg $PB info --output=json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['backup'][-1]['label'])")
  pb_i_bytes=$(du -sb "$pbw/repo/backup/bench/$pb_incr" | cut -f1)
  stop_src
  mib() { python3 -c "print(f'{$1/1048576:.1f}')"; }
  row "incremental backup, MiB stored ($changed of $blocks blocks changed)" "$(mib "$tm_i_bytes")" "$(mib "$pb_i_bytes")" "$(ratio "$pb_i_bytes" "$tm_i_bytes")" ""
  row "incremental backup, seconds" "$(python3 -c "print($tm_i_ms/1000)")" "$(python3 -c "print($pb_i_ms/1000)")" "$(ratio "$pb_i_ms" "$tm_i_ms")" ""

  say "restore (best of two rounds, alternating), from the full backups and from the incrementals"
  # A restore writes 2 GB into a page cache that the previous steps filled, and how long the
  # kernel takes to make room depends on what ran just before (seen here: either tool is
  # 20-60% slower when it runs second). Each tool restores twice, alternating, into a fresh
  # directory after a sync, and keeps its faster round.
  for leg in full incr; do
    if [ $leg = full ]; then tm_set=(--backup "$tm_full"); pb_set=(--set="$pb_full"); else tm_set=(--backup "$tm_incr"); pb_set=(--set="$pb_incr"); fi
    tm_ms=; pb_ms=
    for round in 1 2; do
      rm -rf "$BENCH/r-tm" "$BENCH/r-tm.tablespaces"
      sync
      t0=$(date +%s%N)
      "$TM" --config "$tmw/tidemark.toml" restore --latest "${tm_set[@]}" --target-dir "$BENCH/r-tm" >/dev/null
      t1=$(date +%s%N); ms=$(( (t1 - t0) / 1000000 )); [ -z "$tm_ms" ] || [ "$ms" -lt "$tm_ms" ] && tm_ms=$ms
      rm -rf "$BENCH/r-pb"
      mkdir -p "$BENCH/r-pb"; chown postgres:postgres "$BENCH/r-pb"; chmod 700 "$BENCH/r-pb"
      sync
      t0=$(date +%s%N)
      runuser -u postgres -- $PB --pg1-path="$BENCH/r-pb" restore "${pb_set[@]}" >/dev/null
      t1=$(date +%s%N); ms=$(( (t1 - t0) / 1000000 )); [ -z "$pb_ms" ] || [ "$ms" -lt "$pb_ms" ] && pb_ms=$ms
    done
    tm_r=$(mbs "$db_mb" 0 $((tm_ms * 1000000))); pb_r=$(mbs "$db_mb" 0 $((pb_ms * 1000000)))
    rm -rf "$BENCH/r-tm" "$BENCH/r-tm.tablespaces" "$BENCH/r-pb"
    if [ $leg = full ]; then row "restore MB/s" "$tm_r" "$pb_r" "$(ratio "$tm_r" "$pb_r")" ""
    else row "restore MB/s, from the incremental" "$tm_r" "$pb_r" "$(ratio "$tm_r" "$pb_r")" ""; fi
  done
fi

# ---------------------------------------------------------------- report
{
  echo "# Benchmarks: tidemark vs pgBackRest $($PGBR_DIR/bin/pgbackrest version | awk '{print $2}')"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)."
  echo "zstd-3 and encryption for both; fs repository (rows marked [S3]: moto on loopback over TLS); $WORKERS workers = process-max $WORKERS; corpus $SEGMENTS segments ($corpus_mb MiB) of pgbench WAL."
  echo "Ratio = tidemark / pgBackRest for throughput, pgBackRest / tidemark for latency (above 1 means tidemark is better)."
  echo "Ceiling = zstd-3 + AES-256-GCM of the corpus in memory on all cores."
  echo
  echo "| operation | tidemark | pgBackRest | ratio | ceiling MB/s |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${results[@]}"
} | tee "$root/benches/RESULTS.md.new"
cat "$root/benches/LIMITS.md" >> "$root/benches/RESULTS.md.new"
mv "$root/benches/RESULTS.md.new" "$root/benches/RESULTS.md"
