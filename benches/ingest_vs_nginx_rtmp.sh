#!/usr/bin/env bash
# ingest_vs_nginx_rtmp.sh: server CPU per passthrough channel with N concurrent publishers,
# Sluice against nginx-rtmp doing the same RTMP work, in the same run.
#
# One run measures, for N publishers (BENCH_PUBLISHERS, default 50) of one pre-encoded
# stream (1280x720@30 H.264 2.5 Mb/s + AAC 128k, 10 s, looped; `ffmpeg -re -stream_loop -1
# -c copy`, i.e. no encoding on the client side):
#   1. nginx-rtmp (Debian's libnginx-mod-rtmp), `live on; hls on;` (2 s MPEG-TS
#      fragments written to files on a tmpfs, /dev/shm, when there is one): N RTMP publishers.
#   2. Sluice (target/release/sluice), N channels each with an RTMP ingest and a
#      passthrough engine making CMAF (LL-HLS parts) and TS: N RTMP publishers.
#   3. Sluice, the same N channels fed over SRT (`-f mpegts srt://...`): N SRT publishers.
#   4. Two peers doing SRT's work with libsrt, the reference SRT implementation (skipped
#      with BENCH_SRT_PEERS=0): N `ffmpeg` processes, each an SRT listener writing TS HLS
#      (2 s segments, tmpfs), i.e. what Sluice's SRT line does with one output; and N
#      `srt-live-transmit` processes (Debian's srt-tools), each an SRT listener that
#      receives and discards: the cost of the SRT protocol alone, with nothing made.
#   5. nginx-rtmp again: its reference figure is the mean of runs 1 and 5, so that the
#      machine's drift over the run does not land on one side of the ratio.
# Server CPU = utime+stime of the server's processes (nginx: master and worker) from
# /proc/<pid>/stat over BENCH_SECONDS (default 30) after a warm-up of BENCH_WARMUP
# (default 75 s), divided by N: CPU seconds per channel per wall second. The ratios
# Sluice/nginx are the figures to read. The warm-up outlasts Sluice's 60 s playlist
# window: before that the server is still filling its window (every segment is new
# memory, faulted in page by page), which is not the steady state a server lives in.
#
# Usage:   benches/ingest_vs_nginx_rtmp.sh    (BENCH_PUBLISHERS=20 BENCH_SECONDS=20 ... to change)
# Output:  a table, and a last line BENCH_JSON {...}.
# Everything listens on 127.0.0.1; every process started is stopped on exit; every wait is
# bounded. Needs ffmpeg with libx264 and libsrt, nginx with /usr/lib/nginx/modules/ngx_rtmp_module.so
# (scripts/setup-debian.sh --test installs both), srt-live-transmit (Debian's srt-tools,
# installed here with apt-get when run as root) and cargo if the release binary is missing.

set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/benches/common.sh"
N=${BENCH_PUBLISHERS:-50}
SECONDS_MEASURED=${BENCH_SECONDS:-30}
WARMUP=${BENCH_WARMUP:-75}
BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

die() { echo "ingest_vs_nginx_rtmp: $*" >&2; exit 1; }
[[ $N =~ ^[0-9]+$ ]] && ((N >= 1 && N <= 200)) || die "BENCH_PUBLISHERS must be 1..200"
[[ -x $NGINX && -e $MODULE ]] || die "nginx with the RTMP module is needed (scripts/setup-debian.sh --test)"
command -v ffmpeg >/dev/null || die "ffmpeg is needed"
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release -p sluice-server) || die "cannot build sluice"
SRT_PEERS=${BENCH_SRT_PEERS:-1}
[[ $SRT_PEERS == 0 ]] || need_tool srt-live-transmit srt-tools

in_ram
bench_begin ingest-vs-nginx-rtmp
tick=$(getconf CLK_TCK)

copy_input

measure() { # pids...: CPU seconds per channel per second over the window
  sleep "$WARMUP"
  local t0 t1
  t0=$(cpu_ticks "$@")
  sleep "$SECONDS_MEASURED"
  t1=$(cpu_ticks "$@")
  python3 -c "print(f'{($t1 - $t0) / $tick / $SECONDS_MEASURED / $N:.5f}')"
}

# 1. nginx-rtmp (run again after Sluice, see below)
run_nginx() { # run-name: prints CPU s / channel / s
  local port dir=$work/nginx-$1 master
  port=$(free_port)
  mkdir -p "$dir/hls"
  cat >"$dir/nginx.conf" <<EOF
load_module $MODULE;
user root; worker_processes 1; pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections 4096; }
rtmp { server { listen 127.0.0.1:$port; application live { live on; hls on;
  hls_path $dir/hls; hls_fragment 2s; hls_playlist_length 30s; } } }
