//! Q/R queries against the index: the records of one level that a
//! [`Query`] asks for, within the caller's clinics, a page at a time.
//!
//! The SQL narrows: every key it can answer from a column becomes a
//! condition that keeps at least the records the standard's matching
//! keeps (person names by substring, wildcards through `LIKE`, which
//! SQLite compares case-insensitively). [`Query::matches`] then decides
//! exactly, so the two backends answer the same and the rules live in one
//! pure place. Pages are read in key order from the level's primary key
//! (`after` the last key seen), so a query over the whole archive holds no
//! more than a page in memory and a C-CANCEL stops it between pages.
//! Reads only: no table is written here.

use sqlx::Row as _;

use super::index::{Index, IndexError, InstanceRow};
use crate::dicom::qr::Level;
use crate::dicom::qr::find::{Query, Row};
use crate::dicom::qr::matching::{Matcher, Vr, like_pattern};
use crate::store::{Sql, push_in};

/// Where the next page starts: after this record of the level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    Start,
    /// A patient row id (patients are keyed per clinic, not by Patient ID).
    Id(i64),
    Uid(String),
}

/// One matching record and where the next page starts after it.
#[derive(Debug, Clone)]
pub struct Found {
    pub row: Row,
    pub after: After,
}

/// Number of … Related … attributes, by tag.
const PATIENT_STUDIES: u32 = 0x0020_1200;
const PATIENT_SERIES: u32 = 0x0020_1202;
const PATIENT_INSTANCES: u32 = 0x0020_1204;
const STUDY_SERIES: u32 = 0x0020_1206;
const STUDY_INSTANCES: u32 = 0x0020_1208;
const SERIES_INSTANCES: u32 = 0x0020_1209;

/// The SQL expression answering a tag at a level (the level's tables are
/// `p` patients, `s` studies, `se` series, `i` instances).
fn column(level: Level, tag: u32) -> Option<&'static str> {
    let patient_level = level == Level::Patient;
    Some(match tag {
        0x0010_0010 if patient_level => "p.patient_name",
        0x0010_0020 if patient_level => "p.patient_id",
        0x0010_0010 => "s.patient_name",
        0x0010_0020 => "s.patient_id",
        0x0010_0030 => "p.birth_date",
        0x0010_0040 => "p.sex",
        PATIENT_STUDIES => "(SELECT COUNT(*) FROM studies x WHERE x.patient_row = p.id)",
        PATIENT_SERIES => "(SELECT COALESCE(SUM(x.num_series), 0) FROM studies x WHERE x.patient_row = p.id)",
        PATIENT_INSTANCES => "(SELECT COALESCE(SUM(x.num_instances), 0) FROM studies x WHERE x.patient_row = p.id)",
        _ if patient_level => return None,
        0x0008_0020 => "s.study_date",
        0x0008_0030 => "s.study_time",
        0x0008_0050 => "s.accession_number",
        0x0020_0010 => "s.study_id",
        0x0020_000D => "s.study_uid",
        0x0008_0090 => "s.referring_physician",
        0x0008_1030 => "s.description",
        0x0008_0061 => "s.modalities",
        STUDY_SERIES => "s.num_series",
        STUDY_INSTANCES => "s.num_instances",
        _ if level == Level::Study => return None,
        0x0008_0060 => "se.modality",
        0x0020_0011 => "se.series_number",
        0x0020_000E => "se.series_uid",
        0x0008_103E => "se.description",
        0x0018_0015 => "se.body_part",
        SERIES_INSTANCES => "se.num_instances",
        _ if level == Level::Series => return None,
        0x0020_0013 => "i.instance_number",
        0x0008_0018 => "i.sop_instance_uid",
        0x0008_0016 => "i.sop_class_uid",
        _ => return None,
    })
}

