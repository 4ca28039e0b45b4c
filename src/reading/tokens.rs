//! API tokens for machine clients (viewers, PACS, scripts) of the DICOMweb
//! routes: the only code that reads or writes the `api_tokens` table.
//!
//! A token is `mrt_` followed by 32 random bytes in hex: the prefix makes a
//! leaked token recognisable (secret scanners, log review), the 256 random
//! bits make guessing hopeless. It is printed once, when created, and only
//! its SHA-256 is stored. A plain, fast hash is right here, unlike for
//! passwords: argon2's slowness exists to make guessing a *low-entropy*
//! secret from its hash expensive, and nobody can enumerate 2^256 tokens
//! whatever the hash costs; a fast hash also lets every request be looked
//! up by an index on the hash instead of a slow check per request.
//!
//! Each token has a scope that means exactly what the same words mean for
//! accounts (`reading::access::Scope`): `clinic:ID` that clinic,
//! `hospital:ID` the clinics the hospital serves, `all` everything.
//! Revoking keeps the row (with `revoked_ms`), so audit rows naming
//! `token:NAME` keep pointing at something.

use sqlx::Row;

use super::access::Scope;
use crate::config::Config;
use crate::store::Pool;

/// What every token starts with.
pub const PREFIX: &str = "mrt_";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// `last_used_ms` is written at most this often per token (a viewer sends
/// hundreds of requests a minute; one write a minute says enough).
pub const TOUCH_EVERY_MS: i64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token name must be 1-64 letters, digits, '.', '_' or '-'")]
    BadName,
    #[error("scope must be clinic:ID, hospital:ID or all, not {0:?}")]
    BadScope(String),
    /// The scope names a clinic or hospital the configuration does not list.
    #[error("{0}")]
    UnknownAffiliation(String),
    #[error("a token named {0:?} exists already (revoked tokens keep their name)")]
    Exists(String),
    #[error("no active token named {0:?}")]
    NoSuchToken(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What a token may see, as written on the command line and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    Clinic(String),
    Hospital(String),
    All,
}

impl std::str::FromStr for TokenScope {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<TokenScope, TokenError> {
        let bad = || TokenError::BadScope(s.chars().take(80).collect());
        let id_ok = |id: &str| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic());
        match s.split_once(':') {
            None if s == "all" => Ok(TokenScope::All),
            Some(("clinic", id)) if id_ok(id) => Ok(TokenScope::Clinic(id.to_string())),
            Some(("hospital", id)) if id_ok(id) => Ok(TokenScope::Hospital(id.to_string())),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenScope::Clinic(id) => write!(f, "clinic:{id}"),
            TokenScope::Hospital(id) => write!(f, "hospital:{id}"),
            TokenScope::All => f.write_str("all"),
        }
    }
}

impl TokenScope {
    /// Refuses a clinic or hospital the configuration does not list, with
    /// the words accounts get (`access::check_affiliation`).
    pub fn check(&self, cfg: &Config) -> Result<(), TokenError> {
        let r = match self {
            TokenScope::Clinic(id) => super::access::check_affiliation(cfg, Some(id), None),
            TokenScope::Hospital(id) => super::access::check_affiliation(cfg, None, Some(id)),
            TokenScope::All => Ok(()),
        };
        r.map_err(TokenError::UnknownAffiliation)
    }

    /// The clinics the token sees, decided from the configuration on every
    /// request as for accounts (`access::scope_of`): a hospital that starts
    /// serving another clinic gives its tokens that clinic too, and a
    /// hospital or clinic removed from the configuration leaves its tokens
    /// seeing nothing rather than everything.
    pub fn scope(&self, cfg: &Config) -> Scope {
        match self {
            TokenScope::All => Scope::All,
            TokenScope::Clinic(id) => Scope::Clinics(if cfg.clinics.iter().any(|c| &c.id == id) {
                vec![id.clone()]
            } else {
                Vec::new()
            }),
            TokenScope::Hospital(id) => Scope::Clinics(
                cfg.hospitals
                    .iter()
                    .find(|h| &h.id == id)
                    .map(|h| h.serves.clone())
                    .unwrap_or_default(),
            ),
        }
    }
}

