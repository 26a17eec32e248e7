//! A RECORD-mode RTSP server (gst-rtsp-server, in-process) that receives pushed streams,
//! decodes them, optionally records them, and prints what arrived.
//!
//! ```text
//! cargo run --example record-server -- [--port N] [--mount /live/cam1]
//!     [--tracks h264|h264+aac|aac|h264+opus|h264+klv|CODEC] [--output out.mp4] [--sessions K]
//!     [--timeout SECONDS] [--tls-cert cert.pem --tls-key key.pem] [--savp]
//! ```
//!
//! `CODEC` is one track of any codec of the codec matrix (`h265`, `vp8`, `vp9`, `jpeg`, `opus`,
//! `pcmu`, `pcma`, `l16`, `l24`, `g722`, `amr-nb`, `mpa`, `speex`, `ac3`, `vorbis`; see
//! docs/CODECS.md).
//!
//! Prints `LISTENING rtsp://127.0.0.1:PORT/mount` once it accepts connections, then one report
//! per finished session (TEARDOWN or disconnect). Exits 0 after K sessions if every one of
//! them decoded at least one frame on every track, 1 otherwise, 2 on bad arguments.
//! Session N ≥ 2 records to `STEM-N.EXT` beside `--output`. With `--tls-cert` and `--tls-key`
//! (PEM) it serves RTSPS and prints an `rtsps://` URL. `--savp` takes SRTP pushes only
//! (`profiles=savp`) and answers SETUP with the key of its own SRTCP, as MediaMTX does.

#[path = "../tests/common/record_server.rs"]
#[allow(dead_code)] // shared with the tests: the example uses some of it
mod record_server;

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use record_server::{RecordServer, RecordServerConfig, Tracks};

const USAGE: &str = "usage: record-server [--port N] [--mount /live/cam1] \
[--tracks h264|h264+aac|aac|h264+opus|h264+klv|h265|vp8|vp9|jpeg|opus|pcmu|pcma|l16|l24|g722|amr-nb|mpa|speex|ac3|vorbis|klv] [--output out.mp4|out.mkv] [--sessions K] [--timeout SECONDS] \
[--tls-cert cert.pem --tls-key key.pem] [--savp]";

struct Args {
    port: u16,
    cfg: RecordServerConfig,
    sessions: u32,
    timeout: Duration,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 0,
        cfg: RecordServerConfig::new("/live/cam1", Tracks::H264),
        sessions: 1,
        timeout: Duration::from_secs(24 * 3600),
        tls_cert: None,
        tls_key: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--savp" => {
                args.cfg = args
                    .cfg
                    .clone()
                    .with_profiles(gst_rtsp::RTSPProfile::SAVP)
                    .with_keymgmt_answer();
            }
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--mount" => {
                let m = value()?;
                args.cfg.mount = if m.starts_with('/') {
                    m
                } else {
                    format!("/{m}")
                };
            }
            "--tracks" => {
                let t = value()?;
                args.cfg.tracks =
                    Tracks::parse(&t).ok_or_else(|| format!("--tracks: unknown value {t:?}"))?;
            }
            "--output" => args.cfg.output = Some(PathBuf::from(value()?)),
            "--tls-cert" => args.tls_cert = Some(PathBuf::from(value()?)),
            "--tls-key" => args.tls_key = Some(PathBuf::from(value()?)),
            "--sessions" => {
                args.sessions = value()?.parse().map_err(|e| format!("--sessions: {e}"))?
            }
            "--timeout" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--timeout: {e}"))?;
                args.timeout = Duration::from_secs_f64(secs);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
            };
            args.cfg = args
                .cfg
                .clone()
                .with_tls(&format!("{}{}", read(c)?, read(k)?));
        }
        (None, None) => {}
        _ => return Err("--tls-cert and --tls-key go together".into()),
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("record-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let server = match RecordServer::start_on_port(args.cfg, args.port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("record-server: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("LISTENING {}", server.url());
    let _ = std::io::stdout().flush();

    let mut ok = true;
    for _ in 0..args.sessions {
        match server.wait_finished(args.timeout) {
            Ok(report) => {
                print!("{report}");
                let _ = std::io::stdout().flush();
                if report.tracks.is_empty() || report.tracks.iter().any(|t| t.frames == 0) {
                    ok = false;
                }
            }
            Err(e) => {
                eprintln!("record-server: {e:#}");
                ok = false;
                break;
            }
        }
    }
    server.stop();
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