/// Tags a level can answer, in select order.
const TAGS: &[u32] = &[
    0x0010_0010,
    0x0010_0020,
    0x0010_0030,
    0x0010_0040,
    PATIENT_STUDIES,
    PATIENT_SERIES,
    PATIENT_INSTANCES,
    0x0008_0020,
    0x0008_0030,
    0x0008_0050,
    0x0020_0010,
    0x0020_000D,
    0x0008_0090,
    0x0008_1030,
    0x0008_0061,
    STUDY_SERIES,
    STUDY_INSTANCES,
    0x0008_0060,
    0x0020_0011,
    0x0020_000E,
    0x0008_103E,
    0x0018_0015,
    SERIES_INSTANCES,
    0x0020_0013,
    0x0008_0018,
    0x0008_0016,
];

/// The level's FROM clause, its paging key and its clinic column.
fn from(level: Level) -> (&'static str, &'static str, &'static str) {
    match level {
        Level::Patient => ("FROM patients p", "p.id", "p.clinic_id"),
        Level::Study => (
            "FROM studies s JOIN patients p ON p.id = s.patient_row",
            "s.study_uid",
            "s.clinic_id",
        ),
        Level::Series => (
            "FROM series se JOIN studies s ON s.study_uid = se.study_uid JOIN patients p ON p.id = s.patient_row",
            "se.series_uid",
            "s.clinic_id",
        ),
        Level::Image => (
            "FROM instances i JOIN series se ON se.series_uid = i.series_uid
             JOIN studies s ON s.study_uid = se.study_uid JOIN patients p ON p.id = s.patient_row",
            "i.sop_instance_uid",
            "s.clinic_id",
        ),
    }
}

/// `%…%` around a literal for `LIKE … ESCAPE '\'`.
fn contains(v: &str) -> String {
    format!("%{}%", like_pattern(&v.replace(['*', '?'], "")))
}

/// Appends the SQL narrowing of one key (nothing where SQL cannot narrow
/// exactly or as a superset, e.g. times, which are stored as sent).
fn narrow(qb: &mut Sql<'_>, col: &str, vr: Vr, list: bool, m: &Matcher) {
    match (vr, m) {
        (_, Matcher::Universal) | (Vr::Tm | Vr::Dt, _) => {}
        (Vr::Pn, Matcher::Single(v)) => {
            qb.push(format_args!(" AND lower({col}) LIKE ")).push_bind(contains(v));
            qb.push(" ESCAPE '\\'");
        }
        (Vr::Pn, Matcher::Wildcard(p)) => {
            qb.push(format_args!(" AND lower({col}) LIKE "))
                .push_bind(format!("%{}%", like_pattern(p)));
            qb.push(" ESCAPE '\\'");
        }
        (_, Matcher::Single(v)) if list => {
            qb.push(format_args!(" AND (',' || {col} || ',') LIKE "))
                .push_bind(format!("%,{},%", like_pattern(v)));
            qb.push(" ESCAPE '\\'");
        }
        (_, Matcher::AnyOf(vs)) if list => {
            qb.push(" AND (1 = 0");
            for v in vs {
                qb.push(format_args!(" OR (',' || {col} || ',') LIKE "))
                    .push_bind(format!("%,{},%", like_pattern(v)));
                qb.push(" ESCAPE '\\'");
            }
            qb.push(")");
        }
        (_, Matcher::Wildcard(_)) if list => {}
        (Vr::Is, Matcher::Single(v)) => match v.parse::<i64>() {
            Ok(n) => {
                qb.push(format_args!(" AND {col} = ")).push_bind(n);
            }
            Err(_) => {
                qb.push(" AND 1 = 0");
            }
        },
        (_, Matcher::Single(v)) => {
            qb.push(format_args!(" AND {col} = ")).push_bind(v.clone());
        }
        (_, Matcher::AnyOf(vs)) => push_in(qb, col, vs),
        (_, Matcher::Wildcard(p)) => {
            qb.push(format_args!(" AND {col} LIKE ")).push_bind(like_pattern(p));
            qb.push(" ESCAPE '\\'");
        }
        (Vr::Da, Matcher::Range { from, to }) => {
            if let Some(f) = from {
                qb.push(format_args!(" AND {col} >= ")).push_bind(f.clone());
            }
            if let Some(t) = to {
                qb.push(format_args!(" AND {col} <= ")).push_bind(t.clone());
            }
        }
        (_, Matcher::Range { .. }) => {}
    }
}

