//! Reading-workflow routes: worklist, claims, reports, notifications,
//! consultation requests, and the pages. Every handler takes a `Caller`
//! (so it is authenticated), checks the role it needs with `require`, and
//! reaches studies only through `study_for`, which applies the caller's
//! clinic scope.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::api::study_for;
use super::auth::require;
use super::error::{ApiError, Code};
use super::uid::Uid;
use crate::clock::now_ms;
use crate::http::Services;
use crate::reading::access::{Caller, Role};
use crate::reading::audit;
use crate::reading::notifications;
use crate::reading::reports::{self, ReportError};
use crate::reading::requests::{self, ReqAction, ReqState, RequestError};
use crate::reading::signing;
use crate::reading::worklist::{Action, Priority, WorklistError};
use crate::store::worklist::{self as wl, WorklistApplyError};

type S = State<Arc<Services>>;
type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(b: JsonBody<T>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl From<WorklistApplyError> for ApiError {
    fn from(e: WorklistApplyError) -> Self {
        match e {
            WorklistApplyError::NoSuchStudy => ApiError::NotFound("worklist entry"),
            WorklistApplyError::Rule(r) => {
                let text = r.to_string();
                match r {
                    WorklistError::NotAnExpert | WorklistError::Forbidden => ApiError::Forbidden(text).code(Code::ROLE),
                    WorklistError::BadLease => ApiError::BadRequest(text),
                    WorklistError::ClaimedByOther(by) => {
                        ApiError::Conflict(text).code(Code::CLAIMED_BY_OTHER).param("name", by)
                    }
                    WorklistError::NotClaimed => ApiError::Conflict(text).code(Code::NOT_CLAIMED),
                    WorklistError::LeaseExpired => ApiError::Conflict(text).code(Code::LEASE_EXPIRED),
                    WorklistError::Invalid(..) | WorklistError::NoPriority(_) => {
                        ApiError::Conflict(text).code(Code::WRONG_STATE)
                    }
                    WorklistError::NotAuthor => ApiError::Conflict(text).code(Code::NOT_AUTHOR),
                    WorklistError::PriorityLower => ApiError::Forbidden(text).code(Code::PRIORITY_LOWER),
                }
            }
            WorklistApplyError::Db(e) => crate::archive::index::IndexError::from(e).into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        let text = e.to_string();
        match e {
            ReportError::Empty => ApiError::BadRequest(text).code(Code::REPORT_EMPTY),
            ReportError::TooLong => ApiError::BadRequest(text).code(Code::REPORT_TOO_LONG),
            ReportError::NotOnWorklist => ApiError::NotFound("worklist entry"),
            ReportError::Worklist(w) => w.into(),
            ReportError::Db(d) => ApiError::db(&d),
            ReportError::NotClaimed => ApiError::Conflict(text).code(Code::NOT_CLAIMED),
            ReportError::ClaimedByOther(by) => ApiError::Conflict(text).code(Code::CLAIMED_BY_OTHER).param("name", by),
            ReportError::DraftByOther(by) => ApiError::Conflict(text).code(Code::DRAFT_BY_OTHER).param("name", by),
            ReportError::NotAuthor => ApiError::Conflict(text).code(Code::NOT_AUTHOR),
            ReportError::WrongState(_) => ApiError::Conflict(text).code(Code::WRONG_STATE),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let text = e.to_string();
        match e {
            RequestError::NotAnExpert | RequestError::Forbidden => ApiError::Forbidden(text).code(Code::ROLE),
            RequestError::InPast => ApiError::BadRequest(text).code(Code::IN_PAST),
            RequestError::TooEarly => ApiError::Conflict(text)
                .code(Code::TOO_EARLY)
                .param("mins", requests::JOIN_EARLY_MS / 60_000),
            RequestError::Invalid(..) => ApiError::Conflict(text).code(Code::WRONG_STATE),
        }
    }
}

fn clinic_name(s: &Services, id: &str) -> String {
    s.cfg
        .clinics
        .iter()
        .find(|c| c.id == id)
        .map(|c| {
            if c.name.is_empty() {
                c.id.clone()
            } else {
                c.name.clone()
            }
        })
        .unwrap_or_else(|| id.to_string())
}

// ------------------------------------------------------------------ directory

pub async fn clinics(State(s): S, c: Caller) -> Json<serde_json::Value> {
    let clinics: Vec<_> = s
        .cfg
        .clinics
        .iter()
        .filter(|k| c.sees(&k.id))
        .map(|k| {
            let hospital = s
                .cfg
                .hospitals
                .iter()
                .find(|h| h.serves.contains(&k.id))
                .map(|h| h.id.clone());
            json!({ "id": k.id, "name": clinic_name(&s, &k.id), "hospital_id": hospital, "pacs": k.pacs.is_some() })
        })
        .collect();
    let hospitals: Vec<_> = s
        .cfg
        .hospitals
        .iter()
        .filter(|h| {
            c.is(Role::Admin) || c.user.hospital_id.as_deref() == Some(&h.id) || h.serves.iter().any(|x| c.sees(x))
        })
        .map(|h| json!({ "id": h.id, "name": if h.name.is_empty() { &h.id } else { &h.name }, "serves": h.serves }))
        .collect();
    Json(json!({ "clinics": clinics, "hospitals": hospitals }))
}

// ------------------------------------------------------------------ worklist

#[derive(Debug, Default, Deserialize)]
pub struct WorklistQuery {
    pub state: Option<String>,
    pub priority: Option<String>,
    pub modality: Option<String>,
    pub clinic: Option<String>,
    pub body_part: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

const STATES: [&str; 6] = ["new", "claimed", "reported", "delivered", "returned", "cancelled"];
const PRIORITIES: [&str; 3] = ["stat", "urgent", "routine"];

pub fn priority_rank(p: &str) -> Option<i64> {
    Priority::parse(p).map(Priority::rank)
}

/// The page's filter, validated: unknown states or priorities are a 400.
fn worklist_filter(c: &Caller, q: &WorklistQuery) -> Result<wl::ListFilter, ApiError> {
    let states: Vec<String> = match q.state.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => v.split(',').map(|x| x.trim().to_string()).collect(),
        None => vec!["new".into(), "claimed".into(), "returned".into()],
    };
    if let Some(bad) = states.iter().find(|x| !STATES.contains(&x.as_str())) {
        return Err(ApiError::BadRequest(format!("unknown state {bad:?}")));
    }
    let priority = match q.priority.as_deref().filter(|v| !v.is_empty()) {
        Some(p) => Some(Priority::parse(p).ok_or_else(|| ApiError::BadRequest(format!("unknown priority {p:?}")))?),
        None => None,
    };
    Ok(wl::ListFilter {
        states,
        priority,
        scope: c.scope.clinics().map(|cs| cs.to_vec()),
        clinic: q.clinic.clone(),
        modality: q.modality.clone(),
        body_part: q.body_part.clone(),
        limit: q.limit.unwrap_or(50).clamp(1, 500),
        offset: q.offset.unwrap_or(0).max(0),
    })
}

pub async fn worklist(
    State(s): S,
    c: Caller,
    Query(q): Query<WorklistQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Expert, Role::Admin])?;
    let f = worklist_filter(&c, &q)?;
    let (rows, total) = wl::list(s.index.pool(), &f).await.map_err(internal)?;
    let now = now_ms();
    let items: Vec<_> = rows
        .into_iter()
        .map(|r| {
            json!({
                "study_uid": r.study_uid,
                "state": r.state,
                "priority": r.priority,
                "clinical_question": r.clinical_question,
                "claimed_by": r.claimed_by,
                "claimed_by_name": r.claimed_by_name,
                "lease_until_ms": r.lease_until_ms,
                "detail": r.detail,
                "enqueued_ms": r.enqueued_ms,
                "waiting_ms": (now - r.enqueued_ms).max(0),
                "clinic_name": clinic_name(&s, &r.clinic_id),
                "clinic_id": r.clinic_id,
                "modalities": r.modalities,
                "body_parts": r.body_parts,
                "description": r.description,
                "num_series": r.num_series,
                "num_instances": r.num_instances,
                "patient_name": r.patient_name,
                "patient_id": r.patient_id,
                "sex": r.sex,
                "birth_date": r.birth_date,
                "study_date": r.study_date,
            })
        })
        .collect();
    Ok(Json(
        json!({ "total": total.n, "total_exact": total.exact, "offset": f.offset, "items": items }),
    ))
}

async fn entry_json(s: &Services, uid: &str) -> Result<Json<serde_json::Value>, ApiError> {
    let w = reports::worklist_entry(s.index.pool(), uid).await?;
    Ok(Json(json!({ "worklist": w })))
}

async fn act(
    s: &Services,
    c: &Caller,
    uid: &str,
    action: Action,
    audit_as: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    study_for(s, c, uid).await?;
    s.index.worklist_apply(uid, &action, c.actor(), now_ms()).await?;
    audit::record(s.index.pool(), c, audit_as, Some(uid), None).await;
    entry_json(s, uid).await
}

fn lease(s: &Services) -> Duration {
    Duration::from_secs(s.cfg.reading.claim_lease_secs)
}

pub async fn claim(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Expert])?;
    act(&s, &c, &uid, Action::Claim { lease: lease(&s) }, "claim").await
}

