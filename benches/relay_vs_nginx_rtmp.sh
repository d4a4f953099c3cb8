#!/usr/bin/env bash
# relay_vs_nginx_rtmp.sh: what relaying channels from node A to node B costs, Sluice
# against nginx-rtmp doing the same relay, in the same run.
#
# N channels (BENCH_CHANNELS, default 10) of one pre-encoded stream (1280x720@30 H.264
# 2.5 Mb/s + AAC 128k, 10 s, looped; `ffmpeg -re -stream_loop -1 -c copy`) are published
# over RTMP to node A; node B takes each from A:
#   - nginx-rtmp: A `live on;` and `push rtmp://B/live;` (A publishes every stream to B),
#     B `live on; hls on;` (2 s TS fragments);
#   - Sluice: A's channels have an RTMP ingest, a passthrough engine and an `srt-listener`
#     output; B's channels an `srt-pull` ingest of A's output and a passthrough engine
#     (CMAF with LL-HLS parts, and TS).
# Each server runs twice with the same publishers: A alone (no relay: nginx without the
# push, Sluice with nobody reading its outputs), then A relaying to B. Read:
#   - A's added CPU per relayed channel: (A relaying) - (A alone), per channel;
#   - B's CPU per channel: everything B does for a relayed channel.
# CPU = utime+stime of the server's processes (nginx: master and worker) from
# /proc/<pid>/stat over BENCH_SECONDS (default 20) after BENCH_WARMUP (default 30 s), in CPU
# seconds per channel per wall second. The ratios Sluice/nginx are the figures to read.
#
# Usage:   benches/relay_vs_nginx_rtmp.sh    (BENCH_CHANNELS=20 BENCH_SECONDS=30 ... to change)
# Output:  a table, and a last line BENCH_JSON {...}.
# Everything listens on 127.0.0.1; every process started is stopped on exit; every wait is
# bounded. Needs ffmpeg with libx264, nginx with /usr/lib/nginx/modules/ngx_rtmp_module.so
# (scripts/setup-debian.sh --test installs both), and cargo if the release binary is missing.

set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/benches/common.sh"
N=${BENCH_CHANNELS:-10}
SECONDS_MEASURED=${BENCH_SECONDS:-20}
WARMUP=${BENCH_WARMUP:-30}
BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

die() { echo "relay_vs_nginx_rtmp: $*" >&2; exit 1; }
[[ $N =~ ^[0-9]+$ ]] && ((N >= 1 && N <= 100)) || die "BENCH_CHANNELS must be 1..100"
[[ -x $NGINX && -e $MODULE ]] || die "nginx with the RTMP module is needed (scripts/setup-debian.sh --test)"
command -v ffmpeg >/dev/null || die "ffmpeg is needed"
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release -p sluice-server) || die "cannot build sluice"

in_ram
bench_begin relay-vs-nginx-rtmp
tick=$(getconf CLK_TCK)

copy_input

# measure "pids of A" ["pids of B"]: CPU s per channel per s of each, after the warm-up.
measure() {
  sleep "$WARMUP"
  local a0 b0 a1 b1
  a0=$(cpu_ticks $1); b0=$(cpu_ticks ${2:-})
  sleep "$SECONDS_MEASURED"
  a1=$(cpu_ticks $1); b1=$(cpu_ticks ${2:-})
  python3 -c "print(f'{($a1 - $a0) / $tick / $SECONDS_MEASURED / $N:.5f} {($b1 - $b0) / $tick / $SECONDS_MEASURED / $N:.5f}')"
}
wait_port() { for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; }

