//! `medrelay loadtest`: a teaching broadcast (or, with `--consultation`, a
//! two-way consultation) under load, against a running gateway.
//!
//! A synthetic presenter (an expert account) starts a broadcast and sends a
//! realistic simulcast stream: three VP8 layers at 24 fps with a keyframe
//! every few seconds and on request, plus Opus-sized audio. N receive-only
//! viewers (a clinic account; each its own join token, signaling WebSocket,
//! UDP socket, ICE, DTLS and SRTP) join spread over `--join-secs` and watch
//! for `--secs`. Reported: per-viewer received bitrate, loss and freezes,
//! join-to-first-frame, the presenter's keyframe requests per layer, and,
//! with `--server-pid`, the server's CPU and memory over the window.
//!
//! The peers are `rtc` (webrtc-rs sans-IO) connections driven by tokio
//! tasks, the same library the gateway uses, so the generator needs no
//! second WebRTC stack. Passwords come from the environment
//! (MEDRELAY_PRESENTER_PASSWORD, MEDRELAY_VIEWER_PASSWORD), never from the
//! command line.

pub mod http;
pub mod peer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use peer::{PresenterOpts, PresenterStats, ViewerOpts, ViewerStats};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Usage(String),
    #[error("network: {0}")]
    Net(String),
    #[error("API: {0}")]
    Api(String),
    #[error("WebRTC: {0}")]
    Rtc(String),
}

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The gateway, https://HOST:PORT.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    pub server: String,
    /// Certificate(s) to trust for --server: its dev certificate
    /// (certs/medrelay.crt by default) or the CA that issued its certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// Expert account that presents (not with --broadcast).
    #[arg(long, required_unless_present = "broadcast")]
    pub presenter: Option<String>,
    /// Join the viewers to this running broadcast instead of starting one
    /// with a synthetic presenter (a real presenter's page, for example; the
    /// viewers receive once that presenter has started the broadcast).
    #[arg(long, conflicts_with = "presenter")]
    pub broadcast: Option<String>,
    /// A consultation instead of a broadcast: the --presenter expert opens a
    /// room (POST /api/rooms) with the --viewer clinic doctor, and both send
    /// camera and audio (one layer, the first of --layers-kbps) and receive
    /// the other's, as a consultation's two pages do; --viewers is ignored.
    #[arg(long, requires = "presenter", conflicts_with = "broadcast")]
    pub consultation: bool,
    /// Clinic-doctor account whose join tokens the viewers use.
    #[arg(long)]
    pub viewer: String,
    #[arg(long, env = "MEDRELAY_PRESENTER_PASSWORD", hide_env_values = true)]
    pub presenter_password: Option<String>,
    #[arg(long, env = "MEDRELAY_VIEWER_PASSWORD", hide_env_values = true)]
    pub viewer_password: String,
    /// Receive-only viewers.
    #[arg(long, default_value_t = 50)]
    pub viewers: usize,
    /// Viewers join evenly spread over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub join_secs: f64,
    /// Measurement window after the last join (and --settle-secs).
    #[arg(long, default_value_t = 20.0)]
    pub secs: f64,
    /// Wait after the last join before measuring (layer choice settles).
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
    /// Simulcast layer bitrates in kbit/s, lowest first (1 to 3 layers).
    #[arg(long, default_value = "150,500,1500", value_delimiter = ',')]
    pub layers_kbps: Vec<u64>,
    /// Keyframe interval of the synthetic presenter, seconds.
    #[arg(long, default_value_t = 4.0)]
    pub gop_secs: f64,
    /// Receive estimate (REMB) each viewer reports, kbit/s; 0 = none (the
    /// viewers then stay on the layer the server starts them on).
    #[arg(long, default_value_t = 5000)]
    pub remb_kbps: u64,
    /// Local address for the peers' UDP sockets.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_ip: std::net::IpAddr,
    /// The server's process id: its CPU time and memory over the window.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// CPU seconds (user + system) and resident memory of a process.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    Some(((utime + stime) / hz, rss_kb * 1024))
}