pub async fn renew(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Expert])?;
    study_for(&s, &c, &uid).await?;
    s.index
        .worklist_apply(&uid, &Action::Renew { lease: lease(&s) }, c.actor(), now_ms())
        .await?;
    entry_json(&s, &uid).await
}

pub async fn release(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Expert, Role::Admin])?;
    act(&s, &c, &uid, Action::Release, "release").await
}

#[derive(Deserialize)]
pub struct Reason {
    #[serde(default)]
    pub reason: String,
}

fn reason_text(r: &str, required: bool) -> Result<String, ApiError> {
    let t = r.trim();
    if required && t.is_empty() {
        return Err(ApiError::BadRequest("a reason is required".into()).code(Code::REASON_REQUIRED));
    }
    if t.chars().count() > 2000 {
        return Err(ApiError::BadRequest("reason: at most 2000 characters".into())
            .code(Code::REASON_TOO_LONG)
            .param("max", 2000));
    }
    Ok(t.to_string())
}

pub async fn return_study(
    State(s): S,
    c: Caller,
    Uid(uid): Uid,
    b: JsonBody<Reason>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Expert])?;
    let reason = reason_text(&body(b)?.reason, true)?;
    let st = study_for(&s, &c, &uid).await?;
    // The study goes back and the clinic is told, together or not at all.
    let text = format!("More images requested: {reason}");
    let now = now_ms();
    crate::store::immediate(s.index.pool(), async |conn| {
        let action = Action::ReturnForMoreImages { reason: reason.clone() };
        wl::apply(conn, &uid, &action, c.actor(), now, None).await?;
        let notice = notifications::New {
            clinic_id: &st.clinic_id,
            kind: notifications::Kind::Returned.as_str(),
            study_uid: Some(&uid),
            request_id: None,
            text: &text,
            created_ms: now,
        };
        notifications::insert(conn, &notice).await?;
        Ok::<_, WorklistApplyError>(())
    })
    .await?;
    audit::record(s.index.pool(), &c, "return", Some(&uid), Some(&reason)).await;
    entry_json(&s, &uid).await
}

