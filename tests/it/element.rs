//! The element as gst-inspect-1.0 and applications see it: metadata, pads, properties.

use crate::harness;

use gst::prelude::*;

#[test]
fn metadata_pads_and_properties() {
    harness::init();
    let f = gst::ElementFactory::find("rtspannounce").unwrap();
    assert_eq!(f.metadata("klass"), Some("Sink/Network"));
    let t: Vec<_> = f
        .static_pad_templates()
        .iter()
        .map(|t| t.name_template().to_string())
        .collect();
    assert_eq!(t, ["sink_%u"]);

    let e = gst::ElementFactory::make("rtspannounce").build().unwrap();
    let expect: &[(&str, &str)] = &[
        ("location", "NULL"),
        ("user-id", "NULL"),
        ("user-pw", "NULL"),
        ("tcp-timeout", "20000000"),
        ("sync", "true"),
        ("do-rtsp-keep-alive", "true"),
        ("setup-url-style", "ffmpeg"),
        ("announce-timeout", "10000"),
        ("max-queue-bytes", "4194304"),
    ];
    for (name, default) in expect {
        let p = e
            .find_property(name)
            .unwrap_or_else(|| panic!("no property {name}"));
        assert!(
            !p.blurb().unwrap_or_default().is_empty(),
            "{name} has no blurb"
        );
        let v = p.default_value();
        let s = if let Ok(Some(s)) = v.get::<Option<String>>() {
            s
        } else if let Ok(None) = v.get::<Option<String>>() {
            "NULL".to_string()
        } else if let Ok(en) = v.get::<&gst::glib::EnumValue>() {
            en.nick().to_string()
        } else {
            v.serialize().unwrap().to_string()
        };
        assert_eq!(&s, default, "{name}");
    }
    let ua: String = e.property("user-agent");
    assert!(ua.starts_with("rtspannounce/") && !ua.starts_with("GStreamer"));
    // Property names are unique (a duplicate would hide the ones after it).
    let mut names: Vec<String> = e
        .list_properties()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n);
}

#[test]
fn request_pads_get_increasing_names() {
    harness::init();
    let e = gst::ElementFactory::make("rtspannounce").build().unwrap();
    let a = e.request_pad_simple("sink_%u").unwrap();
    let b = e.request_pad_simple("sink_%u").unwrap();
    assert_eq!((a.name().as_str(), b.name().as_str()), ("sink_0", "sink_1"));
    e.release_request_pad(&a);
    let c = e.request_pad_simple("sink_%u").unwrap();
    assert_eq!(c.name(), "sink_0");
}

#[test]
fn uri_handler_makes_the_element_with_the_location() {
    harness::init();
    let f = gst::ElementFactory::find("rtspannounce").unwrap();
    assert_eq!(f.uri_type(), gst::URIType::Sink);
    let protocols: Vec<String> = f.uri_protocols().iter().map(|p| p.to_string()).collect();
    for p in [
        "rtsp", "rtspt", "rtspu", "rtsps", "rtsph", "rtspsh", "rtspws", "rtspwss",
    ] {
        assert!(protocols.iter().any(|x| x == p), "{protocols:?}");
    }
    // Every scheme the handler claims, with and without credentials and a query.
    for proto in &protocols {
        for rest in ["127.0.0.1:8554/live/a", "user:pw@cam.example:554/x?y=1"] {
            let uri = format!("{proto}://{rest}");
            let e = gst::Element::make_from_uri(gst::URIType::Sink, &uri, None)
                .unwrap_or_else(|err| panic!("{uri}: {err}"));
            assert_eq!(e.factory().unwrap().name(), "rtspannounce", "{uri}");
            assert_eq!(
                e.property::<Option<String>>("location").as_deref(),
                Some(uri.as_str())
            );
            let h = e.dynamic_cast_ref::<gst::URIHandler>().unwrap();
            assert_eq!(h.uri().as_deref(), Some(uri.as_str()));
        }
    }
    let e = gst::ElementFactory::make("rtspannounce").build().unwrap();
    let h = e.dynamic_cast_ref::<gst::URIHandler>().unwrap();
    assert!(h.set_uri("http://example.com/x").is_err());
}

#[test]
fn pad_template_takes_rtp_and_what_payloaders_take() {
    harness::init();
    let e = gst::ElementFactory::make("rtspannounce").build().unwrap();
    let t = e.pad_template("sink_%u").unwrap();
    assert_eq!(t.gtype().name(), "GstRtspAnnouncePad");
    let caps = t.caps();
    assert_eq!(caps.structure(0).unwrap().name(), "application/x-rtp");
    for name in [
        "video/x-h264",
        "video/x-h265",
        "audio/mpeg",
        "audio/x-opus",
        "image/jpeg",
    ] {
        assert!(
            caps.iter().any(|s| s.name() == name),
            "{name} not in {caps}"
        );
    }
    let pad = e.request_pad_simple("sink_%u").unwrap();
    let p = pad
        .find_property("payloader")
        .expect("pad property payloader");
    assert_eq!(p.value_type(), gst::Element::static_type());
    assert!(p.blurb().unwrap_or_default().contains("NULL"));
    assert_eq!(pad.property::<Option<gst::Element>>("payloader"), None);
}
