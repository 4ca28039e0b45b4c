//! The consultation page (web/consult.html, web/consult*.js; also served as
//! /broadcast) in zh-CN and en, in headless Chromium against the real
//! gateway: every state a person reaches (a link without a token, the
//! pre-join preview, the room with a participant, chat and the shared study,
//! the viewer's errors, the link details, leaving, a room closed by its
//! owner, and a teaching broadcast's floor for the presenter and a viewer)
//! shows no interface text in the other language outside data
//! (tests/support/i18n.rs), and a language switch in the room keeps the
//! call, the study on screen and a half-typed chat message.
//! Screenshots: target/screenshots/i18n-consult-*.png, i18n-broadcast-*.png.

mod support;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use support::i18n::{self, assert_translated, screenshot, switch_to};
use support::webdriver::{Chromium, Session};
use support::*;

const PW: &str = "correct-horse-battery";
const T: Duration = Duration::from_secs(60);

// Browser tests share the machine's two cores: one at a time.
static BROWSERS: Mutex<()> = Mutex::new(());

/// Latin display names on purpose: shown as data (translate="no"), they
/// must not count as untranslated English.
fn server() -> Server {
    let s = Server::start(ServerOpts {
        config_toml: format!("[http]\ntest_hooks = true\n{ONE_HOSPITAL}"),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township"]);
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "Dr. City"]);
    s
}

fn login(s: &Server, user: &str) -> Auth {
    s.login(user, PW).unwrap_or_else(|e| panic!("login {user}: {e:?}"))
}

fn chromium() -> Chromium {
    Chromium::launch().unwrap_or_else(|e| panic!("chromium/chromedriver (tests/support/setup.sh installs them): {e}"))
}

fn js(sess: &Session, expr: &str) -> Value {
    sess.execute(&format!("return {expr}"), vec![]).unwrap_or(Value::Null)
}

fn wait(sess: &Session, expr: &str, what: &str) {
    if let Err(e) = sess.wait_for(expr, T) {
        panic!("{what}: {e}\nconsole: {:?}", sess.console_logs());
    }
}

/// A browser in `lang` holding `auth`'s session.
fn browser_as(ch: &Chromium, s: &Server, auth: &Auth, lang: &str) -> Session {
    let sess = ch.session(&i18n::opts(lang)).expect("browser session");
    sess.goto(&format!("https://127.0.0.1:{}/api/health", s.http_port))
        .expect("origin");
    sess.add_cookie("mr_session", &auth.session_token()).expect("cookie");
    sess
}

fn open(sess: &Session, s: &Server, path: &str) {
    sess.goto(&format!("https://127.0.0.1:{}{path}", s.http_port))
        .expect("page");
    i18n::wait_ready(sess).unwrap_or_else(|e| panic!("{path}: i18n not ready: {e}; console {:?}", sess.console_logs()));
}

