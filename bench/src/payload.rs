//! The bench header written at the start of every message value.
//!
//! Layout (big-endian, 28 bytes): intended send time in wall-clock microseconds (u64), producer
//! index (u32), per-producer sequence number (u64), run id (u64). The rest of the value is the
//! workload's payload bytes. The run id lets a consumer ignore records that another run left in
//! the same topic.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes taken by the bench header at the front of each value.
pub const HEADER_LEN: usize = 28;

/// What a consumer learns from one record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// When the message was meant to be sent (wall-clock micros), the CO-correct start time.
    pub intended_micros: u64,
    /// Which producer (0-based, global across the run) wrote it.
    pub producer: u32,
    /// The producer's sequence number of this message, from 0.
    pub sequence: u64,
    /// The run that wrote it.
    pub run_id: u64,
}

impl Header {
    /// Parses the header; `None` if the value is too short to be one of ours.
    pub fn parse(value: &[u8]) -> Option<Header> {
        if value.len() < HEADER_LEN {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&value[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut p = [0u8; 4];
        p.copy_from_slice(&value[8..12]);
        Some(Header {
            intended_micros: u64_at(0),
            producer: u32::from_be_bytes(p),
            sequence: u64_at(12),
            run_id: u64_at(20),
        })
    }
}

/// Builds message values of a fixed size from a payload template.
#[derive(Debug, Clone)]
pub struct ValueBuilder {
    template: Bytes,
    size: usize,
    run_id: u64,
    producer: u32,
}

impl ValueBuilder {
    /// `size` is clamped up to [`HEADER_LEN`]; the template is repeated to fill the value.
    pub fn new(template: Bytes, size: usize, run_id: u64, producer: u32) -> Self {
        let template = if template.is_empty() {
            Bytes::from_static(&[0u8])
        } else {
            template
        };
        ValueBuilder {
            template,
            size: size.max(HEADER_LEN),
            run_id,
            producer,
        }
    }

    /// The value size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// One value stamped with the intended send time and sequence number.
    pub fn build(&self, intended_micros: u64, sequence: u64) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.size);
        buf.put_u64(intended_micros);
        buf.put_u32(self.producer);
        buf.put_u64(sequence);
        buf.put_u64(self.run_id);
        let mut remaining = self.size - HEADER_LEN;
        // Offset into the template by the sequence so compressed runs do not see one value
        // repeated verbatim (which would flatter the compression ratio).
        let mut at = (sequence as usize * 131) % self.template.len();
        while remaining > 0 {
            let n = remaining.min(self.template.len() - at);
            buf.put_slice(&self.template[at..at + n]);
            remaining -= n;
            at = 0;
        }
        debug_assert_eq!(buf.len(), self.size);
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_size_is_exact() {
        let vb = ValueBuilder::new(Bytes::from_static(b"abc"), 1024, 77, 5);
        let v = vb.build(1_700_000_000_000_000, 42);
        assert_eq!(v.len(), 1024);
        let h = Header::parse(&v).unwrap();
        assert_eq!(
            h,
            Header {
                intended_micros: 1_700_000_000_000_000,
                producer: 5,
                sequence: 42,
                run_id: 77
            }
        );
        assert!(Header::parse(&v[..HEADER_LEN - 1]).is_none());
    }
}
