#!/usr/bin/env bash
# audio_tracks.sh: what an extra audio track (a channel's audio source) costs the server.
#
# One channel (an RTMP ingest, one engine making CMAF with LL-HLS parts and TS) is fed a
# pre-encoded 1280x720@30 stream (H.264 2.5 Mb/s + AAC 128k, 10 s looped, `ffmpeg -re
# -stream_loop -1 -c copy`), and K audio sources are each fed a pre-encoded tone (AAC-LC
# 128k 48 kHz stereo in FLV, looped the same way). Rounds alternate K = 0 and K =
# BENCH_TRACKS (default 4), BENCH_ROUNDS times (default 3) on ONE server; each round
# measures the server's CPU (utime+stime from /proc/<pid>/stat) over BENCH_SECONDS
# (default 20) after a warm-up of BENCH_WARMUP (default 8 s). Reported: the medians for
# K = 0 and K, and their difference per track, absolute and as a share of the channel's
# own cost. The engine is `passthrough` by default (the channel's cost is then packaging
# alone, so the share is as large as it gets); BENCH_LADDER=720p uses a 720p/480p/360p
# transcoding ladder instead.
#
# Usage:   benches/audio_tracks.sh              (BENCH_TRACKS=2 BENCH_SECONDS=30 ... to change)
# Output:  a table, and a last line BENCH_JSON {...}.
# Everything listens on 127.0.0.1; every process started is stopped on exit; every wait is
# bounded. Needs ffmpeg with libx264, python3, and cargo if the release binary is missing.

set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/benches/common.sh"
K=${BENCH_TRACKS:-4}
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_MEASURED=${BENCH_SECONDS:-20}
WARMUP=${BENCH_WARMUP:-8}
LADDER=${BENCH_LADDER:-passthrough}
BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}

die() { echo "audio_tracks: $*" >&2; exit 1; }
[[ $K =~ ^[0-9]+$ ]] && ((K >= 1 && K <= 16)) || die "BENCH_TRACKS must be 1..16"
[[ $ROUNDS =~ ^[0-9]+$ ]] && ((ROUNDS >= 1 && ROUNDS <= 10)) || die "BENCH_ROUNDS must be 1..10"
[[ $LADDER == passthrough || $LADDER == 720p ]] || die "BENCH_LADDER must be passthrough or 720p"
need_tool ffmpeg ffmpeg
need_tool python3 python3
if [[ ! -x $BIN ]]; then
  (cd "$ROOT" && cargo build --release -p sluice-server) >&2 || die "release build failed"
fi

bench_begin audio-tracks
copy_input
for ((i = 0; i < K; i++)); do
  ffmpeg -hide_banner -loglevel error -f lavfi -i "sine=frequency=$((500 + 100 * i)):sample_rate=48000" \
    -t 10 -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv "$work/tone$i.flv"
done

http=$(free_port); rtmp=$(free_port)
{
  printf '[server]\nhttp_listen = "127.0.0.1:%s"\nrtmp_listen = "127.0.0.1:%s"\nsrt_listen = "127.0.0.1:%s"\n' "$http" "$rtmp" "$(free_port)"
  if [[ $LADDER == 720p ]]; then
    printf '[ladders.l]\nsegment_seconds = 2.0\nrenditions = [\n'
    printf '  { name = "720p", width = 1280, height = 720, video_kbps = 2500 },\n'
    printf '  { name = "480p", width = 854, height = 480, video_kbps = 1200 },\n'
    printf '  { name = "360p", width = 640, height = 360, video_kbps = 700 },\n]\n'
  fi
  printf '[channels.c.ingests.main]\nprotocol = "rtmp"\nstream_key = "main"\nallow_cidrs = ["127.0.0.1/32"]\n'
  printf '[channels.c.engines.e]\nladder = "%s"\noutputs = ["cmaf", "ts"]\n' "$([[ $LADDER == 720p ]] && echo l || echo passthrough)"
  printf '[channels.c.slate]\nenabled = false\n'
  for ((i = 0; i < K; i++)); do
    printf '[channels.c.sources.a%d]\nkind = "audio"\nprotocol = "rtmp"\nstream_key = "a%d"\nlanguage = "en"\nallow_cidrs = ["127.0.0.1/32"]\n' "$i" "$i"
  done
  printf '[distributions.c]\nchannel = "c"\n'
} >"$work/sluice.toml"
"$BIN" serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
sluice=$!
pids+=($sluice)
for _ in $(seq 100); do grep -q "sluice serving" "$work/sluice.log" && break; sleep 0.1; done
grep -q "sluice serving" "$work/sluice.log" || die "the server did not start: $(tail -3 "$work/sluice.log")"

# round <tracks>: CPU s per wall s of the server with the main publisher and <tracks> sources.
round() {
  local n=$1 i inputs=("$work/in.flv=rtmp://127.0.0.1:$rtmp/live/main")
  for ((i = 0; i < n; i++)); do inputs+=("$work/tone$i.flv=rtmp://127.0.0.1:$rtmp/live/a$i"); done
  measured_round "$sluice" "$WARMUP" "$SECONDS_MEASURED" - "${inputs[@]}"
}

base=() with=()
for ((r = 1; r <= ROUNDS; r++)); do
  base+=("$(round 0)")
  with+=("$(round "$K")")
  echo "round $r/$ROUNDS: 0 tracks ${base[-1]}, $K tracks ${with[-1]} CPU s/s" >&2
done
tracks_listed=$(curl -s "http://127.0.0.1:$http/live/c/cmaf/index.m3u8" | grep -c 'TYPE=AUDIO' || true)

python3 - "$K" "$LADDER" "$tracks_listed" "${base[*]}" "${with[*]}" <<'PY'
import json, statistics, sys
k, ladder, listed = int(sys.argv[1]), sys.argv[2], sys.argv[3]
base = [float(x) for x in sys.argv[4].split()]
with_ = [float(x) for x in sys.argv[5].split()]
b, w = statistics.median(base), statistics.median(with_)
per = (w - b) / k
print(f"one channel ({ladder} engine, CMAF with LL-HLS parts + TS), 720p30 2.5 Mb/s input, -c copy")
print(f"{'':<34}{'CPU s / s (median)':>20}   rounds")
print(f"{'main input only':<34}{b:>20.5f}   {', '.join(f'{x:.4f}' for x in base)}")
print(f"{f'main + {k} audio sources':<34}{w:>20.5f}   {', '.join(f'{x:.4f}' for x in with_)}")
print(f"per extra audio track: {per:.5f} CPU s/s ({per / b * 100:.1f}% of the channel alone); "
      f"EXT-X-MEDIA audio entries listed at the end: {listed}")
print("BENCH_JSON " + json.dumps({"bench": "audio_tracks", "ladder": ladder, "tracks": k,
      "cpu_base": b, "cpu_with_tracks": w, "cpu_per_track": per, "share_per_track": per / b,
      "base_rounds": base, "with_rounds": with_}))
PY
