//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use bytes::BytesMut;
use sluice_storage::format::{BatchBuilder, Batches, Header};
use sluice_storage::{Durability, LogConfig};

/// A batch of `count` records whose values say which batch and record they are.
pub fn batch(tag: u64, count: u32, value_len: usize, timestamp: i64) -> BytesMut {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let key = format!("key-{tag}-{i}");
        let mut value = format!("value-{tag}-{i}-").into_bytes();
        value.resize(value_len.max(value.len()), b'x');
        let headers = [Header {
            key: "i",
            value: Some(&i.to_le_bytes()[..]),
        }];
        builder
            .push(
                timestamp + i64::from(i),
                Some(key.as_bytes()),
                Some(&value),
                &headers,
            )
            .expect("encodable");
    }
    builder.finish().expect("non-empty")
}

/// A small-segment config for tests.
pub fn small_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        max_batch_bytes: 32 * 1024,
        durability,
        ..LogConfig::default()
    }
}

/// Every (offset, value) in a run of whole batches, each checked in full (as stored batches,
/// which compaction may have thinned).
pub fn records(batches: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for framed in Batches::new(batches) {
        let view = framed.and_then(|f| f.stored()).expect("valid batch");
        for record in view.records() {
            out.push((record.offset, record.value.unwrap_or_default().to_vec()));
        }
    }
    out
}
