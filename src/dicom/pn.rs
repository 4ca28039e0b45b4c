//! DICOM Person Names (PN, PS3.5 6.2.1): up to three component groups
//! separated by `=` — alphabetic (`Wang^Xiaodong`), ideographic (`王^小东`)
//! and phonetic (`wang^xiaodong`) — each of up to five components separated
//! by `^` (family, given, middle, prefix, suffix).
//!
//! The index stores a name whole, every group kept. This module splits it
//! for the API, derives the keys the study search looks up (so 王, 小东,
//! 王小东, `wang`, `Wang^Xiaodong` and `wang xiaodong` all find
//! `Wang^Xiaodong=王^小东=wang^xiaodong` through an index, without reading
//! every study), folds what users type the same way, and cleans a name
//! before it is written into a DICOM file. Pure: no I/O.

use serde::Serialize;

use super::charset::ESC;

/// The three component groups of a name, each as written (`^` kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PersonName {
    pub alphabetic: String,
    pub ideographic: String,
    pub phonetic: String,
}

/// Keys kept per name, and characters per key: bounds the index rows a
/// study adds whatever a device sends.
pub const MAX_KEYS: usize = 48;
pub const MAX_KEY_CHARS: usize = 32;
/// Words of one query that must all match.
pub const MAX_QUERY_WORDS: usize = 8;

impl PersonName {
    /// Splits a decoded value. Never fails: an empty group stays empty
    /// (`=王^小东` has only an ideographic one), and a value with more than
    /// three groups keeps the rest in the phonetic one, so nothing is lost.
    pub fn parse(value: &str) -> PersonName {
        let mut g = value.splitn(3, '=').map(|s| s.trim().to_string());
        PersonName {
            alphabetic: g.next().unwrap_or_default(),
            ideographic: g.next().unwrap_or_default(),
            phonetic: g.next().unwrap_or_default(),
        }
    }

    /// The folded keys a search word may start: every word of every
    /// component, each component's words joined, family and given name
    /// joined as people type them (`wangxiaodong`, `王小东`), and for names
    /// in scripts written without spaces (Han, kana, Hangul) every suffix of
    /// the whole name, so that a prefix lookup finds any part of it (小东,
    /// 东). Duplicates removed, most useful first, at most [`MAX_KEYS`].
    pub fn search_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        let mut add = |k: &str| {
            let k: String = k.chars().take(MAX_KEY_CHARS).collect();
            if !k.is_empty() && keys.len() < MAX_KEYS && !keys.contains(&k) {
                keys.push(k);
            }
        };
        for group in [&self.alphabetic, &self.ideographic, &self.phonetic] {
            let comps: Vec<Vec<String>> = group.split('^').map(|c| words(&fold(c))).collect();
            let whole: String = comps.iter().flatten().map(String::as_str).collect();
            if whole.is_empty() {
                continue;
            }
            comps.iter().flatten().for_each(|w| add(w));
            comps.iter().filter(|c| c.len() > 1).for_each(|c| add(&c.concat()));
            let family_given: String = comps.iter().take(2).flatten().map(String::as_str).collect();
            add(&family_given);
            if whole.chars().any(unspaced) {
                whole.char_indices().for_each(|(i, _)| add(&whole[i..]));
            }
        }
        keys
    }
}

/// A name with what must not be in it removed: ISO 2022 escape sequences
/// (left by a decoder that did not follow them, e.g. names indexed before
/// code extensions were decoded) and control characters. Trimmed.
pub fn clean(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == char::from(ESC) {
            // intermediates 0x20–0x2F, then one final byte 0x30–0x7E
            while chars.next_if(|c| ('\u{20}'..='\u{2F}').contains(c)).is_some() {}
            chars.next_if(|c| ('\u{30}'..='\u{7E}').contains(c));
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// Case- and width-folded text for search: lower case, the full-width
/// forms Chinese input methods type (`ｗａｎｇ`) as ASCII, the ideographic
/// space as a space, and tone marks off pinyin and accented Latin vowels
/// (`wáng` → `wang`, `ü` → `u`).
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
            '\u{3000}' => ' ',
            _ => c,
        };
        let c = match c {
            'ā' | 'á' | 'ǎ' | 'à' | 'â' | 'ä' | 'Ā' | 'Á' | 'Ǎ' | 'À' | 'Â' | 'Ä' => 'a',
            'ē' | 'é' | 'ě' | 'è' | 'ê' | 'ë' | 'Ē' | 'É' | 'Ě' | 'È' | 'Ê' | 'Ë' => 'e',
            'ī' | 'í' | 'ǐ' | 'ì' | 'î' | 'ï' | 'Ī' | 'Í' | 'Ǐ' | 'Ì' | 'Î' | 'Ï' => 'i',
            'ō' | 'ó' | 'ǒ' | 'ò' | 'ô' | 'ö' | 'Ō' | 'Ó' | 'Ǒ' | 'Ò' | 'Ô' | 'Ö' => 'o',
            'ū' | 'ú' | 'ǔ' | 'ù' | 'û' | 'ü' | 'ǖ' | 'ǘ' | 'ǚ' | 'ǜ' | 'Ū' | 'Ú' | 'Ǔ' | 'Ù' | 'Û' | 'Ü' | 'Ǖ'
            | 'Ǘ' | 'Ǚ' | 'Ǜ' => 'u',
            c => c,
        };
        out.extend(c.to_lowercase());
    }
    out
}