EOF
  "$NGINX" -c "$dir/nginx.conf" -g "daemon off;" >/dev/null 2>&1 &
  master=$!
  pids+=($master)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  start_publishers "rtmp://127.0.0.1:$port/live/s" flv
  measure "$master" $(pgrep -P "$master" || true)
  stop_publishers
  kill -TERM "$master" 2>/dev/null || true
  wait "$master" 2>/dev/null || true
}
nginx_first=$(run_nginx 1)
segments=$(ls "$work/nginx-1/hls" | grep -c '\.ts$' || true)

# 2 and 3. Sluice, RTMP then SRT.
http=$(free_port); rtmp=$(free_port); srt=$(free_port)
{
  printf '[server]\nhttp_listen = "127.0.0.1:%s"\nrtmp_listen = "127.0.0.1:%s"\nsrt_listen = "127.0.0.1:%s"\n' "$http" "$rtmp" "$srt"
  for ((i = 0; i < N; i++)); do
    # allow_cidrs: the publishers all come from 127.0.0.1, a trusted encoder host then, not
    # held to the per-address connection cap.
    printf '[channels.c%d.ingests.r]\nprotocol = "rtmp"\nstream_key = "r%d"\nallow_cidrs = ["127.0.0.1/32"]\n' "$i" "$i"
    printf '[channels.c%d.ingests.s]\nprotocol = "srt"\nstream_key = "s%d"\npriority = 2\nallow_cidrs = ["127.0.0.1/32"]\n' "$i" "$i"
    printf '[channels.c%d.engines.e]\nladder = "passthrough"\noutputs = ["cmaf", "ts"]\n' "$i"
    printf '[distributions.c%d]\nchannel = "c%d"\n' "$i" "$i"
  done
} >"$work/sluice.toml"
"$BIN" serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
sluice=$!
pids+=($sluice)
for _ in $(seq 100); do grep -q "sluice serving" "$work/sluice.log" && break; sleep 0.1; done
start_publishers "rtmp://127.0.0.1:$rtmp/live/r" flv
sluice_rtmp_cpu=$(measure "$sluice")
stop_publishers
sleep 4
start_publishers "srt://127.0.0.1:$srt?streamid=publish:s" mpegts "&pkt_size=1316"
sluice_srt_cpu=$(measure "$sluice")
live=$(curl -s "http://127.0.0.1:$http/live/c0/ts/index.m3u8" | grep -c m3u8 || true)
accepted=$(grep -c "publish accepted" "$work/sluice.log" || true)
stop_publishers
kill -TERM "$sluice" 2>/dev/null || true
wait "$sluice" 2>/dev/null || true