/// A token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    /// As stored; a row this build cannot parse has scope `None` and is
    /// treated as seeing nothing.
    pub scope: Option<TokenScope>,
    pub scope_text: String,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// Short printable names: they end up in audit rows as `token:NAME`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether `s` is shaped like one of our tokens (checked before hashing, so
/// garbage of any length costs nothing).
pub fn looks_like_token(s: &str) -> bool {
    s.len() == PREFIX.len() + 2 * TOKEN_BYTES
        && s.starts_with(PREFIX)
        && s[PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut b);
    format!("{PREFIX}{}", hex::encode(b))
}

fn hash(token: &str) -> String {
    super::accounts::token_hash(token)
}

fn of_row(r: &crate::store::DbRow) -> ApiToken {
    let scope_text: String = r.get("scope");
    ApiToken {
        name: r.get("name"),
        scope: scope_text.parse().ok(),
        scope_text,
        created_ms: r.get("created_ms"),
        last_used_ms: r.get("last_used_ms"),
        revoked_ms: r.get("revoked_ms"),
    }
}

/// Creates a token named `name` with `scope` (checked against `cfg`) and
/// returns it: the only time it is ever seen.
pub async fn add(pool: &Pool, cfg: &Config, name: &str, scope: &TokenScope, now_ms: i64) -> Result<String, TokenError> {
    if !valid_name(name) {
        return Err(TokenError::BadName);
    }
    scope.check(cfg)?;
    let token = new_token();
    let r = sqlx::query(
        "INSERT INTO api_tokens (name, token_hash, scope, created_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(hash(&token))
    .bind(scope.to_string())
    .bind(now_ms)
    .execute(pool)
    .await?;
    if r.rows_affected() == 0 {
        return Err(TokenError::Exists(name.to_string()));
    }
    Ok(token)
}

/// Revokes an active token; effective on the next request that uses it.
pub async fn revoke(pool: &Pool, name: &str, now_ms: i64) -> Result<(), TokenError> {
    let r = sqlx::query("UPDATE api_tokens SET revoked_ms = $1 WHERE name = $2 AND revoked_ms IS NULL")
        .bind(now_ms)
        .bind(name)
        .execute(pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(TokenError::NoSuchToken(name.to_string()));
    }
    Ok(())
}

pub async fn list(pool: &Pool) -> Result<Vec<ApiToken>, TokenError> {
    let rows = sqlx::query("SELECT * FROM api_tokens ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(of_row).collect())
}

/// The active token whose value is `token`, None for an unknown, revoked
/// or malformed one. Records the use (at most once a
/// [`TOUCH_EVERY_MS`]); a failure to record it does not refuse the request.
pub async fn authenticate(pool: &Pool, token: &str, now_ms: i64) -> Result<Option<ApiToken>, TokenError> {
    if !looks_like_token(token) {
        return Ok(None);
    }
    let Some(row) = sqlx::query("SELECT * FROM api_tokens WHERE token_hash = $1 AND revoked_ms IS NULL")
        .bind(hash(token))
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let t = of_row(&row);
    if t.last_used_ms.is_none_or(|at| now_ms - at >= TOUCH_EVERY_MS) {
        let r = sqlx::query(
            "UPDATE api_tokens SET last_used_ms = $1 WHERE name = $2 AND (last_used_ms IS NULL OR last_used_ms <= $3)",
        )
        .bind(now_ms)
        .bind(&t.name)
        .bind(now_ms - TOUCH_EVERY_MS)
        .execute(pool)
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, token = %t.name, "could not record an API token's use");
        }
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HospitalConfig;
    use crate::reading::access::testing::clinic;

    fn cfg() -> Config {
        Config {
            clinics: vec![clinic("t1"), clinic("t2"), clinic("t3")],
            hospitals: vec![HospitalConfig {
                id: "city".into(),
                name: "City".into(),
                serves: vec!["t1".into(), "t2".into()],
                ae_titles: Vec::new(),
            }],
            ..Config::default()
        }
    }

    #[test]
    fn scopes_parse_and_mean_what_they_mean_for_accounts() {
        let cfg = cfg();
        for (text, want) in [
            ("all", Scope::All),
            ("clinic:t3", Scope::Clinics(vec!["t3".into()])),
            ("hospital:city", Scope::Clinics(vec!["t1".into(), "t2".into()])),
        ] {
            let s: TokenScope = text.parse().expect(text);
            assert_eq!(s.to_string(), text);
            assert!(s.check(&cfg).is_ok(), "{text}");
            assert_eq!(s.scope(&cfg), want, "{text}");
        }
        for bad in ["", "ALL", "clinic:", "clinic", "ward:t1", "clinic:a b", "hospital:x\n"] {
            assert!(bad.parse::<TokenScope>().is_err(), "{bad:?}");
        }
        let e = "clinic:t9"
            .parse::<TokenScope>()
            .expect("parses")
            .check(&cfg)
            .unwrap_err();
        assert!(e.to_string().contains("t9"), "{e}");
        let e = "hospital:x"
            .parse::<TokenScope>()
            .expect("parses")
            .check(&cfg)
            .unwrap_err();
        assert!(e.to_string().contains("[[hospital]]"), "{e}");
        // Removed from the configuration later: sees nothing, not everything.
        let gone = Config::default();
        assert_eq!(TokenScope::Clinic("t1".into()).scope(&gone), Scope::Clinics(vec![]));
        assert_eq!(TokenScope::Hospital("city".into()).scope(&gone), Scope::Clinics(vec![]));
    }

    #[test]
    fn tokens_are_long_random_and_recognisable() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(looks_like_token(&a) && a.starts_with("mrt_") && a.len() == 68, "{a}");
        assert!(!looks_like_token("mrt_abc"));
        assert!(!looks_like_token(&a.replace("mrt_", "xyz_")));
        assert!(valid_name("ohif-viewer.1") && !valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(65)));
    }

    #[tokio::test]
    async fn add_authenticate_revoke() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = crate::archive::index::Index::open(&dir.path().join("index.db"))
            .await
            .expect("open");
        let pool = idx.pool();
        let cfg = cfg();
        let scope: TokenScope = "clinic:t1".parse().expect("scope");
        let tok = add(pool, &cfg, "viewer", &scope, 1_000).await.expect("add");
        assert!(matches!(
            add(pool, &cfg, "viewer", &scope, 1_000).await,
            Err(TokenError::Exists(_))
        ));
        assert!(matches!(
            add(pool, &cfg, "bad name", &scope, 1_000).await,
            Err(TokenError::BadName)
        ));
        let t = authenticate(pool, &tok, 2_000).await.expect("auth").expect("known");
        assert_eq!((t.name.as_str(), t.scope.as_ref()), ("viewer", Some(&scope)));
        // The use is recorded, then not again within a minute.
        let l = list(pool).await.expect("list");
        assert_eq!(l[0].last_used_ms, Some(2_000));
        authenticate(pool, &tok, 30_000).await.expect("auth").expect("known");
        assert_eq!(list(pool).await.expect("list")[0].last_used_ms, Some(2_000));
        authenticate(pool, &tok, 62_000).await.expect("auth").expect("known");
        assert_eq!(list(pool).await.expect("list")[0].last_used_ms, Some(62_000));
        // Only the hash is stored.
        let stored: String = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
            .fetch_one(pool)
            .await
            .expect("row");
        assert!(!stored.contains(&tok[4..]) && stored.len() == 64);
        assert!(authenticate(pool, &new_token(), 3_000).await.expect("auth").is_none());
        revoke(pool, "viewer", 4_000).await.expect("revoke");
        assert!(matches!(
            revoke(pool, "viewer", 5_000).await,
            Err(TokenError::NoSuchToken(_))
        ));
        assert!(authenticate(pool, &tok, 6_000).await.expect("auth").is_none());
        assert_eq!(list(pool).await.expect("list")[0].revoked_ms, Some(4_000));
    }
}
