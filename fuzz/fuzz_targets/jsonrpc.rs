//! JSON-RPC / MCP message decoding: any body parses to messages or to an error text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match commguard::mcp::protocol::parse(data) {
        Ok(parsed) => {
            assert!(!parsed.messages.is_empty());
            // Only an array is a batch, and a lone message is never one; only a batch member
            // may be no message (answered by its own error).
            assert!(parsed.batch || parsed.messages.len() == 1);
            let invalid = parsed.messages.iter().any(|m| matches!(m, commguard::mcp::protocol::Message::Invalid(_)));
            assert!(parsed.batch || !invalid);
        }
        Err(malformed) => {
            // -32700 exactly when the body is not JSON, else -32600; never an id.
            let reply = malformed.error_response();
            let json = serde_json::from_slice::<serde_json::Value>(data).is_ok();
            assert_eq!(reply["error"]["code"].as_i64(), Some(if json { -32600 } else { -32700 }));
            assert!(reply["id"].is_null());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = commguard::mcp::claim_param(Some(text));
    }
});
