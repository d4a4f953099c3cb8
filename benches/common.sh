# Shared by the benchmark scripts (sourced, not run): a scratch folder, the processes
# started (stopped on exit), free loopback ports, CPU ticks, -c copy publishers.
#   source benches/common.sh; bench_begin <name>
# sets $work; append started PIDs to the array `pids`. BENCH_KEEP=1 keeps $work.

bench_begin() {
  work=$(mktemp -d -t "sluice-$1.XXXXXX")
  pids=()
  trap bench_end EXIT
}

# in_ram: the scratch folder on a tmpfs (/dev/shm) when the machine has one. Peers that
# write their segments to files (nginx-rtmp, ffmpeg) would otherwise pay a disk file
# system's cost (ext4's block allocation and journal under every fragment) that Sluice,
# serving from memory, does not. Call before bench_begin; says which it is on stderr.
# in_ram [MiB]: only when /dev/shm has that much free (default 512).
in_ram() {
  local avail
  avail=$(df --output=avail -m /dev/shm 2>/dev/null | tail -1 | tr -d ' ' || echo 0)
  if [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs && -w /dev/shm && ${avail:-0} -ge ${1:-512} ]]; then
    export TMPDIR=/dev/shm
    echo "bench: scratch files on tmpfs (/dev/shm)" >&2
  else
    echo "bench: no tmpfs at /dev/shm with ${1:-512} MiB free; peers write their files to $(df --output=fstype "${TMPDIR:-/tmp}" | tail -1) under ${TMPDIR:-/tmp}" >&2
  fi
}

bench_end() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$work"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# need_tool <command> [debian-package]: present, or installed with apt-get when running as
# root; otherwise the benchmark stops with one clear line.
need_tool() {
  command -v "$1" >/dev/null && return
  if [[ -n ${2:-} && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get install -y -q "$2" >/dev/null
  else
    echo "bench: $1 not found; install it" >&2
    exit 1
  fi
}

# publish_live <seconds> <rtmp-url>: a live 640x360 test picture at 1.5 Mb/s (a keyframe a
# second) and a tone, pushed by ffmpeg in the background (its PID added to `pids`).
publish_live() {
  ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=640x360:rate=30 \
    -f lavfi -i sine=frequency=440:sample_rate=48000 -t "$1" \
    -c:v libx264 -preset ultrafast -tune zerolatency -b:v 1500k -g 30 -pix_fmt yuv420p \
    -c:a aac -b:a 96k -f flv "$2" &
  pids+=($!)
}

# cpu_ticks <pid>...: utime + stime (clock ticks) of the given processes, summed.
cpu_ticks() {
  local total=0 p f
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] || continue
    f=$(sed 's/^.*) //' "/proc/$p/stat")
    read -r -a a <<<"$f"
    total=$((total + a[11] + a[12]))
  done
  echo "$total"
}

# ladder_input <file> <width> <height> <seconds>: the engine benchmarks' input (testsrc2 at
# 30 fps, x264 veryfast with a keyframe every 2 s, 3000k at 720p and 6000k above, and a
# 48 kHz stereo tone as AAC 128k), FLV. engine_vs_ffmpeg.sh and engine_floor.sh share it.
ladder_input() {
  ffmpeg -hide_banner -nostdin -loglevel error -y \
    -f lavfi -i "testsrc2=size=${2}x${3}:rate=30" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    -t "$4" -map 0:v -map 1:a \
    -c:v libx264 -preset veryfast -g 60 -keyint_min 60 -sc_threshold 0 -b:v $(($3 > 720 ? 6000 : 3000))k -pix_fmt yuv420p \
    -c:a aac -b:a 128k -ac 2 -ar 48000 \
    -f flv "$1"
}

# The x264 settings ffmpeg's ladder uses in the engine benchmarks: the engine's own
# (zerolatency, no B-frames, no scene cuts, keyframes at most 240 apart and forced on the
# 2 s segment grid; 240 = transcode.rs: max(60, ceil(segment_s * 120))). Rates per rung
# come after them.
LADDER_X264=(-c:v libx264 -preset veryfast -tune zerolatency -bf 0 -x264-params scenecut=0
  -g 240 -force_key_frames "expr:gte(t,n_forced*2)")

# copy_input: $work/in.flv, 10 s of 720p30 H.264 at 2.5 Mb/s (a keyframe every 2 s) and
# AAC, encoded once for the -c copy publishers below.
copy_input() {
  ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc2=size=1280x720:rate=30 \
    -f lavfi -i sine=frequency=440:sample_rate=48000 -t 10 -c:v libx264 -preset veryfast \
    -b:v 2500k -g 60 -pix_fmt yuv420p -c:a aac -b:a 128k -ac 2 -f flv "$work/in.flv"
}

# start_publishers <url-prefix> [format [suffix]]: $N ffmpeg publishers looping
# $work/in.flv with -c copy to <prefix><i><suffix> (format: flv by default); their PIDs
# in `publishers` (and `pids`). stop_publishers stops them.
publishers=()
start_publishers() {
  local prefix=$1 format=${2:-flv} suffix=${3:-} i
  for ((i = 0; i < N; i++)); do
    ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$work/in.flv" -c copy \
      -f "$format" "$prefix$i$suffix" </dev/null >/dev/null 2>&1 &
    publishers+=($!)
    pids+=($!)
  done
}
stop_publishers() {
  for p in "${publishers[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${publishers[@]}"; do wait "$p" 2>/dev/null || true; done
  publishers=()
}

# measured_round <pid> <warmup-s> <seconds> <hook> <file>=<rtmp-url>...: publishes each
# file (looped, -re, -c copy) to its URL, waits the warm-up, runs <hook> (a function name,
# or - for none: a check that the server serves what is measured; if it fails, the round
# stops and fails), and prints <pid>'s CPU
# seconds per wall second over <seconds>; then stops the publishers and waits 4 s for
# their sessions to end (so that the next round starts new ones).
measured_round() {
  local pid=$1 warmup=$2 seconds=$3 hook=$4 pair p t0 t1 started=()
  shift 4
  for pair in "$@"; do
    ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "${pair%%=*}" -c copy \
      -f flv "${pair#*=}" </dev/null >/dev/null 2>&1 &
    started+=($!)
  done
  pids+=("${started[@]}")
  sleep "$warmup"
  if [[ $hook != - ]] && ! "$hook"; then
    for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
    return 1
  fi
  t0=$(cpu_ticks "$pid")
  sleep "$seconds"
  t1=$(cpu_ticks "$pid")
  for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${started[@]}"; do wait "$p" 2>/dev/null || true; done
  sleep 4
  python3 -c "print(f'{($t1 - $t0) / $(getconf CLK_TCK) / $seconds:.5f}')"
}
