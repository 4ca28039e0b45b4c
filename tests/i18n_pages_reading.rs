//! The reading pages in Chinese and English (headless Chromium, the real
//! gateway, a study pushed with DCMTK storescu): the worklist (rows, an
//! empty filtered list, a lost claim race, the clinic doctor's notice) and
//! the viewer with its report panel (expert before and after claiming,
//! the shortcut and tag panels, the return and sign dialogs, another
//! expert refused, the clinic doctor's and the admin's read-only views, a
//! study that does not exist). Every state is checked with
//! tests/support/i18n.rs (no English outside data in zh-CN, no Chinese in
//! en, no message missing from the catalogue); a language switch keeps the
//! typed filter, the open study, its slice and window, and the half-typed
//! report. Screenshots: target/screenshots/i18n-worklist*-*.png,
//! i18n-viewer*-*.png.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::i18n::{self, assert_translated, screenshot, switch_to};
use support::webdriver::{Chromium, Session};
use support::*;

const PW: &str = "correct-horse-battery";
const T: Duration = Duration::from_secs(60);

const CFG: &str = r#"
[[clinic]]
id = "t01"
name = "湟中县鲁沙尔镇卫生院"
ae_titles = ["T01_CT"]

[[hospital]]
id = "city"
name = "青海省人民医院"
serves = ["t01"]
"#;

/// A server with a three-slice CT study from the clinic on the worklist
/// (STAT, with a clinical question), two experts, a clinic doctor and an
/// admin (display names in Chinese, as the alliance's accounts are).
fn server_with_study() -> (Server, String) {
    let s = Server::start(ServerOpts {
        config_toml: CFG.into(),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "王医生"]);
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "李医生"]);
    s.add_user("exp2", "expert", PW, &["--hospital", "city", "--name", "张医生"]);
    s.add_user("adm1", "admin", PW, &["--name", "赵管理员"]);
    let files: Vec<PathBuf> = (1..=3).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(&files);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(60, "study complete with previews", || {
        s.sqlite("SELECT COUNT(*) FROM worklist WHERE state = 'new'") == "1"
            && s.sqlite("SELECT COUNT(*) FROM instances WHERE preview_status = 'ok'") == "3"
    });
    let uid = s.sqlite("SELECT study_uid FROM studies");
    let doc = s.login("doc1", PW).expect("login doc1");
    let (code, body) = http_send_as(
        s.http_port,
        "POST",
        &format!("/api/worklist/{uid}/priority"),
        Some(&json!({"priority": "stat", "clinical_question": "咳嗽两周，发热，排除肺炎"})),
        Some(&doc),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    (s, uid)
}

fn js(sess: &Session, expr: &str) -> Value {
    sess.execute(&format!("return {expr}"), vec![]).unwrap_or(Value::Null)
}

fn goto(sess: &Session, s: &Server, path: &str) {
    sess.goto(&format!("https://127.0.0.1:{}{path}", s.http_port))
        .expect("page");
    i18n::wait_ready(sess).unwrap_or_else(|e| panic!("{path}: i18n not ready: {e}; console {:?}", sess.console_logs()));
}

fn wait(sess: &Session, expr: &str, what: &str) {
    sess.wait_for(expr, T)
        .unwrap_or_else(|e| panic!("{what}: {e}; console {:?}", sess.console_logs()));
}

/// Switches back to Chinese and waits until the account has it (the next
/// page this account opens is then in Chinese again).
fn back_to_chinese(sess: &Session) {
    switch_to(sess, "zh-CN");
    wait(sess, "window.mrTest.i18n.saved === true", "zh-CN saved to the account");
}

fn worklist_ready(sess: &Session, uid: &str) {
    wait(
        sess,
        &format!(
            "window.mrTest.worklist && window.mrTest.worklist.ready && window.mrTest.worklist.uids.includes('{uid}')"
        ),
        "worklist row",
    );
}

