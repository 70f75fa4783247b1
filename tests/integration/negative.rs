//! Regressions found by the hostile-input runs of issue 20: `scripts/chaos.sh api`
//! (schemathesis over the OpenAPI document) and `scripts/fuzz.sh` (cargo-fuzz). Each input that
//! once broke the server gets its clear error here, and the server keeps answering.

use serde_json::Value;

use crate::support::{TestDb, TestServer};

const MASTER: &str = "negative-test-master-token-0123456789abcdef0123";

async fn get(s: &TestServer, path_and_query: &str) -> (u16, Value) {
    let response = s.http.get(s.url(path_and_query)).bearer_auth(MASTER).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// schemathesis: a query value with a multi-byte character right after `&` panicked the input
/// sanitiser (a `str` slice inside the character) and the connection closed without an answer.
#[tokio::test]
async fn a_multibyte_character_after_an_ampersand_gets_an_answer() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &[("MASTER_SECURITY_TOKEN", MASTER)]).await;
    // to = "&2Ý…", from = "q\u{90}$\u{99}" as schemathesis sent them.
    let (status, body) = get(
        &s,
        "/admin/api/usage?to=%C3%A9%262%13%C3%9D%F0%BA%B6%A4%F2%89%A8%AB%C3%98%5D%C2%8F%02%C3%B6bs&from=q%C2%90%24%C2%99",
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_input")), "{body}");
    let (status, _) = get(&s, "/health").await;
    assert_eq!(status, 200, "the server still answers");
    s.stop().await;
}
