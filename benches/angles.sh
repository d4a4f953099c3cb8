#!/usr/bin/env bash
# angles.sh: what a camera angle (a channel's video source) costs the server.
#
# One channel with a 720p/480p/360p transcoding ladder (CMAF with LL-HLS parts and TS) is
# fed a pre-encoded 1280x720@30 stream (H.264 2.5 Mb/s + AAC 128k, 10 s looped, `ffmpeg
# -re -stream_loop -1 -c copy`); K camera angles (BENCH_ANGLES, default 1) are each fed
# the same file as a second camera, and each is encoded with the angle ladder (BENCH_ANGLE
# = small: 480p + 360p, the usual smaller ladder; or full: the main ladder). Rounds
# alternate K = 0 and K, BENCH_ROUNDS times (default 3) on ONE server; each round
# measures the server's CPU (utime+stime from /proc/<pid>/stat) over BENCH_SECONDS
# (default 20) after a warm-up of BENCH_WARMUP (default 10 s). Reported: the medians and
# the cost per angle, absolute and as a share of the channel's own cost.
#
# Usage:   benches/angles.sh              (BENCH_ANGLE=full BENCH_SECONDS=30 ... to change)
# Output:  a table, and a last line BENCH_JSON {...}.
# Everything listens on 127.0.0.1; every process started is stopped on exit; every wait is
# bounded. Needs ffmpeg with libx264, python3, and cargo if the release binary is missing.

set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/benches/common.sh"
K=${BENCH_ANGLES:-1}
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_MEASURED=${BENCH_SECONDS:-20}
WARMUP=${BENCH_WARMUP:-10}
ANGLE=${BENCH_ANGLE:-small}
BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}

die() { echo "angles: $*" >&2; exit 1; }
[[ $K =~ ^[0-9]+$ ]] && ((K >= 1 && K <= 4)) || die "BENCH_ANGLES must be 1..4"
[[ $ROUNDS =~ ^[0-9]+$ ]] && ((ROUNDS >= 1 && ROUNDS <= 10)) || die "BENCH_ROUNDS must be 1..10"
[[ $ANGLE == small || $ANGLE == full ]] || die "BENCH_ANGLE must be small or full"
need_tool ffmpeg ffmpeg
need_tool python3 python3
need_tool curl curl
if [[ ! -x $BIN ]]; then
  (cd "$ROOT" && cargo build --release -p sluice-server) >&2 || die "release build failed"
fi

bench_begin angles
copy_input

http=$(free_port); rtmp=$(free_port)
{
  printf '[server]\nhttp_listen = "127.0.0.1:%s"\nrtmp_listen = "127.0.0.1:%s"\nsrt_listen = "127.0.0.1:%s"\n' "$http" "$rtmp" "$(free_port)"
  printf '[ladders.l]\nsegment_seconds = 2.0\nrenditions = [\n'
  printf '  { name = "720p", width = 1280, height = 720, video_kbps = 2500 },\n'
  printf '  { name = "480p", width = 854, height = 480, video_kbps = 1200 },\n'
  printf '  { name = "360p", width = 640, height = 360, video_kbps = 700 },\n]\n'
  printf '[ladders.small]\nsegment_seconds = 2.0\nrenditions = [\n'
  printf '  { name = "480p", width = 854, height = 480, video_kbps = 1200 },\n'
  printf '  { name = "360p", width = 640, height = 360, video_kbps = 700 },\n]\n'
  printf '[channels.c.ingests.main]\nprotocol = "rtmp"\nstream_key = "main"\nallow_cidrs = ["127.0.0.1/32"]\n'
  printf '[channels.c.engines.e]\nladder = "l"\noutputs = ["cmaf", "ts"]\n'
  printf '[channels.c.slate]\nenabled = false\n'
  for ((i = 0; i < K; i++)); do
    printf '[channels.c.sources.cam%d]\nkind = "video"\nprotocol = "rtmp"\nstream_key = "cam%d"\nladder = "%s"\nallow_cidrs = ["127.0.0.1/32"]\n' \
      "$i" "$i" "$([[ $ANGLE == small ]] && echo small || echo l)"
  done
  printf '[distributions.c]\nchannel = "c"\n'
} >"$work/sluice.toml"
"$BIN" serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
sluice=$!
pids+=($sluice)
for _ in $(seq 100); do grep -q "sluice serving" "$work/sluice.log" && break; sleep 0.1; done
grep -q "sluice serving" "$work/sluice.log" || die "the server did not start: $(tail -3 "$work/sluice.log")"

# The angles are served while measured.
angle_served() {
  local code
  code=$(curl -s -o /dev/null -w "%{http_code}" "http://127.0.0.1:$http/live/c/angle/cam0/cmaf/index.m3u8")
  [[ $code == 200 ]] && return
  echo "angles: the angle is not served (HTTP $code): $(tail -3 "$work/sluice.log")" >&2
  return 1
}

# round <angles>: CPU s per wall s of the server with the main publisher and <angles> cameras.
round() {
  local n=$1 i hook=- inputs=("$work/in.flv=rtmp://127.0.0.1:$rtmp/live/main")
  for ((i = 0; i < n; i++)); do inputs+=("$work/in.flv=rtmp://127.0.0.1:$rtmp/live/cam$i"); done
  ((n == 0)) || hook=angle_served
  measured_round "$sluice" "$WARMUP" "$SECONDS_MEASURED" "$hook" "${inputs[@]}"
}

base=() with=()
for ((r = 1; r <= ROUNDS; r++)); do
  base+=("$(round 0)")
  with+=("$(round "$K")")
  echo "round $r/$ROUNDS: 0 angles ${base[-1]}, $K angles ${with[-1]} CPU s/s" >&2
done

python3 - "$K" "$ANGLE" "${base[*]}" "${with[*]}" <<'PY'
import json, statistics, sys
k, angle = int(sys.argv[1]), sys.argv[2]
base = [float(x) for x in sys.argv[3].split()]
with_ = [float(x) for x in sys.argv[4].split()]
b, w = statistics.median(base), statistics.median(with_)
per = (w - b) / k
ladder = "480p + 360p" if angle == "small" else "720p + 480p + 360p"
print("one channel (720p/480p/360p ladder, CMAF with LL-HLS parts + TS), 720p30 2.5 Mb/s input, -c copy")
print(f"each angle: the same input from a second publisher, encoded as {ladder} (CMAF)")
print(f"{'':<34}{'CPU s / s (median)':>20}   rounds")
print(f"{'main input only':<34}{b:>20.4f}   {', '.join(f'{x:.4f}' for x in base)}")
print(f"{f'main + {k} camera angles':<34}{w:>20.4f}   {', '.join(f'{x:.4f}' for x in with_)}")
print(f"per camera angle: {per:.4f} CPU s/s ({per / b * 100:.0f}% of the channel alone)")
print("BENCH_JSON " + json.dumps({"bench": "angles", "angle_ladder": angle, "angles": k,
      "cpu_base": b, "cpu_with_angles": w, "cpu_per_angle": per, "share_per_angle": per / b,
      "base_rounds": base, "with_rounds": with_}))
PY
