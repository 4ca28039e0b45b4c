//! Content negotiation of WADO-RS (PS3.18 §8.7): which of the media types
//! a client's `Accept` lists we can answer with. Pure.
//!
//! Instances are sent as stored: this gateway never transcodes (stored
//! exactly as received is the archive's promise, and transcoding a
//! compressed study on a 2-core hub to save a viewer a decoder is the wrong
//! trade). So `multipart/related; type="application/dicom"` is answered
//! when it names no transfer syntax, `transfer-syntax=*`, or the stored
//! one of every instance asked for; a request for another transfer syntax
//! is 406 Not Acceptable, which tells a client to ask again with `*`.

/// One media range of an Accept header: type/subtype (lower case) and its
/// parameters (names lower case, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    pub media_type: String,
    pub params: Vec<(String, String)>,
}

impl MediaRange {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Most media ranges considered; more is not a real client.
const MAX_RANGES: usize = 32;

/// The media ranges of an Accept header value, in order (quality values
/// are ignored: every range we can answer is equally good).
pub fn parse(accept: &str) -> Vec<MediaRange> {
    split_outside_quotes(accept, ',')
        .into_iter()
        .take(MAX_RANGES)
        .filter_map(|range| {
            let mut parts = split_outside_quotes(range, ';').into_iter();
            let media_type = parts.next()?.trim().to_ascii_lowercase();
            if media_type.is_empty() {
                return None;
            }
            let params = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    let v = v.trim();
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                    Some((k.trim().to_ascii_lowercase(), v.to_string()))
                })
                .collect();
            Some(MediaRange { media_type, params })
        })
        .collect()
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Whether instances stored in `stored` transfer syntaxes may be sent as
/// `multipart/related; type="application/dicom"` to a client that sent
/// `accept` (None: no Accept header, anything goes). `Err` carries the
/// reason for the 406.
pub fn dicom_as_stored<'a>(
    accept: Option<&str>,
    stored: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<(), String> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(());
    };
    let ranges = parse(accept);
    for r in &ranges {
        let ok = match r.media_type.as_str() {
            "*/*" | "multipart/*" => r
                .param("type")
                .is_none_or(|t| t.eq_ignore_ascii_case("application/dicom")),
            "multipart/related" => {
                r.param("type")
                    .is_none_or(|t| t.eq_ignore_ascii_case("application/dicom"))
                    && match r.param("transfer-syntax") {
                        None | Some("*") => true,
                        Some(ts) => stored.clone().into_iter().all(|s| s == ts),
                    }
            }
            _ => false,
        };
        if ok {
            return Ok(());
        }
    }
    Err(
        "instances are sent as stored: accept multipart/related; type=\"application/dicom\" with no transfer-syntax, \
         transfer-syntax=*, or the stored one"
            .into(),
    )
}

/// Whether a response of `media_type` (e.g. `application/dicom+json`)
/// satisfies `accept` (None: no header).
pub fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    let (main, _) = media_type.split_once('/').unwrap_or((media_type, ""));
    parse(accept)
        .iter()
        .any(|r| r.media_type == "*/*" || r.media_type == media_type || r.media_type == format!("{main}/*"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ELE: &str = "1.2.840.10008.1.2.1";
    const J2K: &str = "1.2.840.10008.1.2.4.90";

    #[test]
    fn parses_quoted_parameters() {
        let r = parse(r#"multipart/related; type="application/dicom"; transfer-syntax=*, application/json;q=0.5"#);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].media_type, "multipart/related");
        assert_eq!(r[0].param("type"), Some("application/dicom"));
        assert_eq!(r[0].param("transfer-syntax"), Some("*"));
        assert_eq!(r[1].param("q"), Some("0.5"));
        assert_eq!(parse(r#"a/b; x="1,2""#)[0].param("x"), Some("1,2"));
    }

    #[test]
    fn instances_go_as_stored_or_not_at_all() {
        let stored = [ELE, J2K];
        for ok in [
            None,
            Some(""),
            Some("*/*"),
            Some("multipart/related; type=\"application/dicom\""),
            Some("multipart/related; type=application/dicom; transfer-syntax=*"),
            Some("image/jpeg, multipart/related; type=\"application/dicom\""),
        ] {
            assert!(dicom_as_stored(ok, stored).is_ok(), "{ok:?}");
        }
        let want_ele = "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.1";
        assert!(dicom_as_stored(Some(want_ele), [ELE, ELE]).is_ok());
        assert!(dicom_as_stored(Some(want_ele), stored).is_err());
        for bad in [
            "application/dicom",
            "multipart/related; type=\"application/octet-stream\"",
            "application/json",
        ] {
            assert!(dicom_as_stored(Some(bad), stored).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_negotiation() {
        assert!(accepts(None, "application/dicom+json"));
        assert!(accepts(Some("application/dicom+json"), "application/dicom+json"));
        assert!(accepts(Some("application/*"), "application/dicom+json"));
        assert!(accepts(Some("text/html, */*;q=0.1"), "application/dicom+json"));
        assert!(!accepts(Some("application/dicom+xml"), "application/dicom+json"));
    }
}
