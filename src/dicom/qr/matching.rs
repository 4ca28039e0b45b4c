//! Query/Retrieve key matching (PS3.4 C.2.2.2): what one key of a C-FIND
//! identifier (or, later, a QIDO-RS parameter) asks for, parsed and
//! validated before it goes near SQL.
//!
//! Pure: a value in, a [`Matcher`] or a [`KeyError`] out. The matcher
//! then becomes SQL (`archive::query`, with [`like_pattern`] for wildcards)
//! and is also a reference implementation ([`Matcher::matches`]) so the SQL
//! can be checked against it on random archives.
//!
//! Forms, by the key's value representation:
//! - empty (or `*` alone): universal, the key is only a return key;
//! - UI: one UID, or a list `u1\u2\…` (at most [`MAX_LIST`]); each must
//!   be a valid UID, no wildcards;
//! - DA, TM, DT: one value or a range `A-B`, `A-`, `-B`; times are
//!   normalised to `HHMMSS.FFFFFF` (an upper bound `10` covers up to
//!   10:59:59.999999, so "09-10" means what a person means); legacy
//!   `YYYY.MM.DD` dates are accepted;
//! - text (PN, LO, SH, CS, …): single value, or wildcard with `*` (any
//!   run) and `?` (one character); a `\` list only where the key is
//!   multi-valued in the query (Modalities in Study: any of).
//!
//! Every value is bounded by its VR's length and free of control
//! characters, so nothing unbounded or binary reaches a query.

use std::fmt;

/// Values in a list (UID list, Modalities in Study) at most: a study UID
/// list of a whole day's studies fits; a list that does not is refused
/// rather than turned into a statement with 10 000 binds.
pub const MAX_LIST: usize = 1_000;

/// The value representations matching distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vr {
    /// Unique identifier.
    Ui,
    Da,
    Tm,
    Dt,
    /// Person name (up to 64 characters per component group, 3 groups).
    Pn,
    /// Integer string (Series Number, Instance Number): single value only.
    Is,
    /// Short string / code string / long string, with their lengths.
    Sh,
    Cs,
    Lo,
}

impl Vr {
    /// Longest value accepted, in characters.
    fn max_chars(self) -> usize {
        match self {
            Vr::Ui => 64,
            Vr::Da => 18,  // YYYYMMDD-YYYYMMDD
            Vr::Tm => 29,  // HHMMSS.FFFFFF-HHMMSS.FFFFFF
            Vr::Dt => 53,  // two DTs with offsets
            Vr::Pn => 194, // 3 groups of 64 and 2 '='
            Vr::Is => 12,
            Vr::Sh => 16,
            Vr::Cs => 16,
            Vr::Lo => 64,
        }
    }
}

/// What one key asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Any value (a return key only).
    Universal,
    /// Exactly this value.
    Single(String),
    /// `*` and `?` wildcards over the value (text VRs only).
    Wildcard(String),
    /// Inclusive bounds, normalised so that text order is time order.
    Range { from: Option<String>, to: Option<String> },
    /// Any of these values (UID lists, Modalities in Study).
    AnyOf(Vec<String>),
}

/// Why a key's value cannot be matched: the SCP answers 0xC000 (unable to
/// process) naming the key; QIDO-RS answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("value longer than {max} characters")]
    TooLong { max: usize },
    #[error("control characters in the value")]
    Control,
    #[error("not a valid UID: {0:?}")]
    BadUid(String),
    #[error("more than {MAX_LIST} values in a list")]
    ListTooLong,
    #[error("a list is not allowed for this key")]
    ListNotAllowed,
    #[error("wildcards are not allowed for this key")]
    WildcardNotAllowed,
    #[error("not a valid {vr} value: {value:?}")]
    BadValue { vr: &'static str, value: String },
    #[error("empty range")]
    EmptyRange,
}

impl fmt::Display for Vr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vr::Ui => "UI",
            Vr::Da => "DA",
            Vr::Tm => "TM",
            Vr::Dt => "DT",
            Vr::Pn => "PN",
            Vr::Is => "IS",
            Vr::Sh => "SH",
            Vr::Cs => "CS",
            Vr::Lo => "LO",
        })
    }
}

