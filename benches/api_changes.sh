#!/usr/bin/env bash
# Live configuration changes through the control API, measured from outside while a
# publisher streams:
#   1. latency: BENCH_CHANGES (default 200) PATCHes that flip a distribution's IP rule
#      (deny this client / no rule); after each accepted PATCH, how long until a
#      multivariant request reflects it (403 / 200), and the PATCH round trip itself
#      (validation, the atomic write with fsync, the reconcile);
#   2. throughput: segment requests per second (wrk, BENCH_SECONDS each, default 10) on a
#      distribution (A) with nothing else going on, (B) while 10 changes a second are
#      applied to that same distribution (its max_kbps flipped: every change replaces the
#      whole catalog and rewrites the file), and (C) while the same client makes 10 API
#      reads a second instead (the control: what a client's 10 requests a second cost on
#      this 2-core machine, changes or not), in the order A B C A B C. Ratios matter, not
#      absolute numbers.
# The last line is BENCH_JSON {...}.
#
#   benches/api_changes.sh
#   BENCH_SECONDS=20 BENCH_CHANGES=500 benches/api_changes.sh
#
# Needs: cargo, ffmpeg, curl, python3, wrk (installed with apt-get when missing and
# running as root). Everything listens on 127.0.0.1; every loop is bounded; every
# process started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${BENCH_SECONDS:-10}
changes=${BENCH_CHANGES:-200}
conns=${BENCH_CONNECTIONS:-64}
source benches/common.sh
need_tool wrk wrk
for tool in ffmpeg curl cargo python3; do need_tool "$tool"; done
bench_begin api-bench
http=$(free_port); rtmp=$(free_port)
token=bench-admin-token-0123456789

cargo build --release -q -p sluice-server
cat >"$work/sluice.toml" <<EOF
# The benchmark's configuration: the control API rewrites this file on every change.
[server]
http_listen = "127.0.0.1:$http"
rtmp_listen = "127.0.0.1:$rtmp"
data_dir = "$work/data"

[api]
admin_tokens = ["$token"]

