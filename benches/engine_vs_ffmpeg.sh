#!/usr/bin/env bash
# engine_vs_ffmpeg.sh: what the Sluice engine costs against ffmpeg, and how late its segments are.
#
# One run measures:
#   1. CPU seconds per media second of the Sluice engine transcoding the default ladder
#      (720p/480p/360p at 2500/1200/700 kbps, AAC 128k, x264 veryfast, 2 s segments), against
#      ONE ffmpeg process encoding the same ladder from the same file with the same x264
#      settings; the ratio sluice/ffmpeg; the peak RSS (VmHWM) of both.
#   2. Ingest-to-playlist delay: for every 720p CMAF segment, the wall time it first appears in
#      the media playlist minus the wall time its last media instant was pushed.
#
# Usage:   benches/engine_vs_ffmpeg.sh             (from anywhere; BENCH_SECONDS=30 ... to change)
# Output:  a table on stdout, and as the last line a machine-readable summary:
#          BENCH_JSON {"bench":"engine_vs_ffmpeg",...}
#
# How:
#   * Input: BENCH_SECONDS (default 20, 10..600) of 1280x720@30 testsrc2 + 48 kHz stereo sine,
#     H.264 (x264 veryfast, keyint 60, no scene cuts) + AAC, FLV; generated once per run with
#     ffmpeg into a temp dir.
#   * Sluice: target/release/sluice (built with `cargo build --release -p sluice-server` when
#     missing; BENCH_BUILD=1 always runs cargo; SLUICE_BIN=path uses another binary). A generated
#     config listens on 127.0.0.1 port 0 (the kernel picks free ports, read back from the log) and
#     has one channel: an RTMP ingest and an engine on that ladder with the default config's
#     outputs (cmaf + ts, LL-HLS parts on). The file is pushed live: `ffmpeg -re -i in.flv -c copy
#     -f flv rtmp://...`. Server CPU = utime+stime from /proc/<pid>/stat (ticks: getconf CLK_TCK)
#     from just before the push until the server is idle again after it (engine drained), minus
#     the idle rate measured for 4 s beforehand (the playlist poller runs during both, so its HTTP
#     cost is subtracted too), divided by the media seconds.
#   * ffmpeg: one process, no -re, decodes the file once, split → 3x scale (bilinear, as
#     GStreamer's videoscale) → 3x libx264 (-preset veryfast -tune zerolatency -bf 0
#     -x264-params scenecut=0 -g 240 -force_key_frames expr:gte(t,n_forced*2), CBR with
#     -maxrate = -b:v and -bufsize = 0.6 x -b:v, which is what x264enc's default pass=cbr sets),
#     aac 128k 48 kHz stereo, muxed to `-f null -` (no segment files). CPU and peak RSS from
#     /usr/bin/time -f "%e %U %S %M" (%M = ru_maxrss, the process's VmHWM). As a diagnostic the
#     same command then runs once more paced with -re, like a live input (BENCH_FFMPEG_RE=0
#     skips it): it shows whether pacing alone explains a difference.
#   * Delay: a single curl (keep-alive, --rate 20/s, i.e. every 50 ms) polls
#     /live/bench/cmaf/720p/index.m3u8; a reader stamps each response ($EPOCHREALTIME) and
#     records the first sighting of every `<msn>.m4s`. On a fresh server the session starts at
#     media time 0, so segment n covers [2n, 2n+2) s (n counted from the first msn seen);
#     its media end reaches the server, at the earliest, at push start + min(2(n+1), duration).
#     delay = first seen - that. "Push start" is the instant the ffmpeg push is launched, so
#     ffmpeg's start-up and the RTMP handshake count as delay (conservative); the offset of the
#     server's "session started" log line is printed too, with the delays measured from it
#     (approximate: -re paces by dts, which leads pts by the input's B-frame delay, 67 ms here).
#     Polling every 50 ms adds 0-50 ms. Median and max are over the segments cut while live; the
#     last one (closed only at end of stream) is shown on its own.
#
# Everything listens on and connects to 127.0.0.1 only; every wait is bounded; every process
# started here is stopped on exit (trap EXIT). Needs: bash >= 5, ffmpeg/ffprobe with libx264,
# curl, getconf, GNU time (/usr/bin/time; installed with apt-get when missing and root), the
# GStreamer plugins the server uses, and cargo when the binary must be built.
# BENCH_KEEP=1 keeps the temp dir (logs, playlists, config) for inspection.