/// Between words: spaces, ASCII punctuation (`^`, `=`, `-`, `'`…), and the
/// CJK and Tibetan marks that separate names or syllables.
fn separator(c: char) -> bool {
    c.is_whitespace()
        || c.is_ascii_punctuation()
        || c.is_control()
        || matches!(c, '、' | '，' | '。' | '・' | '·' | '‧' | '་' | '༌' | '།')
}

/// Scripts written without spaces between words: CJK ideographs, kana,
/// Hangul, bopomofo.
fn unspaced(c: char) -> bool {
    matches!(u32::from(c),
        0x1100..=0x11FF | 0x2E80..=0x2FDF | 0x3040..=0x31FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xA960..=0xA97F | 0xAC00..=0xD7FF | 0xF900..=0xFAFF | 0xFF66..=0xFFDC | 0x20000..=0x3FFFF)
}

fn words(folded: &str) -> Vec<String> {
    folded
        .split(separator)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// What a search box asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameQuery {
    /// Nothing to filter on (empty, or only `*`).
    Any,
    /// Every word must start one of the study's keys (a trailing `*` is
    /// the same as none).
    Words(Vec<String>),
    /// A DICOM wildcard pattern with `*` or `?` inside a word: matched
    /// against the whole stored value.
    Pattern(String),
}

/// Reads a search box: `王`, `王小东`, `wang`, `Wang^Xiaodong`,
/// `wang xiaodong`, `WANG`, `Wang*` are words; `W?ng` and `*dong` are
/// patterns.
pub fn query(q: &str) -> NameQuery {
    let q = q.trim();
    let raw: Vec<&str> = q
        .split(|c: char| c.is_whitespace() || matches!(c, '^' | '=' | ',' | '，' | '、'))
        .filter(|w| !w.is_empty())
        .collect();
    if raw.iter().any(|w| w.trim_end_matches('*').contains(['*', '?'])) {
        return NameQuery::Pattern(q.to_string());
    }
    let mut out: Vec<String> = Vec::new();
    for w in raw.iter().flat_map(|w| words(&fold(w.trim_end_matches('*')))) {
        let w: String = w.chars().take(MAX_KEY_CHARS).collect();
        if !out.contains(&w) && out.len() < MAX_QUERY_WORDS {
            out.push(w);
        }
    }
    if out.is_empty() {
        NameQuery::Any
    } else {
        NameQuery::Words(out)
    }
}

/// The exclusive upper bound of the keys starting with `prefix`, in
/// SQLite's binary (UTF-8 byte) order: no key char sorts above U+10FFFF.
pub fn prefix_end(prefix: &str) -> String {
    format!("{prefix}{}", char::MAX)
}

