//! The interface language of the pages: which one a page is served in, and
//! the account setting that chooses it.
//!
//! The order is: the account's setting (`users.language`), else the
//! browser's `Accept-Language`, else `zh-CN` (the alliance's language). The
//! server writes its choice into the page's `<html lang>` start tag, so the
//! page's first paint is already in the right language and no round trip
//! to `/api/me` is needed to learn it; `data-mr-lang-from` says whether the
//! account chose it (then it wins) or the browser did (then a choice made on
//! the login page of this browser, kept in its localStorage, wins; see
//! web/i18n.js). The languages are the message catalogues the pages carry
//! (`web/i18n-<tag>.js`), so adding a catalogue adds the language here too.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, Code};
use crate::http::Services;
use crate::reading::access::{Caller, User};
use crate::reading::accounts;

/// The language of a page when neither the account nor the browser names one
/// we have.
pub const DEFAULT: &str = "zh-CN";

/// The languages the pages have a catalogue for, from the embedded files'
/// names (`i18n-zh-CN.js` -> `zh-CN`).
pub fn languages() -> Vec<&'static str> {
    super::assets::asset_names()
        .filter_map(|n| n.strip_prefix("i18n-")?.strip_suffix(".js"))
        .collect()
}

/// The best of `supported` for an `Accept-Language` header (RFC 9110 §12.5.4):
/// by weight, first listed first among equals; an exact tag (case-insensitive)
/// wins, else the first supported language with the same primary subtag
/// (`zh-TW`, `zh-Hans` -> `zh-CN`; `en-GB` -> `en`). `q=0` refuses a tag;
/// `*` matches nothing specific, so it falls to the default.
pub fn negotiate<'a>(accept: &str, supported: &[&'a str]) -> Option<&'a str> {
    let mut ranges: Vec<(f32, usize, &str)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(i, part)| {
            let mut it = part.split(';');
            let tag = it.next()?.trim();
            let mut q = 1.0f32;
            for p in it {
                if let Some(v) = p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")) {
                    q = v.trim().parse().ok()?;
                }
            }
            (!tag.is_empty() && tag != "*" && q > 0.0 && q <= 1.0).then_some((q, i, tag))
        })
        .take(32)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let primary = |t: &str| t.split('-').next().unwrap_or("").to_ascii_lowercase();
    for (_, _, tag) in ranges {
        if let Some(s) = supported.iter().find(|s| s.eq_ignore_ascii_case(tag)) {
            return Some(s);
        }
        if let Some(s) = supported.iter().find(|s| primary(s) == primary(tag)) {
            return Some(s);
        }
    }
    None
}

/// Who chose a page's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Account,
    Browser,
    Default,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Account => "account",
            Source::Browser => "browser",
            Source::Default => "default",
        }
    }
}

