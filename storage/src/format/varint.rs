//! Zig-zag variable-length integers, as Kafka's record batch v2 and protobuf's `sint64` use them.
//!
//! `encode(v)` writes `zigzag(v)` seven bits at a time, low bits first, the high bit of each byte
//! saying "more follows". An `i64` takes 1–10 bytes. Decoding rejects encodings longer than 10
//! bytes and a 10th byte with bits beyond the 64th set, so no encoding overflows. Like Kafka's
//! decoder it accepts non-minimal encodings (`[0x80, 0x00]` is 0): the CRC, not the varint
//! form, is what pins a batch's bytes.

/// Longest encoding of an `i64`.
pub const MAX_LEN: usize = 10;

/// Maps signed to unsigned so that small magnitudes of either sign encode short.
#[inline(always)]
const fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

#[inline(always)]
const fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Bytes that `encode(value)` writes.
pub const fn encoded_len(value: i64) -> usize {
    let bits = 64 - (zigzag(value) | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the zig-zag varint encoding of `value` to `out`.
pub fn encode(value: i64, out: &mut Vec<u8>) {
    let mut rest = zigzag(value);
    while rest >= 0x80 {
        out.push((rest as u8) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The bytes ended while the continuation bit was still set.
    Truncated,
    /// More than ten bytes, or bits beyond the 64th.
    Overlong,
}

/// Reads one zig-zag varint from the start of `buf`; returns the value and the bytes it took.
#[inline(always)]
pub fn decode(buf: &[u8]) -> Result<(i64, usize), VarintError> {
    let mut value: u64 = 0;
    for (index, &byte) in buf.iter().take(MAX_LEN).enumerate() {
        let shift = 7 * index as u32;
        if index == MAX_LEN - 1 && byte > 0x01 {
            return Err(VarintError::Overlong);
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((unzigzag(value), index + 1));
        }
    }
    if buf.len() >= MAX_LEN {
        Err(VarintError::Overlong)
    } else {
        Err(VarintError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (
                i64::MAX,
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
            (
                i64::MIN,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            encode(value, &mut out);
            assert_eq!(out, bytes, "encoding of {value}");
            assert_eq!(encoded_len(value), bytes.len());
            assert_eq!(decode(bytes), Ok((value, bytes.len())));
        }
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        assert_eq!(decode(&[]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0xff; 11]), Err(VarintError::Overlong));
        let mut tenth_too_big = [0xff_u8; 10];
        tenth_too_big[9] = 0x02;
        assert_eq!(decode(&tenth_too_big), Err(VarintError::Overlong));
    }

    proptest! {
        #[test]
        fn round_trip(value: i64, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = Vec::new();
            encode(value, &mut out);
            prop_assert_eq!(out.len(), encoded_len(value));
            let used = out.len();
            out.extend_from_slice(&tail);
            prop_assert_eq!(decode(&out), Ok((value, used)));
        }
    }
}
