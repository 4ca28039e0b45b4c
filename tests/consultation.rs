//! Live consultation through medrelay's SFU with real peers: headless
//! Chromium (fake camera and microphone, driven over WebDriver), aiortc as an
//! independent WebRTC stack, a user-space lossy long link, and hostile input.
//!
//! Browser tests share the machine's two cores, so they run one at a time.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::webdriver::{Chromium, Session, SessionOpts};
use support::{
    Auth, ONE_HOSPITAL, Server, ServerOpts, error_codes, free_udp_port, python, rss_kb, script, signal_probe,
    signal_probe_as, ui_login,
};

static BROWSERS: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    BROWSERS.lock().unwrap_or_else(|e| e.into_inner())
}

const PW: &str = "correct-horse-battery";

/// The pages' test hooks (`#autojoin=1`, `#via=`) work only on a server
/// that turns them on.
const TEST_HOOKS: &str = "[http]\ntest_hooks = true\n";

/// One clinic and no `[[hospital]]`: experts consult for every clinic.
const CLINIC: &str = "[[clinic]]\nid = \"t01\"\nname = \"Township 01\"\nae_titles = [\"T01_CT\"]\n";

/// A test server with a clinic doctor (`doc1`, "Dr. Township") and two
/// experts (`exp1` "Dr. City", `exp2` "Dr. Second"); `extra` is more TOML.
fn server(extra: &str) -> Server {
    let s = hooked(&format!("{CLINIC}{extra}"));
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township"]);
    s.add_user("exp1", "expert", PW, &["--name", "Dr. City"]);
    s.add_user("exp2", "expert", PW, &["--name", "Dr. Second"]);
    s
}

fn hooked(config_toml: &str) -> Server {
    Server::start(ServerOpts {
        config_toml: format!("{TEST_HOOKS}{config_toml}"),
        ..Default::default()
    })
}

fn login(s: &Server, user: &str) -> Auth {
    s.login(user, PW).unwrap_or_else(|e| panic!("login {user}: {e:?}"))
}

/// A participant: its id, its join token and its account's session (the
/// token works only with that session).
type Seat = (String, String, Auth);

/// The first expert of `users` creates a room for all of them; returns
/// (room id, their seats in the order of `users`).
fn create_room(s: &Server, users: &[&str], ttl: Option<u64>) -> (String, Vec<Seat>) {
    let creator = *users
        .iter()
        .find(|u| u.starts_with("exp"))
        .expect("an expert creates the room");
    let owner = login(s, creator);
    let mut body = json!({
        "title": "Chest CT second opinion",
        "participants": users.iter().filter(|u| **u != creator).collect::<Vec<_>>(),
    });
    if let Some(t) = ttl {
        body["ttl_secs"] = json!(t);
    }
    let (code, v) = s.req(Some(&owner), "POST", "/api/rooms", Some(body));
    assert_eq!(code, 201, "create room: {v}");
    let seats = users
        .iter()
        .map(|u| {
            let p = v["participants"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["username"] == *u))
                .unwrap_or_else(|| panic!("{u} not in {v}"));
            let auth = if *u == creator { owner.clone() } else { login(s, u) };
            (
                p["id"].as_str().expect("id").to_string(),
                p["token"].as_str().expect("token").to_string(),
                auth,
            )
        })
        .collect();
    (v["id"].as_str().expect("room id").to_string(), seats)
}

fn chromium() -> Chromium {
    Chromium::launch().unwrap_or_else(|e| panic!("chromium/chromedriver (tests/support/setup.sh installs them): {e}"))
}

/// Opens the consultation page for a seat (logged in as its account) and
/// waits until it has joined.
fn join(ch: &Chromium, s: &Server, seat: &Seat, extra: &str) -> Session {
    open_joined(ch, s, &seat.2, &format!("/consult#token={}{extra}", seat.1), false)
}

/// A fresh browser holding `auth`'s session (as if it had logged in).
fn browser_as(ch: &Chromium, s: &Server, auth: &Auth, opts: &SessionOpts) -> Session {
    let sess = ch.session(opts).expect("browser session");
    sess.goto(&format!("https://127.0.0.1:{}/api/health", s.http_port))
        .expect("origin");
    sess.add_cookie("mr_session", &auth.session_token()).expect("cookie");
    sess
}

fn stats(sess: &Session) -> Value {
    sess.execute("return window.mrTest.stats()", vec![]).expect("stats")
}