/// The language to serve a page in for this caller and request.
pub fn choose(user: Option<&User>, headers: &HeaderMap) -> (&'static str, Source) {
    let langs = languages();
    if let Some(l) = user
        .and_then(|u| u.language.as_deref())
        .and_then(|want| langs.iter().find(|s| **s == want))
    {
        return (l, Source::Account);
    }
    let accept = headers
        .get_all(header::ACCEPT_LANGUAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    match negotiate(&accept, &langs) {
        Some(l) => (l, Source::Browser),
        None => (DEFAULT, Source::Default),
    }
}

/// The page with its `<html …>` start tag replaced by one naming the
/// language and who chose it. Pages start with `<html lang="…">`; anything
/// else is left as it is.
pub fn localize(html: &str, lang: &str, source: Source) -> String {
    let Some(start) = html.find("<html") else {
        return html.to_string();
    };
    let Some(len) = html[start..].find('>') else {
        return html.to_string();
    };
    let tag = format!("<html lang=\"{lang}\" data-mr-lang-from=\"{}\">", source.as_str());
    let mut out = String::with_capacity(html.len() + 40);
    out.push_str(&html[..start]);
    out.push_str(&tag);
    out.push_str(&html[start + len + 1..]);
    out
}

/// A page as served: localized for the caller, never cached by proxies
/// (its language depends on the session).
pub fn page(bytes: &[u8], caller: Option<&Caller>, headers: &HeaderMap) -> String {
    let (lang, source) = choose(caller.map(|c| &c.user), headers);
    localize(&String::from_utf8_lossy(bytes), lang, source)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageBody {
    /// A language tag from `languages()`, or null to follow the browser.
    pub language: Option<String>,
}

/// `PUT /api/me/language {"language": "en" | null}`: the caller's own
/// interface language (null: follow the browser).
pub async fn set_mine(
    State(s): State<Arc<Services>>,
    c: Caller,
    body: Result<Json<LanguageBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let langs = languages();
    let lang = match b.language.as_deref() {
        None => None,
        Some(l) => Some(*langs.iter().find(|s| **s == l).ok_or_else(|| {
            ApiError::BadRequest(format!("language: one of {}, or null", langs.join(", "))).code(Code::BAD_LANGUAGE)
        })?),
    };
    accounts::set_language(s.index.pool(), &c.user.username, lang)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((StatusCode::OK, Json(serde_json::json!({ "language": lang }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAVE: &[&str] = &["en", "zh-CN"];

    #[test]
    fn the_catalogues_are_the_languages() {
        let l = languages();
        assert!(l.contains(&"zh-CN") && l.contains(&"en"), "{l:?}");
        assert!(l.contains(&DEFAULT));
    }

    #[test]
    fn accept_language_picks_by_weight_then_order() {
        assert_eq!(negotiate("zh-CN,zh;q=0.9", HAVE), Some("zh-CN"));
        assert_eq!(negotiate("en-US,en;q=0.9", HAVE), Some("en"));
        assert_eq!(negotiate("de-DE, en;q=0.5, zh;q=0.8", HAVE), Some("zh-CN"));
        assert_eq!(
            negotiate("zh-TW", HAVE),
            Some("zh-CN"),
            "any Chinese reads the simplified pages"
        );
        assert_eq!(negotiate("ZH-cn", HAVE), Some("zh-CN"));
        assert_eq!(negotiate("en;q=0, zh;q=0.1", HAVE), Some("zh-CN"));
        assert_eq!(negotiate("fr, *;q=0.5", HAVE), None);
        assert_eq!(negotiate("", HAVE), None);
        assert_eq!(negotiate("en;q=abc", HAVE), None, "a malformed weight drops the range");
        assert_eq!(negotiate("en;q=2", HAVE), None);
    }

    #[test]
    fn the_account_setting_wins_over_the_browser() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_LANGUAGE, "zh-CN,zh;q=0.9".parse().expect("header"));
        let mut u = crate::reading::access::testing::named("li", crate::reading::access::Role::Expert, None, None);
        assert_eq!(choose(Some(&u), &h), ("zh-CN", Source::Browser));
        u.language = Some("en".into());
        assert_eq!(choose(Some(&u), &h), ("en", Source::Account));
        u.language = Some("xx".into());
        assert_eq!(
            choose(Some(&u), &h),
            ("zh-CN", Source::Browser),
            "a language we no longer have"
        );
        assert_eq!(choose(None, &HeaderMap::new()), ("zh-CN", Source::Default));
    }

    /// A catalogue's entries in order: (section, key, placeholders). The
    /// format is the one web/I18N.md prescribes: one `'key': value,` per
    /// line, sections opened by `// ---… name` comment lines.
    fn entries(text: &str) -> Vec<(String, String, Vec<String>)> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("// -----") {
                section = rest.trim_start_matches('-').trim().to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix('\'') else { continue };
            let Some(end) = rest.find("':") else { continue };
            let (key, value) = (&rest[..end], &rest[end + 2..]);
            let mut ph: Vec<String> = value
                .split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}').map(|(n, _)| n.to_string()))
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .collect();
            ph.sort();
            ph.dedup();
            out.push((section.clone(), key.to_string(), ph));
        }
        out
    }

    /// Both catalogues have the same keys in the same sections with the
    /// same placeholders, each key in the section its prefix names, none
    /// twice: a page never shows a key or a half-filled message in one
    /// language only, and helpers adding keys to their page's section do
    /// not collide.
    #[test]
    fn the_catalogues_have_the_same_keys_sections_and_placeholders() {
        let zh = entries(include_str!("../../web/i18n-zh-CN.js"));
        let en = entries(include_str!("../../web/i18n-en.js"));
        assert!(
            zh.len() > 50 && en.len() > 50,
            "the parser found the entries: {} {}",
            zh.len(),
            en.len()
        );
        for (name, cat) in [("zh-CN", &zh), ("en", &en)] {
            let mut seen = std::collections::HashSet::new();
            for (section, key, _) in cat {
                assert!(seen.insert(key), "{name}: {key} twice");
                let prefix = key.split('.').next().unwrap_or("");
                assert_eq!(prefix, section, "{name}: {key} is in section {section}");
            }
        }
        let by_key = |c: &[(String, String, Vec<String>)]| {
            c.iter()
                .map(|(s, k, p)| (k.clone(), (s.clone(), p.clone())))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let (zk, ek) = (by_key(&zh), by_key(&en));
        let only_zh: Vec<_> = zk.keys().filter(|k| !ek.contains_key(*k)).collect();
        let only_en: Vec<_> = ek.keys().filter(|k| !zk.contains_key(*k)).collect();
        assert!(
            only_zh.is_empty() && only_en.is_empty(),
            "only in zh-CN: {only_zh:?}; only in en: {only_en:?}"
        );
        for (k, (_, p)) in &zk {
            assert_eq!(Some(p), ek.get(k).map(|(_, p)| p), "placeholders of {k}");
        }
        // Both name the sections in the same order, so additions merge.
        let sections = |c: &str| {
            c.lines()
                .filter_map(|l| l.trim().strip_prefix("// -----"))
                .map(|r| r.trim_start_matches('-').trim().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sections(include_str!("../../web/i18n-zh-CN.js")),
            sections(include_str!("../../web/i18n-en.js"))
        );
    }

    #[test]
    fn the_html_start_tag_names_the_language() {
        let page = "<!doctype html>\n<html lang=\"en\">\n<head><title>x</title></head></html>";
        assert_eq!(
            localize(page, "zh-CN", Source::Browser),
            "<!doctype html>\n<html lang=\"zh-CN\" data-mr-lang-from=\"browser\">\n<head><title>x</title></head></html>"
        );
        assert_eq!(localize("no html here", "en", Source::Default), "no html here");
    }
}