pub async fn cancel(
    State(s): S,
    c: Caller,
    Uid(uid): Uid,
    b: JsonBody<Reason>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Clinic, Role::Admin])?;
    let reason = reason_text(&body(b)?.reason, false)?;
    study_for(&s, &c, &uid).await?;
    s.index
        .worklist_apply(&uid, &Action::Cancel, c.actor(), now_ms())
        .await?;
    audit::record(s.index.pool(), &c, "cancel", Some(&uid), Some(&reason)).await;
    entry_json(&s, &uid).await
}

#[derive(Deserialize)]
pub struct SetPriority {
    pub priority: String,
    #[serde(default)]
    pub clinical_question: Option<String>,
}

pub async fn set_priority(
    State(s): S,
    c: Caller,
    Uid(uid): Uid,
    b: JsonBody<SetPriority>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Clinic, Role::Admin])?;
    let p = body(b)?;
    let priority = Priority::parse(&p.priority).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "priority must be stat, urgent or routine, not {:?}",
            p.priority
        ))
    })?;
    let question = match &p.clinical_question {
        Some(q) => Some(reason_text(q, false)?),
        None => None,
    };
    study_for(&s, &c, &uid).await?;
    // The change and its history row commit together; the rules decide
    // who may, in which states (`reading::worklist`).
    s.index
        .worklist_set_priority(&uid, priority, question.as_deref(), c.actor(), now_ms())
        .await?;
    audit::record(s.index.pool(), &c, "priority", Some(&uid), Some(&p.priority)).await;
    entry_json(&s, &uid).await
}