impl Matcher {
    /// Parses a key's value (already decoded from its character set, with
    /// DICOM padding trimmed by the caller or here). `list` says whether
    /// the key may carry a `\` list (UI keys always may).
    pub fn parse(vr: Vr, raw: &str, list: bool) -> Result<Matcher, KeyError> {
        let value = raw.trim_end_matches(['\0', ' ']).trim_start_matches(' ');
        if value.chars().any(char::is_control) {
            return Err(KeyError::Control);
        }
        if value.is_empty() || value == "*" {
            return Ok(Matcher::Universal);
        }
        if vr == Vr::Ui || list {
            if value.contains('\\') {
                let parts: Vec<&str> = value.split('\\').collect();
                if parts.len() > MAX_LIST {
                    return Err(KeyError::ListTooLong);
                }
                let mut out = Vec::with_capacity(parts.len());
                for p in parts {
                    match Matcher::parse(vr, p, false)? {
                        Matcher::Single(v) => out.push(v),
                        Matcher::Universal => {}
                        _ => return Err(KeyError::WildcardNotAllowed),
                    }
                }
                out.sort();
                out.dedup();
                return Ok(Matcher::AnyOf(out));
            }
        } else if value.contains('\\') {
            return Err(KeyError::ListNotAllowed);
        }
        let max = vr.max_chars();
        if value.chars().count() > max {
            return Err(KeyError::TooLong { max });
        }
        match vr {
            Vr::Ui => {
                if crate::dicom::meta::is_valid_uid(value) {
                    Ok(Matcher::Single(value.to_string()))
                } else {
                    Err(KeyError::BadUid(value.to_string()))
                }
            }
            Vr::Da => range(value, date),
            Vr::Tm => range(value, time),
            Vr::Dt => range(value, date_time),
            Vr::Is => match value.trim().parse::<i64>() {
                Ok(n) if n.unsigned_abs() < 1 << 31 => Ok(Matcher::Single(n.to_string())),
                _ if value.contains(['*', '?']) => Err(KeyError::WildcardNotAllowed),
                _ => Err(KeyError::BadValue {
                    vr: "IS",
                    value: value.to_string(),
                }),
            },
            Vr::Pn | Vr::Sh | Vr::Cs | Vr::Lo => {
                if value.contains(['*', '?']) {
                    Ok(Matcher::Wildcard(value.to_string()))
                } else {
                    Ok(Matcher::Single(value.to_string()))
                }
            }
        }
    }

    /// Whether a stored value (normalised as the index keeps it: dates
    /// `YYYYMMDD`, times `HHMMSS.FFFFFF`) matches. The reference the SQL
    /// translation is tested against.
    pub fn matches(&self, stored: &str) -> bool {
        match self {
            Matcher::Universal => true,
            Matcher::Single(v) => stored == v,
            Matcher::Wildcard(p) => glob(p, stored),
            Matcher::Range { from, to } => {
                !stored.is_empty()
                    && from.as_deref().is_none_or(|f| stored >= f)
                    && to.as_deref().is_none_or(|t| stored <= t)
            }
            Matcher::AnyOf(vs) => vs.iter().any(|v| v == stored),
        }
    }
}

/// `A-B`, `A-` or `-B` (or one value: a single match, or for times the
/// whole span its precision covers). `norm(v, upper)` validates and
/// normalises one bound.
fn range(value: &str, norm: impl Fn(&str, bool) -> Option<String>) -> Result<Matcher, KeyError> {
    let bad = || KeyError::BadValue {
        vr: "date/time",
        value: value.to_string(),
    };
    if value.contains(['*', '?']) {
        return Err(KeyError::WildcardNotAllowed);
    }
    let (lo, hi) = match value.split_once('-') {
        // A DT's time zone offset also uses '-': a DT range has its '-'
        // after a complete first value or first; handled by the caller's
        // grammar (DT values with negative offsets are not supported here).
        Some((a, b)) => (a, b),
        None => {
            let lo = norm(value, false).ok_or_else(bad)?;
            let hi = norm(value, true).ok_or_else(bad)?;
            return Ok(if lo == hi {
                Matcher::Single(lo)
            } else {
                Matcher::Range {
                    from: Some(lo),
                    to: Some(hi),
                }
            });
        }
    };
    if lo.is_empty() && hi.is_empty() {
        return Err(bad());
    }
    let from = (!lo.is_empty())
        .then(|| norm(lo, false))
        .map(|v| v.ok_or_else(bad))
        .transpose()?;
    let to = (!hi.is_empty())
        .then(|| norm(hi, true))
        .map(|v| v.ok_or_else(bad))
        .transpose()?;
    if let (Some(f), Some(t)) = (&from, &to)
        && f > t
    {
        return Err(KeyError::EmptyRange);
    }
    Ok(Matcher::Range { from, to })
}

/// `YYYYMMDD` (or legacy `YYYY.MM.DD`) with a real calendar date.
fn date(v: &str, _upper: bool) -> Option<String> {
    let digits: String = if v.len() == 10 && v.as_bytes()[4] == b'.' && v.as_bytes()[7] == b'.' {
        v.replace('.', "")
    } else {
        v.to_string()
    };
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: u32 = digits[0..4].parse().ok()?;
    let m: u32 = digits[4..6].parse().ok()?;
    let d: u32 = digits[6..8].parse().ok()?;
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (y >= 1 && (1..=days).contains(&d)).then_some(digits)
}

