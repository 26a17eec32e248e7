//! Which RTP payloader takes an encoded stream, from the registry.
//!
//! Candidates are element factories of rank > NONE whose klass says RTP payloader, whose sink
//! templates do not take RTP themselves (FEC, RED) and whose src template produces
//! `application/x-rtp`. Highest rank first; at equal rank `rtpmp4gpay` (MPEG4-GENERIC) goes
//! before `rtpmp4apay` (MP4A-LATM, poorly supported by servers and their readers), then by name
//! so the choice is stable. The list follows the registry (cached per feature-list cookie).

use gst::glib;
use gst::glib::translate::IntoGlib;
use gst::prelude::*;
use std::sync::Mutex;

/// Factories demoted among those of their rank: we prefer another payloader for the same input.
const DEMOTED: &[&str] = &["rtpmp4apay"];

fn is_rtp(caps: &gst::CapsRef) -> bool {
    caps.iter().all(|s| s.name() == "application/x-rtp")
}

/// True for caps our appsink takes as they are (already payloaded).
pub(crate) fn is_rtp_caps(caps: &gst::CapsRef) -> bool {
    !caps.is_empty() && !caps.is_any() && is_rtp(caps)
}

/// Sort order of candidates: rank (highest first), then not demoted, then name.
pub(crate) fn order(mut candidates: Vec<(String, i32)>) -> Vec<String> {
    candidates.sort_by(|(na, ra), (nb, rb)| {
        rb.cmp(ra)
            .then_with(|| {
                DEMOTED
                    .contains(&na.as_str())
                    .cmp(&DEMOTED.contains(&nb.as_str()))
            })
            .then_with(|| na.cmp(nb))
    });
    candidates.into_iter().map(|(n, _)| n).collect()
}

fn sink_caps_of(factory: &gst::ElementFactory) -> gst::Caps {
    let mut caps = gst::Caps::new_empty();
    for t in factory.static_pad_templates() {
        if t.direction() == gst::PadDirection::Sink {
            caps.merge(t.caps());
        }
    }
    caps
}

fn is_candidate(f: &gst::ElementFactory) -> bool {
    if f.rank() <= gst::Rank::NONE || !f.klass().contains("Payloader") || !f.klass().contains("RTP")
    {
        return false;
    }
    let rtp = gst::Caps::new_empty_simple("application/x-rtp");
    let sink = sink_caps_of(f);
    // ANY would swallow every format (rtpgstpay is rank NONE for that reason); RTP in is not
    // payloading (rtpredenc, rtpulpfecenc).
    let produces_rtp = f
        .static_pad_templates()
        .iter()
        .any(|t| t.direction() == gst::PadDirection::Src && t.caps().can_intersect(&rtp));
    produces_rtp && !sink.is_empty() && !sink.is_any() && !sink.can_intersect(&rtp)
}