pub async fn history(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    study_for(&s, &c, &uid).await?;
    let t = wl::history(s.index.pool(), &uid).await.map_err(internal)?;
    Ok(Json(json!({ "transitions": t })))
}

// ------------------------------------------------------------------ reports

#[derive(Deserialize)]
pub struct TemplateQuery {
    #[serde(default)]
    pub modality: String,
}

pub async fn templates(_c: Caller, Query(q): Query<TemplateQuery>) -> Json<serde_json::Value> {
    Json(json!({ "templates": reports::templates(&q.modality) }))
}

pub async fn study_reports(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    study_for(&s, &c, &uid).await?;
    let versions = reports::versions(s.index.pool(), &uid, c.is(Role::Expert)).await?;
    let delivery = crate::reading::delivery::for_study(s.index.pool(), &uid)
        .await
        .map_err(internal)?;
    Ok(Json(json!({ "versions": versions, "delivery": delivery })))
}

#[derive(Deserialize)]
pub struct ReportText {
    #[serde(default)]
    pub findings: String,
    #[serde(default)]
    pub impression: String,
}

pub async fn save_draft(
    State(s): S,
    c: Caller,
    Uid(uid): Uid,
    b: JsonBody<ReportText>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Expert])?;
    let t = body(b)?;
    study_for(&s, &c, &uid).await?;
    let r = reports::save_draft(
        s.index.pool(),
        &uid,
        &c.user.username,
        &t.findings,
        &t.impression,
        now_ms(),
    )
    .await?;
    Ok(Json(json!({ "report": r })))
}

pub async fn sign(
    State(s): S,
    c: Caller,
    Uid(uid): Uid,
    b: JsonBody<ReportText>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Expert])?;
    let t = body(b)?;
    let st = study_for(&s, &c, &uid).await?;
    let mut target = s
        .cfg
        .clinics
        .iter()
        .find(|k| k.id == st.clinic_id)
        .and_then(|k| k.pacs.clone());
    // A clinic behind an edge gets its reports over the relay link; the
    // edge forwards them to the clinic PACS on its LAN.
    if target.is_none()
        && let Some(edge) = crate::relay::store::edge_for_clinic(s.index.pool(), &st.clinic_id)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    {
        target = Some(format!("edge:{edge}"));
    }
    let plan = signing::DeliveryPlan {
        clinic_id: st.clinic_id.clone(),
        target,
        sr_sop_uid: crate::reading::sr::new_uid(),
    };
    let signed = signing::sign(
        s.index.pool(),
        &uid,
        &c.user.username,
        &t.findings,
        &t.impression,
        &plan,
        now_ms(),
    )
    .await?;
    audit::record(
        s.index.pool(),
        &c,
        if signed.amended { "report_amend" } else { "report_sign" },
        Some(&uid),
        Some(&format!("version {}", signed.report.version)),
    )
    .await;
    if signed.delivery_queued {
        s.delivery.wake();
    }
    Ok(Json(
        json!({ "report": signed.report, "amended": signed.amended, "delivery_queued": signed.delivery_queued }),
    ))
}

// ------------------------------------------------------------------ notifications

pub async fn notifications(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = match c.role() {
        Role::Clinic => notifications::Scope {
            clinics: Some(c.user.clinic_id.as_slice()),
            requests_only: false,
        },
        // Experts are told about consultation requests only.
        _ => notifications::Scope {
            clinics: c.scope.clinics(),
            requests_only: c.is(Role::Expert),
        },
    };
    let items = notifications::list(s.index.pool(), &scope).await.map_err(internal)?;
    let unread = items.iter().filter(|i| !i.read).count();
    Ok(Json(json!({ "unread": unread, "items": items })))
}