/// Opens a join link with `#autojoin=1` and waits until the page joined.
/// The page may not answer WebDriver while it opens the camera on a busy
/// machine: a navigation time-out is only noted, the join is what counts.
fn open_joined(sess: &Session, s: &Server, url: &str) {
    if let Err(e) = sess.goto(&format!("https://127.0.0.1:{}{url}&autojoin=1", s.http_port)) {
        eprintln!("navigation reported: {e}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while let Err(e) = sess.wait_for(
        "document.documentElement.dataset.i18nReady !== undefined && window.mrTest && window.mrTest.state === 'joined'",
        Duration::from_secs(20),
    ) {
        eprintln!("not joined yet: {e}");
        assert!(
            std::time::Instant::now() < deadline,
            "the page never joined: {:?}",
            sess.console_logs()
        );
    }
}

/// Clicks the first element matching `css` from script (works whatever the layout).
fn click(sess: &Session, css: &str) {
    let found = sess
        .execute(
            "const e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true",
            vec![json!(css)],
        )
        .expect("click");
    assert_eq!(found, json!(true), "nothing to click at {css}");
}

/// Types `text` into the viewer's study field and submits it.
fn load_study(sess: &Session, text: &str) {
    sess.execute(
        "const i = document.querySelector('#study-uid'); i.value = arguments[0]; \
         document.querySelector('[data-study-form] button[type=submit]').click(); return true",
        vec![json!(text)],
    )
    .expect("load study");
}

/// The clinic's CT pushes five slices; their study's UID.
fn seed_study(s: &Server) -> String {
    let files: Vec<PathBuf> = (1..=5).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(&files);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(60, "the study is stored", || {
        s.sqlite("SELECT COUNT(*) FROM instances") == "5" && s.sqlite("SELECT COUNT(*) FROM studies") == "1"
    });
    s.sqlite("SELECT study_uid FROM studies")
}

#[test]
fn consultation_room_in_chinese_and_english_keeps_its_state_on_a_switch() {
    let _g = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    let uid = seed_study(&s);
    let exp = login(&s, "exp1");
    let doc = login(&s, "doc1");
    let (code, room) = s.req(
        Some(&exp),
        "POST",
        "/api/rooms",
        Some(json!({ "title": "Chest CT second opinion", "participants": ["doc1"] })),
    );
    assert_eq!(code, 201, "create room: {room}");
    let room_id = room["id"].as_str().expect("room id").to_string();
    let token = |user: &str| {
        room["participants"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["username"] == user))
            .and_then(|p| p["token"].as_str())
            .unwrap_or_else(|| panic!("{user} not in {room}"))
            .to_string()
    };
    let ch = chromium();

    // A link without its token: the page says what to do, in Chinese.
    let clinic = browser_as(&ch, &s, &doc, "zh-CN");
    open(&clinic, &s, "/consult");
    wait(
        &clinic,
        "document.querySelector('#prejoin-msg').textContent.length > 0",
        "the no-token message",
    );
    assert_eq!(i18n::page_lang(&clinic), "zh-CN");
    assert_translated(&clinic, "consult-no-token", None);

    // The pre-join preview with the camera and microphone choice (away
    // first: a new fragment alone would not load the page again).
    clinic
        .goto(&format!("https://127.0.0.1:{}/api/health", s.http_port))
        .expect("away");
    open(&clinic, &s, &format!("/consult#token={}", token("doc1")));
    wait(&clinic, "!document.querySelector('#join').disabled", "the join button");
    assert_translated(&clinic, "consult-prejoin", None);
    screenshot(&clinic, "consult-prejoin");
    click(&clinic, "#join");
    wait(&clinic, "window.mrTest.state === 'joined'", "the clinic joins");

    // The expert joins: a tile and a chat note with the name (data).
    let expert = browser_as(&ch, &s, &exp, "zh-CN");
    open_joined(&expert, &s, &format!("/consult#token={}", token("exp1")));
    wait(
        &clinic,
        "document.querySelectorAll('#tiles .tile:not(.self)').length === 1 && !!document.querySelector('.chat-list li.note')",
        "the expert's tile and the join note",
    );

    // The viewer's errors: a malformed UID, then a study nobody has (the
    // server's code, shown in the page's language).
    load_study(&clinic, "not-a-uid");
    wait(
        &clinic,
        "document.querySelector('[data-status]').classList.contains('error')",
        "the malformed-UID message",
    );
    assert_translated(&clinic, "consult-bad-uid", Some("#panel-study"));
    load_study(&clinic, "1.2.826.0.1.99999.1");
    wait(
        &clinic,
        "document.querySelectorAll('[data-status] span').length === 2",
        "the load error with its cause",
    );
    let status = js(&clinic, "document.querySelector('[data-status]').textContent");
    assert!(
        status.as_str().is_some_and(|t| t.contains("无法加载检查")),
        "the load error: {status}"
    );
    assert_translated(&clinic, "consult-viewer-error", None);
    screenshot(&clinic, "consult-viewer-error");

    // The study, shared: the expert's page follows and says whose view it is.
    load_study(&clinic, &uid);
    wait(
        &clinic,
        "document.querySelector('[data-stage]').classList.contains('has-image')",
        "the study on the clinic's screen",
    );
    wait(
        &expert,
        "document.querySelector('[data-stage]').classList.contains('has-image') && document.querySelector('[data-follow]').textContent.length > 0",
        "the expert follows the clinic's view",
    );
    expert
        .execute(
            "return window.mrTest.sendChat(arguments[0])",
            vec![json!("请看第三幅，右肺下叶")],
        )
        .expect("chat");
    wait(&clinic, "window.mrTest.chat.length === 1", "the chat message");
    // A half-typed chat message, and the link details open.
    clinic
        .execute(
            "document.querySelector('#chat-input').value = arguments[0]; return true",
            vec![json!("看到了，结节边缘")],
        )
        .expect("type");
    wait(
        &clinic,
        "document.querySelector('#link').dataset.level !== 'none'",
        "a link measurement",
    );
    click(&clinic, "#link");
    wait(
        &clinic,
        "!document.querySelector('#link-details').hidden",
        "the link details",
    );
    assert_translated(&clinic, "consult-room", None);
    screenshot(&clinic, "consult-room");
    // The expert has the device settings open (camera and microphone choice).
    click(&expert, "[data-action=settings]");
    wait(
        &expert,
        "!document.querySelector('#settings').hidden",
        "the device settings",
    );
    assert_translated(&expert, "consult-room-expert", None);
    screenshot(&expert, "consult-room-expert");

    // Switch to English in the room: nothing reloads, everything follows.
    let img = js(&clinic, "document.querySelector('[data-image]').src");
    switch_to(&clinic, "en");
    assert_translated(&clinic, "consult-room", None);
    screenshot(&clinic, "consult-room");
    assert_eq!(js(&clinic, "window.mrTest.state"), json!("joined"), "still in the room");
    assert_eq!(
        js(&clinic, "document.querySelector('#chat-input').value"),
        json!("看到了，结节边缘"),
        "the half-typed message"
    );
    assert_eq!(
        js(&clinic, "document.querySelector('[data-image]').src"),
        img,
        "the image on screen"
    );
    assert_eq!(js(&clinic, "document.querySelector('#study-uid').value"), json!(uid));
    assert_eq!(js(&clinic, "window.mrTest.chat.length"), json!(1), "the chat");
    assert_eq!(js(&clinic, "document.title"), json!("Consultation — medrelay"));
    assert!(
        js(&clinic, "document.querySelector('#link').getAttribute('aria-label')")
            .as_str()
            .is_some_and(|l| l.starts_with("Link quality ")),
        "the link indicator follows the switch"
    );

    // The clinic leaves (English); the expert's page notes it (Chinese).
    click(&clinic, "[data-action=leave]");
    wait(&clinic, "window.mrTest.state === 'left'", "the clinic left");
    assert_translated(&clinic, "consult-left", None);
    screenshot(&clinic, "consult-left");
    wait(
        &expert,
        "document.querySelectorAll('.chat-list li.note').length >= 1 && window.mrTest.participants.length === 0",
        "the leave note",
    );
    assert_translated(&expert, "consult-after-leave", None);

    // The owner closes the room from the API: the page says why it ended.
    assert_eq!(
        s.req(Some(&exp), "DELETE", &format!("/api/rooms/{room_id}"), None).0,
        204
    );
    wait(&expert, "window.mrTest.state === 'error'", "the room closed");
    let title = js(&expert, "document.querySelector('#left-reason').textContent");
    assert_eq!(title, json!("房间已关闭"), "the reason, from error.sig.room_closed");
    assert_translated(&expert, "consult-closed", None);
    screenshot(&expert, "consult-closed");
}