/// The name as a PN value to write into a DICOM file: cleaned, no `\` (the
/// value delimiter), at most three groups of at most five components and 64
/// characters each (the VR's limit is per group), trailing empty groups
/// dropped. All groups kept otherwise: a PACS shows 王小东 as sent.
pub fn for_dicom(value: &str) -> String {
    let cleaned = clean(value).replace('\\', "/");
    let mut groups: Vec<String> = cleaned
        .split('=')
        .take(3)
        .map(|g| {
            let mut comps: Vec<String> = g.splitn(5, '^').map(str::to_string).collect();
            if let Some(last) = comps.last_mut() {
                *last = last.replace('^', " ");
            }
            comps.join("^").chars().take(64).collect::<String>().trim().to_string()
        })
        .collect();
    while groups.last().is_some_and(|g| g.trim_matches('^').is_empty()) {
        groups.pop();
    }
    groups.join("=")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANG: &str = "Wang^Xiaodong=王^小东=wang^xiaodong";

    fn matches(name: &str, q: &str) -> bool {
        let keys = PersonName::parse(name).search_keys();
        match query(q) {
            NameQuery::Any => true,
            NameQuery::Words(ws) => ws.iter().all(|w| keys.iter().any(|k| k.starts_with(w.as_str()))),
            NameQuery::Pattern(_) => panic!("{q} is a pattern"),
        }
    }

    #[test]
    fn three_groups_and_odd_shapes() {
        let p = PersonName::parse(WANG);
        assert_eq!(
            (p.alphabetic.as_str(), p.ideographic.as_str(), p.phonetic.as_str()),
            ("Wang^Xiaodong", "王^小东", "wang^xiaodong")
        );
        assert_eq!(PersonName::parse("=王^小东").ideographic, "王^小东");
        assert_eq!(PersonName::parse("=王^小东").alphabetic, "");
        assert_eq!(PersonName::parse("DOE^JOHN").ideographic, "");
        let extra = PersonName::parse("A=B=C=D=");
        assert_eq!((extra.alphabetic.as_str(), extra.phonetic.as_str()), ("A", "C=D="));
        assert_eq!(PersonName::parse(""), PersonName::default());
    }

    #[test]
    fn searches_people_type_find_the_name() {
        for q in [
            "王",
            "王小东",
            "小东",
            "东",
            "wang",
            "Wang^Xiaodong",
            "wang xiaodong",
            "WANG",
            "Wang*",
            "wangxiaodong",
            "xiao",
            "ｗａｎｇ",
            "Wáng",
            "王 小东",
            "xiaodong, wang",
        ] {
            assert!(matches(WANG, q), "{q:?} should find {WANG}");
        }
        for q in ["李", "zhang", "wang li", "ang", "王大"] {
            assert!(!matches(WANG, q), "{q:?} should not find {WANG}");
        }
        // Only an ideographic group; only an alphabetic one; Tibetan words.
        assert!(matches("=王^小东", "王小东") && !matches("=王^小东", "wang"));
        assert!(matches("DOE^JOHN", "doe") && matches("DOE^JOHN", "john doe"));
        assert!(matches("Tashi=བཀྲ་ཤིས", "བཀྲ་ཤིས") && matches("Tashi=བཀྲ་ཤིས", "ཤིས"));
        assert!(matches("O'Brien^Mary-Ann", "obrien") && matches("O'Brien^Mary-Ann", "mary ann"));
    }

    #[test]
    fn queries() {
        assert_eq!(query(""), NameQuery::Any);
        assert_eq!(query(" * "), NameQuery::Any);
        assert_eq!(query("^"), NameQuery::Any);
        assert_eq!(query("W?ng"), NameQuery::Pattern("W?ng".into()));
        assert_eq!(query("*dong"), NameQuery::Pattern("*dong".into()));
        assert_eq!(
            query("Wang^Xiaodong wang"),
            NameQuery::Words(vec!["wang".into(), "xiaodong".into()])
        );
        let many = "a b c d e f g h i j k";
        assert!(matches!(query(many), NameQuery::Words(w) if w.len() == MAX_QUERY_WORDS));
        assert!(prefix_end("wang").as_str() > "wangxiaodong");
        assert!(prefix_end("wang") > format!("wang{}", '\u{10FFFE}'));
        assert!(prefix_end("wang").as_str() < "wanh");
    }

    #[test]
    fn keys_are_bounded() {
        let long = format!("{}={}", "A^".repeat(500), "王".repeat(500));
        let keys = PersonName::parse(&long).search_keys();
        assert!(keys.len() <= MAX_KEYS && keys.iter().all(|k| k.chars().count() <= MAX_KEY_CHARS));
        assert!(PersonName::parse("^^^==").search_keys().is_empty());
    }

    #[test]
    fn cleaning_and_writing() {
        // Escape sequences a GBK decoder left in, a stray ESC, controls.
        assert_eq!(clean("Wang=\u{1b}$)A王^\u{1b}$)A小东\u{1b}(B= "), "Wang=王^小东=");
        assert_eq!(clean("A\u{1b}\u{0}B\tC"), "ABC");
        assert_eq!(for_dicom(WANG), WANG);
        assert_eq!(for_dicom("=王^小东"), "=王^小东");
        assert_eq!(for_dicom("A=B=C=D"), "A=B=C");
        assert_eq!(for_dicom("A\\B^C^D^E^F^G=="), "A/B^C^D^E^F G");
        // 64 characters per group, not per value: all three groups survive.
        let long = format!("{0}={0}={0}", "x".repeat(60));
        assert_eq!(for_dicom(&long), long);
        let g = for_dicom(&format!("{}=王", "y".repeat(80)));
        assert_eq!(g, format!("{}=王", "y".repeat(64)));
    }
}
