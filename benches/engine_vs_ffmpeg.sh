#!/usr/bin/env bash
# engine_vs_ffmpeg.sh: what the Sluice engine costs against ffmpeg, what it delivers (SSIM and
# PSNR of every rendition), and how late its segments are.
#
# One run measures, for each ladder mode (BENCH_MODES, default "720p 1080p"):
#   720p:  1280x720@30 input; 720p/480p/360p at 2500/1200/700 kbps
#   1080p: 1920x1080@30 input; 1080p/720p/480p/360p at 4500/2500/1200/700 kbps
# (AAC 128k, x264 veryfast, 2 s segments in both)
#   1. CPU seconds per media second of the Sluice engine transcoding the ladder, against ONE
#      ffmpeg process encoding the same ladder from the same file with the same x264 settings,
#      alternated: BENCH_ROUNDS rounds (default 3) of [one live push into Sluice, one ffmpeg
#      run]; medians and the ratio of the medians are reported, with every round's figure.
#   2. Peak memory: Sluice's VmHWM after each round (ONE server takes every round's session,
#      so growth across sessions shows) against ffmpeg's largest peak RSS.
#   3. Quality: for every rendition, SSIM (all planes) and PSNR (average) of the first round's
#      Sluice output (its MPEG-TS HLS segments, downloaded) and of ffmpeg's (one more, untimed
#      run writing a file), each against the same reference: the input decoded and scaled to
#      the rendition's size with ffmpeg's lanczos. Debian's ffmpeg has no libvmaf, so no VMAF.
#   4. Ingest-to-playlist delay (first round): for every 720p CMAF segment, the wall time it
#      first appears in the media playlist minus the wall time its last media instant was pushed.
#
# BENCH_REUSE=1: the ladder reuses what it can of the input, on both sides: Sluice with
#   `reuse_top_rung = true` and `audio_passthrough = true` (the input's video is the top rung's
#   size with a keyframe every segment, its audio AAC-LC 48 kHz stereo), ffmpeg copying the
#   input's video as its top rung and its audio (`-c:v:0 copy -c:a copy`), scaling and
#   encoding the lower rungs only. The top rung is then the input's 3000k (720p) or 6000k
#   (1080p) and its quality the input's.
#
# Usage:   benches/engine_vs_ffmpeg.sh        (from anywhere)
#          BENCH_MODES=720p BENCH_ROUNDS=1 BENCH_SECONDS=30 benches/engine_vs_ffmpeg.sh
#          BENCH_REUSE=1 benches/engine_vs_ffmpeg.sh
# Output:  a table per mode on stdout, and per mode a machine-readable line:
#          BENCH_JSON {"bench":"engine_vs_ffmpeg","mode":"720p",...}
#
# How:
#   * Input: BENCH_SECONDS (default 20, 10..600) of testsrc2 at the mode's size, 30 fps, + 48 kHz
#     stereo sine, H.264 (x264 veryfast, keyint 60, no scene cuts) + AAC, FLV; generated once per
#     mode with ffmpeg into a temp dir.
#   * Sluice: target/release/sluice (built with `cargo build --release -p sluice-server` when
#     missing; BENCH_BUILD=1 always runs cargo; SLUICE_BIN=path uses another binary). A generated
#     config listens on 127.0.0.1 port 0 (the kernel picks free ports, read back from the log) and
#     has one channel: an RTMP ingest and an engine on the mode's ladder with the default config's
#     outputs (cmaf + ts, LL-HLS parts on), slate off. The file is pushed live:
#     `ffmpeg -re -i in.flv -c copy -f flv rtmp://...`. Server CPU = utime+stime from
#     /proc/<pid>/stat (ticks: getconf CLK_TCK) from just before the push until the server is
#     idle again after it (engine drained), minus the idle rate measured for 4 s before the first
#     round (the playlist poller runs during both, so its HTTP cost is subtracted too), divided
#     by the media seconds.
#   * ffmpeg: one process, no -re, decodes the file once, split → scale per rung (bilinear, the
#     kernel Sluice's scaler uses) → libx264 per rung (-preset veryfast -tune zerolatency -bf 0
#     -x264-params scenecut=0 -g 240 -force_key_frames expr:gte(t,n_forced*2), CBR with
#     -maxrate = -b:v and -bufsize = 0.6 x -b:v, which is what x264enc's default pass=cbr sets),
#     aac 128k 48 kHz stereo, muxed to `-f null -` (no files). CPU and peak RSS from
#     /usr/bin/time -f "%e %U %S %M" (%M = ru_maxrss, the process's VmHWM).
#   * Delay (first round only): a single curl (keep-alive, --rate 20/s, i.e. every 50 ms) polls
#     /live/bench/cmaf/720p/index.m3u8; a reader stamps each response ($EPOCHREALTIME) and
#     records the first sighting of every `<msn>.m4s`. Segment k (counted from the first msn
#     seen) covers [2k, 2k+2) s of the session; its media end reaches the server, at the
#     earliest, at push start + min(2(k+1), duration). delay = first seen - that. "Push start"
#     is the instant the ffmpeg push is launched, so ffmpeg's start-up and the RTMP handshake
#     count as delay (conservative); the offset of the server's "session started" log line is
#     printed too, with the delays measured from it. Polling every 50 ms adds 0-50 ms. Median
#     and max are over the segments cut while live; the last one (closed only at end of stream)
#     is shown on its own.
#
# Everything listens on and connects to 127.0.0.1 only; every wait is bounded; every process
# started here is stopped on exit (trap EXIT). Needs: bash >= 5, ffmpeg/ffprobe with libx264,
# curl, getconf, GNU time (/usr/bin/time; installed with apt-get when missing and root), the
# GStreamer plugins the server uses, and cargo when the binary must be built.
# BENCH_KEEP=1 keeps the temp dir (logs, playlists, configs, outputs) for inspection.