pub async fn notification_read(State(s): S, c: Caller, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    match notifications::clinic_of(s.index.pool(), id).await.map_err(internal)? {
        Some(k) if c.sees(&k) => {}
        _ => return Err(ApiError::NotFound("notification")),
    }
    notifications::mark_read(s.index.pool(), id, now_ms())
        .await
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ consultation requests

pub async fn list_requests(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let r = requests::list(s.index.pool(), &c).await.map_err(internal)?;
    Ok(Json(json!({ "requests": r })))
}

pub async fn create_request(State(s): S, c: Caller, b: JsonBody<requests::NewRequest>) -> Result<Response, ApiError> {
    require(&c, &[Role::Clinic])?;
    let mut r = body(b)?;
    let clinic = c
        .user
        .clinic_id
        .clone()
        .ok_or_else(|| ApiError::Forbidden("your account has no clinic".into()).code(Code::NO_CLINIC))?;
    r.question = reason_text(&r.question, true)?;
    if !PRIORITIES.contains(&r.urgency.as_str()) {
        return Err(ApiError::BadRequest("urgency must be stat, urgent or routine".into()).code(Code::BAD_URGENCY));
    }
    if r.study_uids.len() > 20 {
        return Err(ApiError::BadRequest("at most 20 studies per request".into())
            .code(Code::TOO_MANY_STUDIES)
            .param("max", 20));
    }
    if r.patient_id.chars().count() > 64 || r.patient_name.chars().count() > 200 {
        return Err(ApiError::BadRequest("patient id/name too long".into()).code(Code::PATIENT_TOO_LONG));
    }
    if let (Some(a), Some(b)) = (r.preferred_from_ms, r.preferred_to_ms)
        && b < a
    {
        return Err(ApiError::BadRequest("preferred time window ends before it starts".into()).code(Code::BAD_WINDOW));
    }
    for uid in &r.study_uids {
        let st = study_for(&s, &c, uid).await?;
        if r.patient_id.is_empty() {
            r.patient_id = st.patient_id.clone();
            r.patient_name = st.patient_name.clone();
        }
    }
    let now = now_ms();
    let req = requests::create(s.index.pool(), &clinic, &c.user.username, &r, now)
        .await
        .map_err(internal)?;
    audit::record(
        s.index.pool(),
        &c,
        "request_create",
        r.study_uids.first().map(String::as_str),
        Some(&format!("request {}", req.id)),
    )
    .await;
    Ok((StatusCode::CREATED, Json(json!({ "request": req }))).into_response())
}

#[derive(Deserialize, Default)]
pub struct RequestChange {
    pub scheduled_ms: Option<i64>,
    #[serde(default)]
    pub reason: String,
}

async fn request_for(s: &Services, c: &Caller, id: i64) -> Result<requests::Request, ApiError> {
    match requests::get(s.index.pool(), id).await.map_err(internal)? {
        Some(r) if c.sees(&r.clinic_id) => Ok(r),
        _ => Err(ApiError::NotFound("request")),
    }
}

async fn change_request(
    s: &Services,
    c: &Caller,
    id: i64,
    action: ReqAction,
    reason: Option<String>,
) -> Result<requests::Request, ApiError> {
    let r = request_for(s, c, id).await?;
    let state = ReqState::parse(&r.state).ok_or_else(|| internal("request in an unknown state"))?;
    let now = now_ms();
    let to = requests::decide(
        state,
        r.scheduled_ms,
        r.expert.as_deref(),
        &action,
        c.role(),
        &c.user.username,
        now,
    )?;
    let (expert, when) = match &action {
        ReqAction::Accept { scheduled_ms } => (Some(c.user.username.as_str()), Some(*scheduled_ms)),
        ReqAction::Reschedule { scheduled_ms } => (None, Some(*scheduled_ms)),
        _ => (None, None),
    };
    if !requests::update(
        s.index.pool(),
        id,
        &r.state,
        to,
        expert,
        when,
        reason.as_deref(),
        None,
        now,
    )
    .await
    .map_err(internal)?
    {
        return Err(ApiError::Conflict("the request changed meanwhile; reload".into()).code(Code::CHANGED_MEANWHILE));
    }
    // A cancelled or finished consultation ends its room at once: the
    // participants are dropped and their links stop working.
    if matches!(to, ReqState::Cancelled | ReqState::Done)
        && let Some(room) = &r.room_id
    {
        super::consult::close_room_now(s, room).await?;
    }
    let text = match &action {
        ReqAction::Accept { .. } => "Consultation scheduled",
        ReqAction::Reschedule { .. } => "Consultation rescheduled",
        ReqAction::Cancel => "Consultation cancelled",
        ReqAction::Finish => "Consultation finished",
        _ => "",
    };
    if !text.is_empty() && !c.is(Role::Clinic) {
        requests::notify(s.index.pool(), &r.clinic_id, id, text, now).await;
    }
    audit::record(
        s.index.pool(),
        c,
        &format!("request_{}", to.as_str()),
        r.study_uids.first().map(String::as_str),
        Some(&format!("request {id}")),
    )
    .await;
    request_for(s, c, id).await
}

pub async fn accept_request(
    State(s): S,
    c: Caller,
    Path(id): Path<i64>,
    b: JsonBody<RequestChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ch = body(b)?;
    let when = ch
        .scheduled_ms
        .ok_or_else(|| ApiError::BadRequest("scheduled_ms is required".into()).code(Code::SCHEDULE_REQUIRED))?;
    Ok(Json(
        json!({ "request": change_request(&s, &c, id, ReqAction::Accept { scheduled_ms: when }, None).await? }),
    ))
}

pub async fn reschedule_request(
    State(s): S,
    c: Caller,
    Path(id): Path<i64>,
    b: JsonBody<RequestChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ch = body(b)?;
    let when = ch
        .scheduled_ms
        .ok_or_else(|| ApiError::BadRequest("scheduled_ms is required".into()).code(Code::SCHEDULE_REQUIRED))?;
    Ok(Json(
        json!({ "request": change_request(&s, &c, id, ReqAction::Reschedule { scheduled_ms: when }, None).await? }),
    ))
}

pub async fn cancel_request(
    State(s): S,
    c: Caller,
    Path(id): Path<i64>,
    b: JsonBody<RequestChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ch = body(b)?;
    let reason = reason_text(&ch.reason, false)?;
    Ok(Json(
        json!({ "request": change_request(&s, &c, id, ReqAction::Cancel, Some(reason)).await? }),
    ))
}

/// Ends a scheduled consultation (its expert, the clinic, an admin): the
/// request is done and its room closes.
pub async fn finish_request(State(s): S, c: Caller, Path(id): Path<i64>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        json!({ "request": change_request(&s, &c, id, ReqAction::Finish, None).await? }),
    ))
}

