//! The reading workflow end to end in headless Chromium (WebDriver): a DCMTK
//! storescu push, the clinic doctor's study list, the expert's worklist,
//! claim, stack scroll and windowing in the viewer, a signed report, the
//! report on the clinic's page, and the SR at the clinic's PACS (DCMTK
//! storescp, checked with dsrdump). Screenshots of every page go to
//! target/screenshots/reading-*.png.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::webdriver::{Chromium, Session, SessionOpts};
use support::*;

const PW: &str = "correct-horse-battery";
const T: Duration = Duration::from_secs(60);

fn browser(ch: &Chromium) -> Session {
    ch.session(&SessionOpts {
        extra_args: vec!["--window-size=1400,900".into()],
        ..Default::default()
    })
    .expect("browser session")
}

fn login(sess: &Session, s: &Server, user: &str, next: &str) {
    login_with(sess, s, user, PW, next)
}

fn login_with(sess: &Session, s: &Server, user: &str, password: &str, next: &str) {
    ui_login(sess, s, user, password, next)
}

fn hook(sess: &Session, expr: &str) -> Value {
    sess.execute(&format!("return {expr}"), vec![]).unwrap_or(Value::Null)
}

fn shot(sess: &Session, name: &str) {
    let p = sess.save_screenshot(&format!("reading-{name}")).expect("screenshot");
    println!("screenshot: {}", p.display());
}

