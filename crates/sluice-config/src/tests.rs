//! Unit tests: the shipped configs validate, every error class is reported at the
//! right line and column, all errors of a file are reported, garbage never panics.

use std::collections::BTreeMap;

use sluice_core::Id;

use super::*;

/// The whole schema, with keys the server does not enforce yet.
const PLANNED: &str = include_str!("../../../config/sluice.planned.toml");
/// What the server runs today.
const EXAMPLE: &str = include_str!("../../../config/sluice.example.toml");

/// A minimal valid config that tests append to.
const BASE: &str = r#"[channels.c]
[channels.c.ingests.i]
protocol = "test-pattern"
[channels.c.engines.e]
ladder = "passthrough"
"#;

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn ok(src: &str) -> Config {
    Config::from_toml_str_full_schema(src, "t.toml")
        .unwrap_or_else(|e| panic!("expected valid, got:\n{e}"))
}

fn errors(src: &str) -> Vec<ConfigError> {
    match Config::from_toml_str_full_schema(src, "t.toml") {
        Ok(_) => panic!("expected errors, the config is valid:\n{src}"),
        Err(e) => {
            assert_eq!(e.origin, "t.toml");
            assert!(!e.errors.is_empty());
            e.errors
        }
    }
}

/// Line and column of the `|` in `marker`, once `marker` without the `|` is found in
/// `src` (exactly once).
fn at(src: &str, marker: &str) -> (usize, usize) {
    let bar = marker.find('|').expect("marker has a |");
    let needle = marker.replace('|', "");
    let found: Vec<_> = src.match_indices(&needle).collect();
    assert_eq!(found.len(), 1, "marker {marker:?} must occur exactly once");
    let offset = found[0].0 + bar;
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap().chars().count() + 1;
    (line, column)
}

/// Asserts that `src` has exactly these errors, in this order: each at its marker,
/// with a message containing the fragment.
#[track_caller]
fn expect(src: &str, want: &[(&str, &str)]) {
    let got = errors(src);
    let show = got
        .iter()
        .map(|e| format!("{}:{} [{}] {}", e.line, e.column, e.path, e.message))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(got.len(), want.len(), "wrong number of errors:\n{show}");
    for (e, (marker, fragment)) in got.iter().zip(want) {
        assert_eq!(
            (e.line, e.column),
            at(src, marker),
            "{marker:?} in:\n{show}"
        );
        assert!(
            e.message.contains(fragment),
            "{fragment:?} not in {:?}\n{show}",
            e.message
        );
    }
}

// ---------------------------------------------------------------------------------
// The shipped files.

