//! Override rules: which distribution a viewer of another one is really served.
//!
//! A viewer is described by device type, SDK type, OS and profile, taken from the
//! User-Agent (woothee's classifier, with the TV and streaming-device markers it does not
//! know added here) and from query parameters an SDK may state itself (`device_type`,
//! `sdk_type`, `os_name`, `profile_id`, as in INTERFACES.md). The first matching rule
//! wins; its target is picked by weight from a hash of the distribution, the rule and
//! the viewer, so the same viewer always lands on the same target, on every node and
//! after restarts. Overrides resolve one hop: a target's own rules are not applied.

use sha2::{Digest, Sha256};
use sluice_config::{DeviceType, OsName, OverrideRule, SdkType};
use sluice_core::Id;

/// What an override rule can match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerTraits {
    pub device: DeviceType,
    pub sdk: SdkType,
    pub os: OsName,
    pub profile: Option<String>,
}

/// Markers of TVs and streaming devices, which general classifiers call "pc" or
/// "appliance": (needle, OS when it tells).
const TV_MARKERS: &[(&str, Option<OsName>)] = &[
    ("Roku", Some(OsName::Roku)),
    ("AppleTV", Some(OsName::Apple)),
    ("Apple TV", Some(OsName::Apple)),
    ("tvOS", Some(OsName::Apple)),
    ("AFT", Some(OsName::Android)), // Amazon Fire TV models: AFTM, AFTS, AFTKA, ...
    ("Android TV", Some(OsName::Android)),
    ("GoogleTV", Some(OsName::Android)),
    ("CrKey", None), // Chromecast
    ("SMART-TV", None),
    ("SmartTV", None),
    ("Tizen", None),
    ("Web0S", None),
    ("webOS", None),
    ("NetCast", None),
    ("HbbTV", None),
    ("BRAVIA", None),
    ("VIDAA", None),
];

/// Native players' HTTP stacks, for when a native app sends no browser User-Agent.
const NATIVE_MARKERS: &[&str] = &[
    "AppleCoreMedia",
    "AVPlayer",
    "CFNetwork",
    "ExoPlayer",
    "stagefright",
    "Dalvik",
    "okhttp",
    "Lavf",
    "VLC",
    "libmpv",
    "Roku/DVP",
];

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The viewer's traits from its User-Agent, overridden by what the query states.
pub fn viewer_traits(user_agent: Option<&str>, query: Option<&str>) -> ViewerTraits {
    let ua = user_agent.unwrap_or("");
    let parsed = woothee::parser::Parser::new().parse(ua);
    let (category, os_name) = parsed
        .as_ref()
        .map_or(("UNKNOWN", "UNKNOWN"), |r| (r.category, r.os));
    let tv = TV_MARKERS.iter().find(|(m, _)| ua.contains(m));
    let device = if tv.is_some() {
        DeviceType::Tv
    } else {
        match category {
            "pc" => DeviceType::Desktop,
            "smartphone" | "mobilephone" => DeviceType::Mobile,
            "appliance" => DeviceType::Tv,
            _ if ua.contains("iPhone") || ua.contains("iPad") || ua.contains("Android") => {
                DeviceType::Mobile
            }
            _ => DeviceType::Other,
        }
    };
    let os = match tv.and_then(|(_, os)| *os) {
        Some(os) => os,
        None if os_name.starts_with("Windows") || ua.contains("Windows") => OsName::Windows,
        None if os_name == "Android" || ua.contains("Android") => OsName::Android,
        None if matches!(os_name, "iPhone" | "iPad" | "iPod" | "Mac OSX" | "iOS")
            || ["iPhone", "iPad", "Mac OS X", "Macintosh", "Darwin"]
                .iter()
                .any(|m| ua.contains(m)) =>
        {
            OsName::Apple
        }
        None => OsName::Other,
    };
    let native = NATIVE_MARKERS.iter().any(|m| ua.contains(m)) || !ua.starts_with("Mozilla/");
    let mut traits = ViewerTraits {
        device,
        sdk: if native {
            SdkType::Native
        } else {
            SdkType::Web
        },
        os,
        profile: None,
    };
    let stated = |name| query_param(query, name);
    if let Some(d) = stated("device_type").and_then(|v| match v {
        "tv" => Some(DeviceType::Tv),
        "mobile" => Some(DeviceType::Mobile),
        "desktop" => Some(DeviceType::Desktop),
        "other" => Some(DeviceType::Other),
        _ => None,
    }) {
        traits.device = d;
    }
    if let Some(s) = stated("sdk_type").and_then(|v| match v {
        "native" => Some(SdkType::Native),
        "web" => Some(SdkType::Web),
        _ => None,
    }) {
        traits.sdk = s;
    }
    if let Some(o) = stated("os_name").and_then(|v| match v {
        "apple" => Some(OsName::Apple),
        "android" => Some(OsName::Android),
        "windows" => Some(OsName::Windows),
        "roku" => Some(OsName::Roku),
        "other" => Some(OsName::Other),
        _ => None,
    }) {
        traits.os = o;
    }
    traits.profile = stated("profile_id")
        .filter(|p| !p.is_empty() && p.len() <= 128)
        .map(str::to_owned);
    traits
}

/// The `viewer` query parameter, for sticky picks of viewers without a token `sub`.
pub fn viewer_param(query: Option<&str>) -> Option<&str> {
    query_param(query, "viewer").filter(|v| !v.is_empty() && v.len() <= 256)
}