[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "bench-key"
[channels.c.engines.copy]
ladder = "passthrough"

[distributions.open]
channel = "c"
max_kbps = 0   # flipped by the throughput run

[distributions.flip]
channel = "c"  # its IP rule is flipped by the latency run
EOF
target/release/sluice serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done

publish_live "$((seconds * 6 + changes / 5 + 90))" "rtmp://127.0.0.1:$rtmp/live/bench-key"
media="http://127.0.0.1:$http/live/open/cmaf/source/index.m3u8"
for _ in $(seq 1 300); do
  [[ $(curl -sf "$media" | grep -c '\.m4s' || true) -ge 3 ]] && break
  sleep 0.2
done
seg=$(curl -sf "$media" | grep -v "^#" | grep "\.m4s" | head -1)
seg_url="http://127.0.0.1:$http/live/open/cmaf/source/$seg"
curl -sf -o /dev/null "$seg_url" || { echo "bench: no segment to request" >&2; exit 1; }

# 1. Latency, on one keep-alive connection for the API and one for the viewer.
latency=$(python3 - "$http" "$token" "$changes" <<'PYEND'
import http.client, json, statistics, sys, time
port, token, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
api = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
viewer = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
hdr = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
patch_ms, visible_ms, extra_requests = [], [], 0
for i in range(n):
    deny = i % 2 == 0
    body = {"ip": {"mode": "deny", "cidrs": ["127.0.0.0/8"]}} if deny else {"ip": None}
    want = 403 if deny else 200
    t0 = time.perf_counter()
    api.request("PATCH", "/api/v1/distributions/flip", json.dumps(body), hdr)
    r = api.getresponse(); r.read()
    t1 = time.perf_counter()
    if r.status != 200:
        sys.exit(f"PATCH answered {r.status}")
    for attempt in range(1000):
        viewer.request("GET", "/live/flip/cmaf/index.m3u8")
        v = viewer.getresponse(); v.read()
        if v.status == want:
            break
        extra_requests += 1
    else:
        sys.exit("the change never showed")
    t2 = time.perf_counter()
    patch_ms.append((t1 - t0) * 1000)
    visible_ms.append((t2 - t1) * 1000)
q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
print(json.dumps({
    "changes": n,
    "patch_ms_median": round(statistics.median(patch_ms), 2),
    "patch_ms_p99": round(q(patch_ms, 0.99), 2),
    "visible_ms_median": round(statistics.median(visible_ms), 2),
    "visible_ms_p99": round(q(visible_ms, 0.99), 2),
    "stale_answers": extra_requests,
}))
PYEND
)

# 2. Throughput without and with 10 changes a second on the distribution being read.
changer() { # runs for $1 seconds, 10 PATCHes (or with $2 = read, 10 GETs) a second
  python3 - "$http" "$token" "$1" "${2:-patch}" <<'PYEND'
import http.client, json, sys, time
port, token, secs, kind = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
api = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
hdr = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
start, i, failed = time.monotonic(), 0, 0
while time.monotonic() - start < secs:
    if kind == "read":
        api.request("GET", "/api/v1/distributions/open", headers=hdr)
    else:
        api.request("PATCH", "/api/v1/distributions/open", json.dumps({"max_kbps": 5000 if i % 2 == 0 else 0}), hdr)
    r = api.getresponse(); r.read()
    failed += r.status != 200
    i += 1
    next_at = start + i * 0.1
    time.sleep(max(0.0, next_at - time.monotonic()))
print(i, failed)
PYEND
}
rps() { wrk -t2 -c"$conns" -d"${seconds}s" "$seg_url" | awk '/Requests\/sec/ {print $2}'; }
a1=$(rps)
changer "$seconds" >"$work/changes1" & cpid=$!
b1=$(rps); wait "$cpid"
changer "$seconds" read >"$work/reads1" & cpid=$!
c1=$(rps); wait "$cpid"
a2=$(rps)
changer "$seconds" >"$work/changes2" & cpid=$!
b2=$(rps); wait "$cpid"
changer "$seconds" read >"$work/reads2" & cpid=$!
c2=$(rps); wait "$cpid"
read -r n1 f1 <"$work/changes1"; read -r n2 f2 <"$work/changes2"
read -r _ g1 <"$work/reads1"; read -r _ g2 <"$work/reads2"
if [[ $f1 != 0 || $f2 != 0 || $g1 != 0 || $g2 != 0 ]]; then echo "bench: some API calls failed" >&2; exit 1; fi

mean() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (a + b) / 2 }'; }
a=$(mean "$a1" "$a2"); b=$(mean "$b1" "$b2"); c=$(mean "$c1" "$c2")
ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
ratio_reads=$(awk -v a="$a" -v c="$c" 'BEGIN { printf "%.3f", c / a }')
ratio_vs_reads=$(awk -v c="$c" -v b="$b" 'BEGIN { printf "%.3f", b / c }')
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$latency" "$1"; }
row() { printf '%-58s %14s\n' "$@"; }
echo
row "PATCH round trip, median / p99 (ms)" "$(field patch_ms_median) / $(field patch_ms_p99)"
row "PATCH accepted -> multivariant reflects, median / p99 (ms)" "$(field visible_ms_median) / $(field visible_ms_p99)"
row "requests that still saw the old rule (of $changes)" "$(field stale_answers)"
row "segment req/s, no changes (two runs)" "$a1 $a2"
row "segment req/s, 10 changes/s (two runs; $n1, $n2 changes)" "$b1 $b2"
row "segment req/s, 10 API reads/s instead (two runs)" "$c1 $c2"
row "with changes / nothing else" "$ratio"
row "with reads / nothing else" "$ratio_reads"
row "with changes / with reads" "$ratio_vs_reads"
echo "BENCH_JSON {\"seconds\":$seconds,\"connections\":$conns,\"latency\":$latency,\"rps_without\":[$a1,$a2],\"rps_with_changes\":[$b1,$b2],\"rps_with_reads\":[$c1,$c2],\"changes_applied\":[$n1,$n2],\"ratio\":$ratio,\"ratio_reads\":$ratio_reads,\"ratio_changes_vs_reads\":$ratio_vs_reads}"