/// Opens (creating on first use) the request's consultation room and hands
/// the caller a join link with the attached studies in the shared viewer.
pub async fn join_request(State(s): S, c: Caller, Path(id): Path<i64>) -> Result<Json<serde_json::Value>, ApiError> {
    let r = request_for(&s, &c, id).await?;
    let state = ReqState::parse(&r.state).ok_or_else(|| internal("request in an unknown state"))?;
    requests::decide(
        state,
        r.scheduled_ms,
        r.expert.as_deref(),
        &ReqAction::Join,
        c.role(),
        &c.user.username,
        now_ms(),
    )?;
    let me = super::consult::invitation(&c.user, &crate::sfu::engine::RoomOwner::Request(id));
    let (room, inv) = super::consult::join_request_room(&s, &r, me).await?;
    let link = super::consult::link_json(&s, &room, crate::sfu::protocol::RoomKind::Consultation, &inv, None);
    let token = link["token"].as_str().unwrap_or_default().to_string();
    let name = c.user.display_name.clone();
    audit::record(
        s.index.pool(),
        &c,
        "consult_join",
        r.study_uids.first().map(String::as_str),
        Some(&format!("request {id}")),
    )
    .await;
    let study = r.study_uids.first().cloned().unwrap_or_default();
    let enc = |v: &str| {
        v.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b".-_".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let url = format!("/consult#token={token}&name={}&study={}", enc(&name), enc(&study));
    Ok(Json(json!({ "url": url, "room_id": room })))
}

// ------------------------------------------------------------------ pages

/// A page in the caller's language (see `http::lang`).
fn page_of(name: &str, c: Result<Caller, ApiError>, headers: &HeaderMap) -> Response {
    match super::assets::asset(name) {
        Some(b) => (
            super::consult::page_headers(),
            super::lang::page(&b, c.as_ref().ok(), headers),
        )
            .into_response(),
        None => ApiError::NotFound("page").into_response(),
    }
}

pub async fn login_page(c: Result<Caller, ApiError>, headers: HeaderMap) -> Response {
    page_of("login.html", c, &headers)
}
pub async fn studies_page(c: Result<Caller, ApiError>, headers: HeaderMap) -> Response {
    page_of("studies.html", c, &headers)
}
pub async fn worklist_page(c: Result<Caller, ApiError>, headers: HeaderMap) -> Response {
    page_of("worklist.html", c, &headers)
}
#[derive(Deserialize)]
pub struct ViewerQuery {
    pub study: Option<String>,
}

/// What the viewer would fetch before its first image, so it can start
/// drawing as soon as its modules load: on a 300 ms link that saves two
/// round trips. Same shapes as the API responses (see web/API.md).
async fn viewer_initial(s: &Services, c: &Caller, uid: &str) -> Result<(String, String), ApiError> {
    let st = study_for(s, c, uid).await?;
    let series = s.index.series_of(uid).await?;
    let worklist = reports::worklist_entry(s.index.pool(), uid).await?;
    let report = reports::latest(s.index.pool(), uid, c.is(Role::Expert)).await?;
    let first_series = series.first().ok_or(ApiError::NotFound("series"))?;
    let instances = s.index.instances_of_series(&first_series.series_uid).await?;
    let first = instances.first().ok_or(ApiError::NotFound("instance"))?;
    let preview = format!("/api/instances/{}/preview", first.sop_instance_uid);
    // Only what drawing needs: hashes, paths and receive details would be
    // a third of the bytes on the critical path.
    let slim: Vec<_> = instances
        .iter()
        .map(|i| {
            json!({
                "sop_instance_uid": i.sop_instance_uid, "series_uid": i.series_uid, "study_uid": i.study_uid,
                "sop_class_uid": i.sop_class_uid, "instance_number": i.instance_number, "rows": i.rows,
                "columns": i.columns, "frames": i.frames, "preview_status": i.preview_status,
                "cine_frames": i.cine_frames, "version": i.version,
            })
        })
        .collect();
    let mut series_instances = serde_json::Map::new();
    series_instances.insert(first_series.series_uid.clone(), json!({ "instances": slim }));
    let data = json!({
        "study_uid": uid,
        "study": { "study": st, "series": series, "worklist": worklist, "report": report },
        "series_instances": series_instances,
        "first_instance": first.sop_instance_uid,
        "first_preview": preview,
    });
    audit::record(s.index.pool(), c, "view", Some(uid), None).await;
    // `<` escaped everywhere: nothing inside can close the data block.
    let text = serde_json::to_string(&data).map_err(internal)?.replace('<', "\\u003c");
    Ok((text, preview))
}

pub async fn viewer_page(
    State(s): S,
    c: Result<Caller, ApiError>,
    headers: HeaderMap,
    Query(q): Query<ViewerQuery>,
) -> Response {
    let Some(page) = super::assets::asset("viewer.html") else {
        return ApiError::NotFound("page").into_response();
    };
    let initial = match (&c, q.study.as_deref()) {
        (Ok(c), Some(uid)) => viewer_initial(&s, c, uid).await.ok(),
        _ => None,
    };
    let html = super::lang::page(&page, c.as_ref().ok(), &headers);
    let Some((data, preview)) = initial else {
        return (super::consult::page_headers(), html).into_response();
    };
    let head = format!(
        "<script type=\"application/json\" id=\"mr-initial\">{data}</script>\n\
         <link rel=\"preload\" as=\"fetch\" crossorigin=\"use-credentials\" href=\"{preview}\">\n</head>"
    );
    let body = html.replacen("</head>", &head, 1);
    let mut h = super::consult::page_headers();
    // Patient data inside: never stored by the browser or a proxy.
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store, private"),
    );
    (h, body).into_response()
}
pub async fn requests_page(c: Result<Caller, ApiError>, headers: HeaderMap) -> Response {
    page_of("requests.html", c, &headers)
}
pub async fn broadcasts_page(c: Result<Caller, ApiError>, headers: HeaderMap) -> Response {
    page_of("broadcasts.html", c, &headers)
}
pub async fn admin_page(c: Result<Caller, ApiError>, headers: HeaderMap) -> Response {
    page_of("admin.html", c, &headers)
}

/// `/`: the caller's home page, or the login page.
pub async fn root(c: Result<Caller, ApiError>) -> Response {
    let to = match c {
        Ok(c) => match c.role() {
            Role::Expert => "/worklist",
            Role::Admin => "/admin",
            Role::Clinic => "/studies",
        },
        Err(_) => "/login",
    };
    let mut r = Redirect::to(to).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}
