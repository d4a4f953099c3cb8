#!/usr/bin/env bash
# engine_floor.sh: how much of ffmpeg's ladder is work any engine using the same decoder and
# the same x264 settings must also do, measured piece by piece with ffmpeg itself.
#
# `engine_vs_ffmpeg.sh` compares Sluice's engine with one ffmpeg process making the same
# ladder (decode → split → bilinear scale per rung → libx264 per rung, AAC). This script
# splits ffmpeg's figure into:
#   D  the H.264 decode of the input (libavcodec), demuxing included: `-map 0:v -f null`;
#   A  the audio: AAC decoded and encoded again at 128 kb/s (`-map 0:a -c:a aac -f null`);
#   E  each rung's x264 encode alone, fed raw pictures already scaled (made beforehand, not
#      timed), less R, the cost of reading those raw pictures (`-f rawvideo -i … -f null`);
# and reports L = D + A + sum(E - R), the floor, against F, the whole ladder in one process
# (the benchmark's command). An engine that decodes with libavcodec and encodes with libx264
# at these settings pays L whatever else it does; what it may spend on the rest (scaling,
# colour, threads and queues, packaging) before reaching a given ratio of F is that ratio
# minus L/F. Every figure is user+system CPU seconds from /usr/bin/time, per media second;
# each is the median of BENCH_ROUNDS (default 3) runs.
#
# Usage:   benches/engine_floor.sh           (BENCH_MODES="720p 1080p", BENCH_SECONDS=20)
# Output:  a table per mode, and a line BENCH_JSON {...} per mode.
# Needs ffmpeg with libx264 (scripts/setup-debian.sh --test). Scratch files (raw pictures:
# 3.3 GB for the 1080p mode at 20 s) go to /dev/shm when it is a tmpfs.

set -Eeuo pipefail
# A failed measurement inside $(...) must stop the script, not leave an empty figure.
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/benches/common.sh"
BENCH_MODES=${BENCH_MODES:-720p 1080p}
BENCH_SECONDS=${BENCH_SECONDS:-20}
ROUNDS=${BENCH_ROUNDS:-3}
need_tool ffmpeg ffmpeg
need_tool python3 python3
[[ -x /usr/bin/time ]] || need_tool /usr/bin/time time
[[ $ROUNDS =~ ^[1-9]$ ]] || { echo "engine_floor: BENCH_ROUNDS must be 1..9" >&2; exit 1; }
[[ $BENCH_SECONDS =~ ^[0-9]+$ ]] && ((BENCH_SECONDS >= 5 && BENCH_SECONDS <= 120)) ||
  { echo "engine_floor: BENCH_SECONDS must be 5..120" >&2; exit 1; }
in_ram 4096
bench_begin engine-floor

