#!/usr/bin/env bash
# 10,000 LL-HLS blocking playlist requests parked at once, then released together when
# the part they wait for lands: what they cost the server while parked (resident memory
# per request) and how fast they are answered (p50/p99 from the first answer, which is
# the part landing plus one response), with the server's CPU for the release.
#
#   benches/parked_reload.sh                       # 10,000 requests on 100 HTTP/2 connections
#   BENCH_REQUESTS=20000 BENCH_CONNECTIONS=200 benches/parked_reload.sh
#
# The client (crates/sluice-server/examples/parked_reload.rs, hyper's HTTP/2 client, h2c)
# runs on the same two cores as the server, so the release times include its own work.
# Loopback only; a test-pattern channel (no encoder needed); every started process is
# stopped on exit. Needs cargo, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-10000}
conns=${BENCH_CONNECTIONS:-100}
command -v curl >/dev/null || { echo "bench: curl not found" >&2; exit 1; }
source benches/common.sh
bench_begin parked-bench
http=$(free_port); rtmp=$(free_port)

cargo build --release -q -p sluice-server --bin sluice --example parked_reload
cat >"$work/sluice.toml" <<EOF
[server]
http_listen = "127.0.0.1:$http"
rtmp_listen = "127.0.0.1:$rtmp"
data_dir = "$work/data"

[channels.c.ingests.pattern]
protocol = "test-pattern"
[channels.c.engines.e]
ladder = "passthrough"

[distributions.d]
channel = "c"
EOF
target/release/sluice serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
pids+=($!)
server=$!
url="http://127.0.0.1:$http/live/d/cmaf/source/index.m3u8"
for _ in $(seq 1 300); do
  [[ $(curl -sf "$url" | grep -c '\.m4s$' || true) -ge 3 ]] && break
  sleep 0.2
done
echo "server pid $server, $(nproc) cores; the client shares them"
target/release/examples/parked_reload "$url" "$server" "$requests" "$conns"
