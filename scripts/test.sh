#!/usr/bin/env bash
# The test suite: unit tests, scripted-server tests, interop with gst-rtsp-server and ffmpeg,
# then the meson build, checked by loading the built plugin with gst-inspect-1.0.
set -euo pipefail
cd "$(dirname "$0")/.."
# A GStreamer-CRITICAL aborts whichever process prints it: the tests, and every gst-launch-1.0,
# ffmpeg or example they start. The test helpers also make criticals fatal in-process.
export G_DEBUG="${G_DEBUG:+$G_DEBUG,}fatal-criticals"

echo "== cargo test"
cargo test --all-targets -- --test-threads=2

echo "== UDP on the portable send path (one send per packet, as on macOS and Windows)"
cargo test --features portable-udp --lib net::udp -- --test-threads=2
cargo test --features portable-udp --test it udp:: -- --test-threads=2

echo "== benchmark, short mode (checks it runs and loses nothing; figures are not asserted)"
cargo run --example bench -- --quick

echo "== meson build + gst-inspect-1.0"
rm -rf target/meson target/meson-stage
meson setup target/meson --prefix=/usr --buildtype=release >/dev/null
meson compile -C target/meson
DESTDIR="$PWD/target/meson-stage" meson install -C target/meson >/dev/null
so=$(find target/meson-stage -name libgstrtspannounce.so | head -n1)
[ -n "$so" ] || { echo "meson install did not install libgstrtspannounce.so" >&2; exit 1; }
installed="${so#target/meson-stage}"
echo "installed to $installed"
# Where gst-inspect-1.0 looks without GST_PLUGIN_PATH (Debian: /usr/lib/x86_64-linux-gnu/gstreamer-1.0).
pluginsdir="$(pkg-config --variable=pluginsdir gstreamer-1.0)"
[ "$(dirname "$installed")" = "$pluginsdir" ] || {
  echo "meson install put the plugin in $(dirname "$installed"), not GStreamer's plugin dir $pluginsdir" >&2
  exit 1
}
# Captured first: `grep -q` stops reading at the match, and gst-inspect-1.0 writing the rest of a
# long pad template into the closed pipe would fail the pipeline (SIGPIPE under pipefail).
inspect="$(GST_REGISTRY="$PWD/target/meson-registry.bin" GST_PLUGIN_PATH="$(dirname "$so")" \
  gst-inspect-1.0 rtspannounce)"
grep -q "Sink/Network" <<<"$inspect" || {
  echo "gst-inspect-1.0 did not load the installed plugin:" >&2
  echo "$inspect" | head -n 20 >&2
  exit 1
}
echo "meson build: gst-inspect-1.0 loads the installed plugin"
