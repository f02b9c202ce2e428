//! The owner's assistant through the gateway, on the real models: records found by their
//! meaning as well as their words (the vector index in the user's store), memories, kept
//! conversations and the collections it may read. Owner only, every path of it.

mod common;

use common::{test_embed_model, test_model, with_model, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn server() -> Option<Server> {
    let model = test_model()?;
    Some(Server::start_with(|c| with_model(c, &model, 1, 4)).await)
}

async fn ask_in(s: &Server, token: &str, body: Value) -> Value {
    let (st, _, answer) = s.call(Method::POST, "/v1/assistant/chat", Some(token), Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{answer}");
    answer
}

#[tokio::test]
async fn memories_are_read_with_every_question_until_the_owner_deletes_them() {
    let Some(s) = server().await else { return };
    let (ada, bob) = (s.user("ada").await, s.user("bob").await);
    s.put_ok(&ada, "/v1/storage/notes/groceries", json!({"text": "Buy milk, bread and eggs."})).await;
    let (st, _, memory) = s
        .call(
            Method::POST,
            "/v1/assistant/memories",
            Some(&ada),
            Some(json!({"text": "My passport number is X1234567."})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{memory}");
    let id = memory["id"].as_str().unwrap().to_owned();
    let (_, _, listed) = s.call(Method::GET, "/v1/assistant/memories", Some(&ada), None).await;
    assert_eq!(listed["memories"][0]["text"], "My passport number is X1234567.", "{listed}");

    let question = "What is my passport number?";
    let answer = ask_in(&s, &ada, json!({"message": question})).await;
    let first = &answer["citations"][0];
    assert_eq!(
        (first["collection"].as_str(), first["key"].as_str()),
        (Some("_memories"), Some(id.as_str())),
        "{answer}"
    );

    // Another user's assistant knows nothing of it, and cannot delete it.
    let bobs = ask_in(&s, &bob, json!({"message": question})).await;
    assert_eq!(bobs["citations"], json!([]), "{bobs}");
    let (st, _, _) = s.call(Method::DELETE, &format!("/v1/assistant/memories/{id}"), Some(&bob), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Bad input is a clear error; an id that is not one of ours is no memory at all.
    for bad in [json!({"text": ""}), json!({"text": "x".repeat(3000)}), json!({"words": "hi"})] {
        let (st, _, err) = s.call(Method::POST, "/v1/assistant/memories", Some(&ada), Some(bad.clone())).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {err}");
    }
    for trick in ["..%2F..%2Fnotes%2Fgroceries", "groceries", "%2E%2E"] {
        let (st, _, _) = s.call(Method::DELETE, &format!("/v1/assistant/memories/{trick}"), Some(&ada), None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{trick}");
    }
    let (_, _, groceries) = s.call(Method::GET, "/v1/storage/notes/groceries", Some(&ada), None).await;
    assert_eq!(groceries["text"], "Buy milk, bread and eggs.");

    let (st, _, _) = s.call(Method::DELETE, &format!("/v1/assistant/memories/{id}"), Some(&ada), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, _) = s.call(Method::DELETE, &format!("/v1/assistant/memories/{id}"), Some(&ada), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, _, listed) = s.call(Method::GET, "/v1/assistant/memories", Some(&ada), None).await;
    assert_eq!(listed["memories"], json!([]));
    let answer = ask_in(&s, &ada, json!({"message": question})).await;
    assert!(!answer["citations"].to_string().contains("_memories"), "{answer}");
}

#[tokio::test]
async fn a_conversation_is_kept_and_goes_on_where_it_left_off() {
    let Some(s) = server().await else { return };
    let (ada, bob) = (s.user("ada").await, s.user("bob").await);
    let first = ask_in(&s, &ada, json!({"message": "What is the capital of France?"})).await;
    let id = first["conversation"].as_str().unwrap().to_owned();
    let second = ask_in(&s, &ada, json!({"message": "And of Spain?", "conversation": id})).await;
    assert_eq!(second["conversation"], id.as_str());

    let (st, _, kept) = s.call(Method::GET, &format!("/v1/assistant/conversations/{id}"), Some(&ada), None).await;
    assert_eq!(st, StatusCode::OK, "{kept}");
    let turns: Vec<(&str, &str)> = kept["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["role"].as_str().unwrap(), t["content"].as_str().unwrap()))
        .collect();
    assert_eq!(turns.len(), 4, "{kept}");
    assert_eq!(turns[0], ("user", "What is the capital of France?"));
    assert_eq!(turns[2], ("user", "And of Spain?"));
    assert_eq!(turns[1].1, first["answer"].as_str().unwrap());
    let (_, _, listed) = s.call(Method::GET, "/v1/assistant/conversations", Some(&ada), None).await;
    assert_eq!(listed["conversations"][0]["turns"], 4, "{listed}");
    // Two follow-ups of one conversation at once: both exchanges stay.
    let follow_up = |q: &str| ask_in(&s, &ada, json!({"message": q, "conversation": id}));
    tokio::join!(follow_up("And of Italy?"), follow_up("And of Portugal?"));
    let (_, _, kept) = s.call(Method::GET, &format!("/v1/assistant/conversations/{id}"), Some(&ada), None).await;
    assert_eq!(kept["turns"].as_array().unwrap().len(), 8, "{kept}");
    assert_eq!(listed["conversations"][0]["title"], "What is the capital of France?");

    // Not another user's, not one that does not exist.
    let (st, _, _) = s.call(Method::GET, &format!("/v1/assistant/conversations/{id}"), Some(&bob), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, err) = s
        .call(Method::POST, "/v1/assistant/chat", Some(&bob), Some(json!({"message": "hi", "conversation": id})))
        .await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::NOT_FOUND, "not_found"), "{err}");

    let (st, _, _) = s.call(Method::DELETE, &format!("/v1/assistant/conversations/{id}"), Some(&ada), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, _) = s.call(Method::GET, &format!("/v1/assistant/conversations/{id}"), Some(&ada), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_owner_chooses_the_collections_it_reads_and_no_app_reaches_any_of_it() {
    let Some(s) = server().await else { return };
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/notes/trip", json!({"text": "My flight to Lisbon leaves on May 3 at 9am."})).await;
    s.put_ok(&ada, "/v1/storage/diary/monday", json!({"text": "Planning the Lisbon trip went well."})).await;
    let question = json!({"message": "When does my flight to Lisbon leave?"});

    let (st, _, set) =
        s.call(Method::PUT, "/v1/assistant/settings", Some(&ada), Some(json!({"collections": ["diary"]}))).await;
    assert_eq!(st, StatusCode::OK, "{set}");
    let (_, _, got) = s.call(Method::GET, "/v1/assistant/settings", Some(&ada), None).await;
    assert_eq!(got, json!({"collections": ["diary"]}));
    let answer = ask_in(&s, &ada, question.clone()).await;
    let collections: Vec<&str> =
        answer["citations"].as_array().unwrap().iter().map(|c| c["collection"].as_str().unwrap()).collect();
    assert_eq!(collections, ["diary"], "{answer}");
    // A question names collections as a client does: not the instance's own.
    let (st, _, err) = s
        .call(
            Method::POST,
            "/v1/assistant/chat",
            Some(&ada),
            Some(json!({"message": "hi", "collections": ["_memories"]})),
        )
        .await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{err}");
    // A question cannot widen what the owner allowed.
    let widened =
        ask_in(&s, &ada, json!({"message": "When does my flight to Lisbon leave?", "collections": ["notes"]})).await;
    assert_eq!(widened["citations"], json!([]), "{widened}");
    for bad in [json!({"collections": ["Not A Name"]}), json!({"collections": "diary"}), json!({"other": 1})] {
        let (st, _, err) = s.call(Method::PUT, "/v1/assistant/settings", Some(&ada), Some(bad.clone())).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {err}");
    }

    // Every assistant path is the owner's: an app with every scope it could hold gets 403.
    let (_, app) = s.app_token(&ada, &["llm:chat", "llm:embed", "storage:read:notes", "storage:write:notes"]).await;
    let app = app.access_token;
    for (method, path, body) in [
        (Method::POST, "/v1/assistant/chat", Some(question.clone())),
        (Method::GET, "/v1/assistant/memories", None),
        (Method::POST, "/v1/assistant/memories", Some(json!({"text": "x"}))),
        (Method::DELETE, "/v1/assistant/memories/0000000000001-0000000000000000", None),
        (Method::GET, "/v1/assistant/conversations", None),
        (Method::GET, "/v1/assistant/conversations/0000000000001-0000000000000000", None),
        (Method::GET, "/v1/assistant/settings", None),
        (Method::PUT, "/v1/assistant/settings", Some(json!({"collections": null}))),
    ] {
        let (st, _, err) = s.call(method.clone(), path, Some(&app), body).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::FORBIDDEN, "forbidden"), "{method} {path}: {err}");
    }
}

/// Records in the user's store, the instance's own among them.
async fn records(s: &Server, owner: &str) -> u64 {
    s.call(Method::GET, "/v1/me", Some(owner), None).await.2["storage"]["records"].as_u64().unwrap()
}

fn cited(answer: &Value) -> Vec<String> {
    answer["citations"].as_array().unwrap().iter().map(|c| c["key"].as_str().unwrap().to_owned()).collect()
}

async fn ask(s: &Server, token: &str, message: &str) -> Value {
    ask_in(s, token, json!({"message": message})).await
}

#[tokio::test]
async fn the_assistant_finds_a_record_by_its_meaning_and_keeps_its_index_up_to_date() {
    let Some(s) = server().await else { return };
    if test_embed_model().is_none() {
        return;
    }
    let (ada, bob) = (s.user("ada").await, s.user("bob").await);
    s.put_ok(&ada, "/v1/storage/notes/trip", json!({"text": "My flight to Lisbon leaves on May 3 at 9am."})).await;
    s.put_ok(&ada, "/v1/storage/notes/groceries", json!({"text": "Buy milk, bread and eggs."})).await;
    s.put_ok(&bob, "/v1/storage/notes/flight", json!({"text": "Bob's plane takes off on June 9 from gate B12."})).await;

    // No word of the question is in the note: found by its meaning, and only Ada's.
    let question = "When does my plane take off?";
    let answer = ask(&s, &ada, question).await;
    assert_eq!(cited(&answer), ["trip"], "{answer}");

    // The index lives in Ada's own store (an internal collection no client path names).
    let (st, _, err) = s.call(Method::GET, "/v1/storage/_vectors", Some(&ada), None).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{err}");

    // Once built, the index follows writes without waiting for a question: a new note's vector
    // is in the store shortly after the note.
    let before = records(&s, &ada).await;
    s.put_ok(&ada, "/v1/storage/notes/museum", json!({"text": "The museum opens at ten."})).await;
    let mut indexed = false;
    for _ in 0..100 {
        if records(&s, &ada).await == before + 2 {
            indexed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(indexed, "the new note was not indexed as it was written");

    // A note changed after the index was built is found by its new meaning, a deleted one never.
    s.put_ok(&ada, "/v1/storage/notes/trip", json!({"text": "The museum opens at ten on Sundays."})).await;
    s.put_ok(&ada, "/v1/storage/notes/boarding", json!({"text": "Boarding for the Lisbon flight starts at 8:30."}))
        .await;
    let answer = ask(&s, &ada, question).await;
    assert_eq!(cited(&answer).first().map(String::as_str), Some("boarding"), "{answer}");
    assert!(!cited(&answer).contains(&"trip".to_owned()), "{answer}");
    let (st, _, _) = s.call(Method::DELETE, "/v1/storage/notes/boarding", Some(&ada), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let answer = ask(&s, &ada, question).await;
    assert!(!cited(&answer).contains(&"boarding".to_owned()), "{answer}");
}