set -Eeuo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-20}
SEG_S=2                                   # ladder segment duration (s)
KEYINT_MAX=240                            # = transcode.rs: max(60, ceil(segment_s * 120))
POLL_RATE=20                              # playlist polls per second (50 ms)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}

die() { echo "engine_vs_ffmpeg: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }

[[ $BENCH_SECONDS =~ ^[0-9]+$ ]] && ((BENCH_SECONDS >= 10 && BENCH_SECONDS <= 600)) \
  || die "BENCH_SECONDS must be an integer from 10 to 600 (got '$BENCH_SECONDS')"
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

# ---------------------------------------------------------------- input
IN=$WORK/in.flv
log "generating ${BENCH_SECONDS} s of 1280x720@30 H.264+AAC into $IN"
ffmpeg -hide_banner -nostdin -loglevel error -y \
  -f lavfi -i "testsrc2=size=1280x720:rate=30" \
  -f lavfi -i "sine=frequency=440:sample_rate=48000" \
  -t "$BENCH_SECONDS" -map 0:v -map 1:a \
  -c:v libx264 -preset veryfast -g 60 -keyint_min 60 -sc_threshold 0 -b:v 3000k -pix_fmt yuv420p \
  -c:a aac -b:a 128k -ac 2 -ar 48000 \
  -f flv "$IN"
MEDIA_S=$(ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 "$IN")
log "input: $(stat -c %s "$IN") bytes, $MEDIA_S s"

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

# ---------------------------------------------------------------- sluice: config and start
CONF=$WORK/sluice.toml
cat >"$CONF" <<EOF
# Generated by benches/engine_vs_ffmpeg.sh: the default ladder, fed over RTMP.
[server]
http_listen = "127.0.0.1:0"
rtmp_listen = "127.0.0.1:0"
srt_listen = "127.0.0.1:0"
data_dir = "$WORK/data"

[ladders.bench]
segment_seconds = $SEG_S.0
window_seconds = 600
audio_kbps = 128
encoder_preset = "veryfast"
renditions = [
  { name = "720p", width = 1280, height = 720, video_kbps = 2500 },
  { name = "480p", width = 854,  height = 480, video_kbps = 1200 },
  { name = "360p", width = 640,  height = 360, video_kbps = 700 },
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
"$BIN" check --config "$CONF" >/dev/null || die "generated config rejected: $CONF"

SLOG=$WORK/sluice.log
: >"$SLOG"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$BIN" serve --config "$CONF" 2>"$SLOG" >/dev/null &
SPID=$!
PIDS+=("$SPID")
HTTP="" RTMP=""
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
log "sluice pid $SPID, http $HTTP, rtmp $RTMP"

# ---------------------------------------------------------------- playlist poller
# One keep-alive curl fetches the playlist POLL_RATE times a second (globbed query, ignored by
# the server); the reader stamps each complete response and logs new segments.
PL_URL="http://$HTTP/live/bench/cmaf/720p/index.m3u8"
SEEN=$WORK/seen.txt       # "<msn> <epoch>" first sightings; "ENDLIST <epoch>"
: >"$SEEN"
POLL_MAX_S=$((BENCH_SECONDS + 120))
mkfifo "$WORK/poll.fifo"
timeout "$POLL_MAX_S" curl -sS -N --rate "$POLL_RATE/s" -w '\n@@END %{http_code}\n' \
  "$PL_URL?poll=[1-$((POLL_MAX_S * POLL_RATE))]" >"$WORK/poll.fifo" 2>/dev/null &
PIDS+=("$!")
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
) <"$WORK/poll.fifo" &
PIDS+=("$!")

# ---------------------------------------------------------------- sluice: idle baseline
sleep 1
ta=$(now); ka=$(cpu_ticks "$SPID")
sleep 4
tb=$(now); kb=$(cpu_ticks "$SPID")
IDLE_RATE=$(awk -v k=$((kb - ka)) -v hz="$CLK_TCK" -v dt="$(fsub "$tb" "$ta")" 'BEGIN { printf "%.6f", k / hz / dt }')
IDLE_HWM=$(vm_hwm_kib "$SPID")
log "idle: $IDLE_RATE CPU-s/s, VmHWM $((IDLE_HWM / 1024)) MiB"

# ---------------------------------------------------------------- sluice: live push
LAST_MSN_LIVE=$(( (${MEDIA_S%.*} + SEG_S - 1) / SEG_S - 2 ))   # last segment closed by a following keyframe
log "pushing live (-re) to rtmp://$RTMP/live/bench"
LOAD_SLUICE=$(cut -d" " -f1 /proc/loadavg)
K0=$(cpu_ticks "$SPID")
T0=$(now)
timeout $((BENCH_SECONDS + 60)) ffmpeg -hide_banner -nostdin -loglevel error -re -i "$IN" -c copy \
  -f flv "rtmp://$RTMP/live/bench" 2>"$WORK/push.log" &
PUSH_PID=$!
PIDS+=("$PUSH_PID")
wait "$PUSH_PID" && PUSH_RC=0 || PUSH_RC=$?
T_PUSH_END=$(now)
((PUSH_RC == 0)) || { cat "$WORK/push.log" >&2; log "warning: push exited with $PUSH_RC"; }

# Wait (<= 20 s) for the last live-cut segment, then until the server is idle again (<= 20 s).
for ((i = 0; i < 200; i++)); do
  grep -q "^$LAST_MSN_LIVE " "$SEEN" 2>/dev/null && break
  sleep 0.1
done
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
SLUICE_HWM=$(vm_hwm_kib "$SPID")
# The final segment (closed at end of stream) may take a moment longer, or never come.
for ((i = 0; i < 30; i++)); do
  grep -q "^$((LAST_MSN_LIVE + 1)) " "$SEEN" && break
  sleep 0.1
done
curl -fsS "$PL_URL" -o "$WORK/final_720p.m3u8" 2>/dev/null || true
SESSION_LINE=$(sed 's/\x1b\[[0-9;]*m//g' "$SLOG" | grep -m1 'session started' || true)
SESSION_AT=""
if [[ $SESSION_LINE =~ ^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z) ]]; then
  SESSION_AT=$(date -u -d "${BASH_REMATCH[1]}" +%s.%N 2>/dev/null || true)
