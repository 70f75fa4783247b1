//! JSON-RPC / MCP message decoding: any body parses to messages or to an error text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(messages) = commguard::mcp::protocol::parse(data) {
        assert!(!messages.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = commguard::mcp::claim_param(Some(text));
    }
});
