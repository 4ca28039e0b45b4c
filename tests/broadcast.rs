//! Teaching broadcasts over the real HTTPS API and signaling WebSocket: who
//! may start, see, join and end one, and what a viewer may do once in.

mod support;

use serde_json::{Value, json};
use support::*;

const PW: &str = "correct-horse-battery";

fn ids(list: &Value) -> Vec<String> {
    list["broadcasts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["id"].as_str().map(String::from))
        .collect()
}

#[test]
fn broadcasts_are_scoped_to_the_hospitals_clinics_and_only_named_presenters_present() {
    let s = Server::start(ServerOpts {
        config_toml: TWO_HOSPITALS.into(),
        ..Default::default()
    });
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "Prof. One"]);
    s.add_user("exp2", "expert", PW, &["--hospital", "city"]);
    s.add_user("exp4", "expert", PW, &["--hospital", "city"]);
    s.add_user("exp3", "expert", PW, &["--hospital", "other"]);
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01"]);
    s.add_user("doc3", "clinic", PW, &["--clinic", "t03"]);
    let login = |u: &str| s.login(u, PW).unwrap_or_else(|e| panic!("login {u}: {e:?}"));
    let (exp1, exp2, exp3, exp4, doc1, doc3) = (
        login("exp1"),
        login("exp2"),
        login("exp3"),
        login("exp4"),
        login("doc1"),
        login("doc3"),
    );

    // Only experts start one, with a real title; co-presenters are
    // colleagues of the same hospital.
    let title = json!({ "title": "Reading chest CT, session 3", "presenters": ["exp2"] });
    assert_eq!(
        s.req(Some(&doc1), "POST", "/api/broadcasts", Some(title.clone())).0,
        403
    );
    assert_eq!(s.req(None, "GET", "/api/broadcasts", None).0, 401);
    assert_eq!(
        s.req(Some(&exp1), "POST", "/api/broadcasts", Some(json!({ "title": " " })))
            .0,
        400
    );
    assert_eq!(
        s.req(
            Some(&exp1),
            "POST",
            "/api/broadcasts",
            Some(json!({ "title": "x", "extra": 1 }))
        )
        .0,
        400
    );
    for (who, code) in [("exp3", 404), ("doc1", 404), ("nobody", 404), ("exp1", 400)] {
        let (got, v) = s.req(
            Some(&exp1),
            "POST",
            "/api/broadcasts",
            Some(json!({ "title": "x", "presenters": [who] })),
        );
        assert_eq!(got, code, "co-presenter {who}: {v}");
    }
    let (code, created) = s.req(Some(&exp1), "POST", "/api/broadcasts", Some(title));
    assert_eq!(code, 201, "{created}");
    let id = created["broadcast"]["id"].as_str().expect("id").to_string();
    assert_eq!(created["broadcast"]["hospital_id"], "city");
    assert_eq!(created["broadcast"]["presenters"], json!(["exp1", "exp2"]));
    assert_eq!(created["join"]["presenter"], true);
    assert!(
        created["join"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("/broadcast#token=")),
        "{created}"
    );

    // Seen by the hospital's experts and the clinics it serves, nobody else.
    for (who, a, sees) in [
        ("exp1", &exp1, true),
        ("exp2", &exp2, true),
        ("exp4", &exp4, true),
        ("doc1", &doc1, true),
        ("exp3", &exp3, false),
        ("doc3", &doc3, false),
    ] {
        let (code, l) = s.req(Some(a), "GET", "/api/broadcasts", None);
        assert_eq!(code, 200, "{who}: {l}");
        assert_eq!(ids(&l).contains(&id), sees, "{who} listing: {l}");
    }
    let join = |a: &Auth| s.req(Some(a), "POST", &format!("/api/broadcasts/{id}/join"), None);
    assert_eq!(join(&doc3).0, 404, "another hospital's clinic cannot join");
    assert_eq!(join(&exp3).0, 404);
    let (code, v) = join(&doc1);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["join"]["presenter"], false);
    let viewer_token = v["join"]["token"].as_str().expect("token").to_string();
    let (code, v) = join(&exp2);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["join"]["presenter"], true, "a named colleague joins as a presenter");
    let (code, v) = join(&exp4);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["join"]["presenter"], false, "a colleague not named watches");
    let exp4_token = v["join"]["token"].as_str().expect("token").to_string();
    let watching = signal_probe_as(&s, Some(&exp4), "token", &exp4_token, &[]);
    let j = watching["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["type"] == "joined"))
        .unwrap_or_else(|| panic!("no joined message: {watching}"));
    assert_eq!(j["me"]["role"], "clinic", "a viewer's seat: {j}");

    // In the room: a broadcast, the viewer is a clinic participant, and its
    // attempt to publish is refused without ending its session.
    let joined = signal_probe_as(&s, Some(&doc1), "token", &viewer_token, &[]);
    let j = joined["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["type"] == "joined"))
        .unwrap_or_else(|| panic!("no joined message: {joined}"));
    assert_eq!(j["room"]["kind"], "broadcast", "{j}");
    assert_eq!(j["me"]["role"], "clinic");
    let (_, v) = join(&doc1);
    let token2 = v["join"]["token"].as_str().expect("token").to_string();
    let refused = signal_probe_as(&s, Some(&doc1), "viewer_offers_media", &token2, &[]);
    let codes: Vec<&str> = refused["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["type"] == "error")
        .filter_map(|m| m["code"].as_str())
        .collect();
    assert!(codes.contains(&"not_allowed"), "{refused}");
    assert_eq!(
        refused["pong_after"], true,
        "the viewer's session survives the refusal: {refused}"
    );

    // Ended by its presenter (not by a colleague); then gone for everyone.
    assert_eq!(
        s.req(Some(&exp2), "DELETE", &format!("/api/broadcasts/{id}"), None).0,
        403
    );
    assert_eq!(
        s.req(Some(&doc3), "DELETE", &format!("/api/broadcasts/{id}"), None).0,
        404
    );
    assert_eq!(
        s.req(Some(&exp1), "DELETE", &format!("/api/broadcasts/{id}"), None).0,
        204
    );
    assert!(ids(&s.req(Some(&doc1), "GET", "/api/broadcasts", None).1).is_empty());
    assert_eq!(join(&doc1).0, 404);
}

#[test]
fn a_viewer_raises_a_hand_asks_a_question_and_is_given_the_floor() {
    let s = Server::start(ServerOpts {
        config_toml: TWO_HOSPITALS.into(),
        ..Default::default()
    });
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "Prof. One"]);
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township"]);
    let exp1 = s.login("exp1", PW).expect("login");
    let doc1 = s.login("doc1", PW).expect("login");
    let (code, created) = s.req(
        Some(&exp1),
        "POST",
        "/api/broadcasts",
        Some(json!({ "title": "Fracture review" })),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["broadcast"]["id"].as_str().expect("id");
    let presenter = created["join"]["token"].as_str().expect("token");
    let (code, v) = s.req(Some(&doc1), "POST", &format!("/api/broadcasts/{id}/join"), None);
    assert_eq!(code, 200, "{v}");
    let viewer = v["join"]["token"].as_str().expect("token");

    let presenter_cookie = exp1.session_cookie();
    let out = signal_probe_as(
        &s,
        Some(&doc1),
        "floor",
        viewer,
        &["--presenter-token", presenter, "--presenter-cookie", &presenter_cookie],
    );
    let of = |side: &str, t: &str| -> Vec<Value> {
        out[side]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["type"] == t)
            .cloned()
            .collect()
    };
    // Off air until the presenter starts; the viewer is told both ways.
    let joined = &of("messages", "joined")[0];
    assert_eq!(joined["room"]["live"], false, "{joined}");
    let live: Vec<Value> = of("messages", "live").iter().map(|m| m["live"].clone()).collect();
    assert_eq!(live, [json!(true), json!(false)], "{out}");
    // The presenter's queue named the hand and carried the trimmed question.
    let queue = of("presenter", "queue")
        .into_iter()
        .find(|q| {
            q["hands"].as_array().is_some_and(|h| !h.is_empty())
                && q["questions"].as_array().is_some_and(|h| !h.is_empty())
        })
        .unwrap_or_else(|| panic!("no queue with the hand and question: {out}"));
    assert_eq!(queue["hands"][0]["name"], "Dr. Township", "{queue}");
    assert_eq!(queue["questions"][0]["text"], "Is the fracture displaced?", "{queue}");
    assert_eq!(queue["hands_total"], 1);
    // The asker learns its question was queued, then answered.
    let states: Vec<Value> = of("messages", "question_state")
        .iter()
        .map(|m| m["state"].clone())
        .collect();
    assert_eq!(states, [json!("open"), json!("answered")], "{out}");
    // The floor was given (audio only by default, hand lowered) and taken back.
    let floor: Vec<(Value, Value)> = of("messages", "floor")
        .iter()
        .map(|m| (m["granted"].clone(), m["video"].clone()))
        .collect();
    assert_eq!(
        floor,
        [(json!(true), json!(false)), (json!(false), json!(false))],
        "{out}"
    );
    let hands: Vec<Value> = of("messages", "hand").iter().map(|m| m["raised"].clone()).collect();
    assert_eq!(hands, [json!(true), json!(false)], "{out}");
    // Refusals, each without ending a session: an empty question, a viewer
    // promoting itself, a presenter raising a hand.
    let codes: Vec<Value> = of("messages", "error").iter().map(|m| m["code"].clone()).collect();
    assert_eq!(codes, [json!("bad_message"), json!("not_allowed")], "{out}");
    let pcodes: Vec<Value> = of("presenter", "error").iter().map(|m| m["code"].clone()).collect();
    assert_eq!(pcodes, [json!("not_allowed")], "{out}");
    assert_eq!(out["pong_after"], true, "{out}");
}