/// (video frames decoded, audio packets received) from `from`, summed over sources.
fn inbound_from(st: &Value, from: &str) -> (u64, u64) {
    let mut video = 0;
    let mut audio = 0;
    for r in st["inbound"].as_array().into_iter().flatten() {
        if r["participant"].as_str() != Some(from) {
            continue;
        }
        match r["kind"].as_str() {
            Some("video") => video += r["framesDecoded"].as_u64().unwrap_or(0),
            Some("audio") => audio += r["packetsReceived"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    (video, audio)
}

fn inbound_sum(st: &Value, field: &str) -> u64 {
    st["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r[field].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until `sess` decodes video and receives audio from `from`, then
/// checks that both keep rising over the next two seconds.
fn assert_media_flows(s: &Server, sess: &Session, from: &str, who: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let first = loop {
        let st = stats(sess);
        let (v, a) = inbound_from(&st, from);
        if v >= 10 && a >= 20 {
            break (v, a);
        }
        if Instant::now() > deadline {
            let link = sess.execute("return window.mrTest.link", vec![]).unwrap_or_default();
            let m = s.metrics_text();
            let sfu: Vec<String> = m
                .lines()
                .filter(|l| l.starts_with("medrelay_sfu"))
                .map(String::from)
                .collect();
            let log: Vec<String> = s
                .log()
                .lines()
                .filter(|l| l.contains("sfu::engine") || l.contains("WARN") || l.contains("ERROR"))
                .map(String::from)
                .collect();
            panic!(
                "{who}: no media from {from} (video frames {v}, audio packets {a}); link {link}; stats {st}\nSFU metrics: {sfu:?}\nSFU log:\n{}",
                log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    std::thread::sleep(Duration::from_secs(2));
    let (v, a) = inbound_from(&stats(sess), from);
    let link = || sess.execute("return window.mrTest.link", vec![]).unwrap_or_default();
    assert!(
        v > first.0 + 5,
        "{who}: video from {from} stalled: {} -> {v}; link {}",
        first.0,
        link()
    );
    assert!(a > first.1 + 20, "{who}: audio from {from} stalled: {} -> {a}", first.1);
}

fn js_array_contains(sess: &Session, array: &str, pred: &str, timeout: Duration) -> Value {
    sess.wait_for(
        &format!("(window.mrTest.{array} || []).find(m => {pred}) || null"),
        timeout,
    )
    .unwrap_or_else(|e| panic!("{array} never got a matching message ({pred}): {e}"))
}

#[test]
fn browsers_exchange_media_chat_and_synchronized_view() {
    let _g = lock();
    let s = server("");
    let (room, ps) = create_room(&s, &["doc1", "exp1", "exp2"], None);
    let ch = chromium();
    let a = join(&ch, &s, &ps[0], "");
    let b = join(&ch, &s, &ps[1], "");
    assert_media_flows(&s, &a, &ps[1].0, "clinic", Duration::from_secs(30));
    assert_media_flows(&s, &b, &ps[0].0, "expert", Duration::from_secs(30));

    // Chat and the shared viewer go over the data channel, stamped by the server.
    a.wait_for("window.mrTest.dcOpen === true", Duration::from_secs(10))
        .expect("clinic data channel");
    b.wait_for("window.mrTest.dcOpen === true", Duration::from_secs(10))
        .expect("expert data channel");
    a.execute(
        "window.mrTest.sendChat('lesion in the left lower lobe?'); return true",
        vec![],
    )
    .expect("send chat");
    let chat = js_array_contains(
        &b,
        "chat",
        "m.text === 'lesion in the left lower lobe?'",
        Duration::from_secs(10),
    );
    assert_eq!(chat["from"], ps[0].0, "chat stamped with the sender: {chat}");
    let view = json!({"study": "1.2.840.1", "series": "1.2.840.1.2", "instance": "1.2.840.1.2.3", "frame": 0, "wc": 40, "ww": 400});
    b.execute("window.mrTest.sendView(arguments[0]); return true", vec![view])
        .expect("send view");
    let got = js_array_contains(
        &a,
        "views",
        "m.instance === '1.2.840.1.2.3' && m.ww === 400",
        Duration::from_secs(10),
    );
    assert_eq!(got["from"], ps[1].0);
    a.execute(
        "window.mrTest.sendPoint({instance: '1.2.840.1.2.3', x: 0.25, y: 0.75}); return true",
        vec![],
    )
    .expect("send point");
    let p = js_array_contains(&b, "points", "m.instance === '1.2.840.1.2.3'", Duration::from_secs(10));
    assert_eq!(p["x"], 0.25);

    // Screen share (a trusted click, as getDisplayMedia requires) reaches the
    // other side as a third track, labelled as a screen.
    a.click("button[data-action='screen']").expect("click share");
    let screen = b
        .wait_for(
            &format!(
                "window.mrTest.stats().then(s => s.inbound.find(r => r.participant === '{}' && r.source === 'screen' && r.framesDecoded > 5) || null)",
                ps[0].0
            ),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("screen share never arrived: {e}; errors {:?}", a.execute("return window.mrTest.errors", vec![])));
    assert_eq!(screen["kind"], "video");

    // Muting is signalled to the others.
    b.click("nav.controls button[data-action='mic']").expect("click mute");
    a.wait_for(
        &format!(
            "(window.mrTest.participants.find(p => p.id === '{}') || {{sources: []}}).sources.some(s => s.source === 'mic' && s.muted)",
            ps[1].0
        ),
        Duration::from_secs(10),
    )
    .expect("mute state reached the clinic");
    b.click("nav.controls button[data-action='mic']").expect("click unmute");
    a.wait_for(
        &format!(
            "(window.mrTest.participants.find(p => p.id === '{}') || {{sources: []}}).sources.some(s => s.source === 'mic' && !s.muted)",
            ps[1].0
        ),
        Duration::from_secs(10),
    )
    .expect("unmute reached the clinic");

    // A third participant: everyone receives both others, and the late
    // joiner is shown the image the room is looking at.
    let c = join(&ch, &s, &ps[2], "");
    assert_media_flows(&s, &c, &ps[0].0, "second expert", Duration::from_secs(30));
    assert_media_flows(&s, &c, &ps[1].0, "second expert", Duration::from_secs(30));
    assert_media_flows(&s, &a, &ps[2].0, "clinic", Duration::from_secs(30));
    assert_media_flows(&s, &b, &ps[2].0, "expert", Duration::from_secs(30));
    js_array_contains(&c, "views", "m.instance === '1.2.840.1.2.3'", Duration::from_secs(10));

    let status = s.get_json(&format!("/api/rooms/{room}"));
    assert_eq!(status["connected"].as_array().map(|v| v.len()), Some(3), "{status}");

    // Closing a browser removes its participant for the others.
    c.quit().expect("quit");
    a.wait_for(
        &format!("!(window.mrTest.participants || []).some(p => p.id === '{}')", ps[2].0),
        Duration::from_secs(30),
    )
    .expect("participant_left reached the clinic");
    s.wait_for(30, "two participants left", || {
        s.metric("medrelay_sfu_participants") == 2.0
    });
    assert!(s.metric("medrelay_sfu_rtp_out_total") > 100.0);
}

/// Waits until the page can join, then presses its Join button.
fn click_join(sess: &Session) {
    sess.wait_for(
        "window.mrTest && window.mrTest.state === 'prejoin' && !document.querySelector('#join').disabled",
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("the page never offered to join: {e}; {:?}", sess.console_logs()));
    click(sess, "#join");
    sess.wait_for("window.mrTest.state === 'joined'", Duration::from_secs(30))
        .expect("joined");
}

#[test]
fn production_pages_honour_no_test_hooks() {
    let _g = lock();
    // A production server: no `[http] test_hooks`.
    let s = Server::start(ServerOpts {
        config_toml: CLINIC.into(),
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township"]);
    s.add_user("exp1", "expert", PW, &["--name", "Dr. City"]);
    let (code, page) = s.get("/consult");
    assert_eq!(code, 200);
    assert!(
        !String::from_utf8_lossy(&page).contains("mr-test-hooks"),
        "a production page carries the test marker"
    );
    let (_room, ps) = create_room(&s, &["doc1", "exp1"], None);
    let ch = chromium();
    // A link asking to start camera and microphone unasked and to send the
    // media to another host (port 9: nothing listens there).
    let a = browser_as(&ch, &s, &ps[0].2, &SessionOpts::default());
    a.goto(&format!(
        "https://127.0.0.1:{}/consult#token={}&autojoin=1&via=127.0.0.1:9",
        s.http_port, ps[0].1
    ))
    .expect("page");
    a.wait_for(
        "window.mrTest && window.mrTest.state === 'prejoin' && !document.querySelector('#join').disabled",
        Duration::from_secs(60),
    )
    .expect("pre-join screen");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        a.execute("return window.mrTest.state", vec![]).expect("state"),
        json!("prejoin"),
        "autojoin=1 joined without a click"
    );
    assert_eq!(s.metric("medrelay_sfu_participants"), 0.0);
    // Joined with a click, its media reach the server's own address.
    click_join(&a);
    let b = browser_as(&ch, &s, &ps[1].2, &SessionOpts::default());
    b.goto(&format!("https://127.0.0.1:{}/consult#token={}", s.http_port, ps[1].1))
        .expect("page");
    click_join(&b);
    assert_media_flows(&s, &b, &ps[0].0, "expert", Duration::from_secs(40));
    assert_media_flows(&s, &a, &ps[1].0, "clinic", Duration::from_secs(40));
}

#[test]
fn aiortc_and_chromium_exchange_media_through_the_sfu() {
    let _g = lock();
    let s = server("");
    let (_room, ps) = create_room(&s, &["doc1", "exp1"], None);
    let out = s.dir.join("aiortc.json");
    let mut peer = Command::new(python())
        .arg(script("aiortc_peer.py"))
        .args([
            "--ws",
            &format!("wss://127.0.0.1:{}/ws/consult", s.http_port),
            "--token",
            &ps[1].1,
            "--cookie",
            &ps[1].2.session_cookie(),
            "--duration",
            "30",
            "--publish",
            "audio,video",
            "--chat",
            "hello from aiortc",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aiortc peer");
    let ch = chromium();
    let a = join(&ch, &s, &ps[0], "");
    assert_media_flows(&s, &a, &ps[1].0, "chromium", Duration::from_secs(40));
    js_array_contains(&a, "chat", "m.text === 'hello from aiortc'", Duration::from_secs(20));
    let status = peer.wait().expect("aiortc exit");
    let mut err = String::new();
    if let Some(mut e) = peer.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "aiortc peer failed: {err}");
    let v: Value = serde_json::from_slice(&std::fs::read(&out).expect("aiortc result")).expect("json");
    let from_browser = &v["received"][&ps[0].0];
    assert!(
        from_browser["video_frames"].as_u64().unwrap_or(0) >= 30,
        "aiortc decoded too few video frames from chromium: {v}\n{err}"
    );
    assert!(
        from_browser["audio_frames"].as_u64().unwrap_or(0) >= 50,
        "aiortc got too little audio from chromium: {v}"
    );
}

struct Impair(Child);

impl Drop for Impair {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn impair(listen_port: u16, upstream_port: u16, delay_ms: u32, loss: f64) -> Impair {
    impair_with(listen_port, upstream_port, delay_ms, loss, &[])
}

fn impair_with(listen_port: u16, upstream_port: u16, delay_ms: u32, loss: f64, extra: &[&str]) -> Impair {
    use std::io::BufRead;
    let mut c = Command::new(python())
        .arg(script("udp_impair.py"))
        .args([
            "--listen",
            &format!("127.0.0.1:{listen_port}"),
            "--upstream",
            &format!("127.0.0.1:{upstream_port}"),
            "--delay-ms",
            &delay_ms.to_string(),
            "--loss",
            &loss.to_string(),
            "--seed",
            "7",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("udp_impair.py");
    let mut line = String::new();
    let stdout = c.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("READY line");
    assert!(line.starts_with("READY"), "impairment proxy: {line}");
    Impair(c)
}

#[test]
fn long_lossy_link_is_repaired_by_retransmission() {
    let _g = lock();
    // Media reaches the SFU only through a user-space link with 300 ms
    // one-way delay and 3 % loss in each direction (600 ms RTT).
    let proxy_port = free_udp_port();
    let s = server(&format!("[sfu]\nannounce = [\"127.0.0.1:{proxy_port}\"]\n"));
    let _link = impair(proxy_port, s.sfu_port, 300, 0.03);
    let (_room, ps) = create_room(&s, &["doc1", "exp1"], None);
    let ch = chromium();
    let a = join(&ch, &s, &ps[0], "");
    let b = join(&ch, &s, &ps[1], "");
    // Normally ~10 s. A handshake stranded by loss costs the page its 30 s
    // connecting limit plus a rejoin, which is still a working link.
    assert_media_flows(&s, &b, &ps[0].0, "expert", Duration::from_secs(100));
    let before = stats(&b);
    let (v0, _) = inbound_from(&before, &ps[0].0);
    std::thread::sleep(Duration::from_secs(15));
    let after = stats(&b);
    let (v1, _) = inbound_from(&after, &ps[0].0);
    assert!(
        v1 >= v0 + 60,
        "decoding stalled on the lossy link: {v0} -> {v1}; {after}"
    );
    // The subscriber asked for repairs and got retransmissions (RTX from the
    // SFU's history), and the SFU repaired its own uplink by NACKing.
    let nacks = inbound_sum(&after, "nackCount");
    let rtx = inbound_sum(&after, "retransmittedPacketsReceived");
    eprintln!(
        "lossy link: frames decoded {v0} -> {v1} in 15 s; subscriber NACKs {nacks}, RTX received {rtx}, lost {}; \
         SFU: rtx sent {}, NACKs to publisher {}, PLIs to publisher {}",
        inbound_sum(&after, "packetsLost"),
        s.metric("medrelay_sfu_rtx_sent_total"),
        s.metric("medrelay_sfu_nack_out_total"),
        s.metric("medrelay_sfu_pli_out_total")
    );
    assert!(nacks > 0, "no NACKs from the subscriber: {after}");
    assert!(rtx > 0, "no retransmissions received: {after}");
    assert!(s.metric("medrelay_sfu_rtx_sent_total") > 0.0);
    assert!(
        s.metric("medrelay_sfu_nack_out_total") > 0.0,
        "the SFU never NACKed the publisher"
    );
    drop(a);
}

#[test]
fn a_stranded_dtls_handshake_is_started_over() {
    let _g = lock();
    // ICE connects but every DTLS record of the pages' first connections is
    // dropped, as when loss strands a handshake: Chromium then sits in
    // 'connecting' for good. The pages must give up after their limit and
    // rejoin, and the fresh connections carry media.
    let proxy_port = free_udp_port();
    let s = server(&format!("[sfu]\nannounce = [\"127.0.0.1:{proxy_port}\"]\n"));
    let (_room, ps) = create_room(&s, &["doc1", "exp1"], None);
    let ch = chromium();
    let _link = impair_with(proxy_port, s.sfu_port, 20, 0.0, &["--strand-dtls-secs", "20"]);
    let a = join(&ch, &s, &ps[0], "");
    let b = join(&ch, &s, &ps[1], "");
    // Both pages start over, each on its own 30 s limit; a page's restart
    // replaces its tracks on the other's page, so media is judged after both.
    for (who, page) in [("clinic", &a), ("expert", &b)] {
        page.wait_for(
            "(window.mrTest.errors || []).some(e => e.code === 'connect_timeout')",
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| panic!("the {who}'s page never started over: {e}"));
    }
    assert_media_flows(&s, &b, &ps[0].0, "expert", Duration::from_secs(60));
    let errors = b.execute("return window.mrTest.errors", vec![]).expect("errors");
    assert!(
        errors
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["code"] == "connect_timeout"),
        "media flowed without the page starting over, so the handshake was not stranded: {errors}"
    );
    drop(a);
}

#[test]
fn a_starved_downlink_keeps_audio_and_pauses_video() {
    let _g = lock();
    // Each browser's downlink is squeezed to 100 kbit/s (less than one video
    // stream plus audio); uplinks are free. The SFU must keep audio flowing,
    // pause video for the starved subscribers and tell their pages.
    let proxy_port = free_udp_port();
    let s = server(&format!("[sfu]\nannounce = [\"127.0.0.1:{proxy_port}\"]\n"));
    let _link = impair_with(
        proxy_port,
        s.sfu_port,
        20,
        0.0,
        &["--down-rate-kbps", "100", "--queue-ms", "300"],
    );
    let (_room, ps) = create_room(&s, &["doc1", "exp1"], None);
    let ch = chromium();
    let a = join(&ch, &s, &ps[0], "");
    let b = join(&ch, &s, &ps[1], "");
    let state = b
        .wait_for(
            "window.mrTest.link && window.mrTest.link.state === 'audio_only' ? window.mrTest.link : null",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("the starved subscriber was never switched to audio only: {e}"));
    assert!(state["bwe_kbps"].as_u64().is_some_and(|k| k < 400), "{state}");
    // Audio keeps flowing while video is paused.
    let (_, a0) = inbound_from(&stats(&b), &ps[0].0);
    std::thread::sleep(Duration::from_secs(4));
    let (_, a1) = inbound_from(&stats(&b), &ps[0].0);
    assert!(a1 >= a0 + 100, "audio stalled under audio-only: {a0} -> {a1}");
    eprintln!("starved downlink: link {state}; audio packets {a0} -> {a1} in 4 s");
    drop(a);
}

/// One join/leave cycle from inside the page's origin, with raw WebSocket and
/// RTCPeerConnection: join, publish a data channel, answer the forwarded
/// tracks, wait for both connections, leave.
const CYCLE_JS: &str = r#"
const [token, n] = arguments;
const done = arguments[arguments.length - 1];
async function once() {
  const ws = new WebSocket(`wss://${location.host}/ws/consult`);
  const pub = new RTCPeerConnection();
  const sub = new RTCPeerConnection();
  const opened = new Promise((res, rej) => { ws.onopen = res; ws.onerror = rej; });
  const subUp = new Promise(res => { sub.onconnectionstatechange = () => sub.connectionState === 'connected' && res(); });
  const pubUp = new Promise(res => { pub.onconnectionstatechange = () => pub.connectionState === 'connected' && res(); });
  ws.onmessage = async ev => {
    const m = JSON.parse(ev.data);
    if (m.type === 'answer') await pub.setRemoteDescription({type: 'answer', sdp: m.sdp});
    if (m.type === 'offer') {
      await sub.setRemoteDescription({type: 'offer', sdp: m.sdp});
      const a = await sub.createAnswer();
      await sub.setLocalDescription(a);
      ws.send(JSON.stringify({type: 'answer', pc: 'sub', sdp: a.sdp}));
    }
  };
  await opened;
  ws.send(JSON.stringify({type: 'join', token}));
  pub.createDataChannel('room');
  const o = await pub.createOffer();
  await pub.setLocalDescription(o);
  ws.send(JSON.stringify({type: 'offer', pc: 'pub', sdp: o.sdp, tracks: {}}));
  const t = new Promise((_, rej) => setTimeout(() => rej(new Error('cycle timeout')), 15000));
  await Promise.race([Promise.all([pubUp, subUp]), t]);
  ws.send(JSON.stringify({type: 'leave'}));
  pub.close(); sub.close(); ws.close();
}
(async () => {
  try { for (let i = 0; i < n; i++) await once(); done('ok'); }
  catch (e) { done('error: ' + e); }
})();
"#;

#[test]
fn join_leave_cycles_do_not_leak() {
    let _g = lock();
    let s = server("");
    let (_room, ps) = create_room(&s, &["exp1", "doc1"], None);
    let ch = chromium();
    let a = join(&ch, &s, &ps[0], "");
    let cyc = browser_as(
        &ch,
        &s,
        &ps[1].2,
        &SessionOpts {
            script_timeout: Duration::from_secs(600),
            ..Default::default()
        },
    );
    cyc.goto(&format!("https://127.0.0.1:{}/consult", s.http_port))
        .expect("page");
    let run = |n: u32| {
        let r = cyc
            .execute_async(CYCLE_JS, vec![json!(ps[1].1), json!(n)])
            .expect("cycles");
        assert_eq!(r, json!("ok"), "join/leave cycle failed; server log:\n{}", s.log());
    };
    run(20);
    s.wait_for(20, "the cycling participant to be gone", || {
        s.metric("medrelay_sfu_participants") == 1.0
    });
    std::thread::sleep(Duration::from_secs(1));
    let rss0 = rss_kb(s.pid());
    let tasks0 = s.metric("medrelay_runtime_tasks");
    run(200);
    s.wait_for(20, "the cycling participant to be gone", || {
        s.metric("medrelay_sfu_participants") == 1.0
    });
    std::thread::sleep(Duration::from_secs(1));
    let rss1 = rss_kb(s.pid());
    let tasks1 = s.metric("medrelay_runtime_tasks");
    let growth = rss1 as f64 / rss0 as f64 - 1.0;
    eprintln!(
        "RSS {rss0} kB -> {rss1} kB ({:+.1} %), tasks {tasks0} -> {tasks1}",
        growth * 100.0
    );
    assert!(
        growth <= 0.05,
        "RSS grew {:.1} % over 200 join/leave cycles",
        growth * 100.0
    );
    assert!(tasks1 <= tasks0 + 2.0, "tasks grew from {tasks0} to {tasks1}");
    assert!(s.metric("medrelay_sfu_joins_total") >= 221.0);
    // The steady participant was never disturbed.
    let st = stats(&a);
    assert!(st["outbound"].as_array().is_some_and(|o| !o.is_empty()), "{st}");
}

#[test]
fn bad_signaling_and_garbage_udp_leave_the_room_unaffected() {
    let _g = lock();
    let s = server("");
    let (room, ps) = create_room(&s, &["doc1", "exp1", "exp2"], None);
    let (_short_room, short) = create_room(&s, &["exp2"], Some(5));
    let ch = chromium();
    let a = join(&ch, &s, &ps[0], "");
    let b = join(&ch, &s, &ps[1], "");
    assert_media_flows(&s, &b, &ps[0].0, "B", Duration::from_secs(30));

    let v = signal_probe(&s, "garbage_first", "");
    assert_eq!(error_codes(&v), ["bad_message"], "{v}");
    assert_eq!(v["close_code"], 1008, "{v}");
    let v = signal_probe(&s, "offer_first", "");
    assert_eq!(error_codes(&v), ["not_joined"], "{v}");
    let forged = format!("{}0", &ps[2].1[..ps[2].1.len() - 1]);
    let forged = if forged == ps[2].1 {
        format!("{}1", &ps[2].1[..ps[2].1.len() - 1])
    } else {
        forged
    };
    let prober = Some(&ps[2].2);
    let v = signal_probe_as(&s, prober, "token", &forged, &[]);
    assert_eq!(error_codes(&v), ["bad_token"], "{v}");
    assert_eq!(v["close_code"], 4001, "{v}");
    let v = signal_probe_as(&s, prober, "token", "r_x.p_y.99999999999.00", &[]);
    assert_eq!(error_codes(&v), ["bad_token"], "{v}");
    std::thread::sleep(Duration::from_secs(6));
    let v = signal_probe_as(&s, prober, "token", &short[0].1, &[]);
    assert_eq!(error_codes(&v), ["expired_token"], "{v}");
    assert_eq!(v["close_code"], 4001, "{v}");

    // A joined participant sending garbage, bogus SDP and out-of-turn
    // answers gets errors and stays connected.
    let v = signal_probe_as(&s, prober, "joined_then_garbage", &ps[2].1, &[]);
    assert_eq!(
        error_codes(&v),
        [
            "bad_message",
            "bad_message",
            "bad_message",
            "bad_message",
            "bad_sdp",
            "bad_sdp",
            "bad_sdp",
            "bad_state"
        ],
        "{v}"
    );
    assert_eq!(v["pong_after"], true, "{v}");
    let v = signal_probe_as(&s, prober, "oversized", &ps[2].1, &[]);
    assert!(
        v["close_code"].as_u64().is_some_and(|c| c != 1000),
        "oversized frame must close: {v}"
    );

    // Garbage on the media port: random bytes, STUN for nobody, fake RTP and DTLS.
    let before = s.metric("medrelay_sfu_udp_unknown_total");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let to = format!("127.0.0.1:{}", s.sfu_port);
    let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[9; 12]);
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x07]);
    stun.extend_from_slice(b"nobody:x\0");
    for i in 0..300u32 {
        let junk: Vec<u8> = (0..(i % 200 + 1)).map(|j| (i * 31 + j * 7) as u8).collect();
        let _ = sock.send_to(&junk, &to);
        let _ = sock.send_to(&stun, &to);
        let _ = sock.send_to(&[0x80, 96, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3], &to);
        let _ = sock.send_to(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3], &to);
    }
    s.wait_for(10, "garbage datagrams counted", || {
        s.metric("medrelay_sfu_udp_unknown_total") >= before + 1000.0
    });

    // The room is unaffected.
    assert_media_flows(&s, &b, &ps[0].0, "B after the attacks", Duration::from_secs(10));
    assert_media_flows(&s, &a, &ps[1].0, "A after the attacks", Duration::from_secs(10));
    let status = s.get_json(&format!("/api/rooms/{room}"));
    assert_eq!(status["connected"].as_array().map(|v| v.len()), Some(2), "{status}");
    // Bad API input gets clear errors.
    let (code, v) = s.post_json(
        "/api/rooms",
        &json!({"participants": [{"name": "x", "role": "janitor"}]}),
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = s.post_json("/api/rooms", &json!({"participants": ["nobody"]}));
    assert_eq!(code, 404, "{v}");
    assert_eq!(s.delete("/api/rooms/r_doesnotexist"), 404);
}

/// Opens a page (`/consult#token=…` or, from the broadcast API,
/// `/broadcast#token=…`) and waits until it has joined.
///
/// `receive_only`: a page that opens no camera or microphone loads and joins,
/// yet chromedriver reports its navigation as timed out (after the full
/// page-load wait: a shorter one aborted slow loads in CI); for those the
/// error is tolerated and what counts is the page reaching `joined`.
fn open_joined(ch: &Chromium, s: &Server, auth: &Auth, url: &str, receive_only: bool) -> Session {
    open_joined_with(ch, s, auth, url, receive_only, SessionOpts::default())
}

fn open_joined_with(
    ch: &Chromium,
    s: &Server,
    auth: &Auth,
    url: &str,
    receive_only: bool,
    opts: SessionOpts,
) -> Session {
    let sess = browser_as(ch, s, auth, &opts);
    let nav = sess.goto(&format!("https://127.0.0.1:{}{url}&autojoin=1", s.http_port));
    match nav {
        Err(e) if receive_only => eprintln!("navigation reported: {e}"),
        other => other.expect("open page"),
    }
    if let Err(e) = sess.wait_for(
        "window.mrTest && window.mrTest.state === 'joined'",
        Duration::from_secs(30),
    ) {
        let logs = sess.console_logs().unwrap_or_default().join("\n");
        panic!("page did not join: {e}\nconsole:\n{logs}\nserver log:\n{}", s.log());
    }
    sess
}

/// Inbound video frame height from `from` (the layer being received).
fn frame_height(sess: &Session, from: &str) -> u64 {
    stats(sess)["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["participant"].as_str() == Some(from) && r["kind"].as_str() == Some("video"))
        .filter_map(|r| r["frameHeight"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Clicks the first element matching `css` (a real button on the page).
fn click(sess: &Session, css: &str) {
    let found = sess
        .execute(
            "const e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true",
            vec![json!(css)],
        )
        .expect("click");
    assert_eq!(found, json!(true), "nothing to click at {css}");
}

fn floor(sess: &Session) -> Value {
    sess.execute("return window.mrTest.floor", vec![]).expect("floor")
}

#[test]
fn broadcast_floor_a_viewer_raises_a_hand_asks_and_is_heard_when_let_speak() {
    let _g = lock();
    let s = hooked(ONE_HOSPITAL);
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "Prof. One"]);
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township"]);
    s.add_user("doc2", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Listener"]);
    let doc = s.login("doc2", PW).expect("clinic login");
    let ch = chromium();
    let page = |who: &str| {
        let sess = ch.session(&SessionOpts::default()).expect("browser session");
        ui_login(&sess, &s, who, PW, "/broadcasts");
        sess.wait_for(
            "window.mrTest.broadcasts && window.mrTest.broadcasts.ready",
            Duration::from_secs(30),
        )
        .expect("broadcasts page");
        sess
    };
    // The expert opens a broadcast from the Broadcasts page and lands on it.
    let presenter = page("exp1");
    presenter
        .send_keys("[data-test=bc-title]", "Fracture review")
        .expect("title");
    presenter.click("[data-test=bc-start]").expect("start");
    let enter = |sess: &Session| {
        // The page may not answer scripts while it loads (a camera opening).
        let deadline = Instant::now() + Duration::from_secs(90);
        while let Err(e) = sess.wait_for(
            "location.pathname === '/broadcast' && window.mrTest && window.mrTest.state === 'prejoin' && !document.querySelector('#join').disabled",
            Duration::from_secs(20),
        ) {
            eprintln!("broadcast page not ready yet: {e}; url {:?}", sess.current_url());
            assert!(Instant::now() < deadline, "the broadcast page never became ready: {:?}", sess.console_logs());
        }
        click(sess, "#join");
        sess.wait_for("window.mrTest.state === 'joined'", Duration::from_secs(30))
            .expect("joined");
    };
    enter(&presenter);
    let presenter_id = presenter
        .execute("return window.mrTest.me.id", vec![])
        .expect("me")
        .as_str()
        .expect("id")
        .to_string();
    // A clinic doctor finds it, not started yet, and joins from the list.
    let asker = page("doc1");
    let rows = asker
        .execute("return window.mrTest.broadcasts.rows", vec![])
        .expect("rows");
    assert_eq!(rows[0]["title"], "Fracture review", "{rows}");
    assert_eq!(rows[0]["on_air"], false, "{rows}");
    asker.click("[data-test=bc-join]").expect("join");
    enter(&asker);
    let (_, listed) = s.req(Some(&doc), "GET", "/api/broadcasts", None);
    let id = listed["broadcasts"][0]["id"].as_str().expect("id").to_string();
    let viewer_url = || {
        let (code, v) = s.req(Some(&doc), "POST", &format!("/api/broadcasts/{id}/join"), None);
        assert_eq!(code, 200, "{v}");
        v["join"]["url"].as_str().expect("url").to_string()
    };
    let other = open_joined(&ch, &s, &doc, &viewer_url(), true);
    let asker_id = asker
        .execute("return window.mrTest.me.id", vec![])
        .expect("me")
        .as_str()
        .expect("id")
        .to_string();

    // Off air: the presenter publishes, the viewers get nothing and are told why.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(floor(&asker)["live"], false);
    assert_eq!(
        inbound_from(&stats(&asker), &presenter_id),
        (0, 0),
        "media before the broadcast started"
    );
    let banner = asker
        .execute(
            "const b = document.querySelector('#banner-offair'); return b.hidden ? '' : b.textContent",
            vec![],
        )
        .expect("banner");
    assert!(banner.as_str().is_some_and(|t| t.contains("not on air")), "{banner}");
    click(&presenter, "#live-toggle");
    assert_media_flows(&s, &asker, &presenter_id, "asker", Duration::from_secs(40));
    assert_eq!(floor(&asker)["live"], true);
    let (_, listed) = s.req(Some(&doc), "GET", "/api/broadcasts", None);
    assert_eq!(listed["broadcasts"][0]["on_air"], true, "{listed}");

    // The asker raises a hand and types a question on its page.
    click(&asker, "#hand-toggle");
    asker
        .execute(
            "document.querySelector('#question-input').value = arguments[0]; \
             document.querySelector('#question-form button[type=submit]').click(); return true",
            vec![json!("Is the fracture line in the second image displaced?")],
        )
        .expect("ask");
    presenter
        .wait_for(
            "window.mrTest.floor.queue.hands.length === 1 && window.mrTest.floor.queue.questions.length === 1",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| {
            panic!(
                "the presenter's queue never showed the hand and question: {e}; {}",
                floor(&presenter)
            )
        });
    let shown = presenter
        .execute(
            "return [...document.querySelectorAll('#floor-questions li .text, #floor-hands li .who')].map(e => e.textContent)",
            vec![],
        )
        .expect("panel");
    assert_eq!(
        shown,
        json!(["Dr. Township", "Is the fracture line in the second image displaced?"]),
        "the presenter's panel"
    );
    for (name, sess) in [("presenter", &presenter), ("asker", &asker)] {
        if let Ok(p) = sess.save_screenshot(&format!("broadcast-floor-{name}")) {
            eprintln!("screenshot: {}", p.display());
        }
    }

    // Let speak (audio only): everyone hears the asker, nobody sees it.
    click(&presenter, "#floor-hands li button.primary");
    asker
        .wait_for("window.mrTest.floor.speaking !== null", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the asker never got the floor: {e}; {}", floor(&asker)));
    assert_eq!(floor(&asker)["speaking"]["video"], false);
    assert_eq!(floor(&asker)["hand"], false, "the hand goes down with the floor");
    for (who, sess) in [("presenter", &presenter), ("other viewer", &other)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (video, audio) = inbound_from(&stats(sess), &asker_id);
            if audio >= 50 {
                assert_eq!(video, 0, "{who} received video from an audio-only speaker");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{who} never heard the asker ({audio} audio packets)"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let named = other
        .execute("return window.mrTest.participants.map(p => p.name)", vec![])
        .expect("participants");
    assert!(
        named.as_array().is_some_and(|n| n.contains(&json!("Dr. Township"))),
        "the other viewer does not know who speaks: {named}"
    );

    // The question is answered; the asker's page says so.
    click(&presenter, "#floor-questions li button.primary");
    asker
        .wait_for(
            "window.mrTest.floor.questions.some(q => q.state === 'answered')",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("the asker never saw its question answered: {e}; {}", floor(&asker)));

    // The presenter ends the turn: the asker's microphone stops going out.
    click(&presenter, "#floor-speakers li button");
    asker
        .wait_for("window.mrTest.floor.speaking === null", Duration::from_secs(10))
        .expect("the turn ended on the asker's page");
    other
        .wait_for(
            "!window.mrTest.participants.some(p => p.name === 'Dr. Township')",
            Duration::from_secs(10),
        )
        .expect("the other viewer forgot the speaker");
    let (_, before) = inbound_from(&stats(&presenter), &asker_id);
    std::thread::sleep(Duration::from_secs(3));
    let (_, after) = inbound_from(&stats(&presenter), &asker_id);
    assert!(
        after <= before + 5,
        "the asker is still heard after its turn: {before} -> {after}"
    );

    // Off air again: the viewers are told.
    click(&presenter, "#live-toggle");
    other
        .wait_for("window.mrTest.floor.live === false", Duration::from_secs(10))
        .expect("the viewer learned the broadcast stopped");
}

#[test]
fn broadcast_simulcast_gives_each_viewer_its_layer_and_a_late_viewer_starts_from_the_cache() {
    let _g = lock();
    let s = hooked(ONE_HOSPITAL);
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "Prof. One"]);
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01"]);
    let exp = s.login("exp1", PW).expect("expert login");
    let doc = s.login("doc1", PW).expect("clinic login");
    let (code, created) = s.req(
        Some(&exp),
        "POST",
        "/api/broadcasts",
        Some(json!({ "title": "Reading chest CT" })),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["broadcast"]["id"].as_str().expect("id").to_string();
    let presenter_id = created["join"]["participant"].as_str().expect("pid").to_string();
    let viewer_url = || {
        let (code, v) = s.req(Some(&doc), "POST", &format!("/api/broadcasts/{id}/join"), None);
        assert_eq!(code, 200, "{v}");
        v["join"]["url"].as_str().expect("url").to_string()
    };
    // One township viewer behind a 1 Mbit/s downlink (the user-space link
    // emulator, 20 ms each way); the others reach the server directly.
    let proxy_port = free_udp_port();
    let _link = impair_with(
        proxy_port,
        s.sfu_port,
        20,
        0.0,
        &["--down-rate-kbps", "1000", "--queue-ms", "300"],
    );

    let ch = chromium();
    let viewers: Vec<Session> = (0..2)
        .map(|_| open_joined(&ch, &s, &doc, &viewer_url(), true))
        .collect();
    let slow_url = format!("{}&via=127.0.0.1:{proxy_port}", viewer_url());
    let slow = open_joined(&ch, &s, &doc, &slow_url, true);
    // The presenter's camera shows a clip that costs what a real camera
    // does (see `busy_camera_y4m`): each layer fills its cap.
    let clip = s.dir.join("busy-camera.y4m");
    support::busy_camera_y4m(&clip);
    let presenter = open_joined_with(
        &ch,
        &s,
        &exp,
        created["join"]["url"].as_str().expect("url"),
        false,
        SessionOpts {
            extra_args: vec![format!("--use-file-for-fake-video-capture={}", clip.display())],
            ..SessionOpts::default()
        },
    );
    click(&presenter, "#live-toggle");
    let started = Instant::now();
    for (i, v) in viewers.iter().chain([&slow]).enumerate() {
        assert_media_flows(&s, v, &presenter_id, &format!("viewer {i}"), Duration::from_secs(40));
        // Receive only: the page published nothing, and it sees the presenter alone.
        let st = stats(v);
        assert!(
            st["outbound"].as_array().is_none_or(|o| o.is_empty()),
            "viewer {i} sends media: {st}"
        );
        let others = v
            .execute("return window.mrTest.participants.map(p => p.role)", vec![])
            .expect("participants");
        assert_eq!(others, json!(["expert"]), "viewer {i} sees {others}");
        let kind = v.execute("return window.mrTest.room.kind", vec![]).expect("room");
        assert_eq!(kind, json!("broadcast"));
    }
    presenter
        .wait_for("window.mrTest.viewers === 3", Duration::from_secs(10))
        .expect("presenter's viewer count");

    // The presenter sends three layers (rids q, h, f).
    let deadline = Instant::now() + Duration::from_secs(30);
    let layers = loop {
        let st = stats(&presenter);
        let rids: Vec<String> = st["outbound"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["kind"].as_str() == Some("video") && o["framesEncoded"].as_u64().unwrap_or(0) > 0)
            .filter_map(|o| o["rid"].as_str().map(str::to_string))
            .collect();
        if rids.len() == 3 || Instant::now() > deadline {
            break (rids, st);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        layers.0.len(),
        3,
        "the presenter does not send three layers: {}",
        layers.1
    );

    // How far the direct viewers climb in a minute is recorded, not
    // asserted: layers follow the browsers' receive-side estimate (REMB),
    // which Chromium raises by about 15 kbit/s per second, so reaching the
    // 1.5 Mbit/s layer took 110-133 s in quiet local runs, over 240 s after
    // one dip of the estimate, and never within 420 s on a loaded 2-core CI
    // machine (heights [180, 180]). Reaching the top layer in seconds is the
    // send-side estimator's goal in the video issue, whose test asserts it.
    // What the current allocator must guarantee is asserted below: no
    // viewer is given a layer its link cannot carry, and every one plays.
    let deadline = Instant::now() + Duration::from_secs(60);
    let fast = loop {
        let fast: Vec<u64> = viewers.iter().map(|v| frame_height(v, &presenter_id)).collect();
        if fast.iter().any(|&h| h >= 720) || Instant::now() > deadline {
            break fast;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(fast.iter().all(|&h| h > 0), "a direct viewer shows no video: {fast:?}");
    // What each layer costs, from the presenter's own counters over 4 s.
    let sent = |st: &Value| -> Vec<(String, u64)> {
        st["outbound"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| Some((o["rid"].as_str()?.to_string(), o["bytesSent"].as_u64()?)))
            .collect()
    };
    let s0 = sent(&stats(&presenter));
    std::thread::sleep(Duration::from_secs(4));
    let s1 = sent(&stats(&presenter));
    let rate = |rid: &str| -> u64 {
        let b = |v: &[(String, u64)]| v.iter().find(|x| x.0 == rid).map_or(0, |x| x.1);
        (b(&s1) - b(&s0)) * 8 / 4
    };
    let rates: Vec<u64> = ["q", "h", "f"].iter().map(|r| rate(r)).collect();
    // The best layer a 1 Mbit/s link carries next to the audio, with the
    // server's 10 % headroom.
    let fits = rates.iter().rposition(|&r| r + 40_000 <= 900_000).unwrap_or(0) as u64;
    let slow_height = frame_height(&slow, &presenter_id);
    let slow_link = slow.execute("return window.mrTest.link", vec![]).expect("link");
    eprintln!(
        "simulcast: direct viewers at {fast:?} after {:.0} s; the 1 Mbit/s viewer at {slow_height}p, link {slow_link}; \
         layer switches {}, probe packets {}",
        started.elapsed().as_secs_f64(),
        s.metric("medrelay_sfu_layer_switches_total"),
        s.metric("medrelay_sfu_probe_packets_total"),
    );
    eprintln!("layer rates (bit/s) q/h/f: {rates:?}; a 1 Mbit/s link carries layer {fits}");
    assert!(slow_height > 0, "the 1 Mbit/s viewer shows no video");
    assert_eq!(slow_link["layers"], json!(3), "{slow_link}");
    assert!(
        slow_link["layer"].as_u64().is_some_and(|l| l <= fits),
        "the 1 Mbit/s viewer gets a layer its link cannot carry: {slow_link}, layer rates {rates:?}"
    );
    // The clip makes the top layer cost more than the link carries, so the
    // 1 Mbit/s viewer must be on a lower layer than the direct viewers.
    assert!(fits < 2, "the top layer fits a 1 Mbit/s link: layer rates {rates:?}");
    assert!(slow_height < 720, "{slow_height}p on a link the top layer does not fit");
    let (v0, _) = inbound_from(&stats(&slow), &presenter_id);
    std::thread::sleep(Duration::from_secs(3));
    let (v1, _) = inbound_from(&stats(&slow), &presenter_id);
    assert!(v1 >= v0 + 20, "the 1 Mbit/s viewer's video stalled: {v0} -> {v1}");

    // The presenter shares a screen (full resolution, low frame rate), and
    // 20 load-generator viewers (`medrelay loadtest`: rtc peers with their
    // own signaling, ICE, DTLS and SRTP) join the same broadcast next to the
    // browsers.
    presenter.click("button[data-action='screen']").expect("share screen");
    let report = s.dir.join("loadtest.json");
    let mut load = Command::new(env!("CARGO_BIN_EXE_medrelay"))
        .args([
            "loadtest",
            "--server",
            &format!("https://127.0.0.1:{}", s.http_port),
            "--ca",
        ])
        .arg(s.dir.join("certs/medrelay.crt"))
        .args([
            "--broadcast",
            &id,
            "--viewer",
            "doc1",
            "--viewers",
            "20",
            "--join-secs",
            "4",
        ])
        .args(["--settle-secs", "4", "--secs", "8", "--json"])
        .arg(&report)
        .env("MEDRELAY_VIEWER_PASSWORD", PW)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("medrelay loadtest");
    viewers[0]
        .wait_for(
            &format!(
                "window.mrTest.stats().then(s => s.inbound.find(r => r.participant === '{presenter_id}' && r.source === 'screen' && r.framesDecoded > 5) || null)"
            ),
            Duration::from_secs(40),
        )
        .unwrap_or_else(|e| panic!("the screen share never reached a browser viewer: {e}"));
    // Starting the share renegotiated the presenter's connection long after
    // its camera layers stopped naming themselves (mid/rid): the camera
    // must still reach the browsers (see vendor/rtc/PATCHES.md).
    let camera_frames = |v: &Session| -> u64 {
        stats(v)["inbound"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["participant"].as_str() == Some(presenter_id.as_str()) && r["source"] == "camera")
            .filter_map(|r| r["framesDecoded"].as_u64())
            .sum()
    };
    let c0: Vec<u64> = viewers.iter().map(camera_frames).collect();
    std::thread::sleep(Duration::from_secs(3));
    let c1: Vec<u64> = viewers.iter().map(camera_frames).collect();
    assert!(
        c0.iter().zip(&c1).all(|(a, b)| *b >= a + 20),
        "a browser viewer's camera stalled after the screen share began: {c0:?} -> {c1:?}"
    );
    presenter
        .wait_for("window.mrTest.viewers >= 20", Duration::from_secs(30))
        .expect("presenter's count with the load-generator viewers");
    let out = loop {
        if let Some(st) = load.try_wait().expect("loadtest") {
            let mut text = String::new();
            use std::io::Read;
            if let Some(mut o) = load.stdout.take() {
                let _ = o.read_to_string(&mut text);
            }
            if let Some(mut e) = load.stderr.take() {
                let _ = e.read_to_string(&mut text);
            }
            assert!(st.success(), "loadtest failed: {text}");
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let r: Value = serde_json::from_slice(&std::fs::read(&report).expect("loadtest report")).expect("json");
    eprintln!("load-generator viewers next to the browsers:\n{out}");
    assert_eq!(r["errors"], json!(0), "{r}");
    assert_eq!(r["receiving_video"], json!(20), "{r}");
    assert_eq!(r["receiving_audio"], json!(20), "{r}");
    // Each receives both the camera and the screen share.
    assert_eq!(r["video_offered"]["min"], json!(2), "{r}");
    assert_eq!(r["video_streams"]["min"], json!(2), "{r}");
    assert!(r["delivered_ratio"]["min"].as_f64().is_some_and(|x| x >= 0.95), "{r}");
    presenter
        .wait_for("window.mrTest.viewers === 3", Duration::from_secs(20))
        .expect("the load-generator viewers left");

    // A viewer arriving 30 s into the lecture is served the cached group of
    // pictures: video at once, and no keyframe request for it.
    if let Some(wait) = Duration::from_secs(30).checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
    let replays = s.metric("medrelay_sfu_gop_replays_total");
    let newcomer_plis = s.metric("medrelay_sfu_keyframe_newcomer_total");
    let late = open_joined(&ch, &s, &doc, &viewer_url(), true);
    assert_media_flows(&s, &late, &presenter_id, "late viewer", Duration::from_secs(30));
    let first_frame = late
        .execute("return window.mrTest.firstFrameMs", vec![])
        .expect("firstFrameMs");
    eprintln!(
        "late viewer {:.0} s into the broadcast: first frame {first_frame} ms after joining",
        started.elapsed().as_secs_f64()
    );
    assert!(
        s.metric("medrelay_sfu_gop_replays_total") >= replays + 1.0,
        "the late viewer was not served from the cache"
    );
    assert_eq!(
        s.metric("medrelay_sfu_keyframe_newcomer_total"),
        newcomer_plis,
        "the late viewer cost the presenter a keyframe request:\n{}",
        s.log()
            .lines()
            .filter(|l| l.contains("newcomer keyframe"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(first_frame.as_u64().is_some(), "{first_frame}");
    presenter
        .wait_for("window.mrTest.viewers === 4", Duration::from_secs(10))
        .expect("presenter's viewer count after the late viewer");
    // No viewer's media connection failed on the way. This machine has a
    // loopback and an Ethernet address, so Chromium moves its connection
    // to the Ethernet pair after the first nomination; an SFU that did not
    // follow it failed the connection and the page started over every
    // ~24 s (vendor/rtc-ice/PATCHES.md).
    for (i, v) in viewers.iter().chain([&slow, &late]).enumerate() {
        let errors = v.execute("return window.mrTest.errors", vec![]).expect("errors");
        let failed: Vec<&Value> = errors
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["code"] == "connect_timeout" || e["message"].as_str().is_some_and(|m| m.contains("media connection"))
            })
            .collect();
        assert!(failed.is_empty(), "viewer {i} had to start over: {failed:?}");
    }
}