# 4. SRT's work done by libsrt: N SRT listeners, one process each (neither program serves
# several streams on one port), each fed by one publisher as Sluice's SRT line is.
run_srt_peer() { # ffmpeg|slt: prints CPU s / channel / s
  local dir=$work/$1 servers=() ports=() port i
  mkdir -p "$dir"
  for ((i = 0; i < N; i++)); do
    port=$(free_port)
    while [[ " ${ports[*]} " == *" $port "* ]]; do port=$(free_port); done
    if [[ $1 == ffmpeg ]]; then
      mkdir -p "$dir/$i"
      # latency in microseconds for ffmpeg's libsrt options; 200 ms as Sluice's default.
      ffmpeg -hide_banner -loglevel error -i "srt://127.0.0.1:$port?mode=listener&latency=200000" \
        -c copy -f hls -hls_time 2 -hls_list_size 15 -hls_flags delete_segments \
        "$dir/$i/index.m3u8" </dev/null >/dev/null 2>&1 &
    else
      srt-live-transmit -q "srt://127.0.0.1:$port?mode=listener&latency=200" file://con \
        </dev/null >/dev/null 2>&1 &
    fi
    servers+=($!)
    pids+=($!)
    ports[i]=$port
  done
  sleep 3
  for ((i = 0; i < N; i++)); do
    ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$work/in.flv" -c copy \
      -f mpegts "srt://127.0.0.1:${ports[i]}?pkt_size=1316" </dev/null >/dev/null 2>&1 &
    publishers+=($!)
    pids+=($!)
  done
  measure "${servers[@]}"
  # Which peers served a stream to the end: a server still running (and, for ffmpeg, one
  # that wrote segments). A dead one would lower the CPU per channel unseen.
  local live=0
  for ((i = 0; i < N; i++)); do
    kill -0 "${servers[i]}" 2>/dev/null || continue
    [[ $1 != ffmpeg ]] || compgen -G "$dir/$i/*.ts" >/dev/null || continue
    live=$((live + 1))
  done
  echo "$live" >"$dir/live"
  if [[ $1 == ffmpeg ]]; then
    ls "$dir"/*/ 2>/dev/null | grep -c '\.ts$' >"$dir/segments" || true
  fi
  stop_publishers
  for p in "${servers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${servers[@]}"; do wait "$p" 2>/dev/null || true; done
}
ffmpeg_srt_cpu=nan slt_cpu=nan ffmpeg_segments=0 peers_live="-"
if [[ $SRT_PEERS != 0 ]]; then
  ffmpeg_srt_cpu=$(run_srt_peer ffmpeg)
  ffmpeg_segments=$(cat "$work/ffmpeg/segments" 2>/dev/null || echo 0)
  slt_cpu=$(run_srt_peer slt)
  peers_live="ffmpeg $(cat "$work/ffmpeg/live"), srt-live-transmit $(cat "$work/slt/live") of $N"
fi

# nginx once more, after Sluice: the machine drifts over the minutes a run takes (nginx's
# figure alone moved 10% between runs), so the mean of before and after is the reference.
nginx_second=$(run_nginx 2)
nginx_cpu=$(python3 -c "print(f'{($nginx_first + $nginx_second) / 2:.5f}')")

python3 - "$N" "$nginx_cpu" "$sluice_rtmp_cpu" "$sluice_srt_cpu" "$segments" "$live" "$accepted" "$nginx_first" "$nginx_second" "$ffmpeg_srt_cpu" "$slt_cpu" "$ffmpeg_segments" "$peers_live" <<'PY'
import json, math, sys
n, nginx, s_rtmp, s_srt, segs, live, accepted, ng1, ng2, f_srt, slt, f_segs, peers_live = sys.argv[1:]
nginx, s_rtmp, s_srt, f_srt, slt = float(nginx), float(s_rtmp), float(s_srt), float(f_srt), float(slt)
# A server that measured nothing (it died, or nothing reached it) gives no ratio.
def over(a, b):
    return a / b if b > 0 and not math.isnan(b) else float("nan")
print(f"publishers per server: {n} (1280x720 2.5 Mb/s + AAC, -c copy, looped)")
print(f"{'server':<34}{'CPU s / channel / s':>22}{'vs nginx-rtmp':>16}")
print(f"{'nginx-rtmp (RTMP in, TS HLS)':<34}{nginx:>22.5f}{1.0:>16.2f}  (mean of {ng1} before and {ng2} after Sluice)")
print(f"{'sluice (RTMP in, CMAF+TS)':<34}{s_rtmp:>22.5f}{over(s_rtmp, nginx):>16.2f}")
print(f"{'sluice (SRT in, CMAF+TS)':<34}{s_srt:>22.5f}{over(s_srt, nginx):>16.2f}")
if not math.isnan(f_srt):
    print(f"{'ffmpeg/libsrt (SRT in, TS HLS)':<34}{f_srt:>22.5f}{over(f_srt, nginx):>16.2f}  sluice SRT / this: {over(s_srt, f_srt):.2f}")
    print(f"{'srt-live-transmit (SRT in, none)':<34}{slt:>22.5f}{over(slt, nginx):>16.2f}  sluice SRT less RTMP / this: {over(s_srt - s_rtmp, slt):.2f}")
print(f"(nginx wrote {segs} TS fragments; ffmpeg/libsrt held {f_segs}; sluice accepted {accepted} publishes of {2 * int(n)}; c0 variants after SRT: {live}; SRT peers live to the end: {peers_live})")
nan_none = lambda v: None if math.isnan(v) else v
print("BENCH_JSON " + json.dumps({"bench": "ingest_vs_nginx_rtmp", "publishers": int(n),
      "nginx_cpu_per_channel": nginx, "nginx_runs": [float(ng1), float(ng2)], "sluice_rtmp_cpu_per_channel": s_rtmp,
      "sluice_srt_cpu_per_channel": s_srt, "rtmp_ratio": nan_none(over(s_rtmp, nginx)), "srt_ratio": nan_none(over(s_srt, nginx)),
      "ffmpeg_libsrt_cpu_per_channel": nan_none(f_srt), "srt_live_transmit_cpu_per_channel": nan_none(slt),
      "srt_vs_ffmpeg_libsrt": nan_none(over(s_srt, f_srt))}))
PY