// ------------------------------------------------------------ signaling limits

/// `TWO_HOSPITALS` with media timeouts long enough for signaling-only participants
/// (the probes open no peer connection).
fn signaling_server() -> Server {
    Server::start(ServerOpts {
        config_toml: format!("{TWO_HOSPITALS}\n[sfu]\npeer_timeout_secs = 600\n"),
        ..Default::default()
    })
}

/// A participant: its join token and its account's session cookie.
type Joined = (String, String);

/// A broadcast by exp1 with `colleagues` named co-presenters and `viewers`
/// clinic doctors: each participant's join token and the session cookie of
/// its account (a token works only on its own account's session).
fn broadcast_tokens(s: &Server, colleagues: usize, viewers: usize) -> (Vec<Joined>, Vec<Joined>) {
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "Prof. One"]);
    let colleague_names: Vec<String> = (0..colleagues).map(|i| format!("exp{}", i + 2)).collect();
    for c in &colleague_names {
        s.add_user(c, "expert", PW, &["--hospital", "city"]);
    }
    let exp1 = s.login("exp1", PW).expect("login");
    let (code, created) = s.req(
        Some(&exp1),
        "POST",
        "/api/broadcasts",
        Some(json!({ "title": "Signaling limits", "presenters": colleague_names })),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["broadcast"]["id"].as_str().expect("id").to_string();
    let join = |user: &str| {
        let a = s.login(user, PW).expect("login");
        let (code, v) = s.req(Some(&a), "POST", &format!("/api/broadcasts/{id}/join"), None);
        assert_eq!(code, 200, "{v}");
        (
            v["join"]["token"].as_str().expect("token").to_string(),
            a.session_cookie(),
        )
    };
    let mut presenters = vec![(
        created["join"]["token"].as_str().expect("token").to_string(),
        exp1.session_cookie(),
    )];
    for c in &colleague_names {
        let p = join(c);
        presenters.push(p);
    }
    let viewers = (0..viewers)
        .map(|i| {
            let name = format!("doc{i}");
            s.add_user(&name, "clinic", PW, &["--clinic", "t01"]);
            join(&name)
        })
        .collect();
    (presenters, viewers)
}