# cpu <cmd...>: user+system CPU seconds of one run of the command (its children included).
cpu() {
  /usr/bin/time -f "%U %S" -o "$work/time" "$@" </dev/null >/dev/null 2>"$work/err" ||
    { cat "$work/err" >&2; echo "engine_floor: failed: $*" >&2; exit 1; }
  awk '{ printf "%.3f", $1 + $2 }' "$work/time"
}
# median <cmd...>: the median of ROUNDS runs of cpu.
median() {
  local v=() r x
  for ((r = 0; r < ROUNDS; r++)); do
    x=$(cpu "$@")
    [[ $x =~ ^[0-9]+\.[0-9]+$ ]] || { echo "engine_floor: no CPU figure for: $*" >&2; exit 1; }
    v+=("$x")
  done
  printf '%s\n' "${v[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

FF=(ffmpeg -hide_banner -nostdin -loglevel error -y)

for MODE in $BENCH_MODES; do
  if [[ $MODE == 1080p ]]; then
    MW=1920 MH=1080 RUNGS=("1920 1080 4500" "1280 720 2500" "854 480 1200" "640 360 700")
  else
    MW=1280 MH=720 RUNGS=("1280 720 2500" "854 480 1200" "640 360 700")
  fi
  IN=$work/$MODE.flv
  ladder_input "$IN" "$MW" "$MH" "$BENCH_SECONDS"

  split="" maps=() rates=() i=0
  for r in "${RUNGS[@]}"; do
    read -r w h k <<<"$r"
    split+="[s$i]scale=$w:$h:flags=bilinear[v$i];"
    maps+=(-map "[v$i]")
    rates+=("-b:v:$i" "${k}k" "-maxrate:v:$i" "${k}k" "-bufsize:v:$i" "$((k * 6 / 10))k")
    # This rung's raw pictures, scaled as the ladder scales them (not timed).
    "${FF[@]}" -i "$IN" -map 0:v -vf "scale=$w:$h:flags=bilinear" -f rawvideo -pix_fmt yuv420p \
      "$work/$MODE-$i.yuv"
    i=$((i + 1))
  done
  outs=""
  for ((j = 0; j < i; j++)); do outs+="[s$j]"; done

  F=$(median "${FF[@]}" -i "$IN" -filter_complex "[0:v]split=$i$outs;${split%;}" \
    "${maps[@]}" -map 0:a "${LADDER_X264[@]}" "${rates[@]}" \
    -c:a aac -b:a 128k -ar 48000 -ac 2 -f null -)
  D=$(median "${FF[@]}" -i "$IN" -map 0:v -f null -)
  A=$(median "${FF[@]}" -i "$IN" -map 0:a -c:a aac -b:a 128k -ar 48000 -ac 2 -f null -)
  E=() R=() i=0
  for r in "${RUNGS[@]}"; do
    read -r w h k <<<"$r"
    raw=(-f rawvideo -pix_fmt yuv420p -s "${w}x$h" -r 30 -i "$work/$MODE-$i.yuv")
    E+=("$(median "${FF[@]}" "${raw[@]}" "${LADDER_X264[@]}" \
      -b:v "${k}k" -maxrate "${k}k" -bufsize "$((k * 6 / 10))k" -f null -)")
    R+=("$(median "${FF[@]}" "${raw[@]}" -f null -)")
    i=$((i + 1))
  done
  rm -f "$work/$MODE"-*.yuv

  python3 - "$MODE" "$BENCH_SECONDS" "$ROUNDS" "$F" "$D" "$A" "${#RUNGS[@]}" "${RUNGS[@]}" "${E[@]}" "${R[@]}" <<'PY'
import json, sys
mode, secs, rounds, F, D, A, n = sys.argv[1:8]
secs, F, D, A, n = float(secs), float(F), float(D), float(A), int(n)
rungs = sys.argv[8:8 + n]
E = [float(x) for x in sys.argv[8 + n:8 + 2 * n]]
R = [float(x) for x in sys.argv[8 + 2 * n:8 + 3 * n]]
per = lambda v: v / secs
L = D + A + sum(e - r for e, r in zip(E, R))
print(f"{mode}: CPU s per media s (median of {rounds} runs of {secs:.0f} s)")
print(f"  {'the whole ladder, one ffmpeg (F)':<50}{per(F):8.3f}")
print(f"  {'H.264 decode and demux (D)':<50}{per(D):8.3f}")
print(f"  {'AAC decode + encode (A)':<50}{per(A):8.3f}")
for r, e, rr in zip(rungs, E, R):
    w, h, k = r.split()
    print(f"  {'x264 ' + w + 'x' + h + ' ' + k + 'k, raw read subtracted (E-R)':<50}{per(e - rr):8.3f}  (read {per(rr):.3f})")
print(f"  {'floor L = D + A + sum(E-R)':<50}{per(L):8.3f}  = {L / F:.2f} F")
print(f"  left for scaling, threads, packaging at 0.95 F: {per(0.95 * F - L):.3f} CPU s per media s"
      f" (ffmpeg's own rest: {per(F - L):.3f})")
print("BENCH_JSON " + json.dumps({"bench": "engine_floor", "mode": mode, "media_s": secs, "rounds": int(rounds),
      "ffmpeg_ladder": per(F), "decode": per(D), "audio": per(A),
      "encodes": [per(e - rr) for e, rr in zip(E, R)], "floor": per(L), "floor_over_ffmpeg": L / F}))
PY
done
