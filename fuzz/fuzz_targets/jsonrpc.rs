//! JSON-RPC / MCP message decoding: any body parses to messages or to an error text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = commguard::mcp::protocol::parse(data) {
        assert!(!parsed.messages.is_empty());
        // Only an array is a batch, and a lone message is never one.
        assert!(parsed.batch || parsed.messages.len() == 1);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = commguard::mcp::claim_param(Some(text));
    }
});
