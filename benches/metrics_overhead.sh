#!/usr/bin/env bash
# What counting costs on the request path: segment and media playlist requests per second
# (wrk) from two release servers running side by side in the same run, the same
# configuration but for `server.metrics` (on: every request counted by distribution,
# kind and status class, egress bytes, viewers per media playlist request; off: none of
# it), each fed by its own live ffmpeg publisher. Runs alternate on, off, on, off, ... so
# the machine's drift falls on both. The last line is BENCH_JSON {...}.
#
#   benches/metrics_overhead.sh
#   BENCH_SECONDS=20 BENCH_ROUNDS=3 benches/metrics_overhead.sh
#
# Needs: cargo, ffmpeg, curl, wrk (installed with apt-get when missing and running as
# root). Everything listens on 127.0.0.1; every wait is bounded; every process started
# is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-2}
conns=${BENCH_CONNECTIONS:-64}
source benches/common.sh
need_tool wrk wrk
for tool in ffmpeg curl cargo; do need_tool "$tool"; done
bench_begin metrics-bench
cargo build --release -q -p sluice-server

start_server() { # name metrics(true|false) -> sets port_<name>
  local name=$1 metrics=$2 http rtmp
  http=$(free_port); rtmp=$(free_port)
  cat >"$work/$name.toml" <<EOF
[server]
http_listen = "127.0.0.1:$http"
rtmp_listen = "127.0.0.1:$rtmp"
data_dir = "$work/data-$name"
metrics = $metrics

[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "bench-key"
[channels.c.engines.copy]
ladder = "passthrough"

[distributions.open]
channel = "c"
EOF
  target/release/sluice serve --config "$work/$name.toml" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
  publish_live "$((seconds * rounds * 4 + 90))" "rtmp://127.0.0.1:$rtmp/live/bench-key"
  printf -v "port_$name" '%s' "$http"
}
start_server on true
start_server off false

# The newest segment of a server's playlist, asked for again before every run (an old
# one would slide out of the 60 s window and be answered 404, fast).
newest_segment() { # port -> path
  local media="http://127.0.0.1:$1/live/open/cmaf/source/index.m3u8" seg
  for _ in $(seq 1 300); do
    [[ $(curl -sf "$media" | grep -v '^#' | grep -c '\.m4s' || true) -ge 3 ]] && break
    sleep 0.2
  done
  seg=$(curl -sf "$media" | grep -v '^#' | grep '\.m4s' | tail -2 | head -1)
  [[ -n $seg ]] || { echo "bench: no segment on port $1" >&2; exit 1; }
  echo "/live/open/cmaf/source/$seg"
}
newest_segment "$port_on" >/dev/null; newest_segment "$port_off" >/dev/null
pl_on=/live/open/cmaf/source/index.m3u8; pl_off=$pl_on
curl -sf -o /dev/null "http://127.0.0.1:$port_on/metrics" || { echo "bench: /metrics missing" >&2; exit 1; }
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port_off/metrics") == 404 ]] \
  || { echo "bench: metrics not off" >&2; exit 1; }

rps() { # url: req/s; every answer must be a success
  local out
  out=$(wrk -t2 -c"$conns" -d"${seconds}s" "$1")
  if grep -q 'Non-2xx' <<<"$out"; then echo "bench: $1 answered errors:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
sum() { awk '{ s += $1 } END { printf "%.0f", s / NR }'; }
seg_on_all=(); seg_off_all=(); pl_on_all=(); pl_off_all=()
for _ in $(seq 1 "$rounds"); do
  seg_on_all+=("$(rps "http://127.0.0.1:$port_on$(newest_segment "$port_on")")")
  seg_off_all+=("$(rps "http://127.0.0.1:$port_off$(newest_segment "$port_off")")")
  pl_on_all+=("$(rps "http://127.0.0.1:$port_on$pl_on")")
  pl_off_all+=("$(rps "http://127.0.0.1:$port_off$pl_off")")
done
mean() { printf '%s\n' "$@" | sum; }
s_on=$(mean "${seg_on_all[@]}"); s_off=$(mean "${seg_off_all[@]}")
p_on=$(mean "${pl_on_all[@]}"); p_off=$(mean "${pl_off_all[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
row() { printf '%-40s %28s %10s\n' "$@"; }
echo
row "req/s (mean of $rounds runs of ${seconds} s)" "runs" "mean"
row "segment (newest, ~190 KB), metrics on" "${seg_on_all[*]}" "$s_on"
row "segment, metrics off" "${seg_off_all[*]}" "$s_off"
row "media playlist, metrics on" "${pl_on_all[*]}" "$p_on"
row "media playlist, metrics off" "${pl_off_all[*]}" "$p_off"
row "segment on / off" "" "$(ratio "$s_on" "$s_off")"
row "playlist on / off" "" "$(ratio "$p_on" "$p_off")"
json_list() { local IFS=,; echo "[$*]"; }
echo "BENCH_JSON {\"seconds\":$seconds,\"rounds\":$rounds,\"connections\":$conns,\"segment_on\":$(json_list "${seg_on_all[@]}"),\"segment_off\":$(json_list "${seg_off_all[@]}"),\"playlist_on\":$(json_list "${pl_on_all[@]}"),\"playlist_off\":$(json_list "${pl_off_all[@]}"),\"segment_ratio\":$(ratio "$s_on" "$s_off"),\"playlist_ratio\":$(ratio "$p_on" "$p_off")}"