/// `HH[MM[SS[.F{1,6}]]]` (or `HH:MM:SS`) as `HHMMSS.FFFFFF`; an upper
/// bound fills what its precision leaves open with the largest values.
pub fn time(v: &str, upper: bool) -> Option<String> {
    let v = if v.len() >= 5 && v.as_bytes().get(2) == Some(&b':') {
        v.replacen(':', "", 2)
    } else {
        v.to_string()
    };
    let (hms, frac) = match v.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (v.as_str(), None),
    };
    if !matches!(hms.len(), 2 | 4 | 6) || !hms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.is_some() && hms.len() != 6 {
        return None;
    }
    let field = |i: usize| hms.get(i..i + 2).map(|s| s.parse::<u32>().ok());
    let h = field(0)??;
    let m = field(2).map_or(Some(if upper { 59 } else { 0 }), |x| x)?;
    let s = field(4).map_or(Some(if upper { 59 } else { 0 }), |x| x)?;
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let f = match frac {
        Some(f) if !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let mut f = f.to_string();
            while f.len() < 6 {
                f.push(if upper { '9' } else { '0' });
            }
            f
        }
        Some(_) => return None,
        None if upper => "999999".to_string(),
        None => "000000".to_string(),
    };
    Some(format!("{h:02}{m:02}{s:02}.{f}"))
}

/// `YYYYMMDD[HHMMSS[.F]]` without offset, as the date then the time.
fn date_time(v: &str, upper: bool) -> Option<String> {
    if v.len() < 8 || !v.is_ascii() {
        return None;
    }
    let d = date(&v[..8], upper)?;
    let t = if v.len() == 8 {
        time(if upper { "23" } else { "00" }, upper)?
    } else {
        time(&v[8..], upper)?
    };
    Some(format!("{d}{t}"))
}

