//! The studies, consultation requests, broadcasts and admin pages in zh-CN
//! and en, in headless Chromium against the real gateway: every state a
//! user reaches (lists with rows, empty lists, dialogs and forms open,
//! errors shown, each role that sees the page) shows no interface text in
//! the other language and looks up no message the catalogue lacks
//! (tests/support/i18n.rs); switching the language keeps what was typed.
//! Screenshots: target/screenshots/i18n-<page>-<lang>.png.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::i18n::{self, assert_translated, screenshot, switch_to};
use support::webdriver::{Chromium, Session};
use support::*;

const PW: &str = "correct-horse-battery";
const T: Duration = Duration::from_secs(90);

const CFG: &str = r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]

[[clinic]]
id = "t02"
name = "Township 02"
ae_titles = ["T02_MR"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01", "t02"]
"#;

/// A gateway with a clinic doctor of each clinic, an expert and an admin.
fn server() -> Server {
    let s = Server::start(ServerOpts {
        config_toml: CFG.into(),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township One"]);
    s.add_user("doc2", "clinic", PW, &["--clinic", "t02", "--name", "Dr. Township Two"]);
    s.add_user(
        "exp1",
        "expert",
        PW,
        &["--hospital", "city", "--name", "Prof. Expert One"],
    );
    s.add_user("adm", "admin", PW, &["--name", "Admin Zhang"]);
    s
}

/// Three CT slices from clinic t01; the study's UID once it is on the worklist.
fn push_study(s: &Server) -> String {
    let files: Vec<PathBuf> = (1..=3).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(&files);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(60, "study on the worklist", || {
        s.sqlite("SELECT COUNT(*) FROM worklist WHERE state = 'new'") == "1"
    });
    s.sqlite("SELECT study_uid FROM studies")
}

fn ok(r: (u16, Value), what: &str) -> Value {
    assert!((200..300).contains(&r.0), "{what}: {} {}", r.0, r.1);
    r.1
}

fn js(sess: &Session, expr: &str) -> Value {
    sess.execute(&format!("return {expr}"), vec![]).unwrap_or(Value::Null)
}

fn wait(sess: &Session, expr: &str, what: &str) {
    if let Err(e) = sess.wait_for(expr, T) {
        panic!("{what}: {e}; console {:?}", sess.console_logs());
    }
}

/// A zh-CN browser logged in as `user` on `page`, once the page is ready.
fn open(ch: &Chromium, s: &Server, user: &str, page: &str, hook: &str) -> Session {
    let sess = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&sess, s, user, PW, page);
    goto(&sess, s, page, hook);
    sess
}

fn goto(sess: &Session, s: &Server, path: &str, hook: &str) {
    sess.goto(&format!("https://127.0.0.1:{}{path}", s.http_port))
        .expect("page");
    i18n::wait_ready(sess).unwrap_or_else(|e| panic!("{path}: i18n not ready: {e}"));
    wait(
        sess,
        &format!("!!(window.mrTest.{hook} && window.mrTest.{hook}.ready)"),
        &format!("{path} ready"),
    );
    assert_eq!(i18n::page_lang(sess), "zh-CN", "{path}");
}

fn visible(sel: &str) -> String {
    format!(
        "(() => {{ const e = document.querySelector({}); return !!e && !e.hidden && e.checkVisibility() && (e.textContent.trim().length > 0 || e.matches('input, textarea, select')); }})()",
        json!(sel)
    )
}

/// A reason longer than the server takes (set by script: the textarea's
/// maxlength only stops typing), so the server answers with an error code.
fn set_too_long(sess: &Session, sel: &str) {
    sess.execute(
        "document.querySelector(arguments[0]).value = '很长的原因'.repeat(500); return true",
        vec![json!(sel)],
    )
    .expect("set the reason");
}

fn close_dialogs(sess: &Session) {
    sess.execute(
        "document.querySelectorAll('dialog').forEach((d) => d.close()); return true",
        vec![],
    )
    .expect("close dialogs");
}

#[test]
fn studies_page_in_chinese_and_english() {
    let s = server();
    let uid = push_study(&s);
    let ch = Chromium::launch().expect("chromedriver");

    // The clinic doctor: the list with a study waiting to be read.
    let doc = open(&ch, &s, "doc1", "/studies", "studies");
    wait(&doc, "window.mrTest.studies.uids.length === 1", "study row");
    assert_eq!(js(&doc, "document.title"), json!("检查列表 — medrelay"));
    assert_translated(&doc, "studies clinic list", None);
    screenshot(&doc, "studies-waiting");

    // The priority dialog, then the cancel dialog with an error from the
    // server (a reason over its limit), shown from its code.
    doc.click("[data-test=raise-priority]").expect("raise priority");
    wait(&doc, &visible("dialog [data-test=priority-select]"), "priority dialog");
    assert_translated(&doc, "studies priority dialog", None);
    screenshot(&doc, "studies-priority");
    close_dialogs(&doc);
    doc.click("[data-test=cancel-reading]").expect("cancel reading");
    wait(&doc, &visible("dialog [data-test=cancel-reason]"), "cancel dialog");
    set_too_long(&doc, "[data-test=cancel-reason]");
    doc.click("[data-test=cancel-submit]").expect("submit");
    wait(&doc, &visible("dialog .form-error"), "error in the dialog");
    assert_eq!(
        js(&doc, "document.querySelector('dialog .form-error').textContent"),
        json!("内容过长（最多 2000 个字符）")
    );
    assert_translated(&doc, "studies cancel error", None);
    screenshot(&doc, "studies-error");
    close_dialogs(&doc);

    // The expert signs a report (Chinese and English text: data): the clinic
    // gets a notification and a report link.
    let exp = s.login("exp1", PW).expect("login");
    ok(
        s.req(Some(&exp), "POST", &format!("/api/worklist/{uid}/claim"), None),
        "claim",
    );
    ok(
        s.req(
            Some(&exp),
            "POST",
            &format!("/api/studies/{uid}/report/sign"),
            Some(json!({ "findings": "右肺下叶见一约8mm结节 (8 mm nodule).", "impression": "Follow-up CT in 3 months." })),
        ),
        "sign",
    );
    goto(&doc, &s, "/studies", "studies");
    wait(&doc, "window.mrTest.studies.uids.length === 1", "study row");
    wait(&doc, "window.mrTest.studies.unread >= 1", "notification");
    assert_eq!(
        js(
            &doc,
            "document.querySelector('[data-test=notif-item] .text > span').textContent"
        ),
        json!("报告已出"),
        "the server's English notification text is shown in Chinese"
    );
    assert_translated(&doc, "studies clinic list reported", None);
    screenshot(&doc, "studies");

    doc.execute(&format!("window.mrTest.studies.openReport({})", json!(uid)), vec![])
        .expect("open report");
    wait(
        &doc,
        "!!(window.mrTest.studies.report && window.mrTest.studies.report.version === 1)",
        "report panel",
    );
    wait(&doc, &visible("[data-test=report-findings]"), "findings shown");
    assert_translated(&doc, "studies report panel", None);
    screenshot(&doc, "studies-report");
    close_dialogs(&doc);

    // Nothing matches a filter: the empty list.
    doc.send_keys("#filters [name=patient_id]", "NOSUCHID").expect("type");
    doc.execute(
        "document.querySelector('#filters').requestSubmit(); return true",
        vec![],
    )
    .expect("submit");
    wait(
        &doc,
        "window.mrTest.studies.total === 0 && !document.querySelector('#empty').hidden",
        "empty list",
    );
    assert_translated(&doc, "studies filtered empty", None);

    // A half-typed filter survives the switch; the page is all English.
    doc.send_keys("#filters [name=patient_name]", "王*").expect("type");
    switch_to(&doc, "en");
    assert_eq!(
        js(&doc, "document.querySelector('#filters [name=patient_name]').value"),
        json!("王*")
    );
    assert_eq!(
        js(&doc, "document.querySelector('#filters [name=patient_id]').value"),
        json!("NOSUCHID")
    );
    assert_eq!(
        js(&doc, "document.querySelector('#empty').textContent"),
        json!("No studies match these filters.")
    );
    assert_eq!(js(&doc, "document.title"), json!("Studies — medrelay"));
    assert_translated(&doc, "studies", None);
    screenshot(&doc, "studies");
    doc.execute("document.querySelector('#filters').reset(); return true", vec![])
        .expect("reset");
    wait(
        &doc,
        "window.mrTest.studies.total === 1 && window.mrTest.studies.uids.length === 1",
        "list again",
    );
    assert_translated(&doc, "studies clinic list", None);
    screenshot(&doc, "studies-list");

    // The other clinic: no studies yet.
    let doc2 = open(&ch, &s, "doc2", "/studies", "studies");
    wait(&doc2, "!document.querySelector('#empty').hidden", "empty list");
    assert_translated(&doc2, "studies clinic empty", None);
    screenshot(&doc2, "studies-empty");

    // The expert and the admin see the clinic column; the admin sets priorities.
    let e = open(&ch, &s, "exp1", "/studies", "studies");
    wait(&e, "window.mrTest.studies.uids.length === 1", "study row");
    assert_translated(&e, "studies expert", None);
    let a = open(&ch, &s, "adm", "/studies", "studies");
    wait(&a, "window.mrTest.studies.uids.length === 1", "study row");
    assert_translated(&a, "studies admin", None);
}

#[test]
fn requests_page_in_chinese_and_english() {
    let s = server();
    let uid = push_study(&s);
    let ch = Chromium::launch().expect("chromedriver");

    // The clinic doctor: no requests yet, the form open, a problem in it.
    let doc = open(&ch, &s, "doc1", "/requests", "requests");
    wait(&doc, &visible("#empty"), "empty list");
    assert_eq!(js(&doc, "document.title"), json!("会诊 — medrelay"));
    assert_translated(&doc, "requests empty", None);
    screenshot(&doc, "requests-empty");
    doc.click("[data-test=new-request]").expect("new request");
    wait(&doc, "!document.querySelector('#request-form').hidden", "form");
    wait(
        &doc,
        "document.querySelector('[data-test=req-studies]').options.length > 0",
        "study options",
    );
    assert_translated(&doc, "requests form", None);
    screenshot(&doc, "requests-form");
    doc.send_keys("[data-test=req-question]", "结节：随访还是活检？")
        .expect("type");
    doc.click("[data-test=req-submit]").expect("submit");
    wait(&doc, &visible("#request-error"), "form error");
    assert_translated(&doc, "requests form error", None);

    // Sent from the study: a row.
    goto(&doc, &s, &format!("/requests?new=1&study={uid}"), "requests");
    wait(
        &doc,
        "[...document.querySelector('[data-test=req-studies]').selectedOptions].length === 1",
        "study picked",
    );
    doc.send_keys("[data-test=req-question]", "结节：随访还是活检？")
        .expect("type");
    doc.click("[data-test=req-submit]").expect("submit");
    wait(&doc, "window.mrTest.requests.ids.length === 1", "request row");
    assert_translated(&doc, "requests clinic list", None);
    screenshot(&doc, "requests");

    // The expert accepts it: the list, the dialog, the scheduled row.
    let e = open(&ch, &s, "exp1", "/requests", "requests");
    wait(&e, "window.mrTest.requests.ids.length === 1", "request row");
    assert_translated(&e, "requests expert list", None);
    e.click("[data-test=req-accept]").expect("accept");
    wait(&e, &visible("dialog [data-test=req-time]"), "accept dialog");
    assert_translated(&e, "requests accept dialog", None);
    screenshot(&e, "requests-accept");
    e.click("[data-test=req-accept-submit]").expect("submit");
    wait(
        &e,
        "window.mrTest.requests.rows.some((r) => r.state === 'scheduled')",
        "scheduled",
    );
    wait(&e, "!document.querySelector('dialog')", "dialog closed");
    assert_translated(&e, "requests expert scheduled", None);
    screenshot(&e, "requests-scheduled");
    e.click("[data-test=req-cancel]").expect("cancel");
    wait(&e, &visible("dialog [data-test=req-cancel-reason]"), "cancel dialog");
    set_too_long(&e, "[data-test=req-cancel-reason]");
    e.click("[data-test=req-cancel-submit]").expect("submit");
    wait(&e, &visible("dialog .form-error"), "error in the dialog");
    assert_translated(&e, "requests cancel error", None);
    close_dialogs(&e);

    // The admin's view.
    let a = open(&ch, &s, "adm", "/requests", "requests");
    wait(&a, "window.mrTest.requests.ids.length === 1", "request row");
    assert_translated(&a, "requests admin", None);

    // A half-filled form survives the switch.
    doc.click("[data-test=new-request]").expect("new request");
    wait(&doc, "!document.querySelector('#request-form').hidden", "form");
    doc.send_keys("[data-test=req-patient-id]", "P-77").expect("type");
    doc.send_keys("[data-test=req-question]", "half typed").expect("type");
    switch_to(&doc, "en");
    assert_eq!(
        js(&doc, "document.querySelector('[data-test=req-patient-id]').value"),
        json!("P-77")
    );
    assert_eq!(
        js(&doc, "document.querySelector('[data-test=req-question]').value"),
        json!("half typed")
    );
    assert_translated(&doc, "requests", None);
    screenshot(&doc, "requests");
}

#[test]
fn broadcasts_page_in_chinese_and_english() {
    let s = server();
    let ch = Chromium::launch().expect("chromedriver");

    // The expert: the start form, no broadcast yet, a refused title.
    let e = open(&ch, &s, "exp1", "/broadcasts", "broadcasts");
    wait(&e, &visible("#summary"), "summary");
    assert_eq!(js(&e, "document.title"), json!("直播教学 — medrelay"));
    assert_translated(&e, "broadcasts expert empty", None);
    screenshot(&e, "broadcasts-empty");
    // A title over the server's limit (set by script past the maxlength).
    e.execute(
        "document.querySelector('[data-test=bc-title]').value = '胸部 CT 阅片'.repeat(30); return true",
        vec![],
    )
    .expect("title");
    e.click("[data-test=bc-start]").expect("start");
    wait(&e, &visible("#start-error"), "error");
    assert_translated(&e, "broadcasts start error", None);
    screenshot(&e, "broadcasts-error");

    // A broadcast is open: the expert presents and ends it, the clinic joins.
    let exp = s.login("exp1", PW).expect("login");
    ok(
        s.req(
            Some(&exp),
            "POST",
            "/api/broadcasts",
            Some(json!({ "title": "Chest CT reading, session 3" })),
        ),
        "broadcast",
    );
    goto(&e, &s, "/broadcasts", "broadcasts");
    wait(&e, "window.mrTest.broadcasts.ids.length === 1", "row");
    assert_translated(&e, "broadcasts expert list", None);
    screenshot(&e, "broadcasts");
    let doc = open(&ch, &s, "doc1", "/broadcasts", "broadcasts");
    wait(&doc, "window.mrTest.broadcasts.ids.length === 1", "row");
    assert_translated(&doc, "broadcasts clinic list", None);
    screenshot(&doc, "broadcasts-clinic");

    // A half-typed title survives the switch.
    e.send_keys("[data-test=bc-title]", "半截").expect("type");
    switch_to(&e, "en");
    assert_eq!(
        js(&e, "document.querySelector('[data-test=bc-title]').value"),
        json!("半截")
    );
    assert_translated(&e, "broadcasts", None);
    screenshot(&e, "broadcasts");
}

#[test]
fn admin_page_in_chinese_and_english() {
    let s = server();
    push_study(&s);
    let ch = Chromium::launch().expect("chromedriver");

    let a = open(&ch, &s, "adm", "/admin", "admin");
    wait(&a, "window.mrTest.admin.users.length >= 4", "users");
    assert_eq!(js(&a, "document.title"), json!("系统管理 — medrelay"));
    assert_translated(&a, "admin users", None);
    screenshot(&a, "admin-users");

    // Each role in the form.
    for role in ["expert", "clinic", "admin"] {
        a.execute(
            &format!(
                "const r = document.querySelector('[data-test=user-role]'); r.value = {}; r.dispatchEvent(new Event('change')); return true",
                json!(role)
            ),
            vec![],
        )
        .expect("role");
        assert_translated(&a, &format!("admin user form ({role})"), None);
    }
    // A password shorter than the server takes (set by script past the
    // minlength): refused with its code, shown in Chinese.
    a.send_keys("[data-test=user-username]", "newdoc").expect("type");
    a.execute(
        "document.querySelector('[data-test=user-password]').value = 'short'; return true",
        vec![],
    )
    .expect("password");
    a.click("[data-test=user-add]").expect("add");
    wait(&a, "window.mrTest.admin.errors.length > 0", "error");
    wait(&a, &visible("#toasts .toast.error"), "error toast");
    assert_translated(&a, "admin add user error", None);
    screenshot(&a, "admin-error");

    a.click("[data-test=user-row][data-username=doc2] [data-test=user-disable]")
        .expect("disable");
    wait(
        &a,
        &visible("dialog [data-test=user-disable-confirm]"),
        "confirm dialog",
    );
    assert_translated(&a, "admin disable dialog", None);
    screenshot(&a, "admin-disable");
    close_dialogs(&a);

    for tab in ["turnaround", "deliveries", "ingest", "audit", "relay"] {
        a.execute_async(
            &format!(
                "const done = arguments[arguments.length - 1]; window.mrTest.admin.select({}).then(() => done(true));",
                json!(tab)
            ),
            vec![],
        )
        .expect("select tab");
        wait(&a, &format!("window.mrTest.admin.tab === {}", json!(tab)), "tab");
        if tab == "relay" {
            wait(&a, &visible("#relay-summary"), "relay summary");
        }
        assert_translated(&a, &format!("admin {tab}"), None);
        screenshot(&a, &format!("admin-{tab}"));
    }

    // Not an admin: the notice.
    let doc = open(&ch, &s, "doc1", "/admin", "admin");
    wait(&doc, &visible(".notice"), "notice");
    assert_translated(&doc, "admin for a clinic doctor", None);
    screenshot(&doc, "admin-denied");

    // The audit filter typed on the audit tab survives the switch.
    a.execute_async(
        "const done = arguments[arguments.length - 1]; window.mrTest.admin.select('audit').then(() => done(true));",
        vec![],
    )
    .expect("audit");
    a.send_keys("[data-test=audit-user]", "exp1").expect("type");
    // A toast in Chinese ("From" after "To") does not outlive the switch.
    a.execute(
        "const f = document.querySelector('#audit-form'); f.elements.to.value = '2020-01-01T00:00'; f.requestSubmit(); return true",
        vec![],
    )
    .expect("submit");
    wait(&a, &visible("#toasts .toast.error"), "toast");
    switch_to(&a, "en");
    assert_eq!(
        js(&a, "document.querySelector('[data-test=audit-user]').value"),
        json!("exp1")
    );
    assert_translated(&a, "admin audit", None);
    screenshot(&a, "admin-audit");
    a.execute_async(
        "const done = arguments[arguments.length - 1]; window.mrTest.admin.select('users').then(() => done(true));",
        vec![],
    )
    .expect("users");
    assert_translated(&a, "admin users", None);
    screenshot(&a, "admin-users");
}