#[test]
fn worklist_in_chinese_and_english() {
    let (s, uid) = server_with_study();
    let ch = Chromium::launch().expect("chromedriver");

    // The expert's worklist with its row, in Chinese.
    let sess = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&sess, &s, "exp1", PW, "/worklist");
    i18n::wait_ready(&sess).expect("ready");
    worklist_ready(&sess, &uid);
    assert_eq!(i18n::page_lang(&sess), "zh-CN");
    assert_translated(&sess, "worklist", None);
    assert_eq!(js(&sess, "document.title"), json!("阅片列表 — medrelay"));
    assert_eq!(
        js(
            &sess,
            "document.querySelector('[data-test=worklist-row] .badge.prio-stat').textContent"
        ),
        json!("急诊")
    );
    assert_eq!(
        js(
            &sess,
            "document.querySelector('[data-test=worklist-row] [data-test=claim]').textContent"
        ),
        json!("领取")
    );
    screenshot(&sess, "worklist");

    // Studies arriving over the relay link from the clinic's edge box: one
    // on its way, one just committed (rows as the hub's relay store keeps
    // them; tests/relay.rs covers how they get there).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    s.sqlite_exec(&format!(
        "INSERT INTO relay_inbound (edge, study_uid, clinic_id, state, total, total_bytes, priority, manifest, began_ms, committed_ms)
         VALUES ('edge-t01', '1.2.826.0.1.3680043.8.498.77', 't01', 'arriving', 40, 21000000, 'urgent', '{{}}', {}, NULL),
                ('edge-t01', '{uid}', 't01', 'committed', 3, 1600000, 'stat', '{{}}', {}, {})",
        now - 95_000,
        now - 300_000,
        now - 40_000
    ));
    sess.execute("window.mrTest.worklist.refreshArriving()", vec![])
        .expect("poll");
    wait(
        &sess,
        "window.mrTest.worklist.arriving.length === 2 && !document.querySelector('#arriving').hidden",
        "arriving studies",
    );
    assert_translated(&sess, "worklist-arriving", None);
    screenshot(&sess, "worklist-arriving");

    // A filter that matches nothing: the empty list. A switch to English
    // keeps the typed filter and the list, and translates the empty state.
    sess.send_keys("[data-test=filter-body-part]", "KNEE\u{E007}")
        .expect("type a filter");
    wait(
        &sess,
        "window.mrTest.worklist.total === 0 && !document.querySelector('#empty').hidden",
        "empty list",
    );
    assert_eq!(
        js(&sess, "document.querySelector('#empty').textContent"),
        json!("暂无待阅片的检查。")
    );
    assert_translated(&sess, "worklist-empty", None);
    screenshot(&sess, "worklist-empty");
    switch_to(&sess, "en");
    assert_eq!(
        js(&sess, "document.querySelector('[data-test=filter-body-part]').value"),
        json!("KNEE"),
        "the typed filter survives the switch"
    );
    assert_eq!(
        js(&sess, "document.querySelector('#empty').textContent"),
        json!("Nothing waiting to be read.")
    );
    assert_eq!(js(&sess, "document.title"), json!("Worklist — medrelay"));
    assert_eq!(js(&sess, "location.search.includes('body_part=KNEE')"), json!(true));
    assert_translated(&sess, "worklist-empty", None);
    screenshot(&sess, "worklist-empty");

    // Back to the full list in English: the row re-rendered in place.
    sess.click("#filters button[type=reset]").expect("clear the filters");
    worklist_ready(&sess, &uid);
    wait(
        &sess,
        "!!document.querySelector('[data-test=worklist-row]')",
        "row back",
    );
    assert_eq!(
        js(
            &sess,
            "document.querySelector('[data-test=worklist-row] .badge.prio-stat').textContent"
        ),
        json!("STAT")
    );
    assert_translated(&sess, "worklist", None);
    assert_eq!(
        js(&sess, "document.querySelector('#arriving-title span').textContent"),
        json!("Arriving from clinics")
    );
    screenshot(&sess, "worklist");
    back_to_chinese(&sess);
    assert_eq!(
        js(
            &sess,
            "document.querySelector('[data-test=worklist-row] .badge.prio-stat').textContent"
        ),
        json!("急诊")
    );
    assert_translated(&sess, "worklist", None);

    // A lost claim race: another expert claimed it after this list was
    // loaded. The refusal is shown from the server's code, in Chinese, and
    // the refreshed row says who reads it.
    let other = s.login("exp2", PW).expect("login exp2");
    let (code, body) = http_send_as(
        s.http_port,
        "POST",
        &format!("/api/worklist/{uid}/claim"),
        None,
        Some(&other),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    sess.click(&format!(
        "[data-test=worklist-row][data-uid=\"{uid}\"] [data-test=claim]"
    ))
    .expect("claim");
    wait(&sess, "window.mrTest.worklist.errors.length > 0", "claim refused");
    let err = js(&sess, "window.mrTest.worklist.errors[0]");
    assert_eq!(err, json!("未能领取：该检查正由 exp2 阅片"), "{err}");
    wait(
        &sess,
        "window.mrTest.worklist.rows.some((r) => r.claimed_by === 'exp2')",
        "row refreshed",
    );
    assert_translated(&sess, "worklist-claim-refused", None);
    screenshot(&sess, "worklist-claim-refused");
    let _ = sess.quit();

    // The clinic doctor is told the worklist is for experts.
    let clinic = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&clinic, &s, "doc1", PW, "/worklist");
    i18n::wait_ready(&clinic).expect("ready");
    wait(
        &clinic,
        "window.mrTest.worklist && window.mrTest.worklist.ready",
        "worklist page",
    );
    wait(
        &clinic,
        "!!document.querySelector('.notice a[href=\"/studies\"]')",
        "notice",
    );
    assert_translated(&clinic, "worklist-clinic", None);
    screenshot(&clinic, "worklist-clinic");
    switch_to(&clinic, "en");
    assert_translated(&clinic, "worklist-clinic", None);
    screenshot(&clinic, "worklist-clinic");
    let _ = clinic.quit();
}

