//! Helpers for end-to-end tests: the real `sluice` binary, real ffmpeg
//! publishers, real HTTP, and independent parsers (ffprobe, m3u8-rs, mp4).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use m3u8_rs::{MasterPlaylist, MediaPlaylist, Playlist};

/// Tests that transcode share 2 cores: run them one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

pub fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A command for an external program the suite needs; a missing one fails the test in
/// one clear line (never a skipped check). `scripts/setup-debian.sh --test` installs them.
pub fn tool(program: &str) -> Command {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "required program `{program}` not found on PATH (run scripts/setup-debian.sh --test)"
    );
    Command::new(program)
}

/// A port the kernel calls free now, and that this process has not handed out before:
/// the kernel may offer a port again as soon as its probe socket closes, and two servers
/// (or a server's HTTP and RTMP listeners) must not be given the same one.
fn fresh_port(probe: impl Fn() -> u16) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = probe();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh loopback port in 1000 tries");
}

/// A UDP port free on loopback (for SRT).
pub fn free_udp_port() -> u16 {
    fresh_port(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

pub fn free_port() -> u16 {
    fresh_port(|| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Server {
    child: Child,
    pub http: u16,
    pub rtmp: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts `sluice serve` on `config` (a TOML body without `[server]`), on free loopback ports.
    pub fn start(name: &str, config: &str) -> Server {
        Self::start_with_env(name, config, &[])
    }

    /// [`Server::start`] with extra environment variables for the server process.
    pub fn start_with_env(name: &str, config: &str, env: &[(&str, &str)]) -> Server {
        Self::start_full(name, "", config, env)
    }

    /// [`Server::start`] with more keys in `[server]`.
    pub fn start_with_server_keys(name: &str, server_keys: &str, config: &str) -> Server {
        Self::start_full(name, server_keys, config, &[])
    }

    pub fn start_full(name: &str, server_keys: &str, config: &str, env: &[(&str, &str)]) -> Server {
        Self::start_in(name, None, server_keys, config, env)
    }

    /// [`Server::start`] with `data_dir` there (default: `data` in the scratch folder).
    pub fn start_with_data_dir(name: &str, data_dir: &Path, config: &str) -> Server {
        Self::start_in(name, Some(data_dir), "", config, &[])
    }

    fn start_in(
        name: &str,
        data_dir: Option<&Path>,
        server_keys: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let dir = scratch_dir(name);
        let (http, rtmp) = (free_port(), free_port());
        let data = data_dir.map_or(dir.join("data"), Path::to_path_buf);
        let toml = format!(
            "[server]\nhttp_listen = \"127.0.0.1:{http}\"\nrtmp_listen = \"127.0.0.1:{rtmp}\"\ndata_dir = \"{}\"\n{server_keys}\n\n{config}",
            data.display()
        );
        let path = dir.join("sluice.toml");
        std::fs::write(&path, toml).unwrap();
        Self::spawn_with_env(
            &["serve", "--config", path.to_str().unwrap()],
            http,
            rtmp,
            &dir,
            env,
        )
    }

    pub fn spawn(args: &[&str], http: u16, rtmp: u16, dir: &Path) -> Server {
        Self::spawn_with_env(args, http, rtmp, dir, &[])
    }

    fn spawn_with_env(
        args: &[&str],
        http: u16,
        rtmp: u16,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Server {
        let log = dir.join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run sluice");
        let server = Server {
            child,
            http,
            rtmp,
            log,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if get(&self.url("/healthz")).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server did not become healthy; log:\n{}", self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn rtmp_url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.rtmp)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, ...) to the server process.
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `n` lines containing `needle` (panics after `timeout`,
    /// with the log); returns how long that took.
    pub fn wait_log(&self, needle: &str, n: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        while self.log_text().matches(needle).count() < n {
            assert!(
                started.elapsed() < timeout,
                "no {n} log lines with {needle:?} in {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    }

    /// Polls `path` until `ok` accepts the body or `timeout` passes.
    pub fn wait_for(&self, path: &str, timeout: Duration, ok: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, _, body) = get(&self.url(path));
            if status == 200 && ok(&body) {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {path} (last status {status}); server log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until a media playlist lists at least `n` segments; returns it.
    pub fn wait_segments(&self, path: &str, n: usize, timeout: Duration) -> MediaPlaylist {
        let body = self.wait_for(path, timeout, |b| media_playlist(b).segments.len() >= n);
        media_playlist(&body)
    }
}

/// `kill -<name> <pid>` through the shell's builtin (no extra package needed).
pub fn send_signal(pid: u32, name: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -{name} {pid}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {pid}");
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET with a 10 s timeout: (status, headers as lowercase name/value pairs, body).
pub fn get(url: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return (0, vec![], vec![]),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            (
                n.to_ascii_lowercase(),
                resp.header(&n).unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut body = Vec::new();
    let _ = std::io::Read::read_to_end(&mut resp.into_reader(), &mut body);
    (status, headers, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

pub fn get_ok(url: &str) -> Vec<u8> {
    let (status, _, body) = get(url);
    assert_eq!(status, 200, "GET {url}");
    body
}

pub fn media_playlist(body: &[u8]) -> MediaPlaylist {
    match m3u8_rs::parse_playlist_res(body) {
        Ok(Playlist::MediaPlaylist(p)) => p,
        other => panic!(
            "not a media playlist: {other:?}\n{}",
            String::from_utf8_lossy(body)
        ),
    }
}

pub fn master_playlist(body: &[u8]) -> MasterPlaylist {
    match m3u8_rs::parse_playlist_res(body) {
        Ok(Playlist::MasterPlaylist(p)) => p,
        other => panic!(
            "not a multivariant playlist: {other:?}\n{}",
            String::from_utf8_lossy(body)
        ),
    }
}

/// What a publisher muxes into for `url`: MPEG-TS over SRT, FLV over RTMP.
fn container_for(url: &str) -> &'static str {
    if url.starts_with("srt:") {
        "mpegts"
    } else {
        "flv"
    }
}

/// An ffmpeg RTMP publisher: a 30 fps test picture and a tone, H.264 + AAC in FLV.
pub struct Publisher {
    child: Child,
}

impl Publisher {
    pub fn start(url: &str, seconds: u32, size: &str) -> Publisher {
        Self::ffmpeg(
            url,
            seconds,
            size,
            &["-preset", "ultrafast", "-tune", "zerolatency"],
        )
    }

    /// Runs a publisher: no input, output discarded, errors kept for [`Publisher::wait`].
    fn spawn(mut command: Command) -> Publisher {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {:?}: {e}", command.get_program()));
        Publisher { child }
    }

    /// Audio only (AAC in FLV, no video track).
    pub fn audio_only(url: &str, seconds: u32) -> Publisher {
        Self::tone(url, seconds, 440)
    }

    /// Audio only: a sine of `hz`, AAC-LC 48 kHz stereo in FLV (`rtmp://`) or MPEG-TS
    /// (`srt://`).
    pub fn tone(url: &str, seconds: u32, hz: u32) -> Publisher {
        let mut ffmpeg = tool("ffmpeg");
        ffmpeg
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("sine=frequency={hz}:sample_rate=48000"),
            ])
            .args(["-t", &seconds.to_string()])
            .args(["-c:a", "aac", "-b:a", "96k", "-ar", "48000", "-ac", "2"])
            .args(["-f", container_for(url), url]);
        Self::spawn(ffmpeg)
    }

    /// A second camera: colour bars (not the test picture) at 30 fps with a 880 Hz tone,
    /// H.264 + AAC in FLV (`rtmp://`) or MPEG-TS (`srt://`).
    pub fn camera(url: &str, seconds: u32, size: &str) -> Publisher {
        Self::ffmpeg_with(
            url,
            seconds,
            (&format!("smptebars=size={size}:rate=30"), 880),
            &["-preset", "ultrafast", "-tune", "zerolatency"],
        )
    }

    /// Sends a signal (`STOP` freezes it mid-stream, `CONT` resumes it).
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// An encoder that sends B-frames (composition time offsets in FLV).
    pub fn with_b_frames(url: &str, seconds: u32, size: &str) -> Publisher {
        Self::ffmpeg(
            url,
            seconds,
            size,
            &[
                "-preset",
                "veryfast",
                "-bf",
                "2",
                "-x264-params",
                "b-adapt=0",
            ],
        )
    }

    /// GStreamer's RTMP client (`rtmp2sink`) instead of ffmpeg's.
    pub fn gstreamer(url: &str, seconds: u32) -> Publisher {
        let pipeline = format!(
            "videotestsrc is-live=true num-buffers={} ! video/x-raw,width=320,height=180,framerate=30/1 \
             ! x264enc tune=zerolatency key-int-max=30 ! h264parse ! queue ! flvmux name=m streamable=true \
             ! rtmp2sink location={url} \
             audiotestsrc is-live=true num-buffers={} ! audioconvert ! avenc_aac ! aacparse ! queue ! m.",
            seconds * 30,
            seconds * 47
        );
        let mut gst = tool("gst-launch-1.0");
        gst.arg("-q").args(pipeline.split_whitespace());
        Self::spawn(gst)
    }

    /// ffmpeg over SRT (libsrt): H.264 + AAC in MPEG-TS, to `url` (`srt://...`).
    pub fn srt(url: &str, seconds: u32) -> Publisher {
        let mut ffmpeg = ffmpeg_test_av(seconds, true);
        ffmpeg.args(["-f", "mpegts", url]);
        Self::spawn(ffmpeg)
    }

    /// GStreamer's SRT client (`srtsink`), MPEG-TS from `mpegtsmux`, with a stream id and
    /// an optional passphrase.
    pub fn srt_gstreamer(
        port: u16,
        stream_id: &str,
        passphrase: Option<&str>,
        seconds: u32,
    ) -> Publisher {
        let mut gst = tool("gst-launch-1.0");
        gst.arg("-q");
        let pipeline = format!(
            "videotestsrc is-live=true num-buffers={} ! video/x-raw,width=320,height=180,framerate=30/1 \
             ! x264enc tune=zerolatency key-int-max=30 ! h264parse ! queue ! mpegtsmux name=m alignment=7 \
             ! srtsink uri=srt://127.0.0.1:{port} wait-for-connection=false",
            seconds * 30
        );
        gst.args(pipeline.split_whitespace());
        gst.arg(format!("streamid={stream_id}"));
        if let Some(p) = passphrase {
            gst.arg(format!("passphrase={p}"));
        }
        let audio = format!(
            "audiotestsrc is-live=true num-buffers={} ! audioconvert ! avenc_aac ! aacparse ! queue ! m.",
            seconds * 47
        );
        gst.args(audio.split_whitespace());
        Self::spawn(gst)
    }

    fn ffmpeg(url: &str, seconds: u32, size: &str, x264: &[&str]) -> Publisher {
        let picture = format!("testsrc2=size={size}:rate=30");
        Self::ffmpeg_with(url, seconds, (&picture, 440), x264)
    }

    /// A live publisher of `picture` (a lavfi source) and a tone of `hz`: H.264 (keyframe
    /// a second, `x264` options) + AAC, in the container `url` takes.
    fn ffmpeg_with(
        url: &str,
        seconds: u32,
        (picture, hz): (&str, u32),
        x264: &[&str],
    ) -> Publisher {
        let mut ffmpeg = tool("ffmpeg");
        ffmpeg
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", picture])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("sine=frequency={hz}:sample_rate=48000"),
            ])
            .args(["-t", &seconds.to_string()])
            .args(["-c:v", "libx264"])
            .args(x264)
            .args(["-g", "30", "-pix_fmt", "yuv420p"])
            .args(["-c:a", "aac", "-b:a", "96k", "-ar", "48000", "-ac", "2"])
            .args(["-f", container_for(url), url]);
        Self::spawn(ffmpeg)
    }

    /// Waits for ffmpeg to exit: (success, stderr).
    pub fn wait(mut self, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (status.success(), err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ffmpeg did not exit in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ffmpeg encoding `seconds` of the test picture (320x180, 30 fps, a keyframe a second,
/// x264 ultrafast) and a tone (AAC 48 kHz stereo), in real time when `realtime` (a live
/// encoder); the caller adds the output.
pub fn ffmpeg_test_av(seconds: u32, realtime: bool) -> Command {
    let mut ffmpeg = tool("ffmpeg");
    ffmpeg.args(["-hide_banner", "-loglevel", "error"]);
    if realtime {
        ffmpeg.arg("-re");
    }
    ffmpeg
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast"])
        .args(["-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "96k", "-ar", "48000", "-ac", "2"]);
    ffmpeg
}

/// The newest segment number of the media playlist at `path`.
pub fn newest(server: &Server, path: &str) -> u64 {
    let p = media_playlist(&get_ok(&server.url(path)));
    p.media_sequence + p.segments.len() as u64 - 1
}

/// Asserts that the stream at `path` gains segments after `since` (within 15 s).
pub fn still_advancing(server: &Server, path: &str, since: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while newest(server, path) <= since {
        assert!(
            Instant::now() < deadline,
            "{path} stopped at {since}; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Decodes the newest `n` TS segments of the media playlist at `path` (a `.../index.m3u8`)
/// and asserts each decodes cleanly, with audio when `audio`.
pub fn assert_newest_ts_decode(server: &Server, path: &str, n: usize, audio: bool) {
    let dir = path.trim_end_matches("index.m3u8");
    let playlist = media_playlist(&get_ok(&server.url(path)));
    for seg in playlist.segments.iter().rev().take(n) {
        let p = probe(&get_ok(&server.url(&format!("{dir}{}", seg.uri))), "ts");
        assert!(
            p.decode_errors.is_empty(),
            "{}: {}",
            seg.uri,
            p.decode_errors
        );
        assert!(!audio || p.has_audio, "{}: no audio", seg.uri);
    }
}

/// The nginx binary (Debian's nginx-light puts it in /usr/sbin).
fn nginx_binary() -> &'static str {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("required program `nginx` not found (run scripts/setup-debian.sh --test)")
}

/// Runs nginx in the foreground on `dir/nginx.conf`: `prelude` (`load_module` lines),
/// the main context every test server shares, then `body` (an `http` or `rtmp` block).
fn spawn_nginx(dir: &Path, prelude: &str, body: &str) -> Child {
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "{prelude}user root; worker_processes 1; pid {0}/nginx.pid; error_log {0}/error.log;\nevents {{ worker_connections 1024; }}\n{body}\n",
            dir.display()
        ),
    )
    .unwrap();
    Command::new(nginx_binary())
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stderr(Stdio::null())
        .spawn()
        .expect("run nginx")
}

/// Waits until something accepts TCP connections on loopback `port`.
fn wait_listening(port: u16, what: &str) {
    let up = Instant::now() + Duration::from_secs(10);
    while connect_from("127.0.0.1", port).is_err() {
        assert!(Instant::now() < up, "{what} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What ffprobe sees in a media file.
#[derive(Debug)]
pub struct Probe {
    pub width: u64,
    pub height: u64,
    pub has_audio: bool,
    /// Video frames: (pts seconds, keyframe).
    pub frames: Vec<(f64, bool)>,
    /// Video picture types (I, P, B) in presentation order.
    pub pict_types: String,
    /// What ffmpeg reported while decoding every frame (empty: clean).
    pub decode_errors: String,
}

impl Probe {
    pub fn first_pts(&self) -> f64 {
        self.frames.first().map(|f| f.0).unwrap_or(f64::NAN)
    }
}

/// Decodes `bytes` (an init segment and a media segment concatenated, or a TS segment) with ffprobe.
pub fn probe(bytes: &[u8], ext: &str) -> Probe {
    let mut f = tempfile(ext);
    f.1.write_all(bytes).unwrap();
    drop(f.1);
    let out = tool("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,width,height",
            "-show_entries",
            "frame=media_type,key_frame,pts_time,pict_type",
        ])
        .args(["-of", "json"])
        .arg(&f.0)
        .output()
        .expect("run ffprobe");
    let decode = tool("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&f.0)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    let _ = std::fs::remove_file(&f.0);
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .expect("a video stream");
    let video_frames: Vec<serde_json::Value> = v["frames"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f["media_type"] == "video")
        .collect();
    let pict_types = video_frames
        .iter()
        .map(|f| f["pict_type"].as_str().unwrap_or("?"))
        .collect();
    let frames = video_frames
        .iter()
        .map(|f| {
            (
                f["pts_time"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN),
                f["key_frame"] == 1,
            )
        })
        .collect();
    Probe {
        width: video["width"].as_u64().unwrap_or(0),
        height: video["height"].as_u64().unwrap_or(0),
        has_audio: streams.iter().any(|s| s["codec_type"] == "audio"),
        frames,
        pict_types,
        decode_errors: String::from_utf8_lossy(&decode.stderr).into_owned(),
    }
}

fn tempfile(ext: &str) -> (PathBuf, std::fs::File) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "sluice-e2e-{}-{}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::File::create(&p).unwrap();
    (p, f)
}

/// Media sequence number of each listed segment.
pub fn msns(p: &MediaPlaylist) -> Vec<u64> {
    (0..p.segments.len() as u64)
        .map(|i| p.media_sequence + i)
        .collect()
}

/// A TCP connection to the server's loopback port from `source` (any 127.0.0.0/8
/// address works on loopback), so one machine plays many client addresses. std cannot
/// bind before connecting; tokio's `TcpSocket` can.
pub fn connect_from(source: &str, port: u16) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(source.parse().expect("an address"), 0))?;
        let stream = s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        stream.into_std()
    })
    .and_then(|s| {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    })
}

/// A GET over a connection from `source` with extra headers: (status, lowercase
/// headers, body). For what ureq cannot do: choose the client address.
pub fn raw_get(
    source: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = connect_from(source, port).expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

/// nginx running `docker/nginx-cache.conf` in front of a server on `origin` (the file as
/// shipped, with only the upstream, the listen address and the cache folder changed),
/// with an access log of `<request_uri> <cache status>` lines. Stopped on drop.
pub struct NginxCache {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl NginxCache {
    pub fn start(name: &str, origin: u16) -> NginxCache {
        let dir = scratch_dir(name);
        let port = free_port();
        let site = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docker/nginx-cache.conf"
        ))
        .unwrap()
        .replace("http://sluice:8080", &format!("http://127.0.0.1:{origin}"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("/var/cache/nginx", &dir.join("cache").display().to_string());
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        std::fs::write(dir.join("site.conf"), site).unwrap();
        let child = spawn_nginx(
            &dir,
            "",
            &format!(
                "http {{ log_format status '$request_uri $upstream_cache_status'; access_log {0}/access.log status; include {0}/site.conf; }}",
                dir.display()
            ),
        );
        let cache = NginxCache { port, dir, child };
        wait_listening(port, "nginx");
        cache
    }

    /// (request URI, cache status) of every request so far.
    pub fn access_log(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(u, s)| (u.to_owned(), s.to_owned()))
            .collect()
    }
}

impl Drop for NginxCache {
    /// SIGTERM, so the master takes its workers down with it.
    fn drop(&mut self) {
        send_signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

/// The URI of an LL-HLS playlist's `EXT-X-PRELOAD-HINT` (`<msn>.<part>.m4s`).
pub fn preload_hint(playlist: &[u8]) -> String {
    String::from_utf8_lossy(playlist)
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .expect("a preload hint")
        .trim_end_matches('"')
        .to_owned()
}

/// `uri` (relative, as a playlist names it) resolved against the directory of `base`
/// (an absolute path).
pub fn resolve_uri(base: &str, uri: &str) -> String {
    let mut path: Vec<&str> = base.split('/').collect();
    path.pop();
    for part in uri.split('/') {
        match part {
            ".." => {
                path.pop();
            }
            p => path.push(p),
        }
    }
    path.join("/")
}

/// The blocking-reload query (`_HLS_msn=<msn>&_HLS_part=<part>`) for the part at `uri`.
pub fn blocking_query(part_uri: &str) -> String {
    let (msn, part) = part_uri
        .trim_end_matches(".m4s")
        .split_once('.')
        .expect("<msn>.<part>.m4s");
    format!("_HLS_msn={msn}&_HLS_part={part}")
}

/// nginx with the RTMP module (Debian's libnginx-mod-rtmp) on a loopback port: an RTMP
/// server to publish to and play from (application `live`).
pub struct NginxRtmp {
    child: Child,
}

impl NginxRtmp {
    pub fn start(name: &str, port: u16) -> NginxRtmp {
        NginxRtmp::start_with(name, port, "")
    }

    /// With more directives in `application live` (e.g. `on_publish`).
    pub fn start_with(name: &str, port: u16, directives: &str) -> NginxRtmp {
        let module = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
        assert!(
            Path::new(module).exists(),
            "required nginx RTMP module {module} not found (run scripts/setup-debian.sh --test)"
        );
        let dir = scratch_dir(name);
        let child = spawn_nginx(
            &dir,
            &format!("load_module {module};\n"),
            &format!(
                "rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; {directives} }} }} }}"
            ),
        );
        let nginx = NginxRtmp { child };
        wait_listening(port, "nginx-rtmp");
        nginx
    }
}

impl Drop for NginxRtmp {
    fn drop(&mut self) {
        // TERM: the master stops its workers too (a KILLed master leaves them serving).
        send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control API request with an admin token: (status, body). Error statuses are
/// returned, not panicked on; a failed connection panics.
pub fn admin_request(server: &Server, token: &str, method: &str, path: &str) -> (u16, Vec<u8>) {
    let req = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
        .request(method, &server.url(path))
        .set("Authorization", &format!("Bearer {token}"));
    let resp = match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (status, body)
}
