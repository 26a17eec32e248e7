#!/usr/bin/env python3
"""Push 3 s of H.264 test video to an RTSP server with rtspannounce, from Python (PyGObject).

    cargo build --lib
    GST_PLUGIN_PATH=$PWD/target/debug python3 examples/push.py rtsp://127.0.0.1:8554/live/x

Prints the rtspannounce-connected / rtspannounce-disconnected element messages as they arrive,
the element's `stats` property once a second while playing, and at EOS the number of packets
the first track sent. Exits 0 on EOS (everything delivered and TEARDOWN answered), 1 on an
error, 2 on bad arguments.

Needs the Debian packages python3-gi, python3-gst-1.0, gir1.2-gstreamer-1.0 and
gir1.2-gst-plugins-base-1.0, and Debian's interpreter: run /usr/bin/python3 if `python3` on PATH
is another one (pyenv, a venv). python3-gst-1.0 holds gst-python's overrides, which make the
`tracks` array (a GstValueArray) readable with get_value; without them PyGObject fails with
"TypeError: unknown type GstValueArray", and this example falls back to get_array.
"""

import sys
import time
import warnings

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

PIPELINE = (
    "videotestsrc is-live=true num-buffers=90 "
    "! x264enc tune=zerolatency bframes=0 ! rtph264pay "
    "! rtspannounce name=publisher"
)


def track_structures(stats):
    """The `tracks` field, an array of `track` structures.

    With gst-python's overrides (python3-gst-1.0) get_value returns a Gst.ValueArray. Without
    them PyGObject cannot convert a GstValueArray; Gst.Structure.get_array hands it over as a
    GValueArray instead, made for bindings.
    """
    try:
        return [track.copy() for track in stats.get_value("tracks")]
    except TypeError:
        pass
    ok, array = stats.get_array("tracks")
    if not ok:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # GValueArray.get_nth
        # Copies: the structures belong to the array, freed when it goes.
        return [array.get_nth(i).copy() for i in range(array.n_values)]


def print_stats(sink, start):
    """The session's fields on one line, then one line per track."""
    stats = sink.get_property("stats")
    session = stats.copy()
    session.remove_field("tracks")
    print(f"[{time.monotonic() - start:5.1f}s] stats: {session.to_string()}")
    for track in track_structures(stats):
        print(f"          {track.to_string()}")
    sys.stdout.flush()


def main(argv):
    if len(argv) != 2:
        print("usage: push.py rtsp://HOST:PORT/PATH", file=sys.stderr)
        return 2
    location = argv[1]

    Gst.init(None)
    if Gst.ElementFactory.find("rtspannounce") is None:
        print(
            "the rtspannounce element is not available: build the plugin (cargo build --lib) "
            "and set GST_PLUGIN_PATH to the directory holding libgstrtspannounce.so",
            file=sys.stderr,
        )
        return 1

    # The location is set as a property, so the launch syntax's quoting rules do not apply to it.
    pipeline = Gst.parse_launch(PIPELINE)
    sink = pipeline.get_by_name("publisher")
    sink.set_property("location", location)

    loop = GLib.MainLoop()
    result = {"ok": False, "playing": False}
    start = time.monotonic()

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.ELEMENT:
            s = msg.get_structure()
            name = s.get_name() if s else ""
            if name == "rtspannounce-connected":
                print(
                    "connected: {} (server {}, session {}, {} track(s), handshake {} us "
                    "in {} round trips)".format(
                        s.get_value("location"),
                        s.get_value("server"),
                        s.get_value("session-id"),
                        s.get_value("tracks"),
                        s.get_value("handshake-us"),
                        s.get_value("round-trips"),
                    )
                )
            elif name == "rtspannounce-disconnected":
                print(f"disconnected: {s.get_value('reason')}")
        elif msg.type == Gst.MessageType.STATE_CHANGED and msg.src == pipeline:
            _old, new, _pending = msg.parse_state_changed()
            result["playing"] = new == Gst.State.PLAYING
        elif msg.type == Gst.MessageType.WARNING:
            err, debug = msg.parse_warning()
            print(f"warning: {err.message} ({debug})", file=sys.stderr)
        elif msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            print(f"error from {msg.src.get_path_string()}: {err.message}", file=sys.stderr)
            if debug:
                print(f"debug: {debug}", file=sys.stderr)
            loop.quit()
        elif msg.type == Gst.MessageType.EOS:
            # Posted only once TEARDOWN was answered: everything reached the server.
            print_stats(sink, start)
            tracks = track_structures(sink.get_property("stats"))
            if tracks:
                first = tracks[0]
                print(f"track {first.get_value('pad')} sent {first.get_value('packets')} packets")
            print(f"EOS after {time.monotonic() - start:.1f}s")
            result["ok"] = True
            loop.quit()
        sys.stdout.flush()
        return True

    def on_tick():
        if result["playing"]:
            print_stats(sink, start)
        return GLib.SOURCE_CONTINUE

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    GLib.timeout_add_seconds(1, on_tick)

    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        # The element posted the reason (a bad location, say) on the bus.
        print("could not start the pipeline", file=sys.stderr)
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            print(f"error: {msg.parse_error()[0].message}", file=sys.stderr)
    else:
        loop.run()

    pipeline.set_state(Gst.State.NULL)
    bus.remove_signal_watch()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