fn matches(rule: &OverrideRule, t: &ViewerTraits) -> bool {
    rule.device_type.is_none_or(|d| d == t.device)
        && rule.sdk_type.is_none_or(|s| s == t.sdk)
        && rule.os_name.is_none_or(|o| o == t.os)
        && rule
            .profile_id
            .as_ref()
            .is_none_or(|p| t.profile.as_ref() == Some(p))
}

/// The distribution a viewer of `dist` is served: a target of the first matching rule,
/// picked by weight and sticky per `viewer`; `None` when no rule matches.
pub fn resolve<'a>(
    dist: &Id,
    rules: &'a [OverrideRule],
    traits: &ViewerTraits,
    viewer: &str,
) -> Option<&'a Id> {
    let (index, rule) = rules.iter().enumerate().find(|(_, r)| matches(r, traits))?;
    let total: u64 = rule.targets.iter().map(|t| t.weight as u64).sum();
    if total == 0 {
        return None;
    }
    let mut h = Sha256::new();
    h.update(dist.as_str().as_bytes());
    h.update([0]);
    h.update(index.to_be_bytes());
    h.update([0]);
    h.update(viewer.as_bytes());
    let digest = h.finalize();
    let mut bucket = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % total;
    for t in &rule.targets {
        if bucket < t.weight as u64 {
            return Some(&t.distribution);
        }
        bucket -= t.weight as u64;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::OverrideTarget;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    /// Real User-Agent strings and what they are.
    #[test]
    fn user_agents_classify() {
        use DeviceType::{Desktop, Mobile, Tv};
        use OsName::{Android, Apple, Roku, Windows};
        use SdkType::{Native, Web};
        let table: &[(&str, DeviceType, SdkType, OsName)] = &[
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                Desktop,
                Web,
                Windows,
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
                Desktop,
                Web,
                Apple,
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
                Desktop,
                Web,
                OsName::Other,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                Mobile,
                Web,
                Apple,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
                Mobile,
                Web,
                Android,
            ),
            (
                "AppleCoreMedia/1.0.0.21E236 (iPhone; U; CPU OS 17_4 like Mac OS X; en_us)",
                Mobile,
                Native,
                Apple,
            ),
            (
                "ExoPlayerLib/2.19.1 (Linux; Android 13) ",
                Mobile,
                Native,
                Android,
            ),
            ("Roku/DVP-12.5 (12.5.0.4178-88)", Tv, Native, Roku),
            (
                "AppleCoreMedia/1.0.0.21L227 (Apple TV; U; CPU OS 17_4 like Mac OS X; en_us)",
                Tv,
                Native,
                Apple,
            ),
            (
                "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 76.0.3809.146/6.0 TV Safari/537.36",
                Tv,
                Web,
                OsName::Other,
            ),
            (
                "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.79 Safari/537.36 WebAppManager",
                Tv,
                Web,
                OsName::Other,
            ),
            (
                "Mozilla/5.0 (Linux; Android 9; AFTMM Build/PS7233) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
                Tv,
                Web,
                Android,
            ),
            ("Lavf/59.27.100", DeviceType::Other, Native, OsName::Other),
            ("", DeviceType::Other, Native, OsName::Other),
        ];
        for (ua, device, sdk, os) in table {
            let t = viewer_traits(Some(ua), None);
            assert_eq!((t.device, t.sdk, t.os), (*device, *sdk, *os), "{ua}");
        }
        // An SDK states what it is; the query wins over the User-Agent.
        let t = viewer_traits(
            Some("Lavf/59.27.100"),
            Some("device_type=tv&sdk_type=native&os_name=roku&profile_id=gold"),
        );
        assert_eq!(
            t,
            ViewerTraits {
                device: DeviceType::Tv,
                sdk: SdkType::Native,
                os: OsName::Roku,
                profile: Some("gold".into())
            }
        );
    }

    fn rules() -> Vec<OverrideRule> {
        let target = |d: &str, weight| OverrideTarget {
            distribution: id(d),
            weight,
        };
        vec![
            OverrideRule {
                device_type: Some(DeviceType::Mobile),
                sdk_type: None,
                os_name: None,
                profile_id: None,
                targets: vec![target("mobile", 100)],
            },
            OverrideRule {
                device_type: Some(DeviceType::Desktop),
                sdk_type: None,
                os_name: None,
                profile_id: None,
                targets: vec![target("eu", 80), target("low", 20)],
            },
        ]
    }

    #[test]
    fn first_match_weighted_and_sticky() {
        let rules = rules();
        let eu = id("eu");
        let t = |device| ViewerTraits {
            device,
            sdk: SdkType::Web,
            os: OsName::Other,
            profile: None,
        };
        assert_eq!(
            resolve(&eu, &rules, &t(DeviceType::Mobile), "v").map(Id::as_str),
            Some("mobile")
        );
        assert_eq!(resolve(&eu, &rules, &t(DeviceType::Tv), "v"), None);
        // 80/20 over 10,000 viewers lands within 2 points; each viewer always the same.
        let low = (0..10_000)
            .filter(|i| {
                let v = format!("viewer-{i}");
                let first = resolve(&eu, &rules, &t(DeviceType::Desktop), &v);
                assert_eq!(first, resolve(&eu, &rules, &t(DeviceType::Desktop), &v));
                first.map(Id::as_str) == Some("low")
            })
            .count();
        assert!(
            (1_800..=2_200).contains(&low),
            "{low} of 10,000 on the 20% target"
        );
    }
}
