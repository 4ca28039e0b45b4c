//! Text values decoded with the dataset's Specific Character Set
//! (0008,0005) into Unicode, so the index stores names as people wrote them.
//!
//! A single value names one encoding for the whole text: `ISO_IR 192`
//! (UTF-8), `GB18030`, `GBK`, `ISO_IR 100`… Several values, or an
//! `ISO 2022 …` term, mean ISO 2022 code extensions (PS3.5 6.1.2.5): value 1
//! (empty: ASCII) is active at the start, escape sequences in the bytes
//! designate the other listed sets, and value 1 is active again before the
//! delimiters (`\`, CR, LF, and in Person Names `^` and `=`). Chinese
//! modalities commonly send `\ISO 2022 IR 58`: ASCII, with GB 2312 designated
//! to G1 by `ESC $ ) A` before the hanzi. dicom-encoding reads that term as
//! plain GBK and leaves the escape sequences in the text, hence this module;
//! the `encoding` crate underneath it does the table work.
//!
//! Undecodable bytes become U+FFFD (dicom-encoding writes them as `\ooo`,
//! whose backslash is the DICOM value delimiter). Pure: no I/O.

use encoding::all::{
    GB18030, GBK, ISO_2022_JP, ISO_8859_1, ISO_8859_2, ISO_8859_3, ISO_8859_4, ISO_8859_5, ISO_8859_6, ISO_8859_7,
    ISO_8859_8, ISO_8859_15, UTF_8, WINDOWS_31J, WINDOWS_874, WINDOWS_949, WINDOWS_1254,
};
use encoding::{DecoderTrap, EncodingRef};

pub const ESC: u8 = 0x1B;

