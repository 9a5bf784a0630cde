//! Lease tokens: what a worker hands back to ack, nack, extend or release a leased message.
//!
//! ```text
//! token = "v1." partition "." offset "." attempt "." tag          (decimal; tag: 8 hex digits)
//! ```
//!
//! The attempt fences stale acks (a token whose attempt is not the current lease changes
//! nothing); the tag, a hash of topic and group, catches a token handed to the wrong topic or
//! group. Tokens are not secrets: anyone who may ack may forge one, as with SQS receipt
//! handles' fields.

use crate::error::{Error, Result};

/// Longest token accepted, bytes.
pub const MAX_TOKEN_BYTES: usize = 64;

/// What a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// The delivery attempt it was handed out with.
    pub attempt: u32,
}

/// FNV-1a (32 bits) of `topic NUL group`.
fn tag(topic: &str, group: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in topic.bytes().chain([0]).chain(group.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

impl Token {
    /// The token's text for `topic` and `group`.
    pub fn encode(&self, topic: &str, group: &str) -> String {
        format!(
            "v1.{}.{}.{}.{:08x}",
            self.partition,
            self.offset,
            self.attempt,
            tag(topic, group)
        )
    }

    /// Parses `text` as a token of `topic` and `group`: `INVALID_ARGUMENT` naming the problem
    /// if it is not a token, or one for another topic or group.
    pub fn decode(text: &str, topic: &str, group: &str) -> Result<Self> {
        let garbage = || {
            Error::invalid(
                "lease_token",
                text,
                "not a lease token (expected v1.PARTITION.OFFSET.ATTEMPT.TAG, as Lease returned it)",
            )
        };
        if text.len() > MAX_TOKEN_BYTES {
            return Err(garbage());
        }
        let mut parts = text.split('.');
        if parts.next() != Some("v1") {
            return Err(garbage());
        }
        let mut number = || parts.next().and_then(|p| p.parse::<u64>().ok());
        let (Some(partition), Some(offset), Some(attempt)) = (number(), number(), number()) else {
            return Err(garbage());
        };
        let token_tag = parts
            .next()
            .filter(|t| t.len() == 8)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(garbage)?;
        if parts.next().is_some() {
            return Err(garbage());
        }
        let (Ok(partition), Ok(attempt)) = (u32::try_from(partition), u32::try_from(attempt))
        else {
            return Err(garbage());
        };
        if token_tag != tag(topic, group) {
            return Err(Error::invalid(
                "lease_token",
                text,
                "was issued for another topic or queue group",
            ));
        }
        Ok(Self {
            partition,
            offset,
            attempt,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Tokens come from clients: any text is a token or an error, never a panic, and
        /// every token a broker hands out reads back as itself.
        #[test]
        fn any_text_decodes_or_is_refused(text in ".{0,80}", raw in "v1\\.[0-9]{1,12}\\.[0-9]{1,21}\\.[0-9]{1,11}\\.[0-9a-f]{8}") {
            let _ = Token::decode(&text, "jobs", "workers");
            let _ = Token::decode(&raw, "jobs", "workers");
        }

        #[test]
        fn every_token_round_trips(partition: u32, offset: u64, attempt: u32, topic in "[a-z.]{1,20}", group in ".{1,20}") {
            let token = Token { partition, offset, attempt };
            let text = token.encode(&topic, &group);
            prop_assert!(text.len() <= MAX_TOKEN_BYTES);
            prop_assert_eq!(Token::decode(&text, &topic, &group).ok(), Some(token));
        }
    }

    #[test]
    fn tokens_round_trip_and_name_their_group() {
        let token = Token {
            partition: 3,
            offset: u64::MAX,
            attempt: 7,
        };
        let text = token.encode("jobs", "workers");
        assert!(text.len() <= MAX_TOKEN_BYTES);
        assert_eq!(Token::decode(&text, "jobs", "workers").ok(), Some(token));
        let other = Token::decode(&text, "jobs", "others").unwrap_err();
        assert!(other.to_string().contains("another topic or queue group"));
        assert!(Token::decode(&text, "mail", "workers").is_err());
        for garbage in [
            "",
            "v1",
            "v2.3.4.5.00000000",
            "v1.x.4.5.00000000",
            "v1.3.4.5",
            "v1.3.4.5.0000000",
            "v1.3.4.5.00000000.6",
            "v1.99999999999.4.5.00000000",
            &"v1.".repeat(40),
        ] {
            let error = Token::decode(garbage, "jobs", "workers").unwrap_err();
            assert!(error.to_string().contains("not a lease token"), "{garbage}");
        }
    }
}