/// A second study from the clinic whose one image has pixel data the
/// server cannot decode (Rows doubled in the header); its Study Instance UID.
fn broken_study(s: &Server) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let script = r#"
import sys, pydicom
ds = pydicom.dcmread(sys.argv[1])
ds.Rows = ds.Rows * 2
for k in ('StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID'):
    setattr(ds, k, pydicom.uid.generate_uid())
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
ds.save_as(sys.argv[2])
print(ds.StudyInstanceUID)
"#;
    let out = dir.path().join("broken.dcm");
    let o = run({
        let mut c = std::process::Command::new(python());
        c.args(["-c", script]).arg(ct300().join("CT000001.dcm")).arg(&out);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let uid = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.arg(&out);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(60, "the broken image settled", || {
        s.sqlite(&format!(
            "SELECT COUNT(*) FROM instances WHERE study_uid = '{uid}' AND preview_status LIKE 'no preview%'"
        )) == "1"
    });
    uid
}

fn viewer_ready(sess: &Session) {
    wait(
        sess,
        "window.mrTest.viewer && window.mrTest.viewer.ready && window.mrTest.viewer.firstImageMs > 0",
        "viewer shows the first image",
    );
}

fn dialog_open(sess: &Session, test: &str) {
    wait(
        sess,
        &format!("(() => {{ const d = document.querySelector('[data-test={test}]'); return !!(d && d.open); }})()"),
        test,
    );
}

#[test]
fn viewer_and_report_panel_in_chinese_and_english() {
    let (s, uid) = server_with_study();
    let ch = Chromium::launch().expect("chromedriver");
    let viewer = format!("/viewer?study={uid}");

    // The expert opens the study before claiming it.
    let exp = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&exp, &s, "exp1", PW, "/worklist");
    goto(&exp, &s, &viewer);
    viewer_ready(&exp);
    wait(
        &exp,
        "!document.querySelector('#report-root [data-test=claim]').hidden",
        "claim button",
    );
    assert_eq!(js(&exp, "document.title"), json!("阅片 · medrelay"));
    assert_translated(&exp, "viewer", None);
    screenshot(&exp, "viewer");

    // The shortcut and tag panels.
    exp.click("[data-test=help]").expect("help");
    wait(&exp, "!document.querySelector('#help-panel').hidden", "help panel");
    assert_translated(&exp, "viewer-help", Some("#help-panel"));
    screenshot(&exp, "viewer-help");
    exp.click("#help-panel").expect("close help");
    exp.click("[data-test=tags-toggle]").expect("tags");
    wait(
        &exp,
        "!!document.querySelector('[data-test=tags-list] tbody tr')",
        "tag list",
    );
    assert_translated(&exp, "viewer-tags", None);
    screenshot(&exp, "viewer-tags");
    exp.click("#tags-close").expect("close tags");

    // Claim, scroll, window, type half a report.
    exp.click("#report-root [data-test=claim]").expect("claim");
    wait(&exp, "window.mrTest.viewer.claimedBy === 'exp1'", "claimed");
    exp.wheel("[data-test=canvas]", 120, 1).expect("wheel");
    wait(&exp, "window.mrTest.viewer.index === 1", "scrolled");
    exp.click("[data-test=preset][data-preset=lung]").expect("lung window");
    wait(&exp, "window.mrTest.viewer.preset === 'lung'", "lung window");
    let findings = "右肺下叶见一约8mm结节，边界清楚";
    exp.send_keys("[data-test=findings]", findings).expect("findings");
    wait(&exp, "window.mrTest.viewer.reportSaved > 0", "draft autosaved");
    exp.send_keys("[data-test=impression]", "建议3个月后复查")
        .expect("impression");
    assert_translated(&exp, "viewer-claimed", None);
    screenshot(&exp, "viewer-claimed");

    // English: the same study, slice, window and text; every string English.
    switch_to(&exp, "en");
    assert_eq!(js(&exp, "window.mrTest.viewer.study"), json!(uid));
    assert_eq!(js(&exp, "window.mrTest.viewer.index"), json!(1));
    assert_eq!(js(&exp, "window.mrTest.viewer.preset"), json!("lung"));
    assert_eq!(js(&exp, "window.mrTest.viewer.claimedBy"), json!("exp1"));
    assert_eq!(
        js(&exp, "document.querySelector('[data-test=findings]').value"),
        json!(findings)
    );
    assert_eq!(
        js(&exp, "document.querySelector('[data-test=impression]').value"),
        json!("建议3个月后复查")
    );
    assert_eq!(
        js(
            &exp,
            "document.querySelector('#report-root [data-test=sign]').textContent"
        ),
        json!("Sign report")
    );
    assert_eq!(js(&exp, "document.title"), json!("Viewer · medrelay"));
    assert_translated(&exp, "viewer-claimed", None);
    screenshot(&exp, "viewer-claimed");
    back_to_chinese(&exp);
    assert_eq!(
        js(
            &exp,
            "document.querySelector('#report-root [data-test=sign]').textContent"
        ),
        json!("签发报告")
    );
    assert_translated(&exp, "viewer-claimed", None);

    // Another expert opening it is refused the claim, from the server's code.
    let exp2 = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&exp2, &s, "exp2", PW, "/worklist");
    goto(&exp2, &s, &viewer);
    viewer_ready(&exp2);
    wait(&exp2, "window.mrTest.viewer.claimedBy === 'exp1'", "sees the claim");
    assert_translated(&exp2, "viewer-held", None);
    exp2.click("#report-root [data-test=claim]").expect("claim");
    wait(
        &exp2,
        "!!document.querySelector('[data-test=claim-holder]')",
        "refusal shown",
    );
    assert_eq!(
        js(&exp2, "document.querySelector('[data-test=claim-holder]').textContent"),
        json!("该检查正由 exp1 阅片")
    );
    assert_translated(&exp2, "viewer-claim-refused", Some("#side"));
    screenshot(&exp2, "viewer-claim-refused");
    let _ = exp2.quit();

    // The return dialog (cancelled), then the sign dialog (confirmed).
    exp.click("#report-root [data-test=return]").expect("return");
    dialog_open(&exp, "return-dialog");
    assert_translated(&exp, "viewer-return", Some("[data-test=return-dialog]"));
    screenshot(&exp, "viewer-return");
    exp.click("[data-test=return-cancel]").expect("cancel");
    exp.click("#report-root [data-test=sign]").expect("sign");
    dialog_open(&exp, "sign-confirm");
    assert_eq!(
        js(
            &exp,
            "document.querySelector('[data-test=sign-confirm-ok]').textContent"
        ),
        json!("签发")
    );
    assert_translated(&exp, "viewer-sign", Some("[data-test=sign-confirm]"));
    screenshot(&exp, "viewer-sign");
    exp.click("[data-test=sign-confirm-ok]").expect("confirm");
    wait(&exp, "window.mrTest.viewer.signedVersion === 1", "signed");
    wait(
        &exp,
        "!!document.querySelector('[data-test=versions] li[data-status=signed]')",
        "versions",
    );
    exp.execute(
        "document.querySelectorAll('[data-test=versions] details').forEach((d) => (d.open = true))",
        vec![],
    )
    .expect("unfold the versions");
    assert_translated(&exp, "viewer-signed", None);
    screenshot(&exp, "viewer-signed");

    // A study that does not exist (or is not this account's): the page says so.
    goto(&exp, &s, "/viewer?study=1.2.3.4.5.6.7.8.9");
    wait(&exp, "!document.querySelector('#fatal').hidden", "not found");
    assert_eq!(
        js(&exp, "document.querySelector('#fatal span').textContent"),
        json!("该检查不存在，或您无权查看。")
    );
    assert_translated(&exp, "viewer-not-found", None);
    screenshot(&exp, "viewer-not-found");
    switch_to(&exp, "en");
    assert_translated(&exp, "viewer-not-found", None);
    screenshot(&exp, "viewer-not-found");

    // An image the server cannot preview (its header claims twice the rows
    // its pixel data holds): the stage says so in the page's language, the
    // server's technical reason beside it as data.
    let broken = broken_study(&s);
    goto(&exp, &s, &format!("/viewer?study={broken}"));
    wait(
        &exp,
        "window.mrTest.viewer.ready && !document.querySelector('#stage-msg').hidden && document.querySelector('#stage-msg .detail')",
        "no-preview message",
    );
    assert!(
        js(&exp, "document.querySelector('#stage-msg').textContent")
            .as_str()
            .is_some_and(|t| t.starts_with("No image: no preview can be made of this image (")),
        "{}",
        js(&exp, "document.querySelector('#stage-msg').textContent")
    );
    assert_translated(&exp, "viewer-no-preview", None);
    screenshot(&exp, "viewer-no-preview");
    back_to_chinese(&exp);
    assert!(
        js(&exp, "document.querySelector('#stage-msg').textContent")
            .as_str()
            .is_some_and(|t| t.starts_with("无法显示图像：该图像无法生成预览")),
        "{}",
        js(&exp, "document.querySelector('#stage-msg').textContent")
    );
    assert_translated(&exp, "viewer-no-preview", None);
    screenshot(&exp, "viewer-no-preview");
    let _ = exp.quit();

    // The clinic doctor reads the signed report (and may ask for a consultation).
    let clinic = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&clinic, &s, "doc1", PW, "/studies");
    goto(&clinic, &s, &viewer);
    viewer_ready(&clinic);
    wait(
        &clinic,
        "(() => { const v = document.querySelector('[data-test=report-view]'); return !!(v && v.textContent.includes('8mm')); })()",
        "the signed report",
    );
    assert!(js(&clinic, "!!document.querySelector('[data-test=request-consult]')") == json!(true));
    assert_translated(&clinic, "viewer-clinic", None);
    screenshot(&clinic, "viewer-clinic");
    switch_to(&clinic, "en");
    assert_translated(&clinic, "viewer-clinic", None);
    screenshot(&clinic, "viewer-clinic");
    let _ = clinic.quit();

    // The admin: state, history and versions, read-only.
    let admin = ch.session(&i18n::opts("zh-CN")).expect("session");
    ui_login(&admin, &s, "adm1", PW, "/admin");
    goto(&admin, &s, &viewer);
    viewer_ready(&admin);
    admin
        .click("#report-root details.history summary")
        .expect("open the history");
    wait(
        &admin,
        "document.querySelectorAll('#report-root .history-list li').length >= 2",
        "history",
    );
    // The server's own notes are shown as messages, not as its English.
    let history = js(
        &admin,
        "document.querySelector('#report-root .history-list').textContent",
    );
    let history = history.as_str().unwrap_or("");
    assert!(
        history.contains("第 1 版报告已签发") && history.contains("优先级 急诊") && history.contains("李医生"),
        "{history}"
    );
    assert_translated(&admin, "viewer-admin", None);
    screenshot(&admin, "viewer-admin");
    let _ = admin.quit();
}
