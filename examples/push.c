/* Push 3 s of H.264 test video to an RTSP server with rtspannounce, from C.
 *
 *   cargo build --lib
 *   cc push.c -o push $(pkg-config --cflags --libs gstreamer-1.0)
 *   GST_PLUGIN_PATH=$PWD/target/debug ./push rtsp://127.0.0.1:8554/live/x
 *
 * Prints the rtspannounce-connected / -disconnected element messages and the element's
 * "stats" property once a second while playing. Exits 0 on EOS (everything delivered and
 * TEARDOWN answered), 1 on an error, 2 on bad arguments.
 */
#include <gst/gst.h>
#include <stdio.h>

static void
print_stats (GstElement * sink, GstClockTime since)
{
  GstStructure *stats = NULL;
  gchar *text;

  g_object_get (sink, "stats", &stats, NULL);
  if (stats == NULL)
    return;
  text = gst_structure_to_string (stats);
  g_print ("[%5.1fs] stats: %s\n",
      (double) (gst_util_get_timestamp () - since) / GST_SECOND, text);
  g_free (text);
  gst_structure_free (stats);
}

int
main (int argc, char **argv)
{
  GstElement *pipeline, *sink;
  GstBus *bus;
  GError *error = NULL;
  GstClockTime start, next_stats;
  gboolean playing = FALSE, done = FALSE;
  int status = 1;

  if (argc != 2) {
    fprintf (stderr, "usage: %s rtsp://HOST:PORT/PATH\n", argv[0]);
    return 2;
  }
  gst_init (&argc, &argv);

  pipeline = gst_parse_launch ("videotestsrc is-live=true num-buffers=90 "
      "! x264enc tune=zerolatency bframes=0 ! rtph264pay "
      "! rtspannounce name=publisher", &error);
  if (pipeline == NULL) {
    fprintf (stderr, "could not build the pipeline: %s\n"
        "(is libgstrtspannounce.so on GST_PLUGIN_PATH?)\n", error->message);
    g_clear_error (&error);
    return 1;
  }
  sink = gst_bin_get_by_name (GST_BIN (pipeline), "publisher");
  /* A property, so the launch syntax's quoting rules do not apply to the URL. */
  g_object_set (sink, "location", argv[1], NULL);

  bus = gst_element_get_bus (pipeline);
  if (gst_element_set_state (pipeline,
          GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
    fprintf (stderr, "could not start the pipeline\n");
    /* The element posted the reason (a bad location, say) on the bus. */
    done = TRUE;
    {
      GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
      if (msg != NULL) {
        gst_message_parse_error (msg, &error, NULL);
        fprintf (stderr, "error: %s\n", error->message);
        g_clear_error (&error);
        gst_message_unref (msg);
      }
    }
  }

  start = gst_util_get_timestamp ();
  next_stats = start + GST_SECOND;
  while (!done) {
    GstClockTime now = gst_util_get_timestamp ();
    GstMessage *msg;

    if (now >= next_stats) {
      if (playing)
        print_stats (sink, start);
      next_stats += GST_SECOND;
      continue;
    }
    msg = gst_bus_timed_pop (bus, next_stats - now);
    if (msg == NULL)
      continue;

    switch (GST_MESSAGE_TYPE (msg)) {
      case GST_MESSAGE_ELEMENT:{
        const GstStructure *s = gst_message_get_structure (msg);
        if (s != NULL && (gst_structure_has_name (s, "rtspannounce-connected")
                || gst_structure_has_name (s, "rtspannounce-disconnected"))) {
          gchar *text = gst_structure_to_string (s);
          g_print ("%s\n", text);
          g_free (text);
        }
        break;
      }
      case GST_MESSAGE_STATE_CHANGED:
        if (GST_MESSAGE_SRC (msg) == GST_OBJECT (pipeline)) {
          GstState state;
          gst_message_parse_state_changed (msg, NULL, &state, NULL);
          playing = state == GST_STATE_PLAYING;
        }
        break;
      case GST_MESSAGE_ERROR:{
        gchar *debug = NULL;
        gst_message_parse_error (msg, &error, &debug);
        fprintf (stderr, "error from %s: %s\n", GST_OBJECT_NAME (msg->src),
            error->message);
        if (debug != NULL)
          fprintf (stderr, "debug: %s\n", debug);
        g_clear_error (&error);
        g_free (debug);
        done = TRUE;
        break;
      }
      case GST_MESSAGE_EOS:
        /* Posted only once TEARDOWN was answered: everything reached the server. */
        print_stats (sink, start);
        g_print ("EOS\n");
        status = 0;
        done = TRUE;
        break;
      default:
        break;
    }
    gst_message_unref (msg);
  }

  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (bus);
  gst_object_unref (sink);
  gst_object_unref (pipeline);
  return status;
}
