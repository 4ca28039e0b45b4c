//! Who the caller is and what they may see, decided from the account and
//! the alliance configuration, with no I/O.
//!
//! A clinic doctor sees their own clinic; an expert sees the clinics their
//! hospital serves; an admin sees everything. Callers outside their scope
//! are answered "not found", never "forbidden", so a clinic cannot probe
//! for another clinic's study UIDs.

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Expert,
    /// A clinic doctor.
    Clinic,
}

/// A role name that is none of the three (from the command line, or a
/// stored row written by something other than this gateway).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (admin, expert or clinic)")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "admin" => Ok(Role::Admin),
            "expert" => Ok(Role::Expert),
            "clinic" => Ok(Role::Clinic),
            _ => Err(UnknownRole(s.to_string())),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    /// The name stored in `users.role`, sent in the API and shown in the
    /// audit log (the same lowercase strings serde uses).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Expert => "expert",
            Role::Clinic => "clinic",
        }
    }
}

/// An account as stored (without the password hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub clinic_id: Option<String>,
    pub hospital_id: Option<String>,
    pub department: Option<String>,
    pub disabled: bool,
    /// The interface language the account chose (`zh-CN`, `en`, …); None
    /// follows the browser's Accept-Language.
    pub language: Option<String>,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub scope: Scope,
    /// SHA-256 of the session token (the token itself is never stored).
    pub session: String,
    pub csrf: String,
    pub remote: String,
}

/// The clinics whose studies a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Clinics(Vec<String>),
}

impl Scope {
    pub fn allows(&self, clinic_id: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Clinics(c) => c.iter().any(|x| x == clinic_id),
        }
    }

    /// The clinic list for an SQL `IN (...)` filter; None means no filter.
    pub fn clinics(&self) -> Option<&[String]> {
        match self {
            Scope::All => None,
            Scope::Clinics(c) => Some(c),
        }
    }
}

pub fn scope_of(user: &User, cfg: &Config) -> Scope {
    match user.role {
        Role::Admin => Scope::All,
        Role::Clinic => Scope::Clinics(user.clinic_id.iter().cloned().collect()),
        Role::Expert => {
            // A single-hospital alliance need not describe itself: with no
            // [[hospital]] configured, experts read for every clinic.
            if cfg.hospitals.is_empty() {
                return Scope::All;
            }
            let serves = user
                .hospital_id
                .as_deref()
                .and_then(|h| cfg.hospitals.iter().find(|x| x.id == h))
                .map(|h| h.serves.clone())
                .unwrap_or_default();
            Scope::Clinics(serves)
        }
    }
}

/// Refuses an account's clinic or hospital that the configuration does not
/// list: an expert of an unknown hospital would read for nobody and start
/// broadcasts no clinic can see. With no `[[hospital]]` configured, experts
/// belong to the one implicit hospital and must name none.
pub fn check_affiliation(cfg: &Config, clinic_id: Option<&str>, hospital_id: Option<&str>) -> Result<(), String> {
    if let Some(k) = clinic_id.map(str::trim).filter(|k| !k.is_empty())
        && !cfg.clinics.iter().any(|x| x.id == k)
    {
        return Err(if cfg.clinics.is_empty() {
            format!("unknown clinic {k:?}: no [[clinic]] is configured yet")
        } else {
            format!("unknown clinic {k:?}: not in the configuration's [[clinic]] list")
        });
    }
    if let Some(h) = hospital_id.map(str::trim).filter(|h| !h.is_empty())
        && !cfg.hospitals.iter().any(|x| x.id == h)
    {
        return Err(if cfg.hospitals.is_empty() {
            format!(
                "unknown hospital {h:?}: no [[hospital]] is configured, so experts read for every clinic; leave the hospital empty"
            )
        } else {
            format!("unknown hospital {h:?}: not in the configuration's [[hospital]] list")
        });
    }
    Ok(())
}

impl Caller {
    pub fn role(&self) -> Role {
        self.user.role
    }

    pub fn is(&self, role: Role) -> bool {
        self.user.role == role
    }

    pub fn sees(&self, clinic_id: &str) -> bool {
        self.scope.allows(clinic_id)
    }

    /// The worklist actor this caller acts as.
    pub fn actor(&self) -> crate::reading::worklist::Actor<'_> {
        use crate::reading::worklist::Actor;
        match self.user.role {
            Role::Admin => Actor::Admin(&self.user.username),
            Role::Expert => Actor::Expert(&self.user.username),
            Role::Clinic => Actor::ClinicDoctor(&self.user.username),
        }
    }
}