#[test]
fn clinic_pushes_expert_reads_and_signs_clinic_gets_the_report() {
    let pacs_port = free_port();
    let pacs = Pacs::start_on(pacs_port);
    let cfg = format!(
        r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]
pacs = "CLINICPACS@127.0.0.1:{pacs_port}"

[[clinic]]
id = "t02"
name = "Township 02"
ae_titles = ["T02_MR"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01", "t02"]
"#
    );
    let s = Server::start(ServerOpts {
        config_toml: cfg,
        stable_after_secs: 1.0,
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township One"]);
    s.add_user("doc2", "clinic", PW, &["--clinic", "t02"]);
    s.add_user(
        "exp1",
        "expert",
        PW,
        &["--hospital", "city", "--name", "Prof. Expert One"],
    );
    // The clinic's CT pushes a 40-slice series.
    let files: Vec<PathBuf> = (1..=40).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(&files);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(60, "study complete with previews", || {
        s.sqlite("SELECT COUNT(*) FROM worklist WHERE state = 'new'") == "1"
            && s.sqlite("SELECT COUNT(*) FROM instances WHERE preview_status = 'ok'") == "40"
    });
    let uid = s.sqlite("SELECT study_uid FROM studies");

    let ch = Chromium::launch()
        .unwrap_or_else(|e| panic!("chromium/chromedriver (tests/support/setup.sh installs them): {e}"));

    // 1. The clinic doctor sees the study with its thumbnail.
    let clinic = browser(&ch);
    login(&clinic, &s, "doc1", "/studies");
    clinic
        .wait_for("window.mrTest.studies && window.mrTest.studies.ready", T)
        .expect("studies page");
    clinic
        .wait_for(
            &format!(
                "(() => {{ const r = document.querySelector('[data-test=study-row][data-uid=\"{uid}\"]');
                   const i = r && r.querySelector('img');
                   return !!(i && i.complete && i.naturalWidth > 0); }})()"
            ),
            T,
        )
        .expect("study row with a loaded thumbnail");
    shot(&clinic, "1-clinic-studies");

    // 2. The expert sees it on the worklist and claims it.
    let expert = browser(&ch);
    login(&expert, &s, "exp1", "/worklist");
    expert
        .wait_for(
            &format!("window.mrTest.worklist && window.mrTest.worklist.ready && window.mrTest.worklist.uids.includes('{uid}')"),
            T,
        )
        .expect("worklist row");
    shot(&expert, "2-expert-worklist");
    expert
        .click(&format!(
            "[data-test=worklist-row][data-uid=\"{uid}\"] [data-test=claim]"
        ))
        .expect("claim");
    expert
        .wait_for(
            "location.pathname === '/viewer' && window.mrTest.viewer && window.mrTest.viewer.firstImageMs > 0",
            T,
        )
        .expect("viewer shows the first image");
    expert
        .wait_for(
            "window.mrTest.viewer.claimedBy === 'exp1' || window.mrTest.viewer.state === 'claimed'",
            T,
        )
        .expect("claimed");
    assert_eq!(
        s.sqlite(&format!("SELECT claimed_by FROM worklist WHERE study_uid = '{uid}'")),
        "exp1"
    );
    assert_eq!(hook(&expert, "window.mrTest.viewer.count"), json!(40));

    // 3. Stack scroll with the wheel, then window/level by dragging.
    let before = hook(&expert, "window.mrTest.viewer.index").as_i64().unwrap_or(-1);
    expert.wheel("[data-test=canvas]", 120, 5).expect("wheel");
    expert
        .wait_for(&format!("window.mrTest.viewer.index !== {before}"), T)
        .expect("scrolled");
    let (wc0, ww0) = (
        hook(&expert, "window.mrTest.viewer.wc"),
        hook(&expert, "window.mrTest.viewer.ww"),
    );
    let full0 = hook(&expert, "window.mrTest.viewer.fullLoaded").as_i64().unwrap_or(0);
    expert.click("[data-test=tool-wl]").expect("W/L tool");
    expert.drag("[data-test=canvas]", 120, -60, 0, 6).expect("W/L drag");
    expert
        .wait_for(
            &format!("window.mrTest.viewer.wc !== {wc0} || window.mrTest.viewer.ww !== {ww0}"),
            T,
        )
        .expect("window changed");
    expert
        .wait_for(&format!("window.mrTest.viewer.fullLoaded > {full0}"), T)
        .expect("full-fidelity render with the new window");
    shot(&expert, "3-expert-viewer");

    // 4. Report: typed (autosaved), then signed through the confirm dialog.
    let findings = "右肺下叶见一约8mm结节. Solid 8 mm nodule, right lower lobe.";
    expert.send_keys("[data-test=findings]", findings).expect("findings");
    expert
        .send_keys("[data-test=impression]", "Follow-up CT in 3 months.")
        .expect("impression");
    expert
        .wait_for("window.mrTest.viewer.reportSaved", T)
        .expect("draft autosaved");
    assert_eq!(
        s.sqlite(&format!("SELECT status FROM reports WHERE study_uid = '{uid}'")),
        "draft"
    );
    expert.click("[data-test=sign]").expect("sign");
    expert
        .wait_for(
            "(() => { const d = document.querySelector('[data-test=sign-confirm]'); return !!(d && d.open); })()",
            T,
        )
        .expect("confirm dialog");
    expert
        .click("[data-test=sign-confirm] button[value=confirm], [data-test=sign-confirm] [data-test=sign-confirm-ok]")
        .expect("confirm");
    expert
        .wait_for("window.mrTest.viewer.signedVersion === 1", T)
        .expect("signed");
    shot(&expert, "4-expert-signed");

    // 5. The clinic sees the report (after a notification).
    clinic
        .goto(&format!("https://127.0.0.1:{}/studies", s.http_port))
        .expect("reload");
    clinic
        .wait_for("window.mrTest.studies && window.mrTest.studies.ready", T)
        .expect("studies page");
    clinic
        .wait_for("(() => { const b = document.querySelector('[data-test=notif-badge]'); return !!(b && /[1-9]/.test(b.textContent)); })()", T)
        .expect("notification badge");
    clinic
        .click(&format!(
            "[data-test=study-row][data-uid=\"{uid}\"] [data-test=report-link]"
        ))
        .expect("open report");
    clinic
        .wait_for(
            "(() => { const f = document.querySelector('[data-test=report-findings]'); return !!(f && f.textContent.includes('8 mm nodule')); })()",
            T,
        )
        .expect("report shown to the clinic");
    shot(&clinic, "5-clinic-report");

    // 6. The SR reaches the clinic PACS and is valid SR.
    s.wait_for(60, "SR at the PACS", || !pacs.files().is_empty());
    let sr = &pacs.files()[0];
    let o = Command::new("dsrdump").arg("+Pl").arg(sr).output().expect("dsrdump");
    assert!(o.status.success(), "{}", text(&o));
    let dump = String::from_utf8_lossy(&o.stdout);
    assert!(dump.contains("8 mm nodule") && dump.contains("Follow-up CT"), "{dump}");

    // 7. Another clinic's doctor opening the study's viewer URL gets nothing.
    let other = browser(&ch);
    login(&other, &s, "doc2", "/studies");
    other
        .goto(&format!("https://127.0.0.1:{}/viewer?study={uid}", s.http_port))
        .expect("viewer");
    other
        .wait_for("window.mrTest.viewer && window.mrTest.viewer.errors.length > 0", T)
        .expect("the viewer reports an error");
    assert!(
        !hook(&other, "window.mrTest.viewer.firstImageMs")
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "no image of another clinic's study"
    );
    shot(&other, "6-other-clinic-refused");
    // 8. Consultation: the clinic requests one from its studies page, the
    // expert accepts it, both join the room from the request and see the
    // attached study in the shared viewer.
    clinic
        .goto(&format!("https://127.0.0.1:{}/requests?new=1&study={uid}", s.http_port))
        .expect("requests page");
    clinic
        .wait_for("window.mrTest.requests && window.mrTest.requests.ready", T)
        .expect("requests page ready");
    clinic
        .send_keys("[data-test=req-question]", "Nodule: follow-up or biopsy?")
        .expect("question");
    clinic.click("[data-test=req-submit]").expect("submit request");
    clinic
        .wait_for("window.mrTest.requests.ids.length === 1", T)
        .expect("request listed");
    let id = hook(&clinic, "window.mrTest.requests.ids[0]");
    expert
        .goto(&format!("https://127.0.0.1:{}/requests", s.http_port))
        .expect("requests page");
    expert
        .wait_for(
            &format!("window.mrTest.requests && window.mrTest.requests.ids.includes({id})"),
            T,
        )
        .expect("expert sees the request");
    // Accepting picks a time; done through the page's own session.
    let accepted = expert
        .execute_async(
            &format!(
                "const done = arguments[arguments.length - 1];
                 fetch('/api/me').then(r => r.json()).then(me => fetch('/api/requests/{id}/accept', {{
                   method: 'POST', headers: {{ 'content-type': 'application/json', 'x-csrf-token': me.csrf }},
                   body: JSON.stringify({{ scheduled_ms: Date.now() + 60000 }}) }}))
                 .then(r => done(r.status), e => done(String(e)));"
            ),
            vec![],
        )
        .expect("accept");
    assert_eq!(accepted, json!(200));
    for sess in [&clinic, &expert] {
        sess.goto(&format!("https://127.0.0.1:{}/requests", s.http_port))
            .expect("requests page");
        sess.wait_for(
            &format!("(() => {{ const b = document.querySelector('[data-test=request-row][data-id=\"{id}\"] [data-test=req-join]'); return !!(b && !b.disabled); }})()"),
            T,
        )
        .expect("join enabled");
        sess.click(&format!(
            "[data-test=request-row][data-id=\"{id}\"] [data-test=req-join]"
        ))
        .expect("join");
        sess.wait_for(
            "location.pathname === '/consult' && !document.querySelector('#join').disabled",
            T,
        )
        .expect("consultation page");
        sess.click("#join").expect("join the room");
    }
    for sess in [&clinic, &expert] {
        sess.wait_for(
            "window.mrTest.state === 'joined' && window.mrTest.participants.length === 1",
            T,
        )
        .expect("both in the room");
        sess.wait_for(
            &format!(
                "(() => {{ const i = document.querySelector('#panel-study [data-study-input]');
                   const img = document.querySelector('#panel-study img');
                   return !!(i && i.value === '{uid}' && img && img.complete && img.naturalWidth > 0); }})()"
            ),
            T,
        )
        .expect("the request's study in the shared viewer");
    }
    shot(&clinic, "7-consultation-from-request");

    // 9. The admin's pages: users, turnaround, deliveries, audit.
    let admin = browser(&ch);
    login_with(&admin, &s, "admin", ADMIN_PASSWORD, "/admin");
    admin
        .wait_for("window.mrTest.admin && window.mrTest.admin.ready", T)
        .expect("admin page");
    for tab in ["users", "turnaround", "deliveries", "audit"] {
        admin.click(&format!("[data-test=tab-{tab}]")).expect("tab");
        admin
            .wait_for(&format!("window.mrTest.admin.tab === '{tab}'"), T)
            .expect("tab shown");
    }
    admin
        .wait_for(
            "window.mrTest.admin.audit > 0 && document.querySelectorAll('[data-test=audit-row]').length > 0",
            T,
        )
        .expect("audit rows");
    assert_eq!(hook(&admin, "window.mrTest.admin.errors"), json!([]));
    assert!(
        hook(&admin, "window.mrTest.admin.users")
            .as_array()
            .is_some_and(|u| u.len() >= 4),
        "{}",
        hook(&admin, "window.mrTest.admin.users")
    );
    shot(&admin, "8-admin-audit");

    for sess in [clinic, expert, other, admin] {
        let _ = sess.quit();
    }
}