fi
DROPS=$(sed 's/\x1b\[[0-9;]*m//g' "$SLOG" | grep -c 'frames dropped\|pipeline failed\|ERROR' || true)
log "push done; server idle again after $(fsub "$T1" "$T0") s"
# Where the server's CPU went, by thread name (threads still alive; the pipeline lives on until
# the next session or shutdown). Includes the idle period, which is ~0.
for t in /proc/"$SPID"/task/*; do
  st=$(<"$t/stat") || continue
  rest=${st##*) }
  read -r -a f <<<"$rest"
  printf '%s\t%s\n' "$(<"$t/comm")" $((f[11] + f[12]))
done 2>/dev/null | awk -F'\t' -v hz="$CLK_TCK" '{ c[$1] += $2; n[$1]++ }
  END { for (k in c) if (c[k] > 0) printf "%8.2f  %s (x%d)\n", c[k] / hz, k, n[k] }' | sort -rn >"$WORK/threads.txt" || true
stop_pid "$SPID"

SLUICE_WALL=$(fsub "$T1" "$T0")
SLUICE_CPU=$(awk -v k=$((K1 - K0)) -v hz="$CLK_TCK" -v dt="$SLUICE_WALL" -v idle="$IDLE_RATE" \
  'BEGIN { printf "%.3f", k / hz - idle * dt }')

# ---------------------------------------------------------------- ffmpeg: same ladder
ffmpeg_ladder() { # time-file log-file [input options...]
  local tf=$1 lf=$2
  shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$tf" \
    timeout $((BENCH_SECONDS * 10 + 60)) ffmpeg -hide_banner -nostdin -loglevel error -y "$@" -i "$IN" \
    -filter_complex "[0:v]split=3[s0][s1][s2];[s0]scale=1280:720:flags=bilinear[v0];[s1]scale=854:480:flags=bilinear[v1];[s2]scale=640:360:flags=bilinear[v2]" \
    -map "[v0]" -map "[v1]" -map "[v2]" -map 0:a \
    -c:v libx264 -preset veryfast -tune zerolatency -bf 0 -x264-params scenecut=0 \
    -g "$KEYINT_MAX" -force_key_frames "expr:gte(t,n_forced*$SEG_S)" \
    -b:v:0 2500k -maxrate:v:0 2500k -bufsize:v:0 1500k \
    -b:v:1 1200k -maxrate:v:1 1200k -bufsize:v:1 720k \
    -b:v:2 700k -maxrate:v:2 700k -bufsize:v:2 420k \
    -c:a aac -b:a 128k -ar 48000 -ac 2 \
    -f null - 2>"$lf" || { cat "$lf" "$tf" >&2; die "ffmpeg ladder failed"; }
  # /usr/bin/time measures `timeout`, which reaps ffmpeg: %U/%S include ffmpeg's CPU and %M is
  # the largest child's peak RSS, i.e. ffmpeg's. Failure notes would precede the last line.
  tail -n1 "$tf"
}
LOAD_FF=$(cut -d' ' -f1 /proc/loadavg)
log "ffmpeg ladder, as fast as possible"
read -r FF_WALL FF_USR FF_SYS FF_MAXRSS < <(ffmpeg_ladder "$WORK/ffmpeg.time" "$WORK/ffmpeg.log")
FFRE_USR=0 FFRE_SYS=0 FFRE_MAXRSS=0 FFRE_WALL=0
if [[ ${BENCH_FFMPEG_RE:-1} == 1 ]]; then
  log "ffmpeg ladder, paced like a live input (-re; diagnostic, BENCH_FFMPEG_RE=0 skips)"
  read -r FFRE_WALL FFRE_USR FFRE_SYS FFRE_MAXRSS < <(ffmpeg_ladder "$WORK/ffmpeg_re.time" "$WORK/ffmpeg_re.log" -re)
fi

# ---------------------------------------------------------------- results
awk -v media="$MEDIA_S" -v seg="$SEG_S" -v t0="$T0" -v sess="${SESSION_AT:-}" -v last_live="$LAST_MSN_LIVE" \
  -v s_cpu="$SLUICE_CPU" -v s_wall="$SLUICE_WALL" -v s_hwm="$SLUICE_HWM" -v s_idle_hwm="$IDLE_HWM" -v idle="$IDLE_RATE" \
  -v f_wall="$FF_WALL" -v f_usr="$FF_USR" -v f_sys="$FF_SYS" -v f_rss="$FF_MAXRSS" \
  -v r_wall="$FFRE_WALL" -v r_usr="$FFRE_USR" -v r_sys="$FFRE_SYS" -v r_rss="$FFRE_MAXRSS" \
  -v drops="$DROPS" -v threads="$WORK/threads.txt" -v date="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -v load_s="$LOAD_SLUICE" -v load_f="$LOAD_FF" \
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
  s_cpu_ms = s_cpu / media; f_cpu = f_usr + f_sys; f_cpu_ms = f_cpu / media
  printf "\nSluice engine vs ffmpeg: 720p/480p/360p (2500/1200/700 kbps) + AAC 128k, x264 veryfast, %.3f s of 1280x720@30\n", media
  printf "%s, nproc %d, %s; 1-min loadavg %s (sluice run), %s (ffmpeg run)\n\n", date, ncpu, cpu_model, load_s, load_f
  printf "%-28s %14s %14s %8s\n", "", "sluice (live)", "ffmpeg", "ratio"
  printf "%-28s %14s %14s\n", "CPU seconds", fmt(s_cpu), fmt(f_cpu)
  printf "%-28s %14s %14s %8.2f\n", "CPU s per media s", fmt(s_cpu_ms), fmt(f_cpu_ms), s_cpu_ms / f_cpu_ms
  printf "%-28s %14.0f %14.0f %8.2f\n", "peak RSS, MiB (VmHWM)", s_hwm / 1024, f_rss / 1024, s_hwm / f_rss
  printf "%-28s %14s %14s\n", "wall seconds", fmt(s_wall), fmt(f_wall)
  printf "(sluice: idle %.3f CPU-s/s subtracted; idle VmHWM %.0f MiB; warnings/errors in its log: %d)\n", idle, s_idle_hwm / 1024, drops
  r_cpu = r_usr + r_sys
  if (r_cpu > 0) printf "(diagnostic: ffmpeg paced with -re: %.3f CPU s per media s, sluice/that %.2f, peak RSS %.0f MiB)\n", r_cpu / media, s_cpu_ms / (r_cpu / media), r_rss / 1024
  while ((getline line < threads) > 0) { if (!th++) printf "sluice CPU seconds by thread name (whole process life):\n"; printf "  %s\n", line }
  printf "\n"
  have_sess = (sess != "")
  if (have_sess) printf "server session started at push start + %.3f s\n", sess - t0

  n = 0; printf "%6s %10s %10s %12s %14s\n", "msn", "media end", "seen at", "delay (s)", "vs session"
  for (m = min; min != "" && (m in first); m++) {
    end = (m - min + 1) * seg; if (end > media) end = media
    d = first[m] - (t0 + end)
    live = (m - min <= last_live)
    printf "%6d %10.3f %10.3f %12.3f %14s%s\n", m, end, first[m] - t0, d, have_sess ? fmt(first[m] - (sess + end)) : "-", live ? "" : "  (end of stream)"
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
  printf "BENCH_JSON {\"bench\":\"engine_vs_ffmpeg\",\"date\":\"%s\",\"nproc\":%d,\"cpu\":\"%s\",\"loadavg_sluice\":%s,\"loadavg_ffmpeg\":%s,\"media_s\":%.3f,\"sluice_cpu_s\":%s,\"ffmpeg_cpu_s\":%s,\"sluice_cpu_per_media_s\":%s,\"ffmpeg_cpu_per_media_s\":%s,\"cpu_ratio\":%.3f,\"ffmpeg_re_cpu_per_media_s\":%s,\"sluice_peak_rss_mib\":%.0f,\"ffmpeg_peak_rss_mib\":%.0f,\"rss_ratio\":%.3f,\"delay_segments\":%d,\"delay_median_s\":%.3f,\"delay_max_s\":%.3f,\"delay_median_seg\":%.3f,\"delay_max_seg\":%.3f,\"session_start_offset_s\":%s,\"final_segment\":\"%s\",\"sluice_log_warnings\":%d}\n", date, ncpu, cpu_model, load_s, load_f, media, fmt(s_cpu), fmt(f_cpu), fmt(s_cpu_ms), fmt(f_cpu_ms), s_cpu_ms / f_cpu_ms, (r_cpu > 0 ? fmt(r_cpu / media) : "null"), s_hwm / 1024, f_rss / 1024, s_hwm / f_rss, n, med, dmax, med / seg, dmax / seg, (have_sess ? fmt(sess - t0) : "null"), final_state, drops
}' "$SEEN"
