//! The pages' languages in headless Chromium: the login page and the page
//! header in zh-CN and en with no text in the other language
//! (tests/support/i18n.rs), the switcher re-translating in place without
//! losing what was typed, the account's setting winning over the browser's
//! Accept-Language, server errors shown from their codes, and Tibetan text
//! drawn with a Tibetan font. Screenshots: target/screenshots/i18n-*.png.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::i18n::{self, assert_translated, screenshot, switch_to};
use support::webdriver::{Chromium, Session, SessionOpts};
use support::*;

const PW: &str = "correct-horse-battery";
const T: Duration = Duration::from_secs(60);

fn server() -> Server {
    let s = Server::start(ServerOpts {
        config_toml: ONE_HOSPITAL.into(),
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township One"]);
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "李医生"]);
    s
}

fn js(sess: &Session, expr: &str) -> Value {
    sess.execute(&format!("return {expr}"), vec![]).unwrap_or(Value::Null)
}

fn goto(sess: &Session, s: &Server, path: &str) {
    sess.goto(&format!("https://127.0.0.1:{}{path}", s.http_port))
        .expect("page");
    i18n::wait_ready(sess).unwrap_or_else(|e| panic!("{path}: i18n not ready: {e}; console {:?}", sess.console_logs()));
}

fn login_error(sess: &Session) -> String {
    sess.wait_for(
        "(() => { const b = document.querySelector('[data-test=login-error]'); return !!b && !b.hidden && b.textContent.length > 0; })()",
        T,
    )
    .expect("a login error is shown");
    js(sess, "document.querySelector('[data-test=login-error]').textContent")
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn login_page_in_chinese_and_english_switches_in_place() {
    let s = server();
    let ch = Chromium::launch().expect("chromedriver");

    // Without --lang (as every other browser test runs) the page is English.
    let plain = ch.session(&SessionOpts::default()).expect("session");
    goto(&plain, &s, "/login");
    assert_eq!(
        i18n::page_lang(&plain),
        "en",
        "headless Chromium's default language is English"
    );
    assert_translated(&plain, "login", None);
    drop(plain);

    let sess = ch.session(&i18n::opts("zh-CN")).expect("session");
    goto(&sess, &s, "/login");
    assert_eq!(
        js(&sess, "navigator.language"),
        json!("zh-CN"),
        "--lang reached the browser"
    );
    assert_eq!(i18n::page_lang(&sess), "zh-CN");
    assert_eq!(js(&sess, "document.documentElement.lang"), json!("zh-CN"));
    assert_eq!(
        js(&sess, "document.documentElement.dataset.mrLangFrom"),
        json!("browser"),
        "the server chose it from Accept-Language"
    );
    assert_eq!(
        js(&sess, "document.querySelector('[data-test=login]').textContent"),
        json!("登录")
    );
    assert_eq!(js(&sess, "document.title"), json!("登录 — medrelay"));
    assert_translated(&sess, "login", None);
    screenshot(&sess, "login");

    // A refused login is shown from its code, in Chinese.
    sess.send_keys("[data-test=username]", "doc1").expect("type");
    sess.send_keys("[data-test=password]", "wrong-password").expect("type");
    sess.click("[data-test=login]").expect("click");
    assert_eq!(login_error(&sess), "用户名或密码错误");
    assert_translated(&sess, "login error", None);
    screenshot(&sess, "login-error");

    // Switching keeps what was typed and re-translates what is shown,
    // the error included.
    sess.send_keys("[data-test=password]", "half-typed").expect("type");
    switch_to(&sess, "en");
    assert_eq!(
        js(&sess, "document.querySelector('[data-test=username]').value"),
        json!("doc1")
    );
    assert_eq!(
        js(&sess, "document.querySelector('[data-test=password]').value"),
        json!("half-typed")
    );
    assert_eq!(login_error(&sess), "Wrong username or password");
    assert_eq!(js(&sess, "document.documentElement.lang"), json!("en"));
    assert_translated(&sess, "login", None);
    screenshot(&sess, "login");

    // The choice is kept in this browser: a reload stays English although
    // the browser asks for Chinese.
    goto(&sess, &s, "/login");
    assert_eq!(i18n::page_lang(&sess), "en");
    assert_translated(&sess, "login", None);
    switch_to(&sess, "zh-CN");
    assert_translated(&sess, "login", None);
}

#[test]
fn header_is_translated_and_the_account_setting_wins_over_the_browser() {
    let s = server();
    let ch = Chromium::launch().expect("chromedriver");
    let sess = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&sess, &s, "exp1", PW, "/studies");
    i18n::wait_ready(&sess).expect("ready");
    sess.wait_for("!!document.querySelector('.app-header [data-test=logout]')", T)
        .expect("header");
    assert_eq!(i18n::page_lang(&sess), "zh-CN");
    assert_eq!(
        js(&sess, "document.querySelector('[data-test=logout]').textContent"),
        json!("退出登录")
    );
    assert_translated(&sess, "studies-header", Some(".app-header"));
    screenshot(&sess, "studies-header");

    // The switcher re-translates the header in place and saves the choice
    // to the account.
    switch_to(&sess, "en");
    assert_eq!(
        js(&sess, "document.querySelector('[data-test=logout]').textContent"),
        json!("Log out")
    );
    assert_translated(&sess, "studies-header", Some(".app-header"));
    sess.wait_for("window.mrTest.i18n.saved === true", T)
        .expect("saved to the account");
    screenshot(&sess, "studies-header");

    // A fresh browser (no localStorage) asking for Chinese gets English: the
    // account's setting wins over Accept-Language.
    let other = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&other, &s, "exp1", PW, "/studies");
    i18n::wait_ready(&other).expect("ready");
    assert_eq!(
        js(&other, "document.documentElement.dataset.mrLangFrom"),
        json!("account")
    );
    assert_eq!(i18n::page_lang(&other), "en");
    other
        .wait_for("!!document.querySelector('.app-header [data-test=logout]')", T)
        .expect("header");
    assert_translated(&other, "studies-header", Some(".app-header"));

    // The API: GET /api/me names it, null follows the browser again, and an
    // unknown language is refused with its code.
    let a = s.login("exp1", PW).expect("login");
    let (code, body) = http_send_as(s.http_port, "GET", "/api/me", None, Some(&a));
    let me: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((code, &me["user"]["language"]), (200, &json!("en")), "{me}");
    let (code, body) = http_send_as(
        s.http_port,
        "PUT",
        "/api/me/language",
        Some(&json!({"language": "fr"})),
        Some(&a),
    );
    let err: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((code, &err["code"]), (400, &json!("bad_language")), "{err}");
    let (code, _) = http_send_as(
        s.http_port,
        "PUT",
        "/api/me/language",
        Some(&json!({"language": null})),
        Some(&a),
    );
    assert_eq!(code, 200);
    let third = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&third, &s, "exp1", PW, "/studies");
    i18n::wait_ready(&third).expect("ready");
    assert_eq!(i18n::page_lang(&third), "zh-CN", "null follows the browser");
}