/// Accounts, clinics and callers for unit tests of access rules.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::config::ClinicConfig;

    pub fn named(name: &str, role: Role, clinic: Option<&str>, hospital: Option<&str>) -> User {
        User {
            username: name.into(),
            display_name: name.into(),
            role,
            clinic_id: clinic.map(String::from),
            hospital_id: hospital.map(String::from),
            department: None,
            disabled: false,
            language: None,
        }
    }

    pub fn clinic(id: &str) -> ClinicConfig {
        ClinicConfig {
            id: id.into(),
            name: id.into(),
            ae_titles: vec![],
            stable_after_secs: None,
            pacs: None,
            pacs_charset: Default::default(),
        }
    }

    pub fn caller(u: User, cfg: &Config) -> Caller {
        Caller {
            scope: scope_of(&u, cfg),
            user: u,
            session: String::new(),
            csrf: String::new(),
            remote: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{clinic, named};
    use super::*;
    use crate::config::HospitalConfig;

    fn user(role: Role, clinic: Option<&str>, hospital: Option<&str>) -> User {
        named("u", role, clinic, hospital)
    }

    #[test]
    fn role_names_round_trip_and_unknown_ones_are_refused() {
        for r in [Role::Admin, Role::Expert, Role::Clinic] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(serde_json::to_value(r).expect("json"), serde_json::json!(r.as_str()));
            assert_eq!(
                serde_json::from_value::<Role>(serde_json::json!(r.as_str())).expect("json"),
                r
            );
        }
        assert_eq!("Admin".parse::<Role>(), Err(UnknownRole("Admin".into())));
        assert!(serde_json::from_value::<Role>(serde_json::json!("nurse")).is_err());
    }

    #[test]
    fn scopes_follow_role_clinic_and_hospital() {
        let mut cfg = Config {
            clinics: vec![clinic("t1"), clinic("t2"), clinic("t3")],
            ..Config::default()
        };
        assert_eq!(scope_of(&user(Role::Admin, None, None), &cfg), Scope::All);
        assert_eq!(
            scope_of(&user(Role::Clinic, Some("t1"), None), &cfg),
            Scope::Clinics(vec!["t1".into()])
        );
        // No hospitals described: experts read everything.
        assert_eq!(scope_of(&user(Role::Expert, None, Some("city")), &cfg), Scope::All);
        cfg.hospitals = vec![HospitalConfig {
            id: "city".into(),
            name: "City".into(),
            serves: vec!["t1".into(), "t2".into()],
            ae_titles: Vec::new(),
        }];
        let s = scope_of(&user(Role::Expert, None, Some("city")), &cfg);
        assert!(s.allows("t1") && s.allows("t2") && !s.allows("t3"));
        // An expert of an unknown hospital sees nothing rather than everything.
        assert_eq!(
            scope_of(&user(Role::Expert, None, Some("elsewhere")), &cfg),
            Scope::Clinics(vec![])
        );
        // A clinic doctor without a clinic sees nothing.
        assert_eq!(scope_of(&user(Role::Clinic, None, None), &cfg), Scope::Clinics(vec![]));
    }

    #[test]
    fn only_configured_clinics_and_hospitals_are_accepted_for_accounts() {
        let mut cfg = Config::default();
        assert!(check_affiliation(&cfg, None, None).is_ok());
        assert!(check_affiliation(&cfg, Some(""), Some(" ")).is_ok());
        let e = check_affiliation(&cfg, None, Some("city")).unwrap_err();
        assert!(e.contains("no [[hospital]]"), "{e}");
        assert!(check_affiliation(&cfg, Some("t1"), None).is_err());
        cfg.clinics = vec![clinic("t1")];
        cfg.hospitals = vec![HospitalConfig {
            id: "city".into(),
            name: "City".into(),
            serves: vec!["t1".into()],
            ae_titles: Vec::new(),
        }];
        assert!(check_affiliation(&cfg, Some("t1"), Some("city")).is_ok());
        assert!(check_affiliation(&cfg, Some("t9"), None).unwrap_err().contains("t9"));
        assert!(
            check_affiliation(&cfg, None, Some("elsewhere"))
                .unwrap_err()
                .contains("elsewhere")
        );
    }
}