struct Cache {
    cookie: u32,
    factories: Vec<gst::ElementFactory>,
    pad_caps: gst::Caps,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn cached<T>(f: impl FnOnce(&Cache) -> T) -> T {
    let cookie = gst::Registry::get().feature_list_cookie();
    let mut cache = CACHE.lock().unwrap();
    if cache.as_ref().is_none_or(|c| c.cookie != cookie) {
        let factories = scan();
        // RTP first, then every candidate's input in candidate order, so negotiation prefers
        // what the best payloader prefers.
        let mut pad_caps = gst::Caps::new_empty_simple("application/x-rtp");
        for f in &factories {
            pad_caps.merge(sink_caps_of(f));
        }
        *cache = Some(Cache {
            cookie,
            factories,
            pad_caps,
        });
    }
    f(cache.as_ref().unwrap())
}

/// The candidate payloaders, best first.
fn factories() -> Vec<gst::ElementFactory> {
    cached(|c| c.factories.clone())
}

/// What a request pad accepts: RTP, or anything a candidate payloader takes.
pub(crate) fn pad_caps() -> gst::Caps {
    cached(|c| c.pad_caps.clone())
}

fn scan() -> Vec<gst::ElementFactory> {
    let found: Vec<gst::ElementFactory> = gst::ElementFactory::factories_with_type(
        gst::ElementFactoryType::PAYLOADER,
        gst::Rank::MARGINAL,
    )
    .into_iter()
    .filter(is_candidate)
    .collect();
    let names = order(
        found
            .iter()
            .map(|f| (f.name().to_string(), f.rank().into_glib()))
            .collect(),
    );
    names
        .iter()
        .filter_map(|n| found.iter().find(|f| f.name() == n.as_str()).cloned())
        .collect()
}

/// The pad template's caps, computed once at class init.
///
/// A registry rebuild loads new plugins in gst-plugin-scanner, whose registry holds only the
/// plugins it loaded so far (and a plugin cannot load another while it is being loaded). When
/// our plugin is scanned alone no payloader is known there, and the template cached in the
/// registry (what gst-inspect-1.0 prints) would wrongly say RTP only: then it says ANY, as
/// rtspclientsink's does. A pad's caps query always answers from the live registry.
pub(crate) fn template_caps() -> gst::Caps {
    if factories().is_empty() {
        return gst::Caps::new_any();
    }
    pad_caps()
}

/// The best payloader factory for fixed encoded caps.
pub(crate) fn find(caps: &gst::CapsRef) -> Option<gst::ElementFactory> {
    factories().into_iter().find(|f| f.can_sink_any_caps(caps))
}

/// Seconds between in-band parameter sets (`config-interval`) on the payloaders that have it.
///
/// Servers get the parameter sets from the SDP (we wait for them before ANNOUNCE); in-band
/// copies help readers that start mid-stream. Not -1 ("before every IDR"): rtph264pay 1.22
/// then puts SPS/PPS before every IDR *slice*, i.e. inside the access unit of a multi-slice
/// frame (x264enc tune=zerolatency), and FFmpeg's listener counts extra, damaged frames.
/// With an interval they go before the first slice of a keyframe once a second.
const CONFIG_INTERVAL_S: i32 = 1;

/// The payloader for a caps query's filter, when the choice does not depend on fields upstream
/// has not fixed yet: the best candidate that can take some of `filter`, if it is the only one or
/// outranks every other. `audio/mpeg` without `mpegversion` (what lamemp3enc asks with) fits
/// rtpmp4gpay, rtpmp4apay and rtpmpapay at one rank: no choice until the caps say which.
pub(crate) fn unambiguous(filter: &gst::CapsRef) -> Option<gst::ElementFactory> {
    let mut matching = factories()
        .into_iter()
        .filter(|f| f.can_sink_any_caps(filter));
    let best = matching.next()?;
    match matching.next() {
        Some(next) if next.rank() >= best.rank() => None,
        _ => Some(best),
    }
}

/// A payloader from `factory`, configured for RTSP publishing: H.264/H.265/MPEG-4 parameter
/// sets in-band every [`CONFIG_INTERVAL_S`]. Everything else keeps the payloader's defaults
/// (mtu 1400, its payload type: the session remaps collisions between tracks).
pub(crate) fn create(
    factory: &gst::ElementFactory,
    name: &str,
) -> Result<gst::Element, glib::BoolError> {
    let pay = factory.create().name(name).build()?;
    let has_interval = pay
        .find_property("config-interval")
        .and_then(|p| p.downcast::<glib::ParamSpecInt>().ok())
        .is_some_and(|p| (p.minimum()..=p.maximum()).contains(&CONFIG_INTERVAL_S));
    if has_interval {
        pay.set_property("config-interval", CONFIG_INTERVAL_S);
    }
    Ok(pay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        gst::init().unwrap();
    }

    #[test]
    fn order_is_rank_then_preference_then_name() {
        let v = order(vec![
            ("rtpmp4apay".into(), 128),
            ("rtpvp8pay".into(), 64),
            ("rtpmp4gpay".into(), 128),
            ("rtpopuspay".into(), 256),
            ("rtph264pay".into(), 128),
        ]);
        assert_eq!(
            v,
            [
                "rtpopuspay",
                "rtph264pay",
                "rtpmp4gpay",
                "rtpmp4apay",
                "rtpvp8pay"
            ]
        );
        // Demotion only breaks ties: a better rank still wins.
        assert_eq!(
            order(vec![("rtpmp4apay".into(), 256), ("rtpmp4gpay".into(), 128)]),
            ["rtpmp4apay", "rtpmp4gpay"]
        );
    }

    #[test]
    fn rtp_caps_are_not_payloaded() {
        init();
        assert!(is_rtp_caps(
            &gst::Caps::builder("application/x-rtp")
                .field("payload", 96)
                .build()
        ));
        assert!(!is_rtp_caps(&gst::Caps::new_empty_simple("video/x-h264")));
        assert!(!is_rtp_caps(&gst::Caps::new_any()));
        assert!(!is_rtp_caps(&gst::Caps::new_empty()));
    }

    fn pick(caps: &str) -> Option<String> {
        find(&caps.parse::<gst::Caps>().unwrap()).map(|f| f.name().to_string())
    }

    #[test]
    fn common_codecs_get_their_payloader() {
        init();
        let cases = [
            (
                "video/x-h264,stream-format=byte-stream,alignment=au",
                "rtph264pay",
            ),
            ("video/x-h264,stream-format=avc,alignment=au", "rtph264pay"),
            (
                "video/x-h265,stream-format=byte-stream,alignment=au",
                "rtph265pay",
            ),
            // MPEG4-GENERIC, not MP4A-LATM.
            (
                "audio/mpeg,mpegversion=4,stream-format=raw,rate=48000,channels=2",
                "rtpmp4gpay",
            ),
            (
                "audio/x-opus,channel-mapping-family=0,channels=2,rate=48000",
                "rtpopuspay",
            ),
            ("audio/x-mulaw,channels=1,rate=8000", "rtppcmupay"),
            ("audio/x-alaw,channels=1,rate=8000", "rtppcmapay"),
            ("video/x-vp8", "rtpvp8pay"),
            ("video/x-vp9", "rtpvp9pay"),
            ("image/jpeg", "rtpjpegpay"),
            ("video/mpeg,mpegversion=4,systemstream=false", "rtpmp4vpay"),
        ];
        for (caps, want) in cases {
            assert_eq!(pick(caps).as_deref(), Some(want), "{caps}");
        }
        // H.264 in avc form must come whole access units; nothing takes unknown formats or RTP.
        assert_eq!(pick("video/x-h264,stream-format=avc,alignment=nal"), None);
        assert_eq!(pick("video/x-nothing-pays-this"), None);
        assert_eq!(pick("application/x-rtp,media=video"), None);
    }

    #[test]
    fn early_choice_only_when_the_filter_decides_it() {
        init();
        let un =
            |c: &str| unambiguous(&c.parse::<gst::Caps>().unwrap()).map(|f| f.name().to_string());
        assert_eq!(un("video/x-h264").as_deref(), Some("rtph264pay"));
        assert_eq!(un("video/x-vp8").as_deref(), Some("rtpvp8pay"));
        // MPEG audio of unknown version: MP3 or AAC payloaders, decided by the caps later.
        assert_eq!(un("audio/mpeg,rate=44100,channels=2"), None);
        assert_eq!(un("audio/mpeg,mpegversion=1").as_deref(), Some("rtpmpapay"));
        assert_eq!(un("video/x-nothing"), None);
    }

    #[test]
    fn candidates_take_no_rtp_and_no_any() {
        init();
        let f = factories();
        assert!(!f.is_empty());
        let names: Vec<String> = f.iter().map(|f| f.name().to_string()).collect();
        for n in ["rtpgstpay", "rtpredenc", "rtpulpfecenc", "gdppay"] {
            assert!(!names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        let g = names.iter().position(|n| n == "rtpmp4gpay").unwrap();
        let a = names.iter().position(|n| n == "rtpmp4apay").unwrap();
        assert!(g < a, "{names:?}");
        let caps = pad_caps();
        assert_eq!(caps.structure(0).unwrap().name(), "application/x-rtp");
        assert!(!caps.is_any());
        assert!(caps.can_intersect(&gst::Caps::new_empty_simple("video/x-vp8")));
    }

    #[test]
    fn video_payloaders_send_parameter_sets_in_band() {
        init();
        for name in ["rtph264pay", "rtph265pay", "rtpmp4vpay"] {
            let f = gst::ElementFactory::find(name).unwrap();
            let p = create(&f, "p").unwrap();
            assert_eq!(
                p.property::<i32>("config-interval"),
                CONFIG_INTERVAL_S,
                "{name}"
            );
        }
        // Payloaders without the property are left alone.
        let f = gst::ElementFactory::find("rtpopuspay").unwrap();
        assert!(create(&f, "o").is_ok());
    }
}