/// Runs a signaling probe scenario as `own` (its join token and its
/// account's cookie; `None` for a scenario that plays only others), with
/// each of `others` passed as `--{name}-token` and `--{name}-cookie`.
fn probe(s: &Server, scenario: &str, own: Option<&Joined>, others: &[(&str, &Joined)]) -> Value {
    let mut args: Vec<String> = Vec::new();
    if let Some((_, cookie)) = own {
        args.extend(["--cookie".to_string(), cookie.clone()]);
    }
    for (name, (token, cookie)) in others {
        args.extend([
            format!("--{name}-token"),
            token.clone(),
            format!("--{name}-cookie"),
            cookie.clone(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    signal_probe_with(s, scenario, own.map_or("", |(t, _)| t.as_str()), &args)
}

fn of_type<'a>(out: &'a Value, side: &str, t: &str) -> Vec<&'a Value> {
    out[side]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["type"] == t)
        .collect()
}

#[test]
fn a_flooding_viewer_is_refused_then_cut_while_the_presenter_keeps_working() {
    let s = signaling_server();
    let (presenters, viewers) = broadcast_tokens(&s, 0, 1);
    let out = probe(&s, "flood", Some(&viewers[0]), &[("presenter", &presenters[0])]);
    // Overshooting once: the excess refused, said once, the session goes on.
    let errors = of_type(&out, "overshoot", "error");
    assert_eq!(errors.len(), 1, "{out}");
    assert_eq!(errors[0]["code"], "rate_limited", "{out}");
    // At most the budget, what it regained meanwhile and the last ping's.
    let pongs = of_type(&out, "overshoot", "pong").len();
    assert!((2..=105).contains(&pongs), "{pongs} pongs: {out}");
    assert_eq!(
        out["overshoot"].as_array().and_then(|m| m.last()).map(|m| &m["type"]),
        Some(&json!("pong")),
        "the session ended after overshooting once: {out}"
    );
    // Flooding: cut, with the documented code.
    let last = out["messages"].as_array().and_then(|m| m.last()).cloned();
    assert_eq!(
        last.as_ref().map(|m| (&m["type"], &m["code"])),
        Some((&json!("error"), &json!("rate_limited"))),
        "{out}"
    );
    assert_eq!(out["close_code"], 4029, "{out}");
    // Nor is it let back in at once.
    let rejoin: Vec<&Value> = of_type(&out, "rejoin", "error").iter().map(|m| &m["code"]).collect();
    assert_eq!(rejoin, [&json!("rate_limited")], "{out}");
    assert_eq!(out["rejoin_close_code"], 4029, "{out}");
    // The presenter heard it leave and its own session is unaffected.
    assert_eq!(out["pong_after"], true, "{out}");
    assert!(of_type(&out, "presenter", "error").is_empty(), "{out}");
    assert_eq!(s.metric("medrelay_sfu_signal_rate_cut_total"), 1.0);
    assert!(s.metric("medrelay_sfu_signal_rate_limited_total") >= 50.0);
}

#[test]
fn a_page_that_stops_reading_is_closed_rather_than_silently_left_behind() {
    let s = signaling_server();
    let (presenters, _) = broadcast_tokens(&s, 1, 0);
    let out = probe(
        &s,
        "stall",
        None,
        &[("presenter", &presenters[0]), ("other", &presenters[1])],
    );
    eprintln!(
        "stalled page: sent {}, cut {} s after the mutes began",
        out["sent"], out["cut_after_s"]
    );
    // The others were told it left: the server did not wait on it.
    let me = of_type(&out, "messages", "joined")
        .first()
        .map(|j| j["me"]["id"].clone())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        of_type(&out, "witness", "participant_left")
            .iter()
            .any(|m| m["id"] == me),
        "the stalled page was never taken out of the room: {out}"
    );
    // When it reads again: an unbroken prefix of what it was sent (its
    // answers, then the other presenter's mutes in order), then the end
    // with the documented code; not a silent gap.
    let msgs = out["messages"].as_array().expect("messages");
    let kinds: Vec<&str> = msgs
        .iter()
        .filter_map(|m| m["type"].as_str())
        .filter(|t| ["answer", "mute"].contains(t))
        .collect();
    let answers = kinds.iter().take_while(|t| **t == "answer").count();
    assert!(answers >= 1, "{out}");
    assert!(kinds[answers..].iter().all(|t| *t == "mute"), "{kinds:?}");
    let mutes: Vec<bool> = of_type(&out, "messages", "mute")
        .iter()
        .map(|m| m["muted"] == true)
        .collect();
    eprintln!("it read {answers} answers and {} mutes", mutes.len());
    let expected: Vec<bool> = (0..mutes.len()).map(|i| i % 2 == 0).collect();
    assert_eq!(mutes, expected, "a gap in the mutes the stalled page was sent");
    let last = msgs.last().expect("a last message");
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["code"], "too_slow", "{last}");
    assert_eq!(out["close_code"], 4008, "{out}");
    assert!(
        !msgs.iter().any(|m| m["code"] == "rate_limited"),
        "the probe stayed within its budget: {out}"
    );
    assert_eq!(s.metric("medrelay_sfu_signal_too_slow_total"), 1.0);
    // The other presenter is unaffected.
    assert_eq!(out["pong_after"], true, "{out}");
    assert!(of_type(&out, "witness", "error").is_empty(), "{out}");
}

#[test]
fn broadcast_viewers_hear_of_each_other_only_while_one_is_on_stage() {
    let s = signaling_server();
    let (presenters, viewers) = broadcast_tokens(&s, 0, 2);
    let out = probe(
        &s,
        "viewers",
        Some(&viewers[0]),
        &[("presenter", &presenters[0]), ("other", &viewers[1])],
    );
    let a = out["a"].as_str().unwrap_or_else(|| panic!("{out}"));
    // Before, during and after its turn, A muted, raised its hand and asked;
    // B was told of A only from the start to the end of the turn.
    let seen: Vec<String> = out["other"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m.to_string())
        .filter(|m| m.contains(a))
        .collect();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(
        seen[0].contains("participant_joined"),
        "B heard of A before its turn: {seen:?}"
    );
    assert!(
        seen[seen.len() - 1].contains("participant_left"),
        "B heard of A after its turn: {seen:?}"
    );
    assert!(
        seen.iter().any(|m| m.contains("\"mute\"")),
        "B was not told of the speaker's mute: {seen:?}"
    );
    assert_eq!(out["pong_after"], true, "{out}");
    // The presenter heard of A all along.
    assert!(of_type(&out, "presenter", "mute").len() >= 6, "{out}");
}