/// Tibetan patient names and free text render with a Tibetan font (the
/// bundled one when the system has none) rather than missing-glyph boxes,
/// and do not break the row they are in.
#[test]
fn tibetan_text_renders_with_a_tibetan_font() {
    let s = server();
    let ch = Chromium::launch().expect("chromedriver");
    let sess = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&sess, &s, "doc1", PW, "/studies");
    i18n::wait_ready(&sess).expect("ready");
    sess.wait_for("!!document.querySelector('.app-header')", T)
        .expect("header");
    let r = sess
        .execute_async(
            r#"
const done = arguments[arguments.length - 1];
const name = 'ཚེ་རིང་དབང་མོ།';
const text = 'བོད་ཀྱི་སྨན་ཁང་དུ་CT་བརྟག་དཔྱད་བྱས།';
const table = document.createElement('table');
table.className = 'data';
table.innerHTML = '<tbody><tr id="tib-row"><td translate="no" id="tib-name"></td><td translate="no" id="tib-text"></td><td>2026-12-07 14:30</td></tr></tbody>';
table.querySelector('#tib-name').textContent = name;
table.querySelector('#tib-text').textContent = text;
(document.querySelector('main') || document.body).prepend(table);
// The same name in the same cell style where no font has the glyphs
// (missing-glyph boxes), and in the stack as it was before the fonts.
const probe = (font) => {
  const c = table.querySelector('#tib-name').cloneNode(true);
  c.removeAttribute('id');
  c.style.fontFamily = font;
  table.querySelector('tr').append(c);
  return c;
};
const tofu = probe('"DejaVu Sans Mono"');
const before = probe('system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", "Microsoft YaHei", sans-serif');
const width = (e) => { const r = document.createRange(); r.selectNodeContents(e); return r.getBoundingClientRect().width; };
document.body.offsetWidth;
document.fonts.ready.then(() => {
  const row = document.querySelector('#tib-row').getBoundingClientRect();
  const cell = document.querySelector('#tib-text').getBoundingClientRect();
  done({
    family: getComputedStyle(document.querySelector('#tib-name')).fontFamily,
    loaded: [...document.fonts].filter((f) => f.status === 'loaded').map((f) => f.family),
    check: document.fonts.check('15px "medrelay Tibetan"', name),
    tofu: width(tofu),
    before: width(before),
    shown: width(document.querySelector('#tib-name')),
    rowHeight: row.height,
    lineHeight: parseFloat(getComputedStyle(document.body).lineHeight) || 21,
    cellRight: cell.right,
    viewport: document.documentElement.clientWidth,
  });
});
"#,
            vec![],
        )
        .expect("measure");
    println!("tibetan: {r}");
    screenshot(&sess, "tibetan");
    let family = r["family"].as_str().unwrap_or("");
    assert!(
        family.contains("Noto Sans CJK SC") && family.contains("medrelay Tibetan"),
        "{family}"
    );
    let loaded = r["loaded"].to_string();
    assert!(
        loaded.contains("medrelay Tibetan"),
        "the page's Tibetan text made the bundled font load: {r}"
    );
    assert_eq!(r["check"], json!(true), "{r}");
    let (tofu, shown) = (r["tofu"].as_f64().unwrap_or(0.0), r["shown"].as_f64().unwrap_or(0.0));
    assert!(
        shown > 10.0 && (shown - tofu).abs() > 2.0,
        "drawn as missing-glyph boxes: {r}"
    );
    // Without a Tibetan font on the system the old stack drew boxes: then
    // this comparison is the test's own proof that it can fail.
    println!("old stack width {} vs boxes {tofu}", r["before"]);
    let (h, line) = (
        r["rowHeight"].as_f64().unwrap_or(0.0),
        r["lineHeight"].as_f64().unwrap_or(21.0),
    );
    assert!(
        h > 0.0 && h < 3.5 * line,
        "the row keeps one line's height (stacked vowels included): {r}"
    );
    assert!(
        r["cellRight"].as_f64().unwrap_or(f64::MAX) <= r["viewport"].as_f64().unwrap_or(0.0) + 1.0,
        "the row stays in the page: {r}"
    );
}
