//! Teaching broadcasts over the real HTTPS API and signaling WebSocket: who
//! may start, see, join and end one, and what a viewer may do once in.

mod support;

use serde_json::{Value, json};
use support::*;

const PW: &str = "correct-horse-battery";

const CONFIG: &str = r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]

[[clinic]]
id = "t03"
name = "Township 03"
ae_titles = ["T03_CT"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01"]

[[hospital]]
id = "other"
name = "Other Hospital"
serves = ["t03"]
"#;

fn ids(list: &Value) -> Vec<String> {
    list["broadcasts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["id"].as_str().map(String::from))
        .collect()
}

#[test]
fn broadcasts_are_scoped_to_the_hospitals_clinics_and_viewers_only_watch() {
    let s = Server::start(ServerOpts {
        config_toml: CONFIG.into(),
        ..Default::default()
    });
    s.add_user("exp1", "expert", PW, &["--hospital", "city", "--name", "Prof. One"]);
    s.add_user("exp2", "expert", PW, &["--hospital", "city"]);
    s.add_user("exp3", "expert", PW, &["--hospital", "other"]);
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01"]);
    s.add_user("doc3", "clinic", PW, &["--clinic", "t03"]);
    let login = |u: &str| s.login(u, PW).unwrap_or_else(|e| panic!("login {u}: {e:?}"));
    let (exp1, exp2, exp3, doc1, doc3) = (
        login("exp1"),
        login("exp2"),
        login("exp3"),
        login("doc1"),
        login("doc3"),
    );

    // Only experts start one, with a real title.
    let title = json!({ "title": "Reading chest CT, session 3" });
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
    let (code, created) = s.req(Some(&exp1), "POST", "/api/broadcasts", Some(title));
    assert_eq!(code, 201, "{created}");
    let id = created["broadcast"]["id"].as_str().expect("id").to_string();
    assert_eq!(created["broadcast"]["hospital_id"], "city");
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
    assert_eq!(v["join"]["presenter"], true, "a colleague joins as a presenter");

    // In the room: a broadcast, the viewer is a clinic participant, and its
    // attempt to publish is refused without ending its session.
    let joined = signal_probe(&s, "token", &viewer_token);
    let j = joined["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["type"] == "joined"))
        .unwrap_or_else(|| panic!("no joined message: {joined}"));
    assert_eq!(j["room"]["kind"], "broadcast", "{j}");
    assert_eq!(j["me"]["role"], "clinic");
    let (_, v) = join(&doc1);
    let token2 = v["join"]["token"].as_str().expect("token").to_string();
    let refused = signal_probe(&s, "viewer_offers_media", &token2);
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
