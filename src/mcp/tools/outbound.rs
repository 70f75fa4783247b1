//! Outbound tools; the pipeline itself is `crate::outbound`.

use serde_json::json;

use super::Tool;
use crate::auth::Role;

pub const SEND_MESSAGE: Tool = Tool {
    name: "comms_send_message",
    role: Role::Agent,
    description: "Send an SMS or email from an agent, through every guard, limit and compliance check.",
    schema: || {
        json!({"type": "object", "required": ["to", "body"], "properties": {
            "agentId": {"type": "string"},
            "to": {"type": "string", "description": "E.164 phone number (sms) or email address (email)"},
            "body": {"type": "string"},
            "channel": {"type": "string", "enum": ["sms", "email", "whatsapp"], "default": "sms"},
            "subject": {"type": "string", "maxLength": 998},
            "html": {"type": "string", "maxLength": 500000},
            "purpose": {"type": "string", "enum": ["marketing", "transactional"], "default": "marketing"}}})
    },
};
