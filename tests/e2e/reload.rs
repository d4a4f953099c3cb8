//! Configuration reload on SIGHUP while a publisher streams: a distribution's rules
//! change for the very next request, distributions come and go, and a broken file or a
//! change the running server cannot make in place leaves everything as it was.

use std::time::Duration;

use crate::support::*;

const BASE: &str = r#"
[channels.live.ingests.main]
protocol = "rtmp"
stream_key = "reload-key"
[channels.live.engines.copy]
ladder = "passthrough"

[distributions.open]
channel = "live"
"#;

#[test]
fn sighup_applies_distribution_changes_and_keeps_the_rest() {
    let _heavy = heavy();
    let server = Server::start("reload", BASE);
    let file = server.log.parent().unwrap().join("sluice.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    let write = |extra: &str| std::fs::write(&file, format!("{original}{extra}")).unwrap();
    let _publisher = Publisher::start(&server.rtmp_url("reload-key"), 90, "320x180");
    let open = "/live/open/cmaf/source/index.m3u8";
    let open_multivariant = "/live/open/cmaf/index.m3u8";
    let added = "/live/added/cmaf/source/index.m3u8";
    server.wait_segments(open, 2, Duration::from_secs(30));
    assert_eq!(get(&server.url(added)).0, 404);

    // This viewer's addresses denied on `open`, and a new distribution: both apply to
    // the next request after the reload.
    write(
        "ip = { mode = \"deny\", cidrs = [\"127.0.0.0/8\"] }\n\
         [distributions.added]\nchannel = \"live\"\n",
    );
    server.signal("HUP");
    server.wait_log("configuration reloaded", 1, Duration::from_secs(10));
    assert!(
        server
            .log_text()
            .contains("distribution added added, distribution open changed"),
        "{}",
        server.log_text()
    );
    // The IP rule refuses the viewer's entry (a media playlist without a session is
    // refused too, now that the distribution has rules).
    assert_eq!(get(&server.url(open_multivariant)).0, 403);
    assert_eq!(get(&server.url(open)).0, 401);
    let since = newest(&server, added);
    still_advancing(&server, added, since);

    // A broken file: every error logged with its line, nothing changes.
    let bad_line = original.lines().count() + 1;
    write("max_kbps = \"lots\"\n");
    server.signal("HUP");
    server.wait_log(
        "configuration reload refused: the file is invalid",
        1,
        Duration::from_secs(10),
    );
    assert!(
        server.log_text().contains(&format!(
            "line={bad_line} column=12 key=distributions.open.max_kbps"
        )),
        "{}",
        server.log_text()
    );
    assert_eq!(get(&server.url(open_multivariant)).0, 403);
    assert_eq!(get(&server.url(added)).0, 200);

    // Listeners cannot change in place: refused as a whole, so the distribution change
    // in the same file is not applied either.
    std::fs::write(
        &file,
        original.replace(
            "[server]\n",
            "[server]\ntrusted_proxies = [\"10.0.0.1/32\"]\n",
        ) + "max_kbps = 500\n",
    )
    .unwrap();
    server.signal("HUP");
    server.wait_log(
        "configuration reload refused; the running configuration stays",
        1,
        Duration::from_secs(10),
    );
    assert!(
        server
            .log_text()
            .contains("[server] cannot change while the server runs")
    );
    assert_eq!(get(&server.url(added)).0, 200);

    // A channel on a ladder naming a hardware encoder this machine does not have: refused
    // with the reason, nothing started.
    if !std::path::Path::new("/dev/nvidia0").exists() {
        write(
            "[ladders.gpu]\nencoder = \"nvenc\"\nrenditions = [{ name = \"r\", width = 320, height = 180, video_kbps = 300 }]\n\
             [channels.gpu.ingests.main]\nprotocol = \"rtmp\"\nstream_key = \"gpu-key\"\n\
             [channels.gpu.engines.e]\nladder = \"gpu\"\n",
        );
        server.signal("HUP");
        server.wait_log(
            "ladders.gpu: encoder = \"nvenc\", but nvh264enc is not usable here",
            1,
            Duration::from_secs(10),
        );
        assert_eq!(
            get(&server.url(added)).0,
            200,
            "the running configuration stays"
        );
    }

    // Back to the original file, without a signal: the file watcher applies it. `open`
    // serves again, `added` is gone.
    std::fs::write(&file, &original).unwrap();
    server.wait_log("configuration reloaded", 2, Duration::from_secs(10));
    assert!(
        server
            .log_text()
            .contains("configuration reloaded (the configuration file changed)")
    );
    assert_eq!(get(&server.url(added)).0, 404);
    assert_eq!(get(&server.url(open_multivariant)).0, 200);
    let since = newest(&server, open);
    still_advancing(&server, open, since);
    assert!(!server.log_text().contains("panicked"));
}
