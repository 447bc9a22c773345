//! The limits on what a producer may send, checked for each message before anything else
//! happens to it. A refusal names the limit (a metric label) and says why (the ack's reason).

use sidelog_proto::v1::Message;

/// A refused message: the limit's name and the reason.
pub type Refusal = (&'static str, String);

/// Validated limits on what a producer may send.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_messages_per_request: usize,
    pub max_id_bytes: usize,
    pub max_key_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_backlog_bytes: u64,
}

impl Limits {
    /// Checks one message against the limits; a refusal names the limit (a metric label) and
    /// says why (the ack's reason).
    pub fn check(&self, message: &Message) -> Result<(), Refusal> {
        use prost::Message as _;
        self.check_id(&message.id)?;
        if message.key.len() > self.max_key_bytes {
            return Err((
                "max_key_bytes",
                format!(
                    "key is {} bytes, over the limit of {} (max_key_bytes)",
                    message.key.len(),
                    self.max_key_bytes
                ),
            ));
        }
        self.check_headers(message)?;
        let size = message.encoded_len();
        if size > self.max_message_bytes {
            return Err((
                "max_message_bytes",
                format!(
                    "message is {size} bytes, over the limit of {} (max_message_bytes)",
                    self.max_message_bytes
                ),
            ));
        }
        Ok(())
    }

    fn check_id(&self, id: &str) -> Result<(), Refusal> {
        if id.len() > self.max_id_bytes {
            return Err((
                "max_id_bytes",
                format!(
                    "id is {} bytes, over the limit of {} (max_id_bytes)",
                    id.len(),
                    self.max_id_bytes
                ),
            ));
        }
        if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err((
                "invalid_id",
                "id contains whitespace or control characters".into(),
            ));
        }
        Ok(())
    }

    /// Header count, sizes, and names and values every next tier can carry.
    fn check_headers(&self, message: &Message) -> Result<(), Refusal> {
        if message.headers.len() > self.max_headers {
            return Err((
                "max_headers",
                format!(
                    "{} headers, over the limit of {} (max_headers)",
                    message.headers.len(),
                    self.max_headers
                ),
            ));
        }
        for (name, value) in &message.headers {
            if name.len() + value.len() > self.max_header_bytes {
                return Err((
                    "max_header_bytes",
                    format!(
                        "header {:?} is {} bytes, over the limit of {} (max_header_bytes)",
                        name.chars().take(64).collect::<String>(),
                        name.len() + value.len(),
                        self.max_header_bytes
                    ),
                ));
            }
            // Names are tokens and values one line, so that every next tier can carry them
            // (HTTP/2, NATS and Kafka headers alike).
            if name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == ':')
            {
                return Err((
                    "invalid_header",
                    format!(
                        "header name {:?} is empty or has whitespace, ':' or control characters",
                        name.chars().take(64).collect::<String>()
                    ),
                ));
            }
            if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
                return Err((
                    "invalid_header",
                    format!("header {name:?} has a line break or NUL in its value"),
                ));
            }
        }
        Ok(())
    }
}