set -Eeuo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-20}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_MODES=${BENCH_MODES:-720p 1080p}
BENCH_REUSE=${BENCH_REUSE:-0}
SEG_S=2                                   # ladder segment duration (s)
POLL_RATE=20                              # playlist polls per second (50 ms)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# ladder_input, LADDER_X264 (shared with engine_floor.sh); its cpu_ticks is redefined below.
source "$ROOT/benches/common.sh"
BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}

die() { echo "engine_vs_ffmpeg: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }

[[ $BENCH_SECONDS =~ ^[0-9]+$ ]] && ((BENCH_SECONDS >= 10 && BENCH_SECONDS <= 600)) \
  || die "BENCH_SECONDS must be an integer from 10 to 600 (got '$BENCH_SECONDS')"
[[ $BENCH_ROUNDS =~ ^[0-9]+$ ]] && ((BENCH_ROUNDS >= 1 && BENCH_ROUNDS <= 10)) \
  || die "BENCH_ROUNDS must be an integer from 1 to 10 (got '$BENCH_ROUNDS')"
[[ $BENCH_REUSE == 0 || $BENCH_REUSE == 1 ]] || die "BENCH_REUSE is 0 or 1 (got '$BENCH_REUSE')"
for m in $BENCH_MODES; do
  [[ $m == 720p || $m == 1080p ]] || die "BENCH_MODES holds 720p and/or 1080p (got '$m')"
done
((BASH_VERSINFO[0] >= 5)) || die "needs bash >= 5 (EPOCHREALTIME)"

# ---------------------------------------------------------------- processes and cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
PIDS=()
stop_pid() { # pid: TERM, up to 5 s, then KILL
  local p=$1 i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- prerequisites
for c in ffmpeg ffprobe curl getconf awk timeout; do
  command -v "$c" >/dev/null || die "missing '$c' (apt-get install -y ffmpeg curl coreutils gawk)"
done
if [[ ! -x /usr/bin/time ]]; then
  if ((EUID == 0)) && command -v apt-get >/dev/null; then
    log "installing GNU time"
    apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y time >/dev/null 2>&1; } \
      || die "cannot install package 'time'"
  else
    die "missing /usr/bin/time (apt-get install -y time)"
  fi
fi
[[ $(ffmpeg -hide_banner -encoders 2>/dev/null) == *libx264* ]] || die "ffmpeg lacks libx264"
CLK_TCK=$(getconf CLK_TCK)

if [[ -z ${SLUICE_BIN:-} && (! -x $BIN || ${BENCH_BUILD:-0} == 1) ]]; then
  command -v cargo >/dev/null || die "no $BIN and no cargo to build it"
  log "building $BIN (cargo build --release -p sluice-server; may wait for the cargo lock)"
  (cd "$ROOT" && cargo build --release -p sluice-server) >&2 || die "release build failed"
fi
[[ -x $BIN ]] || die "no executable at $BIN"
if [[ -z ${SLUICE_BIN:-} ]] && [[ -n $(find "$ROOT/crates" -newer "$BIN" -name '*.rs' -print -quit 2>/dev/null) ]]; then
  log "warning: sources are newer than $BIN (BENCH_BUILD=1 rebuilds)"
fi

# ---------------------------------------------------------------- helpers
cpu_ticks() { # pid -> utime+stime (ticks) of the whole process (all threads, live and exited)
  local s
  s=$(<"/proc/$1/stat") || return 1
  s=${s##*) }                  # fields from 3 on (comm may contain spaces)
  read -r -a f <<<"$s"
  echo $((f[11] + f[12]))      # fields 14 and 15
}
vm_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
now() { echo "$EPOCHREALTIME"; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }



# The ladder of a mode: "name width height kbps" per line, top rung first.
ladder_of() {
  if [[ $1 == 1080p ]]; then echo "1080p 1920 1080 4500"; fi
  echo "720p 1280 720 2500"
  echo "480p 854 480 1200"
  echo "360p 640 360 700"
}

# quality <file> <stream-index> <w> <h>: "SSIM PSNR" of video stream <stream-index> of <file>
# against $IN decoded and scaled to w x h with lanczos, frames paired from each one's start.
quality() {
  local out
  out=$(ffmpeg -hide_banner -nostdin -loglevel info -i "$1" -i "$IN" -lavfi \
    "[0:v:$2]setpts=PTS-STARTPTS,split[a1][a2];[1:v]scale=$3:$4:flags=lanczos,setpts=PTS-STARTPTS,split[b1][b2];[a1][b1]ssim;[a2][b2]psnr" \
    -f null - 2>&1) || { echo "nan nan"; return; }
  awk '/SSIM Y:/ { for (i = 1; i <= NF; i++) if ($i ~ /^All:/) { sub("All:", "", $i); ssim = $i } }
       /PSNR y:/ { for (i = 1; i <= NF; i++) if ($i ~ /^average:/) { sub("average:", "", $i); psnr = $i } }
       END { printf "%s %s\n", (ssim == "" ? "nan" : ssim), (psnr == "" ? "nan" : psnr) }' <<<"$out"
}

# ---------------------------------------------------------------- one mode
run_mode() {
  local MODE=$1 MW MH
  if [[ $MODE == 1080p ]]; then MW=1920 MH=1080; else MW=1280 MH=720; fi
  local MD=$WORK/$MODE
  mkdir -p "$MD"
  mapfile -t RUNGS < <(ladder_of "$MODE")
  local NR=${#RUNGS[@]}

  # ------------------------------------------------------------ input
  IN=$MD/in.flv
  log "[$MODE] generating ${BENCH_SECONDS} s of ${MW}x${MH}@30 H.264+AAC into $IN"
  ladder_input "$IN" "$MW" "$MH" "$BENCH_SECONDS"
  MEDIA_S=$(ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 "$IN")
  log "[$MODE] input: $(stat -c %s "$IN") bytes, $MEDIA_S s"

  # ------------------------------------------------------------ sluice: config and start
  local CONF=$MD/sluice.toml r
  {
    cat <<EOF
# Generated by benches/engine_vs_ffmpeg.sh: the $MODE ladder, fed over RTMP.
[server]
http_listen = "127.0.0.1:0"
rtmp_listen = "127.0.0.1:0"
srt_listen = "127.0.0.1:0"
data_dir = "$MD/data"

[api]
public_status = true      # /metrics without a token (the media held, after each round)

[ladders.bench]
segment_seconds = $SEG_S.0
window_seconds = 600
audio_kbps = 128
encoder_preset = "veryfast"
reuse_top_rung = $( ((BENCH_REUSE)) && echo true || echo false )
audio_passthrough = $( ((BENCH_REUSE)) && echo true || echo false )
renditions = [
EOF
    for r in "${RUNGS[@]}"; do
      read -r n w h k <<<"$r"
      echo "  { name = \"$n\", width = $w, height = $h, video_kbps = $k },"
    done
    cat <<EOF
]

[channels.bench]
name = "benchmark"

[channels.bench.ingests.push]
protocol = "rtmp"
stream_key = "bench"

[channels.bench.engines.main]
ladder = "bench"
outputs = ["cmaf", "ts"]

# No slate: it would keep the engine encoding after the push ends, and the CPU window
# closes only when the server is idle again.
[channels.bench.slate]
enabled = false

[distributions.bench]
channel = "bench"
EOF
  } >"$CONF"
  "$BIN" check --config "$CONF" >/dev/null || die "generated config rejected: $CONF"

  local SLOG=$MD/sluice.log
  : >"$SLOG"
  NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$BIN" serve --config "$CONF" 2>"$SLOG" >/dev/null &
  local SPID=$!
  PIDS+=("$SPID")
  local HTTP="" RTMP="" line i
  for ((i = 0; i < 200; i++)); do   # 20 s
    kill -0 "$SPID" 2>/dev/null || { cat "$SLOG" >&2; die "sluice exited at start"; }
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$SLOG" | grep -m1 'sluice serving' || true)
    if [[ -n $line ]]; then
      HTTP=$(grep -o 'http=[0-9.:]*' <<<"$line" | cut -d= -f2)
      RTMP=$(grep -o 'rtmp=[0-9.:]*' <<<"$line" | cut -d= -f2)
      break
    fi
    sleep 0.1
  done
  [[ $HTTP == 127.0.0.1:* && $RTMP == 127.0.0.1:* ]] || { cat "$SLOG" >&2; die "no listen addresses in the log"; }
  for ((i = 0; i < 50; i++)); do
    curl -fsS -o /dev/null "http://$HTTP/healthz" 2>/dev/null && break
    sleep 0.1
  done
  log "[$MODE] sluice pid $SPID, http $HTTP, rtmp $RTMP"

  # ------------------------------------------------------------ playlist poller (first round)
  # One keep-alive curl fetches the playlist POLL_RATE times a second (globbed query, ignored by
  # the server); the reader stamps each complete response and logs new segments.
  local PL_URL="http://$HTTP/live/bench/cmaf/720p/index.m3u8"
  local SEEN=$MD/seen.txt       # "<msn> <epoch>" first sightings; "ENDLIST <epoch>"
  : >"$SEEN"
  local POLL_MAX_S=$((BENCH_SECONDS + 120))
  mkfifo "$MD/poll.fifo"
  timeout "$POLL_MAX_S" curl -sS -N --rate "$POLL_RATE/s" -w '\n@@END %{http_code}\n' \
    "$PL_URL?poll=[1-$((POLL_MAX_S * POLL_RATE))]" >"$MD/poll.fifo" 2>/dev/null &
  local POLL_PID=$!
  PIDS+=("$POLL_PID")
  (
    declare -A seen=()
    cur=() ended=0 end_now=0
    while IFS= read -r line; do
      if [[ $line == "@@END "* ]]; then
        t=$EPOCHREALTIME
        for m in "${cur[@]}"; do
          [[ -n ${seen[$m]:-} ]] && continue
          seen[$m]=1
          echo "$m $t" >>"$SEEN"
        done
        if ((end_now && !ended)); then ended=1; echo "ENDLIST $t" >>"$SEEN"; fi
        cur=() end_now=0
      elif [[ $line =~ ^([0-9]+)\.m4s ]]; then
        cur+=("${BASH_REMATCH[1]}")
      elif [[ $line == "#EXT-X-ENDLIST"* ]]; then
        end_now=1
      fi
    done
  ) <"$MD/poll.fifo" &
  PIDS+=("$!")

  # ------------------------------------------------------------ sluice: idle baseline
  sleep 1
  local ta ka tb kb
  ta=$(now); ka=$(cpu_ticks "$SPID")
  sleep 4
  tb=$(now); kb=$(cpu_ticks "$SPID")
  local IDLE_RATE IDLE_HWM
  IDLE_RATE=$(awk -v k=$((kb - ka)) -v hz="$CLK_TCK" -v dt="$(fsub "$tb" "$ta")" 'BEGIN { printf "%.6f", k / hz / dt }')
  IDLE_HWM=$(vm_hwm_kib "$SPID")
  log "[$MODE] idle: $IDLE_RATE CPU-s/s, VmHWM $((IDLE_HWM / 1024)) MiB"

  # Segments cut while live, after the first: the last one closes only at end of stream.
  local LAST_LIVE=$(( (${MEDIA_S%.*} + SEG_S - 1) / SEG_S - 2 ))
  local S_CPU=() F_CPU=() S_HWM=() S_HELD=() F_RSS=() T0="" SESSION_AT="" LOAD_S="" LOAD_F="" DROPS=0
  local round K0 K1 T1 TQ PUSH_PID PUSH_RC kp tp kq tq quiet first_msn wall cpu

  for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    # -------------------------------------------------------- sluice: one live push
    log "[$MODE] round $round/$BENCH_ROUNDS: pushing live (-re) to rtmp://$RTMP/live/bench"
    [[ -n $LOAD_S ]] || LOAD_S=$(cut -d" " -f1 /proc/loadavg)
    K0=$(cpu_ticks "$SPID")
    TQ=$(now)
    [[ -n $T0 ]] || T0=$TQ
    timeout $((BENCH_SECONDS + 60)) ffmpeg -hide_banner -nostdin -loglevel error -re -i "$IN" -c copy \
      -f flv "rtmp://$RTMP/live/bench" 2>"$MD/push-$round.log" &
    PUSH_PID=$!
    PIDS+=("$PUSH_PID")
    wait "$PUSH_PID" && PUSH_RC=0 || PUSH_RC=$?
    ((PUSH_RC == 0)) || { cat "$MD/push-$round.log" >&2; log "warning: push exited with $PUSH_RC"; }
    if ((round == 1)); then
      # Wait (<= 20 s) for the last live-cut segment of the session.
      for ((i = 0; i < 200; i++)); do
        first_msn=$(awk '$1 != "ENDLIST" { print $1; exit }' "$SEEN")
        [[ -n $first_msn ]] && grep -q "^$((first_msn + LAST_LIVE)) " "$SEEN" && break
        sleep 0.1
      done
    fi
    # Then until the server is idle again (<= 20 s).
    quiet=0
    kp=$(cpu_ticks "$SPID"); tp=$(now)
    for ((i = 0; i < 40 && quiet < 2; i++)); do
      sleep 0.5
      kq=$(cpu_ticks "$SPID"); tq=$(now)
      if awk -v k=$((kq - kp)) -v hz="$CLK_TCK" -v dt="$(fsub "$tq" "$tp")" -v idle="$IDLE_RATE" \
          'BEGIN { exit !(k / hz / dt <= idle + 0.05) }'; then quiet=$((quiet + 1)); else quiet=0; fi
      kp=$kq; tp=$tq
    done
    K1=$(cpu_ticks "$SPID")
    T1=$(now)
    wall=$(fsub "$T1" "$TQ")
    cpu=$(awk -v k=$((K1 - K0)) -v hz="$CLK_TCK" -v dt="$wall" -v idle="$IDLE_RATE" -v media="$MEDIA_S" \
      'BEGIN { printf "%.3f", (k / hz - idle * dt) / media }')
    S_CPU+=("$cpu")
    S_HWM+=("$(vm_hwm_kib "$SPID")")
    # Media the server holds for its playlists: window_seconds (600) is longer than every
    # round together, so every segment produced is still held (parts come on top, a few).
    S_HELD+=("$(curl -fsS "http://$HTTP/metrics" 2>/dev/null \
      | awk '/^sluice_engine_segment_bytes(_total)?(\{| )/ { s += $NF } END { printf "%.0f", s / 1024 }')")
    log "[$MODE] round $round: sluice $cpu CPU-s per media s, VmHWM $((${S_HWM[-1]} / 1024)) MiB, media held $((${S_HELD[-1]} / 1024)) MiB"

    if ((round == 1)); then
      # The final segment (closed at end of stream) may take a moment longer, or never come.
      for ((i = 0; i < 30; i++)); do
        grep -q "^$((first_msn + LAST_LIVE + 1)) " "$SEEN" && break
        sleep 0.1
      done
      stop_pid "$POLL_PID"
      SESSION_LINE=$(sed 's/\x1b\[[0-9;]*m//g' "$SLOG" | grep -m1 'session started' || true)
      if [[ $SESSION_LINE =~ ^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z) ]]; then
        SESSION_AT=$(date -u -d "${BASH_REMATCH[1]}" +%s.%N 2>/dev/null || true)
      fi
      # The first session's renditions, as served (MPEG-TS HLS), for the quality columns.
      for r in "${RUNGS[@]}"; do
        read -r n _ <<<"$r"
        : >"$MD/sluice-$n.ts"
        curl -fsS "http://$HTTP/live/bench/ts/$n/index.m3u8" -o "$MD/sluice-$n.m3u8" 2>/dev/null || continue
        grep -v '^#' "$MD/sluice-$n.m3u8" | while IFS= read -r uri; do
          [[ -n $uri ]] || continue
          curl -fsS "http://$HTTP/live/bench/ts/$n/$uri" >>"$MD/sluice-$n.ts" 2>/dev/null || true
        done
      done
    fi

    # -------------------------------------------------------- ffmpeg: same ladder
    [[ -n $LOAD_F ]] || LOAD_F=$(cut -d' ' -f1 /proc/loadavg)
    log "[$MODE] round $round: ffmpeg ladder, as fast as possible"
    read -r _ usr sys rss < <(ffmpeg_ladder "$MD/ffmpeg-$round.time" "$MD/ffmpeg-$round.log" -f null -)
    F_CPU+=("$(awk -v u="$usr" -v s="$sys" -v media="$MEDIA_S" 'BEGIN { printf "%.3f", (u + s) / media }')")
    F_RSS+=("$rss")
    log "[$MODE] round $round: ffmpeg ${F_CPU[-1]} CPU-s per media s, peak RSS $((rss / 1024)) MiB"
  done
  DROPS=$(sed 's/\x1b\[[0-9;]*m//g' "$SLOG" | grep -c 'frames dropped\|pipeline failed\|ERROR' || true)
  # Where the server's CPU went, by thread name (threads still alive).
  for t in /proc/"$SPID"/task/*; do
    st=$(<"$t/stat") || continue
    rest=${st##*) }
    read -r -a f <<<"$rest"
    printf '%s\t%s\n' "$(<"$t/comm")" $((f[11] + f[12]))
  done 2>/dev/null | awk -F'\t' -v hz="$CLK_TCK" '{ c[$1] += $2; n[$1]++ }
    END { for (k in c) if (c[k] > 0) printf "%8.2f  %s (x%d)\n", c[k] / hz, k, n[k] }' | sort -rn >"$MD/threads.txt" || true
  stop_pid "$SPID"

  # ------------------------------------------------------------ quality
  log "[$MODE] ffmpeg ladder once more, into a file, for the quality columns (untimed)"
  ffmpeg_ladder "$MD/ffmpeg-q.time" "$MD/ffmpeg-q.log" -f matroska "$MD/ffmpeg.mkv" >/dev/null
  : >"$MD/quality.txt"
  local idx=0
  for r in "${RUNGS[@]}"; do
    read -r n w h k <<<"$r"
    log "[$MODE] quality of $n"
    if [[ -s $MD/sluice-$n.ts ]]; then read -r s_ssim s_psnr < <(quality "$MD/sluice-$n.ts" 0 "$w" "$h"); else s_ssim=nan s_psnr=nan; fi
    read -r f_ssim f_psnr < <(quality "$MD/ffmpeg.mkv" "$idx" "$w" "$h")
    echo "$n $s_ssim $f_ssim $s_psnr $f_psnr" >>"$MD/quality.txt"
    idx=$((idx + 1))
  done

  # ------------------------------------------------------------ results
  local names
  names=$(for r in "${RUNGS[@]}"; do read -r n _ <<<"$r"; printf '%s/' "$n"; done)
  names=${names%/}
  local kbps
  kbps=$(for r in "${RUNGS[@]}"; do read -r _ _ _ k <<<"$r"; printf '%s/' "$k"; done)
  kbps=${kbps%/}
  awk -v mode="$MODE" -v names="$names" -v kbps="$kbps" -v w="$MW" -v h="$MH" -v media="$MEDIA_S" -v seg="$SEG_S" \
    -v t0="$T0" -v sess="${SESSION_AT:-}" -v last_live="$LAST_LIVE" -v rounds="$BENCH_ROUNDS" \
    -v s_cpus="${S_CPU[*]}" -v f_cpus="${F_CPU[*]}" -v s_hwms="${S_HWM[*]}" -v s_helds="${S_HELD[*]}" -v f_rsss="${F_RSS[*]}" \
    -v s_idle_hwm="$IDLE_HWM" -v idle="$IDLE_RATE" \
    -v drops="$DROPS" -v threads="$MD/threads.txt" -v qual="$MD/quality.txt" \
    -v date="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -v load_s="$LOAD_S" -v load_f="$LOAD_F" -v reuse="$BENCH_REUSE" \
    -v cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" -v ncpu="$(nproc)" '
function fmt(x) { return sprintf("%.3f", x) }
function median(a, n,   i, j, t, b) {
  for (i = 1; i <= n; i++) b[i] = a[i]
  for (i = 2; i <= n; i++) { t = b[i]; for (j = i - 1; j >= 1 && b[j] > t; j--) b[j + 1] = b[j]; b[j + 1] = t }
  return (n % 2) ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2
}
{                                             # seen.txt: "<msn> <epoch>" | "ENDLIST <epoch>"
  if ($1 == "ENDLIST") next
  if (!(($1 + 0) in first)) { first[$1 + 0] = $2; if (min == "" || $1 + 0 < min) min = $1 + 0 }
}
END {
  ns = split(s_cpus, sc, " "); split(f_cpus, fc, " "); split(s_hwms, sh, " "); split(s_helds, sd, " "); split(f_rsss, fr, " ")
  s_med = median(sc, ns); f_med = median(fc, ns)
  f_rss_max = 0; s_cpus_json = ""; f_cpus_json = ""
  for (i = 1; i <= ns; i++) {
    if (fr[i] + 0 > f_rss_max) f_rss_max = fr[i] + 0
    s_cpus_json = s_cpus_json (i > 1 ? "," : "") sc[i]; f_cpus_json = f_cpus_json (i > 1 ? "," : "") fc[i]
  }
  printf "\nSluice engine vs ffmpeg, %s mode: %s (%s kbps) + AAC 128k, x264 veryfast, %.3f s of %dx%d@30\n", mode, names, kbps, media, w, h
  if (reuse) printf "BENCH_REUSE=1: top rung and audio are the input\x27s on both sides (reuse_top_rung + audio_passthrough; ffmpeg -c:v:0 copy -c:a copy)\n"
  printf "%s, nproc %d, %s; 1-min loadavg %s (first sluice round), %s (first ffmpeg round)\n\n", date, ncpu, cpu_model, load_s, load_f
  printf "%-34s %12s %12s %8s\n", "", "sluice", "ffmpeg", "ratio"
  printf "%-34s %12s %12s %8.2f\n", "CPU s per media s, median", fmt(s_med), fmt(f_med), s_med / f_med
  for (i = 1; i <= ns; i++) printf "%-34s %12s %12s %8.2f\n", "  round " i, sc[i], fc[i], sc[i] / fc[i]
  printf "%-34s %12.0f %12.0f %8.2f\n", "peak RSS, MiB, after the last round", sh[ns] / 1024, f_rss_max / 1024, sh[ns] / f_rss_max
  printf "%-34s %12.0f %12.0f %8.2f\n", "  less the media held for playlists", (sh[ns] - sd[ns]) / 1024, f_rss_max / 1024, (sh[ns] - sd[ns]) / f_rss_max
  for (i = 1; i <= ns; i++) printf "%-34s %12s %12.0f\n", "  after round " i, sprintf("%.0f (%.0f)", sh[i] / 1024, (sh[i] - sd[i]) / 1024), fr[i] / 1024
  printf "(sluice: one server for every round; idle %.3f CPU-s/s subtracted; idle VmHWM %.0f MiB; warnings/errors in its log: %d)\n", idle, s_idle_hwm / 1024, drops
  while ((getline line < threads) > 0) { if (!th++) printf "sluice CPU seconds by thread name (threads alive at the end):\n"; printf "  %s\n", line }

  printf "\nquality against the input scaled with lanczos (first round; SSIM all planes, PSNR average dB)\n"
  printf "%-10s %12s %12s %10s %12s %12s %10s\n", "rendition", "SSIM sluice", "SSIM ffmpeg", "delta", "PSNR sluice", "PSNR ffmpeg", "delta"
  qjson = ""
  while ((getline line < qual) > 0) {
    split(line, q, " ")
    printf "%-10s %12s %12s %10.4f %12s %12s %10.2f\n", q[1], q[2], q[3], q[2] - q[3], q[4], q[5], q[4] - q[5]
    qjson = qjson (qjson == "" ? "" : ",") sprintf("\"%s\":{\"ssim_sluice\":%s,\"ssim_ffmpeg\":%s,\"psnr_sluice\":%s,\"psnr_ffmpeg\":%s}", q[1], (q[2] == "nan" ? "null" : q[2]), (q[3] == "nan" ? "null" : q[3]), (q[4] == "nan" ? "null" : q[4]), (q[5] == "nan" ? "null" : q[5]))
  }

  printf "\n"
  have_sess = (sess != "")
  if (have_sess) printf "server session started at push start + %.3f s\n", sess - t0
  n = 0; printf "%10s %10s %10s %12s %14s\n", "msn", "media end", "seen at", "delay (s)", "vs session"
  for (m = min; min != "" && (m in first); m++) {
    end = (m - min + 1) * seg; if (end > media) end = media
    d = first[m] - (t0 + end)
    live = (m - min <= last_live)
    printf "%10d %10.3f %10.3f %12.3f %14s%s\n", m, end, first[m] - t0, d, have_sess ? fmt(first[m] - (sess + end)) : "-", live ? "" : "  (end of stream)"
    if (live) { n++; dl[n] = d; if (n == 1 || d > dmax) dmax = d }
    else final = d
  }
  fm = last_live + 1 + min
  final_state = (min != "" && (fm in first)) ? "published" : "missing"
  if (n > 0) {
    med = median(dl, n)
    printf "\ningest-to-playlist delay, 720p CMAF, %d live segments of %d s: median %.3f s (%.3f segment), max %.3f s (%.3f segment)\n", n, seg, med, med / seg, dmax, dmax / seg
    if (have_sess) printf "  the same from the server session start: median %.3f s, max %.3f s\n", med - (sess - t0), dmax - (sess - t0)
  } else { med = -1; dmax = -1; print "\nno segments seen in the 720p playlist" }
  if (final_state == "published") printf "final segment (closed at end of stream): delay %.3f s\n", final
  else printf "final segment (media from %d s): not in the playlist within ~3 s after the server went idle\n", (last_live + 1) * seg
  printf "BENCH_JSON {\"bench\":\"engine_vs_ffmpeg\",\"reuse\":%s,\"mode\":\"%s\",\"date\":\"%s\",\"nproc\":%d,\"cpu\":\"%s\",\"rounds\":%d,\"media_s\":%.3f,\"sluice_cpu_per_media_s\":%s,\"ffmpeg_cpu_per_media_s\":%s,\"cpu_ratio\":%.3f,\"sluice_rounds\":[%s],\"ffmpeg_rounds\":[%s],\"sluice_peak_rss_mib\":%.0f,\"sluice_peak_rss_mib_first_round\":%.0f,\"ffmpeg_peak_rss_mib\":%.0f,\"rss_ratio\":%.3f,\"sluice_media_held_mib\":%.0f,\"rss_ratio_less_media_held\":%.3f,\"quality\":{%s},\"delay_segments\":%d,\"delay_median_s\":%.3f,\"delay_max_s\":%.3f,\"final_segment\":\"%s\",\"sluice_log_warnings\":%d}\n", (reuse ? "true" : "false"), mode, date, ncpu, cpu_model, rounds, media, fmt(s_med), fmt(f_med), s_med / f_med, s_cpus_json, f_cpus_json, sh[ns] / 1024, sh[1] / 1024, f_rss_max / 1024, sh[ns] / f_rss_max, sd[ns] / 1024, (sh[ns] - sd[ns]) / f_rss_max, qjson, n, med, dmax, final_state, drops
}' "$SEEN"
}

# ffmpeg_ladder <time-file> <log-file> <output...>: the current mode's ladder from $IN; prints
# "wall user sys maxrss_kib".
ffmpeg_ladder() {
  local tf=$1 lf=$2
  shift 2
  local split="" maps=() rates=() audio=(-c:a aac -b:a 128k -ar 48000 -ac 2) copy=() i=0 o=0 n w h k
  for r in "${RUNGS[@]}"; do
    read -r n w h k <<<"$r"
    if ((BENCH_REUSE && o == 0)); then
      # The top rung is the input's video, copied; the audio too.
      maps+=(-map 0:v)
      copy=(-c:v:0 copy)
      audio=(-c:a copy)
    else
      split+="[s$i]scale=$w:$h:flags=bilinear[v$i];"
      maps+=(-map "[v$i]")
      rates+=("-b:v:$o" "${k}k" "-maxrate:v:$o" "${k}k" "-bufsize:v:$o" "$((k * 6 / 10))k")
      i=$((i + 1))
    fi
    o=$((o + 1))
  done
  local outs=""
  for ((j = 0; j < i; j++)); do outs+="[s$j]"; done
  /usr/bin/time -f "%e %U %S %M" -o "$tf" \
    timeout $((BENCH_SECONDS * 10 + 60)) ffmpeg -hide_banner -nostdin -loglevel error -y -i "$IN" \
    -filter_complex "[0:v]split=$i$outs;${split%;}" \
    "${maps[@]}" -map 0:a \
    "${LADDER_X264[@]}" "${rates[@]}" \
    "${copy[@]}" "${audio[@]}" \
    "$@" 2>"$lf" || { cat "$lf" "$tf" >&2; die "ffmpeg ladder failed"; }
  # /usr/bin/time measures `timeout`, which reaps ffmpeg: %U/%S include ffmpeg's CPU and %M is
  # the largest child's peak RSS, i.e. ffmpeg's. Failure notes would precede the last line.
  tail -n1 "$tf"
}

for MODE in $BENCH_MODES; do run_mode "$MODE"; done