#[test]
fn default_config_validates() {
    let c = Config::default_embedded();
    let demo = &c.channels[&id("demo")];
    assert_eq!(
        demo.ingests[&id("pattern")].protocol,
        IngestProtocol::TestPattern
    );
    assert_eq!(
        demo.ingests[&id("pattern")].test_pattern,
        TestPattern {
            width: 1280,
            height: 720,
            fps: 30
        }
    );
    let main = &demo.engines[&id("main")];
    assert_eq!(main.ladder_ref, LadderRef::Named(id("default")));
    assert_eq!(main.ladder.renditions.len(), 3);
    assert_eq!(main.ladder.part_seconds, 0.5);
    let d = &c.distributions[&id("demo")];
    assert_eq!(d.engines, vec![id("main")]);
    assert_eq!(d.outputs, vec![Output::Cmaf, Output::Ts]);
    assert!(d.enabled && !d.token.required && d.geo.is_none());
    assert_eq!(c.server.srt_listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(c.server.data_dir, std::path::PathBuf::from("data"));
}

#[test]
fn planned_config_validates_with_the_right_values() {
    let c = ok(PLANNED);
    let s = &c.server;
    assert_eq!(s.http_listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(s.https_listen, None);
    assert_eq!(s.rtmp_listen, "0.0.0.0:1935".parse().unwrap());
    assert_eq!(
        s.trusted_proxies,
        vec!["127.0.0.1/32".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(
        s.geoip_database.as_deref(),
        Some(std::path::Path::new("assets/geo/country.mmdb"))
    );
    assert_eq!(c.api.admin_tokens, vec!["change-me".to_owned()]);
    assert!(c.server.metrics, "metrics are on unless turned off");

    let standard = &c.ladders[&id("standard")];
    assert_eq!(standard.renditions.len(), 4);
    assert_eq!(
        standard.renditions[2],
        Rendition {
            name: id("480p"),
            width: 854,
            height: 480,
            video_kbps: 1500
        }
    );
    assert_eq!(
        (
            standard.segment_seconds,
            standard.part_seconds,
            standard.window_seconds
        ),
        (2.0, 0.5, 60.0)
    );
    assert_eq!(standard.encoder_preset, "veryfast");

    let fin = &c.channels[&id("final")];
    assert_eq!(fin.name, "Cup final");
    let primary = &fin.ingests[&id("primary")];
    assert_eq!(primary.stream_key.as_deref(), Some("final-primary-key"));
    assert_eq!(
        (primary.max_kbps, primary.priority, primary.enabled),
        (12000, 1, true)
    );
    let backup = &fin.ingests[&id("backup")];
    assert_eq!(backup.protocol, IngestProtocol::Srt);
    assert_eq!(backup.passphrase.as_deref(), Some("backup-passphrase"));
    let venue = &fin.ingests[&id("venue")];
    assert_eq!(venue.protocol, IngestProtocol::SrtPull);
    assert_eq!(
        venue.url.as_deref(),
        Some("srt://venue.example.net:9000?streamid=#!::r=final,m=request")
    );
    assert_eq!(fin.engines[&id("spare")].priority, 2);
    assert_eq!(fin.engines[&id("main")].ladder, *standard);
    let pass = &c.channels[&id("lobby")].engines[&id("pass")];
    assert_eq!(
        (&pass.ladder_ref, &pass.ladder),
        (&LadderRef::Passthrough, &Ladder::passthrough())
    );

    let eu = &c.distributions[&id("reseller-eu")];
    assert_eq!(eu.channel, id("final"));
    assert_eq!(eu.engines, vec![id("main"), id("spare")]);
    assert_eq!(eu.target_latency_seconds, 3.0);
    assert_eq!(
        eu.allowed_origins,
        vec!["https://eu.example.com".to_owned()]
    );
    let geo = eu.geo.as_ref().unwrap();
    assert_eq!(
        (geo.mode, geo.countries.len(), geo.countries[4].as_str()),
        (RuleMode::Allow, 5, "NL")
    );
    let ip = eu.ip.as_ref().unwrap();
    assert_eq!(
        (ip.mode, ip.cidrs[0].to_string()),
        (RuleMode::Deny, "203.0.113.0/24".to_owned())
    );
    assert!(eu.token.required);
    assert_eq!(
        eu.token.keys,
        vec![TokenKey {
            id: "eu-1".into(),
            algorithm: TokenAlgorithm::HS256,
            secret: Some("a-long-random-secret-for-eu".into()),
            public_key_pem: None,
        }]
    );
    assert_eq!(eu.overrides.len(), 2);
    assert_eq!(eu.overrides[0].device_type, Some(DeviceType::Mobile));
    assert_eq!(
        eu.overrides[0].targets,
        vec![OverrideTarget {
            distribution: id("reseller-eu-mobile"),
            weight: 100
        }]
    );
    assert_eq!(eu.overrides[1].device_type, Some(DeviceType::Desktop));
    assert_eq!(eu.overrides[1].sdk_type, None);
    assert_eq!(
        eu.overrides[1].targets,
        vec![
            OverrideTarget {
                distribution: id("reseller-eu"),
                weight: 80
            },
            OverrideTarget {
                distribution: id("reseller-eu-lowlatency"),
                weight: 20
            },
        ]
    );
    let mobile = &c.distributions[&id("reseller-eu-mobile")];
    assert_eq!(
        (mobile.max_kbps, &mobile.outputs[..]),
        (3000, &[Output::Cmaf][..])
    );
    assert_eq!(mobile.token, TokenConfig::default());
    assert_eq!(
        c.distributions[&id("reseller-us")].engines,
        vec![id("spare"), id("main")]
    );
    assert_eq!(c.distributions.len(), 5);
}

/// Every key of the schema is acted on now: the whole schema (the planned config), the
/// supported example and the embedded default all pass `check`. A camera angle takes its
/// ladder.
#[test]
fn the_whole_schema_passes() {
    let c = Config::from_toml_str(EXAMPLE, "example.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.channels.len(), 2);
    Config::from_toml_str(DEFAULT_CONFIG_TOML, "default.toml").unwrap();
    let planned = Config::from_toml_str(PLANNED, "planned.toml").unwrap_or_else(|e| panic!("{e}"));
    let cam = &planned.channels[&id("final")].sources[&id("tactical-cam")];
    assert_eq!(cam.kind, SourceKind::Video);
    assert_eq!(cam.name, "Tactical camera");
    let ladder = cam.ladder.as_ref().expect("the angle's ladder");
    assert_eq!(ladder, &planned.ladders[&id("standard")]);
}

/// Every distribution rule is enforced (viewer tokens, geo and IP rules, allowed origins,
/// overrides, the latency target), ingest bitrate caps and recording, so they pass; a
/// recording format the engine does not produce, or a rotation out of range, is an error
/// at its value.
#[test]
fn enforced_rules_and_recording_pass() {
    let src = format!(
        "{BASE}[distributions.d]\nchannel = \"c\"\ngeo = {{ mode = \"allow\", countries = [\"DE\"] }}\nip = {{ mode = \"deny\", cidrs = [\"203.0.113.0/24\"] }}\nallowed_origins = [\"https://eu.example.com\"]\ntarget_latency_seconds = 2.5\n[distributions.d.token]\nrequired = true\nkeys = [{{ id = \"k\", algorithm = \"HS256\", secret = \"0123456789abcdef0123\" }}]\n[[distributions.d.overrides]]\ndevice_type = \"mobile\"\ntargets = [{{ distribution = \"d\", weight = 1 }}]\n"
    );
    ok(&src);
    let capped = src.replace(
        "protocol = \"test-pattern\"",
        "protocol = \"test-pattern\"\nmax_kbps = 5000",
    );
    ok(&capped);
    let recorded = src.replace(
        "ladder = \"passthrough\"",
        "ladder = \"passthrough\"\nrecord = { enabled = true }",
    );
    let c = Config::from_toml_str(&recorded, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let r = c.channels[&id("c")].engines[&id("e")].record.unwrap();
    assert!(r.enabled);
    assert_eq!((r.format, r.rotate_minutes), (crate::Output::Cmaf, 60));
    let bad = src.replace(
        "ladder = \"passthrough\"",
        "ladder = \"passthrough\"\noutputs = [\"cmaf\"]\nrecord = { format = \"ts\", rotate_minutes = 0 }",
    );
    expect(
        &bad,
        &[
            ("format = |\"ts\"", "not one of this engine's outputs"),
            ("rotate_minutes = |0", "rotate_minutes"),
        ],
    );
}

#[test]
fn load_reads_files_and_reports_read_errors_at_0_0() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    assert!(Config::load(&root.join("sluice.example.toml")).is_ok());
    let e = Config::load(&root.join("does-not-exist.toml")).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!((e.errors[0].line, e.errors[0].column), (0, 0));
    assert!(e.origin.ends_with("does-not-exist.toml"));
    assert!(
        e.to_string()
            .contains("does-not-exist.toml:0:0: cannot read")
    );
}

#[test]
fn defaults_are_filled_in() {
    let c = ok(BASE);
    assert_eq!(c.server.http_listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.server.trusted_proxies, vec![]);
    assert_eq!(c.api.admin_tokens, Vec::<String>::new());
    let ch = &c.channels[&id("c")];
    assert_eq!(ch.name, "c");
    let i = &ch.ingests[&id("i")];
    assert_eq!(
        (i.priority, i.max_kbps, i.enabled, i.allow_cidrs.len()),
        (1, 0, true, 0)
    );
    let e = &ch.engines[&id("e")];
    assert_eq!(
        (e.priority, &e.outputs[..]),
        (1, &[Output::Cmaf, Output::Ts][..])
    );

    let src = format!(
        "{BASE}[channels.c.engines.b]\nladder = \"l\"\noutputs = [\"cmaf\"]\npriority = 0\n\
         [channels.c.engines.a]\nladder = \"passthrough\"\noutputs = [\"cmaf\"]\n\
         [ladders.l]\nrenditions = [{{ name = \"x\", width = 640, height = 360, video_kbps = 800 }}]\n\
         [distributions.d]\nchannel = \"c\"\n"
    );
    let c = ok(&src);
    let l = &c.ladders[&id("l")];
    assert_eq!(
        (
            l.segment_seconds,
            l.part_seconds,
            l.window_seconds,
            l.audio_kbps
        ),
        (2.0, 0.5, 60.0, 128)
    );
    assert_eq!(l.encoder_preset, "veryfast");
    assert!(l.audio_passthrough, "audio in the ladder's format is kept");
    assert_eq!(
        l.encoder,
        VideoEncoder::Auto,
        "the GPU's encoder when usable"
    );
    assert!(!l.reuse_top_rung, "every rung encoded unless asked");
    let d = &c.distributions[&id("d")];
    // All the channel's engines, by priority then id.
    assert_eq!(d.engines, vec![id("b"), id("a"), id("e")]);
    assert_eq!(d.outputs, vec![Output::Cmaf, Output::Ts]);
    assert_eq!(
        (d.enabled, d.max_kbps, d.target_latency_seconds),
        (true, 0, 0.0)
    );
    assert!(
        d.geo.is_none() && d.ip.is_none() && d.allowed_origins.is_empty() && d.overrides.is_empty()
    );
    assert_eq!(
        d.token,
        TokenConfig {
            required: false,
            keys: vec![],
            issuer: None,
        }
    );

    // Default outputs are those the chosen engines produce.
    let c = ok(&format!(
        "{src}[distributions.only-cmaf]\nchannel = \"c\"\nengines = [\"a\", \"b\"]\n"
    ));
    assert_eq!(
        c.distributions[&id("only-cmaf")].outputs,
        vec![Output::Cmaf]
    );
}

#[test]
fn test_pattern_size_and_rate() {
    let src = BASE.replace(
        "\"test-pattern\"",
        "\"test-pattern\"\nwidth = 640\nheight = 360\nfps = 25",
    );
    let c = ok(&src);
    let tp = c.channels[&id("c")].ingests[&id("i")].test_pattern;
    assert_eq!(
        tp,
        TestPattern {
            width: 640,
            height: 360,
            fps: 25
        }
    );
    let src = BASE.replace("\"test-pattern\"", "\"test-pattern\"\nwidth = 641\nfps = 0");
    expect(
        &src,
        &[
            ("width = |641", "even number from 16 to 7680"),
            ("fps = |0", "from 1 to 120"),
        ],
    );
}

// ---------------------------------------------------------------------------------
// Syntax, unknown keys, types.

#[test]
fn syntax_errors_have_positions() {
    let src = "[server]\nhttp_listen = \"0.0.0.0:8080\"\nrtmp_listen = = 3\n";
    let e = errors(src);
    assert_eq!((e[0].line, e[0].column), (3, 15));
    let src = "[server]\nhttp_listen = \"a\"\nhttp_listen = \"b\"\n";
    expect(src, &[("\n|http_listen = \"b\"", "duplicate key")]);
    let e = errors("[channels.c\nx = 1\n");
    assert_eq!(e[0].line, 1);
    // Independent syntax errors are all reported.
    let src = "[server]\ntrusted_proxies = [\"a\" \"b\"]\n[api]\nadmin_tokens = [\"x\"\n";
    let e = errors(src);
    assert_eq!(
        (e[0].line, e[0].column, e[0].message.as_str()),
        (2, 24, "missing comma between array elements, expected `,`")
    );
    assert_eq!(e.len(), 2);
    assert!(
        e[1].line == 4 && e[1].message.contains("unclosed array"),
        "{:?}",
        e[1]
    );
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let src = format!(
        "{BASE}colour = 1\n\
         [server]\nhttp_port = 80\n\
         [api]\ntokens = []\n\
         [ladders.l]\nsegment = 2\nrenditions = [{{ name = \"a\", width = 640, height = 360, video_kbps = 800, fps = 30 }}]\n\
         [channels.c.ingests.j]\nprotocol = \"rtmp\"\nstream_key = \"k\"\nkey = \"k\"\n\
         [distributions.d]\nchannel = \"c\"\ngeo = {{ mode = \"allow\", countries = [\"DE\"], region = \"x\" }}\n\
         token = {{ keys = [{{ id = \"k\", algorithm = \"HS256\", secret = \"0123456789abcdef\", kid = 1 }}] }}\n\
         [[distributions.d.overrides]]\nbrowser = \"x\"\ntargets = [{{ distribution = \"d\", weight = 1, w = 2 }}]\n"
    );
    expect(
        &src,
        &[
            ("|colour = 1", "unknown field `colour`"),
            ("|http_port", "unknown field `http_port`"),
            ("|tokens", "unknown field `tokens`"),
            ("|segment = 2", "unknown field `segment`"),
            ("|fps = 30", "unknown field `fps`"),
            ("\n|key = \"k\"", "unknown field `key`"),
            ("|region", "unknown field `region`"),
            ("|kid", "unknown field `kid`"),
            ("|browser", "unknown field `browser`"),
            ("|w = 2", "unknown field `w`"),
        ],
    );
    let e = errors(&src);
    assert_eq!(e[4].path, "ladders.l.renditions[0].fps");
    assert_eq!(e[9].path, "distributions.d.overrides[0].targets[0].w");
}

#[test]
fn wrong_types_are_all_reported() {
    let src = format!(
        "{BASE}[server]\nhttp_listen = 8080\ntrusted_proxies = \"10.0.0.0/8\"\n\
         [api]\nadmin_tokens = [\"a\", 2]\n\
         [channels.c.engines.f]\nladder = \"passthrough\"\npriority = -1\noutputs = [\"cmaf\", \"webm\"]\n\
         [distributions.d]\nchannel = \"c\"\nenabled = \"yes\"\ngeo = {{ mode = \"block\", countries = [\"DE\"] }}\n\
         [[distributions.d.overrides]]\ndevice_type = \"watch\"\ntargets = [{{ distribution = \"d\", weight = 1 }}]\n"
    );
    expect(
        &src,
        &[
            ("http_listen = |8080", "expected a string"),
            ("trusted_proxies = |\"10.0.0.0/8\"", "expected an array"),
            ("\"a\", |2]", "expected a string"),
            ("priority = |-1", "expected an integer from 0"),
            ("|\"webm\"", "unknown variant `webm`"),
            ("enabled = |\"yes\"", "expected a boolean"),
            ("|\"block\"", "unknown variant `block`"),
            ("|\"watch\"", "unknown variant `watch`"),
        ],
    );
}

#[test]
fn missing_required_keys_point_at_their_table() {
    let src = format!(
        "{BASE}[channels.c.ingests.j]\nstream_key = \"k\"\n\
         [channels.c.engines.f]\noutputs = [\"ts\"]\n\
         [distributions.d]\nengines = [\"e\"]\n\
         [distributions.x]\nchannel = \"c\"\ngeo = {{ countries = [\"DE\"] }}\n"
    );
    expect(
        &src,
        &[
            ("|[channels.c.ingests.j]", "missing field `protocol`"),
            ("|[channels.c.engines.f]", "missing field `ladder`"),
            ("|[distributions.d]", "missing field `channel`"),
            ("geo = |{ countries", "missing field `mode`"),
        ],
    );
}

// ---------------------------------------------------------------------------------
// Ids.

#[test]
fn ids_must_match_the_pattern() {
    let src = format!(
        "{BASE}[ladders.Big]\nrenditions = [\n  {{ name = \"audio\", width = 640, height = 360, video_kbps = 800 }},\n  \
         {{ name = \"hd.1\", width = 640, height = 360, video_kbps = 800 }},\n  \
         {{ name = \"x\", width = 640, height = 360, video_kbps = 800 }},\n  \
         {{ name = \"x\", width = 320, height = 180, video_kbps = 300 }},\n]\n\
         [channels.c.ingests._j]\nprotocol = \"test-pattern\"\n\
         [channels.c.engines.\"e e\"]\nladder = \"passthrough\"\n\
         [channels.UPPER]\nname = \"x\"\n\
         [distributions.\"-d\"]\nchannel = \"c\"\n"
    );
    expect(
        &src,
        &[
            ("[ladders.|Big]", "invalid ladder id \"Big\""),
            ("name = |\"audio\"", "reserved"),
            ("name = |\"hd.1\"", "invalid rendition id"),
            (
                "\n  { name = |\"x\", width = 320",
                "duplicate rendition name \"x\"",
            ),
            ("[channels.c.ingests.|_j]", "invalid ingest id"),
            ("[channels.c.engines.|\"e e\"]", "invalid engine id"),
            ("|[channels.UPPER]", "has no ingests"),
            ("|[channels.UPPER]", "has no engines"),
            ("[channels.|UPPER]", "invalid channel id"),
            ("[distributions.|\"-d\"]", "invalid distribution id"),
        ],
    );
}

// ---------------------------------------------------------------------------------
// References.

#[test]
fn dangling_references_are_reported_at_the_value() {
    let src = format!(
        "{BASE}[channels.c.engines.cmaf-only]\nladder = \"nope\"\noutputs = [\"cmaf\"]\n\
         [channels.c2]\n[channels.c2.ingests.i]\nprotocol = \"test-pattern\"\n\
         [channels.c2.engines.e]\nladder = \"passthrough\"\n\
         [distributions.a]\nchannel = \"missing\"\n\
         [distributions.b]\nchannel = \"c\"\nengines = [\"e\", \"ghost\"]\n\
         [distributions.other]\nchannel = \"c2\"\n\
         [distributions.cmaf]\nchannel = \"c\"\nengines = [\"e\"]\noutputs = [\"cmaf\"]\n\
         [distributions.tsd]\nchannel = \"c\"\nengines = [\"e\"]\noutputs = [\"cmaf\", \"ts\"]\n\
         [[distributions.tsd.overrides]]\ntargets = [{{ distribution = \"nobody\", weight = 50 }}, \
         {{ distribution = \"other\", weight = 50 }}, {{ distribution = \"cmaf\", weight = 0 }}]\n"
    );
    // Make `cmaf` draw on an engine that cannot produce ts, and ask for ts.
    let src = src.replace(
        "engines = [\"e\"]\noutputs = [\"cmaf\"]\n",
        "engines = [\"cmaf-only\"]\noutputs = [\"cmaf\", \"ts\"]\n",
    );
    expect(
        &src,
        &[
            ("ladder = |\"nope\"", "no ladder \"nope\""),
            ("channel = |\"missing\"", "no channel \"missing\""),
            ("\"e\", |\"ghost\"", "channel \"c\" has no engine \"ghost\""),
            (
                "[\"cmaf-only\"]\noutputs = [\"cmaf\", |\"ts\"]",
                "not produced by any of this distribution's engines",
            ),
            ("distribution = |\"nobody\"", "no distribution \"nobody\""),
            (
                "distribution = |\"other\"",
                "serves channel \"c2\", not \"c\"",
            ),
        ],
    );
    let e = errors(&src);
    assert_eq!(e[2].path, "distributions.b.engines[1]");
    assert_eq!(e[1].path, "distributions.a.channel");
}

// ---------------------------------------------------------------------------------
// Overrides.

#[test]
fn override_weights_and_targets() {
    let src = format!(
        "{BASE}[distributions.d]\nchannel = \"c\"\n\
         [[distributions.d.overrides]]\nos_name = \"roku\"\ntargets = [{{ distribution = \"d\", weight = 101 }}, {{ distribution = \"e\", weight = -1 }}]\n\
         [[distributions.d.overrides]]\nsdk_type = \"web\"\n\
         [[distributions.d.overrides]]\nprofile_id = \"p\"\ntargets = [{{ distribution = \"d\", weight = 0 }}, {{ distribution = \"e\", weight = 0 }}]\n\
         [[distributions.d.overrides]]\nos_name = \"apple\"\ntargets = [{{ distribution = \"d\", weight = 10 }}, {{ distribution = \"d\", weight = 10 }}]\n\
         [distributions.e]\nchannel = \"c\"\n"
    );
    expect(
        &src,
        &[
            ("weight = |101", "weight must be from 0 to 100"),
            ("weight = |-1", "weight must be from 0 to 100"),
            ("|[[distributions.d.overrides]]\nsdk_type", "no targets"),
            ("|[[distributions.d.overrides]]\nprofile_id", "weight 0"),
            ("weight = 10 }, { distribution = |\"d\"", "duplicate target"),
        ],
    );
    let e = errors(&src);
    assert_eq!(e[1].path, "distributions.d.overrides[0].targets[1].weight");
    assert_eq!(e[2].path, "distributions.d.overrides[1]");
    let c = ok(&src.replace("weight = 101", "weight = 100").replace(
        "\n[[distributions.d.overrides]]\nsdk_type = \"web\"\n",
        "\n[[distributions.d.overrides]]\nsdk_type = \"web\"\ntargets = [{ distribution = \"e\", weight = 1 }]\n",
    )
    .replace("weight = -1", "weight = 0")
    .replace("{ distribution = \"e\", weight = 0 }]", "{ distribution = \"e\", weight = 3 }]")
    .replace("{ distribution = \"d\", weight = 10 }, { distribution = \"d\", weight = 10 }", "{ distribution = \"d\", weight = 10 }"));
    let o = &c.distributions[&id("d")].overrides;
    assert_eq!(o.len(), 4);
    assert_eq!(
        (o[0].os_name, o[1].sdk_type, o[2].profile_id.as_deref()),
        (Some(OsName::Roku), Some(SdkType::Web), Some("p"))
    );
}

// ---------------------------------------------------------------------------------
// Networks, countries, origins.

#[test]
fn bad_cidrs_everywhere() {
    let src = format!(
        "{BASE}[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\", \"::1\"]\n\
         [channels.c.ingests.j]\nprotocol = \"rtmp\"\nstream_key = \"key-j\"\nallow_cidrs = [\"x\", \"192.0.2.0/24\"]\n\
         [distributions.d]\nchannel = \"c\"\nip = {{ mode = \"allow\", cidrs = [\"2001:db8::/129\", \"1.2.3\"] }}\n"
    );
    expect(
        &src,
        &[
            ("|\"10.0.0.0/33\"", "invalid network"),
            ("[|\"x\", \"192", "invalid network"),
            ("|\"2001:db8::/129\"", "invalid network"),
            ("|\"1.2.3\"", "invalid network"),
        ],
    );
    let c = ok(&src
        .replace("\"10.0.0.0/33\", ", "")
        .replace("\"x\", ", "")
        .replace("\"2001:db8::/129\", \"1.2.3\"", "\"::/0\""));
    // A bare address is a host route.
    assert_eq!(c.server.trusted_proxies[1].to_string(), "::1/128");
}

#[test]
fn bad_country_codes() {
    let src = format!(
        "{BASE}[distributions.d]\nchannel = \"c\"\ngeo = {{ mode = \"deny\", countries = [\"DE\", \"XX\", \"de\", \"GER\", \"XK\"] }}\n\
         [distributions.e]\nchannel = \"c\"\ngeo = {{ mode = \"deny\", countries = [] }}\n"
    );
    expect(
        &src,
        &[
            ("|\"XX\"", "not an assigned ISO 3166-1 alpha-2"),
            ("|\"de\"", "uppercase: write \"DE\""),
            ("|\"GER\"", "two letters"),
            ("countries = |[] }", "must not be empty"),
        ],
    );
    let e = errors(&src);
    assert_eq!(e[1].path, "distributions.d.geo.countries[2]");
}

#[test]
fn allowed_origins_must_be_origins() {
    let src = format!(
        "{BASE}[distributions.d]\nchannel = \"c\"\nallowed_origins = [\"https://ok.example\", \"https://a.example/\", \"a.example\", \"https://A.example\", \"http://b:8080\"]\n"
    );
    expect(
        &src,
        &[
            ("|\"https://a.example/\"", "no path"),
            ("|\"a.example\"", "scheme://host"),
            ("|\"https://A.example\"", "lowercase"),
        ],
    );
}

// ---------------------------------------------------------------------------------
// Server.

#[test]
fn listeners_and_tls() {
    let src = "[server]\nhttp_listen = \"0.0.0.0:8080\"\nrtmp_listen = \"127.0.0.1:8080\"\nhttps_listen = \"[::]:8080\"\nsrt_listen = \"0.0.0.0:8080\"\n";
    expect(
        src,
        &[
            ("rtmp_listen = |\"127", "clashes with http_listen"),
            ("https_listen = |\"[::]", "clashes with http_listen"),
            ("https_listen = |\"[::]", "needs both tls_cert and tls_key"),
        ],
    );
    let src = "[server]\nhttps_listen = \"0.0.0.0:8443\"\ntls_cert = \"c.pem\"\n";
    expect(
        src,
        &[("https_listen = |", "needs both tls_cert and tls_key")],
    );
    let src = "[server]\ntls_key = \"k.pem\"\ndata_dir = \"\"\nhttp_listen = \"localhost:80\"\n";
    expect(
        src,
        &[
            ("tls_key = |", "https_listen is not"),
            ("data_dir = |", "must not be empty"),
            ("http_listen = |", "invalid listen address"),
        ],
    );
    // Port 0 (any free port) never clashes: tests run that way.
    let c = ok(&format!(
        "{BASE}[server]\nhttp_listen = \"127.0.0.1:0\"\nrtmp_listen = \"127.0.0.1:0\"\nsrt_listen = \"127.0.0.1:0\"\n\
         https_listen = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n"
    ));
    assert_eq!(
        c.server.tls_key.as_deref(),
        Some(std::path::Path::new("k.pem"))
    );
}

#[test]
fn admin_tokens_are_checked_without_echo() {
    let src = "[api]\nadmin_tokens = [\"ok-token\", \"has space\", \"\"]\n";
    expect(
        src,
        &[("|\"has space\"", "printable"), ("|\"\"]", "printable")],
    );
    assert!(!errors(src)[0].message.contains("has space"));
}

// ---------------------------------------------------------------------------------
// Ingests.

#[test]
fn ingest_rules() {
    let src = format!(
        "{BASE}[channels.c.ingests.push-no-key]\nprotocol = \"rtmp\"\n\
         [channels.c.ingests.bad-key]\nprotocol = \"rtmp\"\nstream_key = \"a/b\"\n\
         [channels.c.ingests.first]\nprotocol = \"srt\"\nstream_key = \"shared\"\npassphrase = \"short\"\n\
         [channels.c.ingests.pull-no-url]\nprotocol = \"srt-pull\"\n\
         [channels.c.ingests.wrong-scheme]\nprotocol = \"rtmp-pull\"\nurl = \"srt://x:9000\"\n\
         [channels.c.ingests.pull-key]\nprotocol = \"rtmp-pull\"\nurl = \"rtmp://x/live\"\nstream_key = \"pk\"\n\
         [channels.c.ingests.rtmp-pass]\nprotocol = \"rtmp\"\nstream_key = \"rp\"\npassphrase = \"long-enough-pass\"\nwidth = 640\n\
         [channels.c.ingests.tp]\nprotocol = \"test-pattern\"\nstream_key = \"tk\"\nurl = \"rtmp://x\"\n\
         [channels.c.ingests.push-url]\nprotocol = \"srt\"\nstream_key = \"pu\"\nurl = \"srt://x\"\n\
         [channels.d]\n[channels.d.ingests.second]\nprotocol = \"rtmp\"\nstream_key = \"shared\"\n\
         [channels.d.engines.e]\nladder = \"passthrough\"\n"
    );
    expect(
        &src,
        &[
            (
                "|[channels.c.ingests.push-no-key]",
                "rtmp ingests need a stream_key",
            ),
            ("stream_key = |\"a/b\"", "1 to 128 printable ASCII"),
            ("passphrase = |\"short\"", "10 to 79"),
            (
                "|[channels.c.ingests.pull-no-url]",
                "srt-pull ingests need a url",
            ),
            ("url = |\"srt://x:9000\"", "rtmp://HOST"),
            (
                "stream_key = |\"pk\"",
                "rtmp-pull ingests take no stream_key",
            ),
            ("passphrase = |\"long-enough-pass\"", "SRT only"),
            ("width = |640", "test-pattern ingests only"),
            (
                "stream_key = |\"tk\"",
                "test-pattern ingests take no stream_key",
            ),
            ("url = |\"rtmp://x\"\n", "test-pattern ingests take no url"),
            ("url = |\"srt://x\"\n", "srt ingests take no url"),
            (
                "\"rtmp\"\nstream_key = |\"shared\"",
                "already used by channels.c.ingests.first",
            ),
        ],
    );
    let e = errors(&src);
    assert!(
        e.iter()
            .all(|e| !e.message.contains("a/b") && !e.message.contains("short")),
        "no echo of secrets"
    );
    // width's own error points at the value, not the key.
    assert_eq!(e[7].column, "width = ".len() + 1);
}

#[test]
fn stream_key_alphabet() {
    for (key, good) in [
        ("abc-DEF_123.~!", true),
        (&"k".repeat(128)[..], true),
        (&"k".repeat(129)[..], false),
        ("", false),
        ("a b", false),
        ("a?b", false),
        ("a#b", false),
        ("a&b", false),
        ("a=b", false),
        ("é", false),
    ] {
        let src = format!(
            "{BASE}[channels.c.ingests.p]\nprotocol = \"rtmp\"\nstream_key = \"{key}\"\nallow_cidrs = [\"10.0.0.0/8\"]\n"
        );
        assert_eq!(
            Config::from_toml_str_full_schema(&src, "t").is_ok(),
            good,
            "{key:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Ladders, channels, engines.

#[test]
fn ladder_ranges() {
    let src = format!(
        "{BASE}[ladders.a]\nsegment_seconds = 40\npart_seconds = 0.05\nwindow_seconds = 5\naudio_kbps = 8\nencoder_preset = \"placebo\"\n\
         renditions = [\n  {{ name = \"r1\", width = 1281, height = 720, video_kbps = 10 }},\n  \
         {{ name = \"r2\", width = 8000, height = 4322, video_kbps = 100001 }},\n]\n\
         [ladders.b]\nsegment_seconds = 2\npart_seconds = 3\nwindow_seconds = 5\naudio_kbps = 513\nrenditions = []\n\
         [ladders.c]\nsegment_seconds = 4\npart_seconds = 0.05\n\
         [ladders.d]\nsegment_seconds = 30\nrenditions = [{{ name = \"r\", width = 16, height = 16, video_kbps = 50 }}]\n"
    );
    expect(
        &src,
        &[
            ("segment_seconds = |40", "from 0.5 to 30"),
            ("audio_kbps = |8\n", "from 16 to 512"),
            ("encoder_preset = |\"placebo\"", "ultrafast"),
            ("width = |1281", "even number from 16 to 7680"),
            ("video_kbps = |10 }", "from 50 to 100000"),
            ("width = |8000", "even number from 16 to 7680"),
            ("height = |4322", "even number from 16 to 4320"),
            ("video_kbps = |100001", "from 50 to 100000"),
            (
                "part_seconds = |3",
                "0 (no parts) or from 0.1 to segment_seconds (2)",
            ),
            (
                "segment_seconds = 2\npart_seconds = 3\nwindow_seconds = |5",
                "at least 3 × segment_seconds (6)",
            ),
            ("audio_kbps = |513", "from 16 to 512"),
            ("renditions = |[]", "must not be empty"),
            ("|[ladders.c]", "no `renditions`"),
            ("segment_seconds = 4\npart_seconds = |0.05", "0 (no parts)"),
            // Default window 60 < 3 × 30: reported at segment_seconds.
            ("segment_seconds = |30", "at least 3 × segment_seconds (90)"),
        ],
    );
    expect(
        &format!(
            "{BASE}[ladders.passthrough]\nrenditions = [{{ name = \"r\", width = 16, height = 16, video_kbps = 50 }}]\n"
        ),
        &[("[ladders.|passthrough]", "built-in")],
    );
    let c = ok(&format!(
        "{BASE}[ladders.z]\npart_seconds = 0\naudio_passthrough = false\nencoder_preset = \"medium\"\nrenditions = [{{ name = \"r\", width = 16, height = 16, video_kbps = 50 }}]\n"
    ));
    assert_eq!(
        (
            c.ladders[&id("z")].part_seconds,
            c.ladders[&id("z")].encoder_preset.as_str()
        ),
        (0.0, "medium")
    );
    assert!(!c.ladders[&id("z")].audio_passthrough);
    expect(
        &format!(
            "{BASE}[ladders.y]\naudio_passthrough = \"yes\"\nrenditions = [{{ name = \"r\", width = 16, height = 16, video_kbps = 50 }}]\n"
        ),
        &[("audio_passthrough = |\"yes\"", "boolean")],
    );
    for (text, encoder) in [
        ("auto", VideoEncoder::Auto),
        ("x264", VideoEncoder::X264),
        ("nvenc", VideoEncoder::Nvenc),
        ("vaapi", VideoEncoder::Vaapi),
    ] {
        let c = ok(&format!(
            "{BASE}[ladders.z]\nencoder = \"{text}\"\nreuse_top_rung = true\nrenditions = [{{ name = \"r\", width = 16, height = 16, video_kbps = 50 }}]\n"
        ));
        assert_eq!(c.ladders[&id("z")].encoder, encoder);
        assert!(c.ladders[&id("z")].reuse_top_rung);
    }
    expect(
        &format!(
            "{BASE}[ladders.y]\nencoder = \"qsv\"\nreuse_top_rung = 1\nrenditions = [{{ name = \"r\", width = 16, height = 16, video_kbps = 50 }}]\n"
        ),
        &[
            (
                "encoder = |\"qsv\"",
                "expected one of auto, x264, nvenc, vaapi",
            ),
            ("reuse_top_rung = |1", "boolean"),
        ],
    );
}

#[test]
fn channels_need_ingests_and_engines_and_engine_outputs() {
    let src = "[channels.empty]\nname = \"Empty\"\n\
               [channels.x]\n[channels.x.ingests.i]\nprotocol = \"test-pattern\"\n\
               [channels.x.engines.e]\nladder = \"passthrough\"\noutputs = []\n\
               [channels.x.engines.f]\nladder = \"passthrough\"\noutputs = [\"ts\", \"cmaf\", \"ts\"]\n";
    expect(
        src,
        &[
            ("|[channels.empty]", "has no ingests"),
            ("|[channels.empty]", "has no engines"),
            ("outputs = |[]", "must not be empty"),
            ("\"cmaf\", |\"ts\"]", "duplicate output"),
        ],
    );
}

// ---------------------------------------------------------------------------------
// Distributions.

#[test]
fn distribution_lists_latency_and_tokens() {
    let pem = "-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VwAyEA\\n-----END PUBLIC KEY-----\\n";
    let src = format!(
        "{BASE}[distributions.d]\nchannel = \"c\"\nengines = []\noutputs = []\ntarget_latency_seconds = -1\n\
         [distributions.d.token]\nrequired = true\n\
         [distributions.k]\nchannel = \"c\"\nengines = [\"e\", \"e\"]\noutputs = [\"ts\", \"ts\"]\n\
         token = {{ required = true, keys = [\n  \
         {{ id = \"a\", algorithm = \"HS384\", secret = \"too-short\" }},\n  \
         {{ id = \"a\", algorithm = \"HS512\", secret = \"0123456789abcdef\", public_key_pem = \"{pem}\" }},\n  \
         {{ id = \"b\", algorithm = \"RS256\" }},\n  \
         {{ id = \"\", algorithm = \"ES256\", public_key_pem = \"not a pem\" }},\n  \
         {{ id = \"c\", algorithm = \"EdDSA\", public_key_pem = \"{pem}\", secret = \"0123456789abcdef\" }},\n  \
         {{ id = \"d\", algorithm = \"HS256\", secret = \"0123456789abcdef\" }},\n] }}\n"
    );
    let hs512_pem = format!("\"0123456789abcdef\", public_key_pem = |\"{pem}\"");
    let eddsa_secret = format!("\"EdDSA\", public_key_pem = \"{pem}\", secret = |");
    expect(
        &src,
        &[
            ("engines = |[]", "must not be empty"),
            ("outputs = |[]", "must not be empty"),
            ("target_latency_seconds = |-1", "0 or more"),
            ("|[distributions.d.token]", "no keys"),
            ("\"e\", |\"e\"]", "duplicate engine"),
            ("\"ts\", |\"ts\"]", "duplicate output"),
            ("secret = |\"too-short\"", "at least 16"),
            ("{ id = |\"a\", algorithm = \"HS512\"", "duplicate key id"),
            (&hs512_pem, "HS512 keys take `secret`, not `public_key_pem`"),
            ("|{ id = \"b\"", "RS256 key \"b\" needs `public_key_pem`"),
            ("{ id = |\"\"", "must not be empty"),
            ("public_key_pem = |\"not a pem\"", "PEM"),
            (
                &eddsa_secret,
                "EdDSA keys take `public_key_pem`, not `secret`",
            ),
        ],
    );
    let c = ok(&format!(
        "{BASE}[distributions.k]\nchannel = \"c\"\nenabled = false\nmax_kbps = 2500\n\
         token = {{ keys = [{{ id = \"x\", algorithm = \"EdDSA\", public_key_pem = \"{pem}\" }}] }}\n"
    ));
    let k = &c.distributions[&id("k")];
    assert!(!k.enabled && !k.token.required);
    assert_eq!(k.max_kbps, 2500);
    assert_eq!(k.token.keys[0].algorithm, TokenAlgorithm::EdDSA);
    assert!(
        k.token.keys[0]
            .public_key_pem
            .as_deref()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----\n")
    );
}

// ---------------------------------------------------------------------------------
// No cascades, no panics.

#[test]
fn malformed_items_do_not_cause_follow_on_errors() {
    // The only ingest is malformed, the ladder is malformed, a distribution is
    // malformed: each is reported once, and nothing that refers to them is.
    let src = "[ladders.l]\nsegment_seconds = \"2\"\nrenditions = [{ name = \"r\", width = 16, height = 16, video_kbps = 50 }]\n\
               [channels.c]\n[channels.c.ingests.i]\nprotocol = \"rtmpx\"\n\
               [channels.c.engines.e]\nladder = \"l\"\noutputs = [\"cmaf\", \"tsx\"]\n\
               [distributions.gone]\nchannel = 5\n\
               [distributions.d]\nchannel = \"c\"\noutputs = [\"ts\"]\n\
               [[distributions.d.overrides]]\ntargets = [{ distribution = \"gone\", weight = 1 }]\n";
    expect(
        src,
        &[
            ("segment_seconds = |\"2\"", "expected a number"),
            ("|\"rtmpx\"", "unknown variant `rtmpx`"),
            ("|\"tsx\"", "unknown variant `tsx`"),
            ("channel = |5", "expected a string"),
        ],
    );
}

#[test]
fn garbage_never_panics() {
    let mut inputs: Vec<String> = Vec::new();
    let chars: Vec<char> = PLANNED.chars().collect();
    for n in (0..chars.len()).step_by(37) {
        inputs.push(chars[..n].iter().collect());
    }
    // Deterministic mutations: delete, duplicate or replace one character.
    let mut seed = 0x2545_f491_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = [
        '"', '[', ']', '{', '}', '=', ',', '.', '\n', '#', '0', '-', 'x', 'é', '\\', ' ', '\'',
    ];
    for _ in 0..600 {
        let mut c = chars.clone();
        for _ in 0..(1 + next() % 3) {
            let i = (next() as usize) % c.len();
            match next() % 3 {
                0 => {
                    c.remove(i);
                }
                1 => c.insert(i, c[i]),
                _ => c[i] = alphabet[(next() as usize) % alphabet.len()],
            }
        }
        inputs.push(c.into_iter().collect());
    }
    // Line shuffles keep the syntax valid but break the structure.
    let lines: Vec<&str> = PLANNED.lines().collect();
    for k in 1..40 {
        let mut l = lines.clone();
        l.rotate_left(k * 7 % lines.len());
        inputs.push(l.join("\n"));
        let mut l = lines.clone();
        l.retain(|_| next() % 4 != 0);
        inputs.push(l.join("\n"));
    }
    inputs.extend(
        [
            "",
            "\0",
            "=",
            "[[]]",
            "a=[[[[[[[[[[[[",
            "\u{feff}",
            "[x]\n[x]",
        ]
        .map(String::from),
    );
    let mut reported = 0;
    for src in &inputs {
        if let Err(e) = Config::from_toml_str(src, "g.toml") {
            reported += 1;
            for err in &e.errors {
                assert!(err.line >= 1 && err.column >= 1, "{err:?}");
                assert!(err.line <= src.lines().count().max(1) + 1, "{err:?}");
                assert!(!err.message.is_empty());
            }
            let _ = e.to_string();
        }
    }
    assert!(reported > inputs.len() / 2);
}

#[test]
fn display_is_origin_line_column_message() {
    let e = Config::from_toml_str("[server]\nhttp_listen = 1\nnope = 2\n", "my.toml").unwrap_err();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("my.toml:2:15: invalid type"), "{text}");
    assert!(
        lines[1].starts_with("my.toml:3:1: unknown field `nope`"),
        "{text}"
    );
    let _: &dyn std::error::Error = &e;
}

#[test]
fn maps_are_keyed_by_id() {
    let c = ok(PLANNED);
    let ids: Vec<&str> = c.channels.keys().map(Id::as_str).collect();
    assert_eq!(ids, ["final", "lobby"]);
    let _: &BTreeMap<Id, Distribution> = &c.distributions;
    assert_eq!(Output::Ts.as_str(), "ts");
}

#[test]
fn deep_nesting_and_many_errors_stay_bounded() {
    for depth in [100, 10_000, 100_000] {
        let _ = Config::from_toml_str(&format!("a = {}", "[".repeat(depth)), "t");
        let _ = Config::from_toml_str(
            &format!("a = {}1{}", "[".repeat(depth), "]".repeat(depth)),
            "t",
        );
        let _ = Config::from_toml_str(&format!("a = {}", "{ b = ".repeat(depth)), "t");
        let dotted = vec!["k"; depth].join(".");
        let _ = Config::from_toml_str(&format!("{dotted} = 1\n[{dotted}]\n"), "t");
    }
    // Thousands of unknown keys: reported up to the bound, quickly.
    let src: String = (0..5000).map(|i| format!("unknown{i} = {i}\n")).collect();
    let start = std::time::Instant::now();
    let e = Config::from_toml_str(&src, "t").unwrap_err();
    assert!(
        e.errors.len() > 100 && e.errors.len() < 300,
        "{}",
        e.errors.len()
    );
    assert!(e.errors.last().unwrap().message.contains("too many errors"));
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn window_has_an_upper_bound() {
    let src = r#"
[ladders.l]
window_seconds = 4000
renditions = [{ name = "360p", width = 640, height = 360, video_kbps = 800 }]
[channels.c.ingests.i]
protocol = "test-pattern"
[channels.c.engines.e]
ladder = "l"
[distributions.d]
channel = "c"
"#;
    expect(src, &[("window_seconds = |4000", "at most 3600")]);
}

/// The slate is on by default where an engine transcodes, off where all pass through;
/// an image must be a PNG or JPEG that exists; the timeout is in minutes, 1 to a week.
#[test]
fn slate_defaults_and_errors() {
    let c = ok(BASE);
    assert!(!c.channels[&id("c")].slate.enabled, "passthrough only: off");
    assert_eq!(c.channels[&id("c")].slate.timeout_minutes, 30);
    let transcoding = format!(
        "{}[ladders.l]\nrenditions = [{{ name = \"r\", width = 640, height = 360, video_kbps = 800 }}]\n",
        BASE.replace("ladder = \"passthrough\"", "ladder = \"l\"")
    );
    let c = ok(&transcoding);
    assert!(c.channels[&id("c")].slate.enabled, "transcoding: on");
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/slate.png");
    let c = ok(&format!(
        "{BASE}[channels.c.slate]\nenabled = true\nimage = \"{image}\"\ntimeout_minutes = 5\n"
    ));
    let slate = &c.channels[&id("c")].slate;
    assert!(slate.enabled && slate.image.is_some() && slate.timeout_minutes == 5);
    for (bad, says) in [
        ("image = \"slate.gif\"", "must be a .png, .jpg or .jpeg"),
        (
            "image = \"/nonexistent/slate.png\"",
            "is not a readable file",
        ),
        (
            "timeout_minutes = 0",
            "timeout_minutes must be a number from 1 to 10080",
        ),
        ("colour = \"red\"", "unknown field"),
    ] {
        let e = errors(&format!("{BASE}[channels.c.slate]\n{bad}\n"));
        assert!(
            e.iter().any(|e| e.message.contains(says) && e.line == 7),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn override_cycles_are_refused_and_self_targets_are_not() {
    let dist = |name: &str, target: &str| {
        format!(
            "[distributions.{name}]\nchannel = \"c\"\n[[distributions.{name}.overrides]]\ndevice_type = \"mobile\"\ntargets = [{{ distribution = \"{name}\", weight = 50 }}, {{ distribution = \"{target}\", weight = 50 }}]\n"
        )
    };
    // a -> b -> c -> a, each also keeping a share for itself.
    let src = format!(
        "{BASE}{}{}{}",
        dist("a", "b"),
        dist("b", "c"),
        dist("c", "a")
    );
    let e = errors(&src);
    assert_eq!(e.len(), 3, "{e:?}");
    assert_eq!(
        e[0].path,
        "distributions.a.overrides[0].targets[1].distribution"
    );
    assert!(
        e[0].message
            .contains("overrides form a cycle (\"a\" -> \"b\" -> \"c\" -> \"a\")"),
        "{}",
        e[0].message
    );
    // A chain that ends is fine.
    let src = format!(
        "{BASE}{}{}[distributions.c]\nchannel = \"c\"\n",
        dist("a", "b"),
        dist("b", "c")
    );
    Config::from_toml_str(&src, "t.toml").unwrap();
}

#[test]
fn metrics_can_be_turned_off() {
    let c = Config::from_toml_str(&format!("[server]\nmetrics = false\n{BASE}"), "t.toml").unwrap();
    assert!(!c.server.metrics);
    let e = errors(&format!("[server]\nmetrics = \"no\"\n{BASE}"));
    assert_eq!(e[0].path, "server.metrics");
}

/// Channel outputs: pull outputs need a read key of their own (never a stream key), push
/// outputs a URL; keys that do not apply to a protocol are errors at their value.
#[test]
fn channel_outputs_are_checked() {
    let src = format!(
        r#"{BASE}[channels.c.ingests.push]
protocol = "rtmp"
stream_key = "shared-key"
[channels.c.outputs.good]
protocol = "srt-listener"
read_key = "read-key-1"
passphrase = "long-enough-pass"
allow_cidrs = ["10.0.0.0/8"]
[channels.c.outputs.reuses]
protocol = "srt-listener"
read_key = "shared-key"
[channels.c.outputs.no-key]
protocol = "srt-listener"
[channels.c.outputs.bad-key]
protocol = "srt-listener"
read_key = "a b"
[channels.c.outputs.short]
protocol = "srt-listener"
read_key = "read-key-2"
passphrase = "short"
"#
    );
    expect(
        &src,
        &[
            (
                "read_key = |\"shared-key\"",
                "stream and read keys must be unique",
            ),
            (
                "|[channels.c.outputs.no-key]",
                "srt-listener outputs need a read_key",
            ),
            ("read_key = |\"a b\"", "read_key must be 1 to 128"),
            ("passphrase = |\"short\"", "10 to 79"),
        ],
    );
    let c = ok(&format!(
        "{BASE}[channels.c.outputs.o]\nprotocol = \"srt-listener\"\nread_key = \"rk\"\nallow_cidrs = [\"10.0.0.0/8\"]\nenabled = false\n"
    ));
    let o = &c.channels[&id("c")].outputs[&id("o")];
    assert_eq!(o.rendition, None);
    assert_eq!(o.protocol, crate::ChannelOutputProtocol::SrtListener);
    // One rendition of an engine: both keys, an engine of the channel, a rendition of it.
    let c = ok(&format!(
        "{BASE}[channels.c.outputs.o]\nprotocol = \"rtmp-push\"\nurl = \"rtmp://x/app/k\"\nengine = \"e\"\nrendition = \"source\"\n"
    ));
    assert_eq!(
        c.channels[&id("c")].outputs[&id("o")].rendition,
        Some((id("e"), "source".to_owned()))
    );
    let bad = format!(
        "{BASE}[channels.c.outputs.a]\nprotocol = \"rtmp-push\"\nurl = \"rtmp://x/app/k\"\nengine = \"e\"\nrendition = \"720p\"\n[channels.c.outputs.b]\nprotocol = \"rtmp-push\"\nurl = \"rtmp://x/app/k\"\nengine = \"nope\"\nrendition = \"source\"\n[channels.c.outputs.d]\nprotocol = \"srt-caller\"\nurl = \"srt://x:9000\"\nengine = \"e\"\n"
    );
    expect(
        &bad,
        &[
            (
                "rendition = |\"720p\"",
                "no rendition \"720p\" in engine \"e\" (it has source)",
            ),
            ("engine = |\"nope\"", "no engine \"nope\""),
            (
                "url = \"srt://x:9000\"\nengine = |\"e\"",
                "needs a rendition too",
            ),
        ],
    );
    assert_eq!(o.read_key.as_deref(), Some("rk"));
    assert_eq!(o.allow_cidrs, vec!["10.0.0.0/8".parse().unwrap()]);
    assert!(!o.enabled);
}

/// A push output's tracking id goes where each protocol's targets read it: a query on
/// the RTMP stream name, a key of the SRT access-control stream id. Where it has no
/// place, or is not URL-safe, `check` says so at the value.
#[test]
fn tracking_ids_are_appended_the_way_targets_read_them() {
    use crate::tracked_url;
    assert_eq!(
        tracked_url("rtmp://h/app/key", "tracking_id", "eu-1").as_deref(),
        Ok("rtmp://h/app/key?tracking_id=eu-1")
    );
    assert_eq!(
        tracked_url("rtmp://h:1936/app/key?pwd=x", "t", "eu-1").as_deref(),
        Ok("rtmp://h:1936/app/key?pwd=x&t=eu-1")
    );
    assert_eq!(
        tracked_url(
            "srt://h:9000?streamid=publish:k&latency=200",
            "tracking_id",
            "eu-1"
        )
        .as_deref(),
        Ok("srt://h:9000?streamid=%23!::r=k,m=publish,tracking_id=eu-1&latency=200")
    );
    assert_eq!(
        tracked_url(
            "srt://h:9000?passphrase=p&streamid=%23!::r=k,m=publish",
            "tracking_id",
            "eu-1"
        )
        .as_deref(),
        Ok("srt://h:9000?passphrase=p&streamid=%23!::r=k,m=publish,tracking_id=eu-1")
    );
    assert_eq!(
        tracked_url("srt://h:9000?streamid=#!::r=k", "x-run", "7").as_deref(),
        Ok("srt://h:9000?streamid=#!::r=k,x-run=7")
    );
    assert!(tracked_url("srt://h:9000", "tracking_id", "a").is_err());
    assert!(tracked_url("srt://h:9000?latency=20", "tracking_id", "a").is_err());
    assert!(tracked_url("srt://h:9000?streamid=live/k", "tracking_id", "a").is_err());
    let long = format!("srt://h?streamid=publish:{}", "k".repeat(480));
    assert!(tracked_url(&long, "tracking_id", "abcdefgh").is_err());

    let c = ok(&format!(
        "{BASE}[channels.c.outputs.o]\nprotocol = \"srt-caller\"\nurl = \"srt://h:9000?streamid=publish:k\"\ntracking_id = \"run.7\"\n"
    ));
    let o = &c.channels[&id("c")].outputs[&id("o")];
    assert_eq!(
        o.target_url().as_deref(),
        Some("srt://h:9000?streamid=%23!::r=k,m=publish,tracking_id=run.7")
    );
    let c = ok(&format!(
        "{BASE}[channels.c.outputs.o]\nprotocol = \"rtmp-push\"\nurl = \"rtmp://h/app/k\"\n"
    ));
    assert_eq!(
        c.channels[&id("c")].outputs[&id("o")]
            .target_url()
            .as_deref(),
        Some("rtmp://h/app/k")
    );
    let bad = format!(
        "{BASE}[channels.c.outputs.a]\nprotocol = \"srt-caller\"\nurl = \"srt://h:9000?streamid=live/k\"\ntracking_id = \"t1\"\n\
         [channels.c.outputs.b]\nprotocol = \"rtmp-push\"\nurl = \"rtmp://h/app/k\"\ntracking_id = \"a&b\"\n\
         [channels.c.outputs.d]\nprotocol = \"srt-listener\"\nread_key = \"rk\"\ntracking_id = \"t2\"\n\
         [channels.c.outputs.e]\nprotocol = \"srt-caller\"\nurl = \"srt://h:9000?streamid=publish:k\"\ntracking_id = \"t3\"\ntracking_param = \"r\"\n\
         [channels.c.outputs.f]\nprotocol = \"rtmp-push\"\nurl = \"rtmp://h/app/k\"\ntracking_param = \"tid\"\n"
    );
    expect(
        &bad,
        &[
            ("tracking_id = |\"t1\"", "streamid as #!::r=<key>,m=publish"),
            ("tracking_id = |\"a&b\"", "tracking_id must be 1 to 128"),
            (
                "tracking_id = |\"t2\"",
                "srt-listener outputs take no tracking_id",
            ),
            ("tracking_param = |\"r\"", "cannot be r, m or t"),
            (
                "tracking_param = |\"tid\"",
                "tracking_param without a tracking_id",
            ),
        ],
    );
}

/// Audio sources are parsed with an ingest's rules and their own keys; a distribution's `audio_tracks` name audio sources of its channel.
#[test]
fn audio_sources_and_the_tracks_a_distribution_offers() {
    let src = format!(
        "{BASE}[channels.c.sources.fr]\nkind = \"audio\"\nprotocol = \"rtmp\"\nstream_key = \"fr-key\"\nlanguage = \"fr\"\nname = \"Français\"\noffset_ms = -250\n[channels.c.sources.es]\nkind = \"audio\"\nprotocol = \"srt\"\nstream_key = \"es-key\"\npassphrase = \"0123456789ab\"\ndefault = true\n[distributions.d]\nchannel = \"c\"\naudio_tracks = [\"fr\"]\n"
    );
    let cfg = ok(&src);
    Config::from_toml_str(&src, "t.toml").expect("audio sources are served");
    let c = &cfg.channels[&Id::new("c").unwrap()];
    let fr = &c.sources[&Id::new("fr").unwrap()];
    assert_eq!(fr.kind, SourceKind::Audio);
    assert_eq!(fr.name, "Français");
    assert_eq!(fr.language.as_deref(), Some("fr"));
    assert_eq!(fr.offset_ms, -250);
    assert!(!fr.default);
    assert_eq!(fr.ingest.stream_key.as_deref(), Some("fr-key"));
    let es = &c.sources[&Id::new("es").unwrap()];
    assert!(es.default);
    assert_eq!(es.name, "es", "the id by default");
    assert_eq!(es.ingest.protocol, IngestProtocol::Srt);
    let d = &cfg.distributions[&Id::new("d").unwrap()];
    assert_eq!(d.audio_tracks, Some(vec![Id::new("fr").unwrap()]));

    // Errors at their values.
    let bad = src
        .replace("language = \"fr\"", "language = \"fr_FR!\"")
        .replace("offset_ms = -250", "offset_ms = 3500")
        .replace("audio_tracks = [\"fr\"]", "audio_tracks = [\"de\"]")
        .replace("stream_key = \"es-key\"", "stream_key = \"fr-key\"");
    let errs = errors(&bad);
    let msgs: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
    for want in [
        "language must be a language tag",
        "offset_ms must be between -3000 and 3000",
        "channel \"c\" has no source \"de\"",
        "key is already used by",
    ] {
        assert!(msgs.iter().any(|m| m.starts_with(want)), "{want}: {msgs:?}");
    }
    let two_defaults = src.replace("offset_ms = -250", "offset_ms = 0\ndefault = true");
    let errs = errors(&two_defaults);
    assert!(
        errs[0]
            .message
            .starts_with("only one source may be the default"),
        "{errs:?}"
    );
    let pattern = src.replace(
        "protocol = \"rtmp\"\nstream_key = \"fr-key\"",
        "protocol = \"test-pattern\"",
    );
    let errs = errors(&pattern);
    assert!(errs[0].message.starts_with("sources arrive by"), "{errs:?}");
    // A video source over a passthrough-only channel has no ladder to take.
    let video = src.replace(
        "kind = \"audio\"\nprotocol = \"rtmp\"\nstream_key = \"fr-key\"\nlanguage = \"fr\"",
        "kind = \"video\"\nprotocol = \"rtmp\"\nstream_key = \"fr-key\"",
    );
    let errs = errors(&video);
    assert!(
        errs.iter()
            .any(|e| e.message.starts_with("a video source needs a ladder")),
        "{errs:?}"
    );
}

/// A camera angle takes the first transcoding engine's ladder unless it names one; its
/// ladder must cut on the channel's grid (the engines' `segment_seconds`).
#[test]
fn camera_angles_take_a_ladder_on_the_channel_grid() {
    let src = "[ladders.big]\nsegment_seconds = 2\nrenditions = [{ name = \"720p\", width = 1280, height = 720, video_kbps = 3000 }]\n\
        [ladders.small]\nsegment_seconds = 2\nrenditions = [{ name = \"360p\", width = 640, height = 360, video_kbps = 800 }]\n\
        [ladders.odd]\nsegment_seconds = 4\nrenditions = [{ name = \"360p\", width = 640, height = 360, video_kbps = 800 }]\n\
        [channels.c]\n[channels.c.ingests.i]\nprotocol = \"rtmp\"\nstream_key = \"k-main\"\n\
        [channels.c.engines.e]\nladder = \"big\"\n\
        [channels.c.sources.cam]\nkind = \"video\"\nprotocol = \"srt\"\nstream_key = \"k-cam\"\nname = \"Camera 2\"\n\
        [distributions.d]\nchannel = \"c\"\n";
    let cfg = ok(src);
    let cam = &cfg.channels[&id("c")].sources[&id("cam")];
    assert_eq!(cam.ladder.as_ref(), Some(&cfg.ladders[&id("big")]));
    let named = src.replace(
        "name = \"Camera 2\"",
        "name = \"Camera 2\"\nladder = \"small\"",
    );
    let cfg = ok(&named);
    let cam = &cfg.channels[&id("c")].sources[&id("cam")];
    assert_eq!(cam.ladder.as_ref(), Some(&cfg.ladders[&id("small")]));
    let odd = src.replace(
        "name = \"Camera 2\"",
        "name = \"Camera 2\"\nladder = \"odd\"",
    );
    let errs = errors(&odd);
    assert!(
        errs[0].message.starts_with(
            "a camera angle cuts on the channel's segment grid: its ladder's segment_seconds (4) must be the engines' (2)"
        ),
        "{errs:?}"
    );
    let default_on_video = named.replace("ladder = \"small\"", "default = true");
    let errs = errors(&default_on_video);
    assert!(
        errs[0]
            .message
            .starts_with("default applies to audio sources only")
    );
}