/// The floor of forwarding: SRTP-protecting (AES-128-GCM, what browsers
/// negotiate with the server) one packet of the average size the server
/// forwarded, on one core of this machine, in packets per second. Measured
/// in the same run as the load, so both see the same machine state.
pub fn srtp_floor_pps(payload: usize) -> f64 {
    use rtc::srtp::protection_profile::ProtectionProfile;
    let Ok(provider) = rtc::crypto::default_provider() else {
        return 0.0;
    };
    let profile = ProtectionProfile::AeadAes128Gcm;
    let key = vec![7u8; profile.key_len()];
    let salt = vec![9u8; profile.salt_len()];
    let Ok(mut ctx) = rtc::srtp::context::Context::new(&key, &salt, profile, None, None, provider.crypto()) else {
        return 0.0;
    };
    let mut pkt = vec![0u8; 12 + payload];
    pkt[0] = 0x80;
    pkt[1] = 96;
    pkt[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    for i in 0..10_000u32 {
        pkt[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        let _ = ctx.encrypt_rtp(&pkt);
    }
    let n = 200_000u32;
    let t0 = Instant::now();
    for i in 0..n {
        pkt[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        std::hint::black_box(ctx.encrypt_rtp(std::hint::black_box(&pkt)).ok());
    }
    f64::from(n) / t0.elapsed().as_secs_f64()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

pub async fn run(a: LoadArgs) -> Result<Value, LoadError> {
    let ca = std::fs::read(&a.ca).map_err(|e| LoadError::Usage(format!("--ca {}: {e}", a.ca.display())))?;
    let ep = http::Endpoint::new(&a.server, &ca)?;
    let layers_bps: Vec<u64> = a.layers_kbps.iter().map(|k| k * 1000).take(3).collect();
    if layers_bps.is_empty() {
        return Err(LoadError::Usage("--layers-kbps needs at least one layer".into()));
    }
    let mut clinic = http::Session::login(&ep, &a.viewer, &a.viewer_password).await?;
    // Join tokens work only with a session of their account, so every
    // participant carries its account's cookie with its token.
    let setup = if a.consultation {
        consultation_setup(&a, &ep, &clinic).await?
    } else {
        broadcast_setup(&a, &ep, &mut clinic).await?
    };
    let Setup {
        mut owner,
        presenters: presenter_tokens,
        viewers: tokens,
        end_path,
    } = setup;
    let layers_bps: Vec<u64> = if a.consultation {
        layers_bps.into_iter().take(1).collect()
    } else {
        layers_bps
    };
    let start = Instant::now();
    let join_window = Duration::from_secs_f64(a.join_secs.max(0.0));
    let settle = Duration::from_secs_f64(a.settle_secs.max(0.0));
    let window = Duration::from_secs_f64(a.secs.max(1.0));
    // The presenter gets 3 s to connect before the first viewer.
    let lead = Duration::from_secs(3);
    let measure_from = start + lead + join_window + settle;
    let until = measure_from + window + Duration::from_millis(500);
    let mut pstats = Vec::new();
    let mut presenters = Vec::new();
    for (cookie, token) in presenter_tokens {
        let st = Arc::new(Mutex::new(PresenterStats::default()));
        pstats.push(st.clone());
        presenters.push(tokio::spawn(peer::run_presenter(
            PresenterOpts {
                ep: ep.clone(),
                cookie,
                token,
                bind_ip: a.bind_ip,
                layers_bps: layers_bps.clone(),
                fps: 24,
                gop: Duration::from_secs_f64(a.gop_secs.max(0.5)),
                until,
            },
            st,
        )));
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(start + lead)).await;
    let n_viewers = tokens.len();
    let mut vstats = Vec::with_capacity(n_viewers);
    let mut tasks = Vec::with_capacity(n_viewers);
    for (i, (cookie, token)) in tokens.into_iter().enumerate() {
        let at = start + lead + join_window.mul_f64(i as f64 / n_viewers.max(1) as f64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        let st = Arc::new(Mutex::new(ViewerStats::default()));
        vstats.push(st.clone());
        tasks.push(tokio::spawn(peer::run_viewer(
            ViewerOpts {
                ep: ep.clone(),
                cookie,
                token,
                bind_ip: a.bind_ip,
                remb_bps: a.remb_kbps * 1000,
                until,
            },
            st,
        )));
    }
    let join_end = Instant::now();
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let snap = |v: &[Arc<Mutex<ViewerStats>>]| -> Vec<ViewerStats> {
        v.iter()
            .map(|s| s.lock().map(|g| g.clone()).unwrap_or_default())
            .collect()
    };
    let before = snap(&vstats);
    let cpu0 = a.server_pid.and_then(proc_usage);
    let t_before = Instant::now();
    tokio::time::sleep(window).await;
    let after = snap(&vstats);
    let cpu1 = a.server_pid.and_then(proc_usage);
    let elapsed = t_before.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    for p in presenters {
        let _ = p.await;
    }
    if let (Some(owner), Some(path)) = (owner.as_mut(), &end_path) {
        let _ = owner.request("DELETE", path, None).await;
    }

    // ------------------------------------------------------------ report
    // The presenters' figures together (a consultation has two).
    let p = pstats
        .iter()
        .map(|s| s.lock().map(|g| g.clone()).unwrap_or_default())
        .fold(PresenterStats::default(), |mut acc, x| {
            acc.error = acc.error.or(x.error);
            acc.packets_sent += x.packets_sent;
            acc.keyframes_sent += x.keyframes_sent;
            acc.plis.extend(x.plis);
            acc
        });
    let mut ratios = Vec::new();
    let mut kbps = Vec::new();
    let mut first = Vec::new();
    let mut joins = Vec::new();
    let (mut freezes, mut errors, mut receiving, mut audio_ok) = (0u64, Vec::new(), 0usize, 0usize);
    let mut packets = 0u64;
    for (b, e) in before.iter().zip(&after) {
        if let Some(err) = &e.error {
            errors.push(err.clone());
        }
        if let Some(ms) = e.first_frame_ms {
            first.push(ms);
        }
        if let Some(ms) = e.joined_ms {
            joins.push(ms);
        }
        let got = e.video_unique().saturating_sub(b.video_unique());
        let exp = e.video_expected().saturating_sub(b.video_expected());
        packets += got + e.audio_packets.saturating_sub(b.audio_packets);
        if got > 0 {
            receiving += 1;
        }
        if e.audio_packets > b.audio_packets {
            audio_ok += 1;
        }
        ratios.push(if exp == 0 { 0.0 } else { got as f64 / exp as f64 });
        kbps.push((e.video_bytes - b.video_bytes) as f64 * 8.0 / elapsed / 1000.0);
        freezes += e.freezes - b.freezes;
    }
    let at_99 = ratios.iter().filter(|&&r| r >= 0.99).count();
    // Video streams (camera, screen share) each viewer received.
    let streams: Vec<usize> = after.iter().map(|e| e.video.len()).collect();
    let offered: Vec<usize> = after.iter().map(|e| e.offered_video).collect();
    let ratios = sorted(ratios);
    let kbps = sorted(kbps);
    let first = sorted(first);
    let joins = sorted(joins);
    // Keyframe requests: the worst one-second window per layer, over the run.
    let mut worst_pli = 0usize;
    for times in &p.plis {
        for (i, t) in times.iter().enumerate() {
            let n = times[i..]
                .iter()
                .take_while(|x| x.duration_since(*t) < Duration::from_secs(1))
                .count();
            worst_pli = worst_pli.max(n);
        }
    }
    let mut bytes = 0u64;
    for (b, e) in before.iter().zip(&after) {
        bytes += e.video_bytes.saturating_sub(b.video_bytes);
    }
    let video_packets: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, e)| e.video_unique().saturating_sub(b.video_unique()))
        .sum();
    let avg_payload = bytes
        .checked_div(video_packets)
        .map_or(1100, |b| b.saturating_sub(12) as usize);
    let floor = srtp_floor_pps(avg_payload.max(100));
    let server = match (cpu0, cpu1) {
        (Some((c0, _)), Some((c1, rss))) => {
            let cores = (c1 - c0) / elapsed;
            json!({
                "cpu_cores": cores,
                "rss_mb": rss as f64 / 1048576.0,
                "packets_per_sec": packets as f64 / elapsed,
                "packets_per_sec_per_core": if cores > 0.0 { packets as f64 / elapsed / cores } else { 0.0 },
                "srtp_floor_pps_per_core": floor,
                "avg_video_payload": avg_payload,
            })
        }
        _ => Value::Null,
    };
    let report = json!({
        "mode": if a.consultation { "consultation" } else { "broadcast" },
        "viewers": n_viewers,
        "joined": joins.len(),
        "join_spread_s": join_end.duration_since(start + lead).as_secs_f64(),
        "receiving_video": receiving,
        "receiving_audio": audio_ok,
        "errors": errors.len(),
        "first_error": errors.first(),
        "window_s": elapsed,
        "viewers_at_99pct": at_99,
        "video_streams": { "min": streams.iter().min().copied().unwrap_or(0), "max": streams.iter().max().copied().unwrap_or(0) },
        "video_offered": { "min": offered.iter().min().copied().unwrap_or(0), "max": offered.iter().max().copied().unwrap_or(0) },
        "delivered_ratio": { "min": pct(&ratios, 0.0), "p5": pct(&ratios, 0.05), "p50": pct(&ratios, 0.5) },
        "video_kbps": { "p5": pct(&kbps, 0.05), "p50": pct(&kbps, 0.5), "p95": pct(&kbps, 0.95) },
        "freezes": freezes,
        "join_ms": { "p50": pct(&joins, 0.5), "p95": pct(&joins, 0.95), "max": pct(&joins, 1.0) },
        "first_frame_ms": { "p50": pct(&first, 0.5), "p95": pct(&first, 0.95), "max": pct(&first, 1.0) },
        "presenter": {
            "error": p.error,
            "packets_sent": p.packets_sent,
            "keyframes_sent": p.keyframes_sent,
            "plis_per_layer": p.plis.iter().map(Vec::len).collect::<Vec<_>>(),
            "worst_plis_per_layer_second": worst_pli,
        },
        "packets_received": packets,
        "server": server,
    });
    if let Some(path) = &a.json {
        let _ = std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default());
    }
    Ok(report)
}

/// Who sends and who receives, each with its account's session cookie and
/// its join token; the session that ends the room, and how.
struct Setup {
    owner: Option<http::Session>,
    presenters: Vec<(String, String)>,
    viewers: Vec<(String, String)>,
    end_path: Option<String>,
}

/// Our own broadcast with a synthetic presenter, or viewers for one already
/// running; the viewers share the clinic account's session.
async fn broadcast_setup(a: &LoadArgs, ep: &http::Endpoint, clinic: &mut http::Session) -> Result<Setup, LoadError> {
    let (owner, id, presenters) = match (&a.broadcast, &a.presenter) {
        (Some(id), _) => (None, id.clone(), Vec::new()),
        (None, Some(user)) => {
            let mut expert = expert_login(a, ep, user).await?;
            let title = format!("Load test, {} viewers", a.viewers);
            let (code, created) = expert
                .request("POST", "/api/broadcasts", Some(&json!({ "title": title })))
                .await?;
            if code != 201 {
                return Err(LoadError::Api(format!("create broadcast: HTTP {code} {created}")));
            }
            let id = created["broadcast"]["id"].as_str().unwrap_or_default().to_string();
            let token = created["join"]["token"].as_str().unwrap_or_default().to_string();
            let cookie = expert.cookie();
            (Some(expert), id, vec![(cookie, token)])
        }
        (None, None) => return Err(LoadError::Usage("--presenter or --broadcast is needed".into())),
    };
    let mut viewers = Vec::with_capacity(a.viewers);
    for _ in 0..a.viewers {
        let (code, v) = clinic
            .request("POST", &format!("/api/broadcasts/{id}/join"), None)
            .await?;
        if code != 200 {
            return Err(LoadError::Api(format!("viewer token: HTTP {code} {v}")));
        }
        viewers.push((
            clinic.cookie(),
            v["join"]["token"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let end_path = owner.as_ref().map(|_| format!("/api/broadcasts/{id}"));
    Ok(Setup {
        owner,
        presenters,
        viewers,
        end_path,
    })
}

/// A consultation room opened by the expert with the clinic doctor. Each
/// of the two sends (one invitation) and receives (a second invitation of
/// the same account, as the page's own second connection would be).
async fn consultation_setup(a: &LoadArgs, ep: &http::Endpoint, clinic: &http::Session) -> Result<Setup, LoadError> {
    let user = a
        .presenter
        .as_deref()
        .ok_or_else(|| LoadError::Usage("--consultation needs --presenter (the expert)".into()))?;
    let mut expert = expert_login(a, ep, user).await?;
    let (code, created) = expert
        .request(
            "POST",
            "/api/rooms",
            Some(&json!({ "title": "Load test consultation", "participants": [a.viewer] })),
        )
        .await?;
    if code != 201 {
        return Err(LoadError::Api(format!("create room: HTTP {code} {created}")));
    }
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let token_of = |p: &Value| p["token"].as_str().unwrap_or_default().to_string();
    let invited = created["participants"].as_array().cloned().unwrap_or_default();
    let (Some(me), Some(doctor)) = (invited.first(), invited.get(1)) else {
        return Err(LoadError::Api(format!("create room: participants missing: {created}")));
    };
    let (expert_cookie, clinic_cookie) = (expert.cookie(), clinic.cookie());
    let presenters = vec![
        (expert_cookie.clone(), token_of(me)),
        (clinic_cookie.clone(), token_of(doctor)),
    ];
    let mut viewers = Vec::new();
    for (username, cookie) in [(user, expert_cookie), (a.viewer.as_str(), clinic_cookie)] {
        let (code, p) = expert
            .request(
                "POST",
                &format!("/api/rooms/{id}/participants"),
                Some(&json!({ "username": username })),
            )
            .await?;
        if code != 201 {
            return Err(LoadError::Api(format!("invite {username}: HTTP {code} {p}")));
        }
        viewers.push((cookie, token_of(&p)));
    }
    Ok(Setup {
        owner: Some(expert),
        presenters,
        viewers,
        end_path: Some(format!("/api/rooms/{id}")),
    })
}

async fn expert_login(a: &LoadArgs, ep: &http::Endpoint, user: &str) -> Result<http::Session, LoadError> {
    let pw = a
        .presenter_password
        .as_deref()
        .ok_or_else(|| LoadError::Usage("MEDRELAY_PRESENTER_PASSWORD is not set".into()))?;
    http::Session::login(ep, user, pw).await
}

/// The human-readable summary printed by `medrelay loadtest`.
pub fn summary(r: &Value) -> String {
    let mut s = format!(
        "{}: viewers {} (joined {}, receiving video {}, audio {}, errors {}) over {:.1} s\n",
        r["mode"].as_str().unwrap_or("broadcast"),
        r["viewers"],
        r["joined"],
        r["receiving_video"],
        r["receiving_audio"],
        r["errors"],
        r["window_s"].as_f64().unwrap_or(0.0)
    );
    s += &format!(
        "delivered: {} of {} viewers got >= 99 % of video packets (min {:.4}, p5 {:.4})\n",
        r["viewers_at_99pct"],
        r["viewers"],
        r["delivered_ratio"]["min"].as_f64().unwrap_or(0.0),
        r["delivered_ratio"]["p5"].as_f64().unwrap_or(0.0)
    );
    s += &format!(
        "video kbit/s per viewer: p5 {:.0}, p50 {:.0}, p95 {:.0}; freezes {}\n",
        r["video_kbps"]["p5"].as_f64().unwrap_or(0.0),
        r["video_kbps"]["p50"].as_f64().unwrap_or(0.0),
        r["video_kbps"]["p95"].as_f64().unwrap_or(0.0),
        r["freezes"]
    );
    s += &format!(
        "join (signaling) ms p50 {:.0} p95 {:.0}; join-to-first-frame ms p50 {:.0} p95 {:.0} max {:.0}\n",
        r["join_ms"]["p50"].as_f64().unwrap_or(0.0),
        r["join_ms"]["p95"].as_f64().unwrap_or(0.0),
        r["first_frame_ms"]["p50"].as_f64().unwrap_or(0.0),
        r["first_frame_ms"]["p95"].as_f64().unwrap_or(0.0),
        r["first_frame_ms"]["max"].as_f64().unwrap_or(0.0)
    );
    s += &format!(
        "presenter: {} packets, {} keyframes, PLIs per layer {}, worst {} in one second on one layer\n",
        r["presenter"]["packets_sent"],
        r["presenter"]["keyframes_sent"],
        r["presenter"]["plis_per_layer"],
        r["presenter"]["worst_plis_per_layer_second"]
    );
    if r["server"].is_object() {
        s += &format!(
            "server: {:.2} cores, {:.0} MB resident, {:.0} packets/s delivered = {:.0} packets/s per core; \
             SRTP-protect floor {:.0} packets/s per core ({} B payload): ratio {:.2}\n",
            r["server"]["cpu_cores"].as_f64().unwrap_or(0.0),
            r["server"]["rss_mb"].as_f64().unwrap_or(0.0),
            r["server"]["packets_per_sec"].as_f64().unwrap_or(0.0),
            r["server"]["packets_per_sec_per_core"].as_f64().unwrap_or(0.0),
            r["server"]["srtp_floor_pps_per_core"].as_f64().unwrap_or(0.0),
            r["server"]["avg_video_payload"],
            r["server"]["packets_per_sec_per_core"].as_f64().unwrap_or(0.0)
                / r["server"]["srtp_floor_pps_per_core"].as_f64().unwrap_or(1.0).max(1.0)
        );
    }
    if let Some(e) = r["first_error"].as_str() {
        s += &format!("first error: {e}\n");
    }
    s
}
