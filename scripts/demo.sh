#!/usr/bin/env bash
# The demo: a bundled RECORD server on 127.0.0.1 (gst-rtsp-server, our examples/record-server.rs)
# receives 10 s of test video + audio pushed by `gst-launch-1.0 ... ! rtspannounce`, records it
# to MP4 and prints what arrived, then saves one received frame as a PNG and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "== building the plugin and the record server (release)"
cargo build --release --lib --example record-server

out_dir=$(mktemp -d /tmp/rtspannounce-demo.XXXXXX)
mp4="$out_dir/received.mp4"
fifo="$out_dir/server.out"
mkfifo "$fifo"

./target/release/examples/record-server --tracks h264+aac --mount /live/demo \
  --output "$mp4" --sessions 1 --timeout 60 >"$fifo" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$fifo"' EXIT

exec 3<"$fifo"
read -r word url <&3
[ "$word" = LISTENING ] || { echo "record server did not start" >&2; exit 1; }
echo "== record server listening at $url"

echo "== pushing 10 s of 640x360 H.264 + AAC through rtspannounce"
GST_PLUGIN_PATH="$PWD/target/release" gst-launch-1.0 -e \
  rtspannounce name=s location="$url" \
  videotestsrc is-live=true num-buffers=300 pattern=smpte ! \
    video/x-raw,width=640,height=360,framerate=30/1 ! timeoverlay ! \
    x264enc tune=zerolatency bframes=0 key-int-max=30 ! rtph264pay ! s.sink_0 \
  audiotestsrc is-live=true num-buffers=469 samplesperbuffer=1024 ! \
    audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! rtpmp4gpay ! s.sink_1

echo "== what the server received"
cat <&3
wait $server
status=$?
trap - EXIT
rm -f "$fifo"
echo "== recording: $mp4"
ffprobe -v error -show_entries stream=codec_name,width,height,sample_rate,channels,nb_frames \
  -show_entries format=duration -of compact=p=0 "$mp4"
[ "$status" -eq 0 ] || exit "$status"

# The picture that crossed the wire: the frame at 5 s of the server's recording (the SMPTE bars
# with the pusher's time overlay reading 00:00:05).
png="$out_dir/frame.png"
ffmpeg -v error -y -ss 5 -i "$mp4" -frames:v 1 -update 1 "$png"
[ -s "$png" ] || { echo "could not decode a frame from $mp4" >&2; exit 1; }
echo "== picture of a received frame: $png"
