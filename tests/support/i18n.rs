//! The localization checker for the browser tests: which interface text a
//! page shows in the wrong language, and which message keys it looked up
//! that its catalogue lacks (web/i18n.js records them in
//! `window.mrTest.i18n.missing`).
//!
//! Interface text is every visible text node (and `placeholder`, `title`,
//! `aria-label`, `alt`, `document.title`) outside `translate="no"` subtrees,
//! which is how the pages mark data (patient names, report text, UIDs,
//! modality codes). In zh-CN a Latin-letter word that is not one of the
//! terms Chinese radiologists use as they are ([`ALLOWED_LATIN`]) is
//! untranslated English; in en any CJK character is untranslated Chinese.
//! Page tests call [`check`] once per page state they reach, and
//! [`screenshot`] to keep a picture of it.

use std::time::Duration;

use serde_json::{Value, json};

use super::webdriver::{Session, SessionOpts};

/// Latin terms a zh-CN page may show as they are (case-sensitive).
pub const ALLOWED_LATIN: &[&str] = &[
    "CT", "MR", "MRI", "DR", "CR", "DX", "US", "XA", "MG", "PT", "NM", "ECG", "DICOM", "PACS", "SR", "ID", "AE", "UID",
    "PDF", "ZIP", "HTTP", "HTTPS", "URL", "IP", "STAT", "kbit/s", "Mbit/s", "Gbit/s", "B", "KB", "MB", "GB", "ms",
    "mm", "cm", "px", "HU", "WW", "WL", "medrelay", "English",
];

/// A Chromium session whose interface language (and so Accept-Language and
/// `navigator.languages`) is `lang`, e.g. "zh-CN".
pub fn opts(lang: &str) -> SessionOpts {
    SessionOpts {
        extra_args: vec![
            format!("--lang={lang}"),
            format!("--accept-lang={lang}"),
            "--window-size=1400,900".into(),
        ],
        ..Default::default()
    }
}

/// Waits until web/i18n.js has translated the page.
pub fn wait_ready(sess: &Session) -> Result<(), String> {
    sess.wait_for(
        "document.documentElement.dataset.i18nReady !== undefined && !!(window.mrTest && window.mrTest.i18n)",
        Duration::from_secs(60),
    )
    .map(|_| ())
}

/// The language the page is in (web/i18n.js's `lang()`).
pub fn page_lang(sess: &Session) -> String {
    sess.execute(
        "return window.mrTest && window.mrTest.i18n ? window.mrTest.i18n.lang : ''",
        vec![],
    )
    .ok()
    .and_then(|v| v.as_str().map(String::from))
    .unwrap_or_default()
}

const CHECKER: &str = r#"
const [rootSel, allowed] = arguments;
const hook = (window.mrTest && window.mrTest.i18n) || { lang: '', missing: [] };
const lang = hook.lang || document.documentElement.lang;
const root = rootSel ? document.querySelector(rootSel) : document.body;
if (!root) return { lang, issues: [`no element matches ${rootSel}`] };
const allow = new Set(allowed);
const zh = lang.toLowerCase().startsWith('zh');
const CJK = /[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]/;
const LATIN = /[A-Za-z]+(?:\/[A-Za-z]+)?/g;
function where(e) {
  const parts = [];
  for (let n = e; n && n.nodeType === 1 && parts.length < 6; n = n.parentElement) {
    let p = n.localName;
    if (n.id) p += '#' + n.id;
    else if (n.dataset && n.dataset.test) p += `[data-test=${n.dataset.test}]`;
    else if (n.classList && n.classList.length) p += '.' + [...n.classList].slice(0, 2).join('.');
    parts.unshift(p);
    if (n === root || n.id) break;
  }
  return parts.join(' > ');
}
function wrong(text) {
  if (zh) {
    const words = (text.match(LATIN) || []).filter((w) => !allow.has(w));
    return words.length ? `English ${JSON.stringify(words)}` : '';
  }
  return CJK.test(text) ? 'Chinese' : '';
}
function isData(e) {
  return !!e.closest('[translate="no"], script, style, noscript, template');
}
function shown(e) {
  if (e.closest('[hidden]')) return false;
  return e.checkVisibility({ visibilityProperty: true, checkVisibilityCSS: true });
}
const issues = [];
const note = (e, what, text) => {
  const why = wrong(text);
  if (why) issues.push(`${why} in ${what} at ${where(e)}: ${JSON.stringify(text.trim().slice(0, 120))}`);
};
const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  const e = n.parentElement;
  if (!e || !n.data.trim() || isData(e) || !shown(e)) continue;
  note(e, 'text', n.data);
}
for (const e of [root, ...root.querySelectorAll('[placeholder], [title], [aria-label], [alt]')]) {
  if (isData(e) || !shown(e)) continue;
  for (const a of ['placeholder', 'title', 'aria-label', 'alt']) {
    const v = e.getAttribute(a);
    if (v && v.trim()) note(e, a, v);
  }
}
if (!rootSel) note(document.documentElement, 'document.title', document.title);
for (const m of hook.missing || []) issues.push(`missing message ${m}`);
return { lang, issues };
"#;

/// The interface text under `root` (a CSS selector; None: the whole page)
/// in the wrong language for the page's language, and every message the
/// page looked up that its catalogue lacks; each with where it is.
pub fn check(sess: &Session, root: Option<&str>) -> Vec<String> {
    let r = sess
        .execute(CHECKER, vec![json!(root), json!(ALLOWED_LATIN)])
        .unwrap_or_else(|e| json!({ "issues": [format!("checker failed: {e}")] }));
    r["issues"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))
                .collect()
        })
        .unwrap_or_else(|| vec![format!("checker answered {r}")])
}

/// [`check`], failing the test with the offending strings.
pub fn assert_translated(sess: &Session, page: &str, root: Option<&str>) {
    let lang = page_lang(sess);
    let issues = check(sess, root);
    assert!(
        issues.is_empty(),
        "{page} in {lang}: {} untranslated:\n{}",
        issues.len(),
        issues.join("\n")
    );
}

/// Saves `target/screenshots/i18n-<page>-<lang>.png`.
pub fn screenshot(sess: &Session, page: &str) {
    let name = format!("i18n-{page}-{}", page_lang(sess));
    match sess.save_screenshot(&name) {
        Ok(p) => println!("screenshot: {}", p.display()),
        Err(e) => println!("screenshot {name}: {e}"),
    }
}

/// Clicks the switcher's button for `lang` and waits until the page is in it.
pub fn switch_to(sess: &Session, lang: &str) {
    sess.click(&format!("[data-test=lang-{lang}]"))
        .expect("click the language switcher");
    sess.wait_for(
        &format!("window.mrTest.i18n.lang === {}", Value::String(lang.into())),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("the page did not switch to {lang}: {e}"));
}
