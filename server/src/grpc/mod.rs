//! The gRPC services: translation between the wire and the broker, no logic of their own.

pub mod admin;
pub mod convert;
pub mod groups;
pub mod log;
pub mod queue;
pub mod status;
