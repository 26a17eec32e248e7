#!/usr/bin/env bash
# Debian 12 packages: GStreamer development files and plugins (encoders, payloaders, the RTSP
# server library for our record server and interop tests), ffmpeg as a peer, meson for the
# install build, PyGObject, gst-python's overrides (python3-gst-1.0: the stats `tracks` array)
# and GStreamer's typelibs for the Python example (tests/it/examples.rs runs it; gcc from
# build-essential compiles the C one), glib-networking (GIO's TLS, for the record server's RTSPS)
# and ca-certificates (the system trust store rtsps:// validates against). The
# codec matrix (tests/it/codec_matrix.rs) needs nothing more: its encoders, payloaders and decoders
# come from the plugin packages below. gstreamer1.0-x brings pango (the demo's timeoverlay).
# gdb prints every thread's stack when tests/concurrency.rs's watchdog sees a stall.
# Skips apt when everything is already there.
set -euo pipefail
pkgs=(
  pkg-config build-essential meson ninja-build
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp gstreamer1.0-tools gstreamer1.0-x
  ffmpeg ca-certificates glib-networking gdb
  python3-gi python3-gst-1.0 gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "${CI:-}" = true ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