/// `*` any run of characters, `?` exactly one; everything else literal.
/// Characters, not bytes: `?` matches one Chinese character.
pub fn glob(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    // Iterative with one backtrack point: linear-ish, no recursion depth
    // for hostile patterns like "*a*a*a*…".
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A wildcard as a SQL `LIKE` pattern with `ESCAPE '\'`: `*` → `%`, `?` →
/// `_`, and the pattern's own `%`, `_` and `\` escaped so they match
/// themselves.
pub fn like_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    for c in pattern.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(vr: Vr, v: &str) -> Result<Matcher, KeyError> {
        Matcher::parse(vr, v, false)
    }

    #[test]
    fn empty_and_star_are_universal() {
        for vr in [Vr::Ui, Vr::Da, Vr::Tm, Vr::Pn, Vr::Lo] {
            assert_eq!(p(vr, ""), Ok(Matcher::Universal));
            assert_eq!(p(vr, "  "), Ok(Matcher::Universal));
            assert_eq!(p(vr, "*"), Ok(Matcher::Universal));
        }
    }

    #[test]
    fn uids_single_and_lists_are_validated() {
        assert_eq!(p(Vr::Ui, "1.2.3\0"), Ok(Matcher::Single("1.2.3".into())));
        assert_eq!(
            p(Vr::Ui, "1.2.4\\1.2.3\\1.2.4"),
            Ok(Matcher::AnyOf(vec!["1.2.3".into(), "1.2.4".into()]))
        );
        assert!(matches!(p(Vr::Ui, "1.2.x"), Err(KeyError::BadUid(_))));
        assert!(matches!(p(Vr::Ui, "1.2.3\\../etc"), Err(KeyError::BadUid(_))));
        assert_eq!(p(Vr::Ui, "1.2.*"), Err(KeyError::BadUid("1.2.*".into())));
        let many = vec!["1.2"; MAX_LIST + 1].join("\\");
        assert_eq!(p(Vr::Ui, &many), Err(KeyError::ListTooLong));
    }

    #[test]
    fn text_lists_only_where_allowed() {
        assert_eq!(p(Vr::Cs, "CT\\MR"), Err(KeyError::ListNotAllowed));
        assert_eq!(
            Matcher::parse(Vr::Cs, "MR\\CT", true),
            Ok(Matcher::AnyOf(vec!["CT".into(), "MR".into()]))
        );
    }

    #[test]
    fn dates_single_ranges_and_open_ranges() {
        assert_eq!(p(Vr::Da, "20240229"), Ok(Matcher::Single("20240229".into())));
        assert_eq!(p(Vr::Da, "2024.02.29"), Ok(Matcher::Single("20240229".into())));
        assert!(p(Vr::Da, "20230229").is_err(), "not a leap year");
        assert!(p(Vr::Da, "20241301").is_err());
        assert_eq!(
            p(Vr::Da, "20240101-"),
            Ok(Matcher::Range {
                from: Some("20240101".into()),
                to: None
            })
        );
        assert_eq!(
            p(Vr::Da, "-20231231"),
            Ok(Matcher::Range {
                from: None,
                to: Some("20231231".into())
            })
        );
        let r = p(Vr::Da, "20240101-20240131").expect("range");
        assert!(r.matches("20240101") && r.matches("20240131") && !r.matches("20240201"));
        assert!(!r.matches(""), "an unknown date is not in a range");
        assert_eq!(p(Vr::Da, "20240201-20240101"), Err(KeyError::EmptyRange));
        assert!(p(Vr::Da, "-").is_err());
        assert_eq!(p(Vr::Da, "2024*"), Err(KeyError::WildcardNotAllowed));
    }

    #[test]
    fn times_cover_what_their_precision_says() {
        assert_eq!(time("0930", false).as_deref(), Some("093000.000000"));
        assert_eq!(time("0930", true).as_deref(), Some("093059.999999"));
        assert_eq!(time("09:30:15", false).as_deref(), Some("093015.000000"));
        assert_eq!(time("093015.12", true).as_deref(), Some("093015.129999"));
        assert_eq!(time("2400", false), None);
        assert_eq!(time("0960", false), None);
        assert_eq!(time("09.5", false), None);
        let r = p(Vr::Tm, "09-10").expect("range");
        assert!(r.matches("093000.123000") && r.matches("105959.000000") && !r.matches("110000.000000"));
        // one value of hour precision: the whole hour
        let hour = p(Vr::Tm, "09").expect("hour");
        assert!(hour.matches("090000.000000") && hour.matches("095959.999999") && !hour.matches("100000.000000"));
    }

    #[test]
    fn date_times_are_dates_then_times() {
        let r = p(Vr::Dt, "20240101093000-20240101").expect("dt");
        assert!(r.matches("20240101093000.000000"));
        assert!(r.matches("20240101235959.999999"));
        assert!(!r.matches("20240101092959.999999"));
    }

    #[test]
    fn wildcards_match_characters_not_bytes() {
        assert!(glob("王*", "王^小东"));
        assert!(glob("?^小东", "王^小东"));
        assert!(!glob("?^小东", "王王^小东"));
        assert!(glob("W?ng*", "Wang^Xiaodong"));
        assert!(glob("*dong", "Wang^Xiaodong"));
        assert!(glob("**", ""));
        assert!(!glob("a*b", "ac"));
        // a hostile pattern ends quickly
        let hostile = "*a".repeat(60) + "b";
        assert!(!glob(&hostile, &"a".repeat(200)));
        assert_eq!(p(Vr::Pn, "Wang*"), Ok(Matcher::Wildcard("Wang*".into())));
        assert_eq!(p(Vr::Lo, "CT HEAD"), Ok(Matcher::Single("CT HEAD".into())));
    }

    #[test]
    fn like_patterns_escape_the_sql_wildcards() {
        assert_eq!(like_pattern("Wang*"), "Wang%");
        assert_eq!(like_pattern("W?ng"), "W_ng");
        assert_eq!(like_pattern("50%_a\\b*"), "50\\%\\_a\\\\b%");
    }

    #[test]
    fn integers_single_and_normalised() {
        assert_eq!(p(Vr::Is, "+007"), Ok(Matcher::Single("7".into())));
        assert_eq!(p(Vr::Is, "-3"), Ok(Matcher::Single("-3".into())));
        assert_eq!(p(Vr::Is, "1?"), Err(KeyError::WildcardNotAllowed));
        assert!(p(Vr::Is, "abc").is_err());
        assert!(p(Vr::Is, "99999999999").is_err(), "beyond IS's range");
    }

    #[test]
    fn hostile_values_are_refused() {
        assert_eq!(p(Vr::Pn, "a\u{0}b"), Err(KeyError::Control));
        assert_eq!(p(Vr::Pn, "a\u{1b}$)Ab"), Err(KeyError::Control), "undecoded ISO 2022");
        assert!(p(Vr::Dt, "2024王0101").is_err(), "no panic on a multibyte character");
        assert!(p(Vr::Tm, "0王").is_err());
        assert_eq!(p(Vr::Lo, "a\nb"), Err(KeyError::Control));
        assert_eq!(p(Vr::Sh, &"x".repeat(17)), Err(KeyError::TooLong { max: 16 }));
        assert!(p(Vr::Pn, &"王".repeat(194)).is_ok(), "characters, not bytes");
        assert!(p(Vr::Pn, &"王".repeat(195)).is_err());
    }
}
