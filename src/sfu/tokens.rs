//! Join tokens: `<room>.<participant>.<hex account>.<expiry unix secs>.<hex HMAC-SHA256>`.
//!
//! Stateless so the WebSocket handler can refuse a forged or expired token
//! before it costs the SFU anything. The key is random per process: rooms live
//! in memory, so a restart ends them and their tokens together.
//!
//! A token names the account it was issued to (hex, since usernames may
//! hold dots): the signaling socket accepts it only together with a live
//! session of that same account, so a token or room id that leaks (a
//! forwarded link, a shoulder-surfed URL) is useless to anyone else.

use ring::hmac;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signature is not valid")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub room: String,
    pub participant: String,
    /// Username of the account the invitation belongs to.
    pub account: String,
    pub expires_unix: u64,
}

pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

fn id_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl TokenKey {
    pub fn random() -> TokenKey {
        let bytes: [u8; 32] = rand::random();
        TokenKey::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    pub fn mint(&self, c: &Claims) -> String {
        let body = format!(
            "{}.{}.{}.{}",
            c.room,
            c.participant,
            hex::encode(c.account.as_bytes()),
            c.expires_unix
        );
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex::encode(tag.as_ref()))
    }

    /// `now_unix` is passed in so expiry is testable without waiting.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        // 14 + 14 + 128 (a 64-byte username in hex) + 20 + 64 + 4 dots.
        if token.len() > 300 {
            return Err(TokenError::Malformed);
        }
        let (body, tag_hex) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let tag = hex::decode(tag_hex).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison inside ring.
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        let mut parts = body.split('.');
        let (Some(room), Some(participant), Some(account), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if !id_ok(room) || !id_ok(participant) {
            return Err(TokenError::Malformed);
        }
        let account = hex::decode(account)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|a| !a.is_empty() && a.len() <= 64)
            .ok_or(TokenError::Malformed)?;
        let expires_unix: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        if now_unix >= expires_unix {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            room: room.to_string(),
            participant: participant.to_string(),
            account,
            expires_unix,
        })
    }
}

/// Random identifier for rooms and participants: 12 chars of [a-z0-9], ~62 bits.
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::with_capacity(prefix.len() + 12);
    s.push_str(prefix);
    for _ in 0..12 {
        s.push(ALPHABET[rand::random_range(0..ALPHABET.len())] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            room: "r_abc".into(),
            participant: "p_def".into(),
            account: "li.wei".into(),
            expires_unix: exp,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let k = TokenKey::random();
        let t = k.mint(&claims(1000));
        assert_eq!(k.verify(&t, 999).unwrap(), claims(1000));
        assert_eq!(k.verify(&t, 1000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let k = TokenKey::random();
        let other = TokenKey::random();
        let t = k.mint(&claims(1000));
        assert_eq!(other.verify(&t, 1), Err(TokenError::BadSignature));
        // Extending the expiry invalidates the signature.
        let forged = t.replacen(".1000.", ".9999.", 1);
        assert_eq!(k.verify(&forged, 1), Err(TokenError::BadSignature));
        for bad in ["", "abc", "a.b.c.zz", "a.b.c.00", &"x".repeat(400)] {
            assert!(k.verify(bad, 1).is_err(), "{bad}");
        }
        // A validly signed body with bad fields is still refused.
        let weird = k.mint(&Claims {
            room: "r x".into(),
            participant: "p".into(),
            account: "a".into(),
            expires_unix: 5,
        });
        assert_eq!(k.verify(&weird, 1), Err(TokenError::Malformed));
        let nobody = k.mint(&Claims {
            account: String::new(),
            ..claims(5)
        });
        assert_eq!(k.verify(&nobody, 1), Err(TokenError::Malformed));
        // The account cannot be swapped for another one: it is signed.
        let other_account = t.replacen(&hex::encode("li.wei"), &hex::encode("zhao"), 1);
        assert_ne!(other_account, t);
        assert_eq!(k.verify(&other_account, 1), Err(TokenError::BadSignature));
        // The longest username still fits the length bound.
        let long = k.mint(&Claims {
            room: new_id("r_"),
            participant: new_id("p_"),
            account: "u".repeat(64),
            expires_unix: u64::MAX,
        });
        assert_eq!(k.verify(&long, 1).map(|c| c.account.len()), Ok(64));
    }

    #[test]
    fn ids_are_distinct() {
        let a = new_id("r_");
        assert_eq!(a.len(), 14);
        assert!(id_ok(&a));
        assert_ne!(a, new_id("r_"));
    }
}
