#!/usr/bin/env bash
# Metadata cost as the archive grows: synthetic repositories of 10k, 100k and 1M segments
# (16 MiB segments, 30 backups of 100 bundles each), built through the library by
# benches/scale.rs, then each operation timed in a fresh process, with its store requests
# (S3 listing pages of 1,000 keys) and its peak RSS.
#   fs  a local directory repository (and a copy beside it for the copier)
#   s3  a local moto S3 server on loopback (SIZES_S3, default 10k: moto takes about 6 ms a
#       PUT here, so 100k segments take 20 min to build and 1M hours; the request counts,
#       which are what S3 bills and what grows, are the same as on fs)
# Writes benches/SCALE.md. Repositories are kept under $SCALE_DIR between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DIR=${SCALE_DIR:-/var/tmp/tidemark-scale}
SIZES_FS=${SIZES_FS:-"10000 100000 1000000"}
SIZES_S3=${SIZES_S3:-"10000"}
OPS=(window status plan verify list purge-plan copy)
export SCALE_KEYRING=$DIR/keyring
mkdir -p "$DIR"

say() { printf '== %s\n' "$*" >&2; }

# SCALE_PROFILE=dev reuses the test build (dependencies optimized, tidemark itself not).
PROFILE=${SCALE_PROFILE:-release}
say "building the scale bench ($PROFILE)"
if [ "$PROFILE" = dev ]; then build=(cargo test --locked --bench scale --no-run); else build=(cargo bench --locked --bench scale --no-run); fi
bin=$("${build[@]}" --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "scale" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "scale bench did not build" >&2; exit 1; }

results=$DIR/results.jsonl
: > "$results"

run_ops() { # store size url copy_url
  local store=$1 n=$2 url=$3 copy=$4
  for op in "${OPS[@]}"; do
    local out rss
    out=$(/usr/bin/time -f '%M' -o "$DIR/rss" "$bin" op "$op" "$url" "$copy")
    rss=$(tail -1 "$DIR/rss")
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(store=sys.argv[2], segments=int(sys.argv[3]), rss_kib=int(sys.argv[4])); print(json.dumps(d))' \
      "$out" "$store" "$n" "$rss" >> "$results"
    say "$store $n $op: $(tail -1 "$results" | cut -c1-160)"
  done
}

for n in $SIZES_FS; do
  d=$DIR/fs-$n
  if [ ! -f "$d/.built" ]; then
    rm -rf "$d"; mkdir -p "$d/src" "$d/copy"
    say "building fs repository of $n segments"
    "$bin" build "file://$d/src" "$n" "file://$d/copy"
    touch "$d/.built"
  fi
  # Repositories kept from before catalog records existed get them (a no-op otherwise).
  "$bin" op records "file://$d/src" >/dev/null; "$bin" op records "file://$d/copy" >/dev/null
  run_ops fs "$n" "file://$d/src" "file://$d/copy"
done

if [ -n "$SIZES_S3" ]; then
  moto=${TEST_MOTO_SERVER:-$root/target/test-venv/bin/moto_server}
  [ -x "$moto" ] || { say "installing moto"; python3 -m venv "$root/target/test-venv"; "$root/target/test-venv/bin/pip" install -q 'moto[server]'; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$moto" -H 127.0.0.1 -p "$port" > "$DIR/moto.log" 2>&1 &
  moto_pid=$!
  trap 'kill $moto_pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$port" >/dev/null && break; sleep 0.1; done
  export SCALE_ENDPOINT=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
  for n in $SIZES_S3; do
    for b in "src-$n" "copy-$n"; do curl -s -X PUT "$SCALE_ENDPOINT/$b" >/dev/null; done
    say "building S3 repository of $n segments"
    "$bin" build "s3://src-$n/r" "$n" "s3://copy-$n/r"
    run_ops s3 "$n" "s3://src-$n/r" "s3://copy-$n/r"
  done
fi

python3 - "$results" "$root/benches/SCALE.md" <<'EOF'
import json, sys, collections, datetime, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(dict)
for r in rows:
    by[(r["store"], r["op"])][r["segments"]] = r
out = []
out.append("# Metadata cost as the archive grows\n")
out.append(f"`benches/scale.sh`, {datetime.date.today()}, {os.cpu_count()} cores, {os.environ.get('SCALE_PROFILE', 'release')} build. Synthetic repositories built through the library "
           "(16 MiB segments; 30 completed backups of 100 bundle objects each; the commit-time index as the daemon leaves it: every "
           "summary in its block, the last two blocks not completed). Each operation runs in a fresh process. Requests count S3 listing pages of "
           "1,000 keys. `copy` is one full reconcile followed by one steady-state sync (figures after the slash).\n")
for store in ("fs", "s3"):
    sizes = sorted({r["segments"] for r in rows if r["store"] == store})
    if not sizes:
        continue
    out.append(f"\n## {store}\n")
    out.append("| operation | " + " | ".join(f"{n:,} segments: ms / requests / peak RSS MiB" for n in sizes) + " | growth, largest ÷ smallest (ms) |")
    out.append("|---" * (len(sizes) + 2) + "|")
    for op in ("window", "status", "plan", "verify", "list", "purge-plan", "copy"):
        d = by.get((store, op), {})
        cells = []
        for n in sizes:
            r = d.get(n)
            if not r:
                cells.append("-")
                continue
            if op == "copy":
                x = r["result"]
                cells.append(f'{x["full_ms"]:.0f} / {x["full_requests"]["total"]:,} (full); {x["steady_ms"]:.0f} / {x["steady_requests"]:,} (steady) / {r["rss_kib"]/1024:.0f}')
            else:
                cells.append(f'{r["ms"]:.0f} / {r["requests"]["total"]:,} / {r["rss_kib"]/1024:.0f}')
        g = "-"
        if len(sizes) > 1 and d.get(sizes[0]) and d.get(sizes[-1]):
            a, b = d[sizes[0]], d[sizes[-1]]
            if op == "copy":
                g = f'{b["result"]["steady_ms"] / max(a["result"]["steady_ms"], 0.1):.1f}× (steady)'
            else:
                g = f'{b["ms"] / max(a["ms"], 0.1):.1f}×'
        out.append(f"| {op} | " + " | ".join(cells) + f" | {g} |")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF
