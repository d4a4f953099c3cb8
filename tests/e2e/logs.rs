//! Logs written to a file or a pipe: plain text without terminal colour codes (even
//! without `NO_COLOR`), or one JSON object per line with `--log-format json`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn run_until_serving(name: &str, extra: &[&str]) -> String {
    run_until(name, extra, "", &["sluice serving"])
}

/// Runs the server (with `channels` after its `[server]` table) until its log has every
/// one of `lines`.
fn run_until(name: &str, extra: &[&str], channels: &str, lines: &[&str]) -> String {
    let dir = scratch_dir(name);
    let (http, rtmp) = (free_port(), free_port());
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:{http}\"\nrtmp_listen = \"127.0.0.1:{rtmp}\"\n{channels}"
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(extra)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if lines.iter().all(|l| text.contains(l)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    send_signal(child.id(), "TERM");
    let _ = child.wait();
    assert!(lines.iter().all(|l| text.contains(l)), "{text}");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn logs_to_a_file_carry_no_colour_codes_and_json_is_one_object_a_line() {
    let text = run_until_serving("logs-text", &[]);
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a log file:\n{text:?}"
    );
    assert!(text.contains("shutting down"));

    let json = run_until_serving("logs-json", &["--log-format", "json"]);
    let mut lines = 0;
    for line in json.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "{json}");
    assert!(!json.contains('\u{1b}'));
}

/// Every line about a stream names it: the engine's lines (its packaging on GStreamer's
/// threads too) carry the channel and engine in their span, the ingest's the channel and
/// ingest, in both formats.
#[test]
fn stream_log_lines_carry_channel_ingest_and_engine_ids() {
    let config = r#"
[channels.cam.ingests.bars]
protocol = "test-pattern"
[channels.cam.engines.copy]
ladder = "passthrough"
"#;
    let wanted = ["input session", "session started", "test pattern started"];
    let json = run_until("logs-ids-json", &["--log-format", "json"], config, &wanted);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{json}"))
    };
    let engine = find("input session");
    assert_eq!(engine["span"]["channel"], "cam", "{engine}");
    assert_eq!(engine["span"]["engine"], "copy", "{engine}");
    for message in ["session started", "test pattern started"] {
        let ingest = find(message);
        assert_eq!(ingest["fields"]["channel"], "cam", "{ingest}");
        assert_eq!(ingest["fields"]["ingest"], "bars", "{ingest}");
    }

    let text = run_until("logs-ids-text", &[], config, &["input session"]);
    let line = text.lines().find(|l| l.contains("input session")).unwrap();
    assert!(line.contains("engine{channel=cam engine=copy}"), "{line}");
}
