//! [`Partitioner`]: which partition of a topic a record goes to.
//!
//! Keyed records hash with murmur2 (the 32-bit MurmurHash2 variant, seed `0x9747b28c`, that
//! Kafka's default partitioner uses), taken positive and modulo the partition count: the hash is
//! stable across processes, versions and platforms, so one key always lands on one partition
//! while the partition count stays the same, and a future Kafka wire listener (design.md §6)
//! places keys where Kafka clients would. Keyless records go round robin.

use std::sync::atomic::{AtomicU32, Ordering};

/// How the producer picks a partition for a record that does not name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Partitioner {
    /// Records with a key go to `murmur2(key) & 0x7fff_ffff % partitions`; records without
    /// one go round robin. The default.
    #[default]
    KeyHash,
    /// Every record goes round robin, key or not.
    RoundRobin,
}

impl Partitioner {
    /// The partition for a record with `key` on a topic of `partitions` (at least 1)
    /// partitions; `counter` is the topic's round-robin cursor, advanced for keyless records.
    pub fn partition(&self, key: Option<&[u8]>, partitions: u32, counter: &AtomicU32) -> u32 {
        debug_assert!(partitions > 0, "a topic has at least one partition");
        let partitions = partitions.max(1);
        match (self, key) {
            (Self::KeyHash, Some(key)) => partition_for_key(key, partitions),
            _ => counter.fetch_add(1, Ordering::Relaxed) % partitions,
        }
    }
}

/// The partition a keyed record goes to under [`Partitioner::KeyHash`].
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    // Same as Kafka's `Utils.toPositive(Utils.murmur2(key)) % numPartitions`.
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// 32-bit MurmurHash2 with seed `0x9747b28c`, as Kafka computes it (Java `int` arithmetic, so
/// the result is the same bit pattern as Kafka's, read as `u32`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka mixes in the length as a Java int; keys over 2 GiB cannot occur (batch limit).
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (clients UtilsTest.testMurmur2), Java ints.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn keyed_partition_is_stable() {
        let counter = AtomicU32::new(0);
        let p = Partitioner::KeyHash;
        for key in [&b""[..], b"a", b"user-42", b"\xff\xfe\xfd\xfc\xfb"] {
            let first = p.partition(Some(key), 12, &counter);
            assert!(first < 12);
            for _ in 0..10 {
                assert_eq!(p.partition(Some(key), 12, &counter), first);
            }
            assert_eq!(first, partition_for_key(key, 12));
        }
        // Keyed records never advance the round-robin cursor.
        assert_eq!(counter.load(Ordering::Relaxed), 0);
        // Pinned values: a change here moves keys to other partitions in existing topics.
        assert_eq!(
            partition_for_key(b"foobar", 10),
            (-790_332_482i32 & 0x7fff_ffff) as u32 % 10
        );
        assert_eq!(partition_for_key(b"abc", 7), 479_470_107 % 7);
    }

    #[test]
    fn keyed_partition_spreads_keys() {
        let partitions = 16u32;
        let mut counts = vec![0u32; partitions as usize];
        let keys = 16_000u32;
        for i in 0..keys {
            let key = format!("key-{i}");
            counts[partition_for_key(key.as_bytes(), partitions) as usize] += 1;
        }
        let expected = keys / partitions; // 1000
        for (partition, &count) in counts.iter().enumerate() {
            assert!(
                count > expected * 8 / 10 && count < expected * 12 / 10,
                "partition {partition} got {count} of {keys} keys: {counts:?}"
            );
        }
    }

    #[test]
    fn keyless_and_round_robin_cycle() {
        let counter = AtomicU32::new(0);
        let got: Vec<u32> = (0..8)
            .map(|_| Partitioner::KeyHash.partition(None, 3, &counter))
            .collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0, 1]);
        let counter = AtomicU32::new(0);
        let got: Vec<u32> = (0..4)
            .map(|_| Partitioner::RoundRobin.partition(Some(b"same key"), 2, &counter))
            .collect();
        assert_eq!(got, [0, 1, 0, 1]);
        // One partition: always 0, whatever the cursor says.
        let counter = AtomicU32::new(u32::MAX);
        assert_eq!(Partitioner::KeyHash.partition(None, 1, &counter), 0);
        assert_eq!(Partitioner::KeyHash.partition(None, 1, &counter), 0);
    }
}