/// What is designated to G0 (the GL bytes 0x21–0x7E).
#[derive(Clone, Copy)]
enum G0 {
    /// ASCII (ISO-IR 6), or JIS X 0201 romaji (ISO-IR 14), read as ASCII.
    Ascii,
    /// A two-byte Japanese set (ISO-IR 87, 159): the escape sequence that
    /// selects it, handed to the ISO-2022-JP decoder with the bytes.
    Jis(&'static [u8]),
}

/// One ISO 2022 designation: to G0, or of a G1 set read from the GR bytes
/// (0xA1–0xFE) by this decoder, which reads GL as ASCII.
#[derive(Clone, Copy)]
enum Designation {
    G0(G0),
    G1(EncodingRef),
}

/// The set of a defined term, by its ISO-IR number (`ISO_IR 100` and
/// `ISO 2022 IR 100` alike).
fn of_term(term: &str) -> Option<Designation> {
    let n: u16 = term
        .strip_prefix("ISO 2022 IR ")
        .or_else(|| term.strip_prefix("ISO_IR "))?
        .trim()
        .parse()
        .ok()?;
    Some(match n {
        6 | 14 => Designation::G0(G0::Ascii),
        87 => Designation::G0(G0::Jis(b"\x1b$B")),
        159 => Designation::G0(G0::Jis(b"\x1b$(D")),
        13 => Designation::G1(WINDOWS_31J),
        58 => Designation::G1(GBK),
        149 => Designation::G1(WINDOWS_949),
        100 => Designation::G1(ISO_8859_1),
        101 => Designation::G1(ISO_8859_2),
        109 => Designation::G1(ISO_8859_3),
        110 => Designation::G1(ISO_8859_4),
        144 => Designation::G1(ISO_8859_5),
        127 => Designation::G1(ISO_8859_6),
        126 => Designation::G1(ISO_8859_7),
        138 => Designation::G1(ISO_8859_8),
        148 => Designation::G1(WINDOWS_1254),
        203 => Designation::G1(ISO_8859_15),
        166 => Designation::G1(WINDOWS_874),
        _ => return None,
    })
}

/// The escape sequence at the start of `tail` (the bytes after ESC), as
/// listed in PS3.3 C.12.1.1.2: its length and what it designates.
fn escape(tail: &[u8]) -> Option<(usize, Designation)> {
    let d = |n, d| Some((n, d));
    match tail {
        [b'(', b'B', ..] | [b'(', b'J', ..] => d(2, Designation::G0(G0::Ascii)),
        [b'$', b'B', ..] => d(2, Designation::G0(G0::Jis(b"\x1b$B"))),
        [b'$', b'(', b'D', ..] => d(3, Designation::G0(G0::Jis(b"\x1b$(D"))),
        [b')', b'I', ..] => d(2, Designation::G1(WINDOWS_31J)),
        [b'$', b')', b'A', ..] => d(3, Designation::G1(GBK)),
        [b'$', b')', b'C', ..] => d(3, Designation::G1(WINDOWS_949)),
        [b'-', f, ..] => {
            let e: EncodingRef = match f {
                b'A' => ISO_8859_1,
                b'B' => ISO_8859_2,
                b'C' => ISO_8859_3,
                b'D' => ISO_8859_4,
                b'L' => ISO_8859_5,
                b'G' => ISO_8859_6,
                b'F' => ISO_8859_7,
                b'H' => ISO_8859_8,
                b'M' => WINDOWS_1254,
                b'b' => ISO_8859_15,
                b'T' => WINDOWS_874,
                _ => return None,
            };
            d(2, Designation::G1(e))
        }
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Absent, empty, ASCII or an unknown term: UTF-8 as many devices send
    /// without saying so, invalid bytes replaced.
    Unspecified,
    /// One encoding for the whole value.
    Single(EncodingRef),
    /// ISO 2022 code extensions: the sets of value 1, and the first G1 set
    /// of the other values (used when a value carries no escape sequence at
    /// all, as some writers send GB 2312 under `\ISO 2022 IR 58`).
    Iso2022 {
        g0: G0,
        g1: Option<EncodingRef>,
        implied_g1: Option<EncodingRef>,
    },
}

/// A dataset's Specific Character Set, ready to decode its text values.
#[derive(Clone, Copy)]
pub struct Charset(Kind);

impl Default for Charset {
    fn default() -> Self {
        Charset(Kind::Unspecified)
    }
}

impl Charset {
    /// From the raw value of (0008,0005), if the dataset has one.
    pub fn from_raw(raw: Option<&[u8]>) -> Charset {
        let Some(raw) = raw else { return Charset::default() };
        let text = String::from_utf8_lossy(raw);
        let mut values: Vec<&str> = text
            .split('\\')
            .map(|v| v.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
            .collect();
        while values.last().is_some_and(|v| v.is_empty()) {
            values.pop();
        }
        let iso2022 = values.len() > 1 || values.iter().any(|v| v.starts_with("ISO 2022"));
        if !iso2022 {
            let Some(term) = values.first() else {
                return Charset::default();
            };
            return Charset(match *term {
                "ISO_IR 192" => Kind::Single(UTF_8),
                "GB18030" => Kind::Single(GB18030),
                "GBK" => Kind::Single(GBK),
                t => match of_term(t) {
                    Some(Designation::G1(e)) => Kind::Single(e),
                    Some(Designation::G0(G0::Jis(esc))) => Kind::Iso2022 {
                        g0: G0::Jis(esc),
                        g1: None,
                        implied_g1: None,
                    },
                    Some(Designation::G0(G0::Ascii)) | None => Kind::Unspecified,
                },
            });
        }
        let (mut g0, mut g1) = (G0::Ascii, None);
        match values.first().and_then(|v| of_term(v)) {
            Some(Designation::G0(g)) => g0 = g,
            Some(Designation::G1(e)) => g1 = Some(e),
            None => {}
        }
        let implied_g1 = values.iter().skip(1).find_map(|v| match of_term(v) {
            Some(Designation::G1(e)) => Some(e),
            _ => None,
        });
        Charset(Kind::Iso2022 { g0, g1, implied_g1 })
    }

    /// A text value (LO, SH, LT, UT…) as Unicode.
    pub fn decode(&self, raw: &[u8]) -> String {
        self.decode_as(raw, false)
    }

    /// A Person Name value as Unicode: with code extensions, value 1's sets
    /// are active again at every `^` and `=`.
    pub fn decode_pn(&self, raw: &[u8]) -> String {
        self.decode_as(raw, true)
    }

    fn decode_as(&self, raw: &[u8], pn: bool) -> String {
        match self.0 {
            Kind::Unspecified => String::from_utf8_lossy(raw).into_owned(),
            Kind::Single(e) => decode_with(e, raw),
            Kind::Iso2022 { g0, g1, implied_g1 } => {
                let g1 = if raw.contains(&ESC) { g1 } else { g1.or(implied_g1) };
                decode_iso2022(raw, g0, g1, pn)
            }
        }
    }
}

fn decode_with(e: EncodingRef, raw: &[u8]) -> String {
    // The Replace trap never fails; the fallback only satisfies the type.
    e.decode(raw, DecoderTrap::Replace)
        .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
}

fn decode_run(out: &mut String, run: &[u8], g0: G0, g1: Option<EncodingRef>) {
    if run.is_empty() {
        return;
    }
    match (g0, g1) {
        (G0::Jis(esc), _) => {
            let mut v = Vec::with_capacity(esc.len() + run.len());
            v.extend_from_slice(esc);
            v.extend_from_slice(run);
            out.push_str(&decode_with(ISO_2022_JP, &v));
        }
        (G0::Ascii, Some(e)) => out.push_str(&decode_with(e, run)),
        (G0::Ascii, None) => out.push_str(&String::from_utf8_lossy(run)),
    }
}

/// Length of a syntactically complete but unknown escape sequence at the
/// start of `tail` (after ESC): intermediate bytes 0x20–0x2F, then one final
/// byte 0x30–0x7E if there is one.
fn unknown_escape(tail: &[u8]) -> usize {
    let n = tail.iter().take_while(|b| (0x20..=0x2F).contains(*b)).count();
    n + usize::from(tail.get(n).is_some_and(|b| (0x30..=0x7E).contains(b)))
}

/// Follows the escape sequences of one value. An unknown or cut-off escape
/// sequence is dropped, never shown.
fn decode_iso2022(raw: &[u8], init_g0: G0, init_g1: Option<EncodingRef>, pn: bool) -> String {
    let (mut g0, mut g1) = (init_g0, init_g1);
    let mut out = String::with_capacity(raw.len());
    let mut start = 0;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == ESC {
            decode_run(&mut out, &raw[start..i], g0, g1);
            i += 1;
            if let Some((len, d)) = escape(&raw[i..]) {
                match d {
                    Designation::G0(g) => g0 = g,
                    Designation::G1(e) => g1 = Some(e),
                }
                i += len;
            } else {
                i += unknown_escape(&raw[i..]);
            }
            start = i;
            continue;
        }
        let delimiter = matches!(g0, G0::Ascii)
            && (matches!(b, b'\\' | b'\r' | b'\n' | 0x0C | b'\t') || (pn && matches!(b, b'^' | b'=')));
        i += 1;
        if delimiter {
            decode_run(&mut out, &raw[start..i], g0, g1);
            start = i;
            g0 = init_g0;
            // A writer that designated G1 once and relied on it staying is
            // read leniently: only a set value 1 names replaces it.
            if init_g1.is_some() {
                g1 = init_g1;
            }
        } else if matches!(g0, G0::Jis(_)) && matches!(b, b'\r' | b'\n') {
            decode_run(&mut out, &raw[start..i], g0, g1);
            start = i;
            g0 = init_g0;
        }
    }
    decode_run(&mut out, &raw[start..], g0, g1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(term: &[u8]) -> Charset {
        Charset::from_raw(Some(term))
    }

    // "Wang^Xiaodong=王^小东=wang^xiaodong" in GB 2312 / GB18030 / GBK bytes.
    const WANG_GB: &[u8] = b"Wang^Xiaodong=\xcd\xf5^\xd0\xa1\xb6\xab=wang^xiaodong";
    const WANG: &str = "Wang^Xiaodong=王^小东=wang^xiaodong";

    #[test]
    fn single_valued_chinese_and_unicode_sets() {
        assert_eq!(cs(b"GB18030 ").decode_pn(WANG_GB), WANG);
        assert_eq!(cs(b"GBK").decode_pn(WANG_GB), WANG);
        assert_eq!(cs(b"ISO_IR 192").decode_pn(WANG.as_bytes()), WANG);
        // A GB18030 four-byte sequence (U+20087 𠂇) and Tibetan (UTF-8).
        assert_eq!(cs(b"GB18030").decode(b"\x95\x32\x90\x31"), "\u{20087}");
        assert_eq!(cs(b"ISO_IR 192").decode("བཀྲ་ཤིས".as_bytes()), "བཀྲ་ཤིས");
        assert_eq!(cs(b"ISO_IR 100").decode(b"M\xfcller"), "Müller");
        // No term, or an unknown one: UTF-8, invalid bytes replaced.
        assert_eq!(Charset::from_raw(None).decode(WANG.as_bytes()), WANG);
        assert_eq!(cs(b"ISO_IR 999").decode(b"a\xffb"), "a\u{fffd}b");
        // Never the octal escapes dicom-encoding writes (a backslash would
        // split the value).
        assert!(!cs(b"ISO_IR 192").decode(b"a\xffb").contains('\\'));
    }

    #[test]
    fn iso_2022_ir_58_with_escapes_as_chinese_modalities_send_it() {
        // PS3.5 Annex K style: GB 2312 designated to G1 before each run.
        let raw = b"Wang^Xiaodong=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xb6\xab=wang^xiaodong";
        for term in [
            &b"\\ISO 2022 IR 58"[..],
            b"ISO 2022 IR 6\\ISO 2022 IR 58",
            b"ISO 2022 IR 58",
        ] {
            assert_eq!(cs(term).decode_pn(raw), WANG, "{}", String::from_utf8_lossy(term));
        }
        // Designated once, with a return to ASCII at the end.
        let raw = b"Wang^Xiaodong=\x1b$)A\xcd\xf5^\xd0\xa1\xb6\xab\x1b(B=wang^xiaodong";
        assert_eq!(cs(b"\\ISO 2022 IR 58").decode_pn(raw), WANG);
        // No escape sequence at all (as pydicom writes it).
        assert_eq!(cs(b"\\ISO 2022 IR 58").decode_pn(WANG_GB), WANG);
        // Free text: the hanzi run ends at the line break only.
        assert_eq!(
            cs(b"\\ISO 2022 IR 58").decode(b"CT \x1b$)A\xd0\xd8\xb2\xbf\r\nOK"),
            "CT 胸部\r\nOK"
        );
    }

    #[test]
    fn iso_2022_other_sets() {
        // Japanese (PS3.5 H.3.1): Yamada^Tarou=山田^太郎=やまだ^たろう.
        let raw = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        assert_eq!(
            cs(b"\\ISO 2022 IR 87").decode_pn(raw),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
        // Korean (PS3.5 I.2): Hong^Gildong=洪^吉洞=홍^길동.
        let raw = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        assert_eq!(cs(b"\\ISO 2022 IR 149").decode_pn(raw), "Hong^Gildong=洪^吉洞=홍^길동");
        // Latin-1 as value 1 of an extended set.
        assert_eq!(cs(b"ISO 2022 IR 100\\ISO 2022 IR 58").decode(b"M\xfcller"), "Müller");
    }

    #[test]
    fn malformed_escapes_are_dropped_not_shown() {
        let c = cs(b"\\ISO 2022 IR 58");
        // Unknown final byte, a cut-off sequence at the end, a lone ESC.
        assert_eq!(c.decode_pn(b"A\x1b$)Z^B\x1b$"), "A^B");
        assert_eq!(c.decode_pn(b"\x1b"), "");
        assert_eq!(c.decode_pn(b"\x1b$)A\xcd"), "\u{fffd}");
        // Every byte string decodes without panicking.
        for n in 0..=255u8 {
            for term in [&b"\\ISO 2022 IR 58"[..], b"\\ISO 2022 IR 87", b"GB18030", b"ISO_IR 192"] {
                let _ = cs(term).decode_pn(&[0x1b, b'$', n, 0xcd, n, b'^', n]);
            }
        }
    }
}
