//! The Sluice broker.
//!
//! The gRPC services, topics and back pressure arrive with the broker issue (#4). The storage
//! engine they stand on is `sluice-storage`.
#![forbid(unsafe_code)]