#[test]
fn broadcast_floor_in_chinese_for_the_presenter_and_a_viewer() {
    let _g = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    let exp = login(&s, "exp1");
    let doc = login(&s, "doc1");
    let (code, created) = s.req(
        Some(&exp),
        "POST",
        "/api/broadcasts",
        Some(json!({ "title": "Fracture review" })),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["broadcast"]["id"].as_str().expect("id").to_string();
    let presenter_url = created["join"]["url"].as_str().expect("url").to_string();
    let ch = chromium();

    // Off air: the presenter's floor panel, empty.
    let presenter = browser_as(&ch, &s, &exp, "zh-CN");
    open_joined(&presenter, &s, &presenter_url);
    click(&presenter, "#tab-floor");
    wait(
        &presenter,
        "!document.querySelector('#banner-offair').hidden",
        "off air",
    );
    assert_eq!(js(&presenter, "document.title"), json!("直播教学 — medrelay"));
    assert_translated(&presenter, "broadcast-presenter-offair", None);

    // A clinic doctor watches: told it is not on air yet.
    let (code, v) = s.req(Some(&doc), "POST", &format!("/api/broadcasts/{id}/join"), None);
    assert_eq!(code, 200, "{v}");
    let viewer_url = v["join"]["url"].as_str().expect("url").to_string();
    let viewer = browser_as(&ch, &s, &doc, "zh-CN");
    open_joined(&viewer, &s, &viewer_url);
    click(&viewer, "#tab-floor");
    wait(
        &viewer,
        "!document.querySelector('#banner-offair').hidden",
        "off air for the viewer",
    );
    assert_translated(&viewer, "broadcast-viewer-offair", None);

    // On air; the viewer raises a hand and asks.
    click(&presenter, "#live-toggle");
    wait(&viewer, "window.mrTest.floor.live === true", "on air");
    click(&viewer, "#hand-toggle");
    viewer
        .execute(
            "document.querySelector('#question-input').value = arguments[0]; \
             document.querySelector('#question-form button[type=submit]').click(); return true",
            vec![json!("Is the fracture line displaced?")],
        )
        .expect("ask");
    wait(
        &presenter,
        "window.mrTest.floor.queue.hands.length === 1 && window.mrTest.floor.queue.questions.length === 1 \
         && document.querySelectorAll('#floor-questions li .text').length === 1",
        "the hand and the question in the presenter's queue",
    );
    wait(
        &viewer,
        "document.querySelectorAll('#my-questions li[data-state]').length === 1",
        "the viewer's own question",
    );
    assert_translated(&presenter, "broadcast-presenter-queue", None);
    screenshot(&presenter, "broadcast-presenter");
    assert_translated(&viewer, "broadcast-viewer", None);
    screenshot(&viewer, "broadcast-viewer");

    // The presenter switches to English, the queue stays.
    switch_to(&presenter, "en");
    assert_translated(&presenter, "broadcast-presenter-queue", None);
    screenshot(&presenter, "broadcast-presenter");
    assert_eq!(
        js(
            &presenter,
            "document.querySelector('#floor-hands li button.primary').textContent"
        ),
        json!("Let speak")
    );
    assert_eq!(js(&presenter, "window.mrTest.floor.queue.questions.length"), json!(1));
}