impl Index {
    /// The instances (latest versions) a C-MOVE or C-GET names: the
    /// records its identifier matches at its level within `clinics` (a
    /// PATIENT level read as the patient's studies), then their instances
    /// in study, series and instance order. None when more than `cap`.
    pub async fn retrieve_list(
        &self,
        q: &Query,
        clinics: Option<&[String]>,
        cap: usize,
    ) -> Result<Option<Vec<InstanceRow>>, IndexError> {
        let mut q = q.clone();
        q.level = q.level.max(Level::Study);
        let unique = crate::dicom::qr::keys::unique_of(q.level);
        let mut out: Vec<InstanceRow> = Vec::new();
        let mut after = After::Start;
        loop {
            let (found, next) = self.find_page(&q, clinics, &after, 500).await?;
            for f in found {
                let Some(uid) = f.row.get(&unique) else { continue };
                let mut rows = match q.level {
                    Level::Patient | Level::Study => self.instances_of_study(uid).await?,
                    Level::Series => self.instances_of_series(uid).await?,
                    Level::Image => self.instance_versions(uid).await?.into_iter().take(1).collect(),
                };
                out.append(&mut rows);
                if out.len() > cap {
                    return Ok(None);
                }
            }
            match next {
                Some(a) => after = a,
                None => return Ok(Some(out)),
            }
        }
    }

    /// The next page of records of `q.level` matching `q`, within
    /// `clinics` (None: every clinic), after `after`, at most `page`
    /// candidates read. Returns the matches and where the next page
    /// starts (None when the index has no more candidates).
    pub async fn find_page(
        &self,
        q: &Query,
        clinics: Option<&[String]>,
        after: &After,
        page: i64,
    ) -> Result<(Vec<Found>, Option<After>), IndexError> {
        let level = q.level;
        let (from, key, clinic_col) = from(level);
        let tags: Vec<u32> = TAGS
            .iter()
            .copied()
            .filter(|t| column(level, *t).is_some())
            // Related counts cost a subquery per row: only when asked.
            .filter(|t| !(0x0020_1200..=0x0020_1209).contains(t) || q.wants(*t))
            .collect();
        let mut qb = Sql::new(format!("SELECT {key}"));
        for t in &tags {
            let col = column(level, *t).unwrap_or("''");
            qb.push(format_args!(", COALESCE(CAST({col} AS TEXT), '')"));
        }
        qb.push(format_args!(" {from} WHERE 1=1"));
        if level == Level::Image {
            qb.push(
                " AND i.version = (SELECT MAX(version) FROM instances j WHERE j.sop_instance_uid = i.sop_instance_uid)",
            );
        }
        for f in &q.filters {
            if let Some(col) = column(level, f.key.tag) {
                narrow(&mut qb, col, f.key.vr, f.key.list, &f.matcher);
            }
        }
        if let Some(cs) = clinics {
            push_in(&mut qb, clinic_col, cs);
        }
        match after {
            After::Start => {}
            After::Id(id) => {
                qb.push(format_args!(" AND {key} > ")).push_bind(*id);
            }
            After::Uid(u) => {
                qb.push(format_args!(" AND {key} > ")).push_bind(u.clone());
            }
        }
        qb.push(format_args!(" ORDER BY {key} LIMIT ")).push_bind(page);
        let rows = qb.build().fetch_all(self.pool()).await?;
        let full = rows.len() as i64 >= page;
        let mut out = Vec::new();
        let mut last = None;
        for r in &rows {
            let at = if level == Level::Patient {
                After::Id(r.try_get::<i64, _>(0)?)
            } else {
                After::Uid(r.try_get::<String, _>(0)?)
            };
            let mut row = Row::new();
            for (n, t) in tags.iter().enumerate() {
                row.insert(*t, r.try_get::<String, _>(n + 1)?);
            }
            if q.matches(&row) {
                out.push(Found { row, after: at.clone() });
            }
            last = Some(at);
        }
        Ok((out, if full { last } else { None }))
    }
}