/// Every page of every role's menu loads without a server error (a 5xx on
/// any request the page makes, or "internal error" shown to the user). The
/// arriving-studies list once answered 500 to every expert and clinic doctor
/// as soon as a clinic was configured, which only an admin-only test missed.
#[test]
fn every_page_of_every_role_loads_without_server_errors() {
    let s = Server::start(ServerOpts {
        config_toml: ONE_HOSPITAL.into(),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01"]);
    s.add_user("exp1", "expert", PW, &["--hospital", "city"]);
    s.add_user("adm1", "admin", PW, &[]);
    let files: Vec<PathBuf> = (1..=3).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(&files);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(60, "study complete", || {
        s.sqlite("SELECT COUNT(*) FROM worklist WHERE state = 'new'") == "1"
    });
    let uid = s.sqlite("SELECT study_uid FROM studies");

    let ch = Chromium::launch()
        .unwrap_or_else(|e| panic!("chromium/chromedriver (tests/support/setup.sh installs them): {e}"));
    let viewer = format!("/viewer?study={uid}");
    let menus: [(&str, Vec<&str>); 3] = [
        ("doc1", vec!["/studies", "/requests", "/broadcasts"]),
        (
            "exp1",
            vec!["/worklist", "/studies", "/requests", "/broadcasts", &viewer],
        ),
        ("adm1", vec!["/admin", "/worklist", "/studies", "/requests"]),
    ];
    let mut failures = Vec::new();
    for (user, pages) in menus {
        let sess = browser(&ch);
        login(&sess, &s, user, pages[0]);
        for page in pages {
            sess.goto(&format!("https://127.0.0.1:{}{page}", s.http_port))
                .unwrap_or_else(|e| panic!("{user} {page}: {e}"));
            // Wait until the page has asked the API for its data, then give
            // its other requests (lists, polls) time to answer.
            sess.wait_for(
                "document.readyState === 'complete' && performance.getEntriesByType('resource').some(e => e.name.includes('/api/'))",
                T,
            )
            .unwrap_or_else(|e| panic!("{user} {page}: no API request: {e}"));
            std::thread::sleep(Duration::from_secs(3));
            let bad = hook(
                &sess,
                "performance.getEntriesByType('resource').filter(e => e.responseStatus >= 500).map(e => e.name + ' ' + e.responseStatus)",
            );
            let shown = hook(
                &sess,
                "document.body.innerText.toLowerCase().includes('internal error')",
            );
            if bad.as_array().is_some_and(|a| !a.is_empty()) || shown == Value::Bool(true) {
                failures.push(format!(
                    "{user} {page}: server errors {bad}, 'internal error' shown: {shown}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\nserver log:\n{}", s.log());
}

/// `(shown name, alphabetic form beside it, translate attribute)` of the
/// name in a row of `page`, or nulls.
fn row_name(sess: &Session, row_test: &str, uid: &str) -> Value {
    hook(
        sess,
        &format!(
            "(() => {{ const r = document.querySelector('[data-test={row_test}][data-uid=\"{uid}\"] .pn');
               if (!r) return null;
               const alt = r.querySelector('.pn-alt');
               return [r.querySelector('.pn-main').textContent, alt ? alt.textContent.trim() : '', r.getAttribute('translate')]; }})()"
        ),
    )
}

#[test]
fn chinese_names_shown_and_searched_and_a_chinese_template_signed() {
    let cfg = r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]

[[hospital]]
id = "city"
name = "市人民医院"
serves = ["t01"]
"#;
    let s = Server::start(ServerOpts {
        config_toml: cfg.into(),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01"]);
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "李医生"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("chinese_names.py")).arg(tmp.path());
        c
    });
    assert!(o.status.success(), "chinese_names.py: {}", text(&o));
    let cases = ["gb18030", "utf8", "iso2022", "alpha", "ideo"];
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(cases.iter().map(|k| tmp.path().join(format!("{k}.dcm"))));
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(60, "five studies on the worklist", || {
        s.sqlite("SELECT COUNT(*) FROM worklist WHERE state = 'new'") == "5"
    });
    let uid = |case: &str| s.sqlite(&format!("SELECT study_uid FROM studies WHERE patient_id = 'CN-{case}'"));
    let wang: Vec<String> = ["gb18030", "utf8", "iso2022"].iter().map(|c| uid(c)).collect();
    let (alpha, ideo) = (uid("alpha"), uid("ideo"));

    let ch = Chromium::launch()
        .unwrap_or_else(|e| panic!("chromium/chromedriver (tests/support/setup.sh installs them): {e}"));

    // The clinic's study list: 王小东 with the alphabetic form beside it,
    // whichever character set the modality used; data is marked untranslatable.
    let clinic = browser(&ch);
    login(&clinic, &s, "doc1", "/studies");
    clinic
        .wait_for(
            "window.mrTest.studies && window.mrTest.studies.ready && window.mrTest.studies.total === 5",
            T,
        )
        .expect("studies page");
    for u in &wang {
        assert_eq!(
            row_name(&clinic, "study-row", u),
            json!(["王小东", "Wang, Xiaodong", "no"]),
            "{u}"
        );
    }
    assert_eq!(row_name(&clinic, "study-row", &alpha), json!(["Li, Ming", "", "no"]));
    assert_eq!(row_name(&clinic, "study-row", &ideo), json!(["王小东", "", "no"]));
    shot(&clinic, "cn-1-clinic-studies");

    // The search box: each query finds the three 王小东 studies (and the
    // ideographic-only one for the hanzi queries); "li ming" in between
    // shows that each search really ran.
    let search = |q: &str, want: &[&String]| {
        clinic
            .execute(
                "const i = document.querySelector('#filters input[name=patient_name]'); i.value = ''; i.focus();",
                vec![],
            )
            .expect("clear");
        clinic.send_keys("#filters input[name=patient_name]", q).expect("type");
        clinic.click("#filters button[type=submit]").expect("search");
        let mut want: Vec<String> = want.iter().map(|u| format!("'{u}'")).collect();
        want.sort();
        clinic
            .wait_for(
                &format!(
                    "(() => {{ const u = [...window.mrTest.studies.uids].sort().map((x) => `'${{x}}'`).join(',');
                       return u === \"{}\"; }})()",
                    want.join(",")
                ),
                T,
            )
            .unwrap_or_else(|e| {
                panic!(
                    "search {q:?}: {e}; shown {:?}",
                    hook(&clinic, "window.mrTest.studies.uids")
                )
            });
    };
    let hanzi: Vec<&String> = wang.iter().chain([&ideo]).collect();
    let latin: Vec<&String> = wang.iter().collect();
    for (q, want) in [
        ("王", &hanzi),
        ("王小东", &hanzi),
        ("wang", &latin),
        ("Wang^Xiaodong", &latin),
        ("wang xiaodong", &latin),
        ("WANG", &latin),
    ] {
        search("li ming", &[&alpha]);
        search(q, want);
    }
    shot(&clinic, "cn-2-clinic-search");

    // The expert's worklist shows the same names.
    let expert = browser(&ch);
    login(&expert, &s, "exp1", "/worklist");
    expert
        .wait_for(
            "window.mrTest.worklist && window.mrTest.worklist.ready && window.mrTest.worklist.uids.length === 5",
            T,
        )
        .expect("worklist");
    for u in &wang {
        assert_eq!(
            row_name(&expert, "worklist-row", u),
            json!(["王小东", "Wang, Xiaodong", "no"]),
            "{u}"
        );
    }
    shot(&expert, "cn-3-expert-worklist");

    // Claim the ISO 2022 study, pick the Chinese CT head template, sign.
    let target = &wang[2];
    expert
        .click(&format!(
            "[data-test=worklist-row][data-uid=\"{target}\"] [data-test=claim]"
        ))
        .expect("claim");
    expert
        .wait_for(
            "location.pathname === '/viewer' && window.mrTest.viewer
               && (window.mrTest.viewer.claimedBy === 'exp1' || window.mrTest.viewer.state === 'claimed')",
            T,
        )
        .expect("claimed in the viewer");
    expert
        .wait_for(
            "[...document.querySelectorAll('[data-test=template] optgroup')].some((g) => g.dataset.language === 'zh'
               && [...g.querySelectorAll('option')].some((o) => o.textContent === 'CT 头颅平扫'))",
            T,
        )
        .expect("Chinese templates listed");
    // Both languages are offered, each in its own group.
    let langs = hook(
        &expert,
        "[...document.querySelectorAll('[data-test=template] optgroup')].map((g) => g.dataset.language).sort()",
    );
    assert_eq!(langs, json!(["en", "zh"]));
    expert
        .execute(
            "const s = document.querySelector('[data-test=template]');
             s.value = [...s.options].find((o) => o.textContent === 'CT 头颅平扫').value;
             s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .expect("pick the template");
    expert
        .wait_for(
            "document.querySelector('[data-test=findings]').value.startsWith('脑实质内未见明显异常密度影')
               && document.querySelector('[data-test=impression]').value === '颅脑CT平扫未见明显异常。'",
            T,
        )
        .expect("template applied");
    assert_eq!(
        hook(
            &expert,
            "document.querySelector('[data-test=sum-patient] [translate=no]')?.textContent"
        ),
        json!("王小东 (Wang, Xiaodong)")
    );
    expert.click("[data-test=sign]").expect("sign");
    expert
        .wait_for(
            "(() => { const d = document.querySelector('[data-test=sign-confirm]'); return !!(d && d.open); })()",
            T,
        )
        .expect("confirm dialog");
    expert
        .click("[data-test=sign-confirm] button[value=confirm], [data-test=sign-confirm] [data-test=sign-confirm-ok]")
        .expect("confirm");
    expert
        .wait_for("window.mrTest.viewer.signedVersion === 1", T)
        .expect("signed");
    shot(&expert, "cn-4-expert-signed");
    assert_eq!(
        s.sqlite(&format!(
            "SELECT status || '|' || impression FROM reports WHERE study_uid = '{target}' AND version = 1"
        )),
        "signed|颅脑CT平扫未见明显异常。"
    );
    assert!(
        s.sqlite(&format!("SELECT findings FROM reports WHERE study_uid = '{target}'"))
            .starts_with("脑实质内未见明显异常密度影")
    );
}