start_nginx() { # name port application-body: prints the master's pid
  local dir=$work/nginx-$1
  mkdir -p "$dir/hls"
  cat >"$dir/nginx.conf" <<EOF
load_module $MODULE;
user root; worker_processes 1; pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections 4096; }
rtmp { server { listen 127.0.0.1:$2; application live { live on; ${3//HLS/$dir/hls} } } }
EOF
  "$NGINX" -c "$dir/nginx.conf" -g "daemon off;" >/dev/null 2>&1 &
  echo $!
}
procs() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }
stop_pid() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# nginx-rtmp: A alone, then A pushing to B.
pa=$(free_port); pb=$(free_port)
a=$(start_nginx a-alone "$pa" ""); pids+=($a); wait_port "$pa"
start_publishers "rtmp://127.0.0.1:$pa/live/s"
read -r nginx_a_alone _ < <(measure "$(procs "$a")")
stop_publishers; stop_pid "$a"
b=$(start_nginx b "$pb" "hls on; hls_path HLS; hls_fragment 2s; hls_playlist_length 30s;"); pids+=($b); wait_port "$pb"
a=$(start_nginx a-push "$pa" "push rtmp://127.0.0.1:$pb/live;"); pids+=($a); wait_port "$pa"
start_publishers "rtmp://127.0.0.1:$pa/live/s"
read -r nginx_a_relay nginx_b < <(measure "$(procs "$a")" "$(procs "$b")")
nginx_fragments=$(ls "$work/nginx-b/hls" | grep -c '\.ts$' || true)
stop_publishers; stop_pid "$a"; stop_pid "$b"

# Sluice: A alone (outputs unread), then B pulling every channel.
ha=$(free_port); ra=$(free_port); sa=$(free_port); hb=$(free_port); rb=$(free_port); sb=$(free_port)
{
  printf '[server]\nhttp_listen = "127.0.0.1:%s"\nrtmp_listen = "127.0.0.1:%s"\nsrt_listen = "127.0.0.1:%s"\n' "$ha" "$ra" "$sa"
  for ((i = 0; i < N; i++)); do
    printf '[channels.c%d.ingests.r]\nprotocol = "rtmp"\nstream_key = "r%d"\nallow_cidrs = ["127.0.0.1/32"]\n' "$i" "$i"
    printf '[channels.c%d.engines.e]\nladder = "passthrough"\n' "$i"
    printf '[channels.c%d.outputs.to-b]\nprotocol = "srt-listener"\nread_key = "read%d"\nallow_cidrs = ["127.0.0.1/32"]\n' "$i" "$i"
    printf '[distributions.c%d]\nchannel = "c%d"\n' "$i" "$i"
  done
} >"$work/a.toml"
{
  printf '[server]\nhttp_listen = "127.0.0.1:%s"\nrtmp_listen = "127.0.0.1:%s"\nsrt_listen = "127.0.0.1:%s"\n' "$hb" "$rb" "$sb"
  for ((i = 0; i < N; i++)); do
    printf '[channels.c%d.ingests.from-a]\nprotocol = "srt-pull"\nurl = "srt://127.0.0.1:%s?streamid=read:read%d&latency=200"\n' "$i" "$sa" "$i"
    printf '[channels.c%d.engines.e]\nladder = "passthrough"\n' "$i"
    printf '[distributions.c%d]\nchannel = "c%d"\n' "$i" "$i"
  done
} >"$work/b.toml"
"$BIN" serve --config "$work/a.toml" 2>"$work/a.log" &
sa_pid=$!; pids+=($sa_pid)
for _ in $(seq 100); do grep -q "sluice serving" "$work/a.log" && break; sleep 0.1; done
start_publishers "rtmp://127.0.0.1:$ra/live/r"
read -r sluice_a_alone _ < <(measure "$sa_pid")
"$BIN" serve --config "$work/b.toml" 2>"$work/b.log" &
sb_pid=$!; pids+=($sb_pid)
read -r sluice_a_relay sluice_b < <(measure "$sa_pid" "$sb_pid")
readers=$(grep -c "SRT reader accepted" "$work/a.log" || true)
carried=$(grep -c "carries a Sluice node's timeline" "$work/b.log" || true)
a_seg=$(curl -s "http://127.0.0.1:$ha/live/c0/ts/source/index.m3u8" | grep -v '^#' | tail -1)
b_list=$(curl -s "http://127.0.0.1:$hb/live/c0/ts/source/index.m3u8" | grep -v '^#' | tr '\n' ' ')
same=$([[ " $b_list" == *" $a_seg "* ]] && echo yes || echo no)
stop_publishers; stop_pid "$sb_pid"; stop_pid "$sa_pid"

python3 - "$N" "$nginx_a_alone" "$nginx_a_relay" "$nginx_b" "$sluice_a_alone" "$sluice_a_relay" "$sluice_b" "$nginx_fragments" "$readers" "$carried" "$same" <<'PY'
import json, sys
n = int(sys.argv[1])
na0, na1, nb, sa0, sa1, sb = map(float, sys.argv[2:8])
frags, readers, carried, same = sys.argv[8:]
na, sa = na1 - na0, sa1 - sa0
print(f"relayed channels: {n} (1280x720 2.5 Mb/s + AAC, -c copy, looped), CPU s / channel / s")
print(f"{'':<38}{'nginx-rtmp':>12}{'sluice':>12}{'sluice/nginx':>14}")
print(f"{'A alone (RTMP in)':<38}{na0:>12.5f}{sa0:>12.5f}{sa0 / na0 if na0 else float('nan'):>14.2f}")
print(f"{'A relaying (push / srt-listener)':<38}{na1:>12.5f}{sa1:>12.5f}{sa1 / na1 if na1 else float('nan'):>14.2f}")
print(f"{'A added per relayed channel':<38}{na:>12.5f}{sa:>12.5f}{sa / na if na > 0 else float('nan'):>14.2f}")
print(f"{'B per channel (relay in, HLS out)':<38}{nb:>12.5f}{sb:>12.5f}{sb / nb if nb else float('nan'):>14.2f}")
print(f"(nginx B wrote {frags} TS fragments; sluice A accepted {readers} readers, B carried A's timeline on {carried}; A's newest c0 segment listed on B: {same})")
print("BENCH_JSON " + json.dumps({"bench": "relay_vs_nginx_rtmp", "channels": n,
      "nginx": {"a_alone": na0, "a_relaying": na1, "a_added": na, "b": nb},
      "sluice": {"a_alone": sa0, "a_relaying": sa1, "a_added": sa, "b": sb},
      "a_added_ratio": sa / na if na > 0 else None, "b_ratio": sb / nb if nb else None}))
PY
