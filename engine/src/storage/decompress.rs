//! Bounded decompression of a RecordBatch's records section (sans-IO: bytes in, bytes out).
//!
//! The log never decompresses on the produce or fetch path: batches are stored and served as
//! the producer sent them. Only admin lookups that need record-level answers (ListOffsets by
//! timestamp) decompress, as Kafka does. Every codec is read through a hard output limit so a
//! small hostile batch (a "zip bomb") cannot make the broker allocate without bound.

use std::io::Read;

use thiserror::Error;

use super::record_batch::Compression;

/// xerial snappy-java stream header: magic, version 1, minimum compatible version 1.
const XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// Why a records section could not be decompressed.
#[derive(Debug, Error)]
pub enum DecompressError {
    /// The output would exceed the caller's limit.
    #[error("decompressed records exceed {limit} bytes")]
    TooLarge {
        /// The limit that was hit.
        limit: usize,
    },
    /// The codec id is not one Kafka defines.
    #[error("unsupported compression codec {0}")]
    Unsupported(Compression),
    /// The compressed bytes are malformed for the codec.
    #[error("{codec} decompression failed: {reason}")]
    Corrupt {
        /// Codec in use.
        codec: Compression,
        /// Decoder's message.
        reason: String,
    },
}

/// Decompresses `input` (the bytes after a batch header) with `codec`, producing at most
/// `limit` bytes; `Compression::None` returns the input unchanged (if within the limit).
pub fn decompress_records(
    codec: Compression,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |e: &dyn std::fmt::Display| DecompressError::Corrupt {
        codec,
        reason: e.to_string(),
    };
    match codec {
        Compression::None => {
            if input.len() > limit {
                return Err(DecompressError::TooLarge { limit });
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(input), codec, limit),
        Compression::Zstd => {
            let d = zstd::stream::read::Decoder::new(input).map_err(|e| corrupt(&e))?;
            read_bounded(d, codec, limit)
        }
        Compression::Lz4 => {
            let d = lz4::Decoder::new(input).map_err(|e| corrupt(&e))?;
            read_bounded(d, codec, limit)
        }
        Compression::Snappy => snappy(input, limit),
        Compression::Unknown(_) => Err(DecompressError::Unsupported(codec)),
    }
}

/// Reads a streaming decoder to its end, failing once more than `limit` bytes come out.
fn read_bounded(
    reader: impl Read,
    codec: Compression,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| DecompressError::Corrupt {
            codec,
            reason: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    Ok(out)
}

/// Kafka's Java clients write snappy in xerial framing (header, then `[u32 length][raw
/// block]` chunks); other clients (librdkafka can) write one raw block. Each raw block states
/// its decompressed length up front, which is checked against the budget before allocating.
fn snappy(input: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let Some(mut rest) = input.strip_prefix(&XERIAL_MAGIC[..]) else {
        snappy_block(input, &mut out, limit)?;
        return Ok(out);
    };
    while !rest.is_empty() {
        let (len, tail) = match rest.split_first_chunk::<4>() {
            Some((len, tail)) => (u32::from_be_bytes(*len) as usize, tail),
            None => return Err(snappy_corrupt("truncated xerial chunk length")),
        };
        if len > tail.len() {
            return Err(snappy_corrupt("xerial chunk runs past the end"));
        }
        let (block, tail) = tail.split_at(len);
        snappy_block(block, &mut out, limit)?;
        rest = tail;
    }
    Ok(out)
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), DecompressError> {
    let n = snap::raw::decompress_len(block).map_err(|e| snappy_corrupt(&e.to_string()))?;
    let start = out.len();
    if n > limit.saturating_sub(start) {
        return Err(DecompressError::TooLarge { limit });
    }
    out.resize(start + n, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| snappy_corrupt(&e.to_string()))?;
    Ok(())
}

fn snappy_corrupt(reason: &str) -> DecompressError {
    DecompressError::Corrupt {
        codec: Compression::Snappy,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_round_trip_and_bomb_is_bounded() {
        let data = vec![7u8; 1 << 20];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&data).unwrap();
        let compressed = enc.finish().unwrap();
        assert!(compressed.len() < 8 << 10);
        let out = decompress_records(Compression::Gzip, &compressed, 1 << 20).unwrap();
        assert_eq!(out, data);
        let err = decompress_records(Compression::Gzip, &compressed, (1 << 20) - 1).unwrap_err();
        assert!(matches!(err, DecompressError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn zstd_and_lz4_bombs_are_bounded() {
        let data = vec![0u8; 4 << 20];
        let z = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert!(matches!(
            decompress_records(Compression::Zstd, &z, 1 << 20),
            Err(DecompressError::TooLarge { .. })
        ));
        let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
        e.write_all(&data).unwrap();
        let (l, r) = e.finish();
        r.unwrap();
        assert!(matches!(
            decompress_records(Compression::Lz4, &l, 1 << 20),
            Err(DecompressError::TooLarge { .. })
        ));
        assert_eq!(
            decompress_records(Compression::Lz4, &l, 4 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn snappy_raw_and_xerial_and_lying_length() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            decompress_records(Compression::Snappy, &raw, 1 << 20).unwrap(),
            data
        );
        let mut xerial = XERIAL_MAGIC.to_vec();
        for chunk in data.chunks(32 << 10) {
            let b = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            xerial.extend_from_slice(&(b.len() as u32).to_be_bytes());
            xerial.extend_from_slice(&b);
        }
        assert_eq!(
            decompress_records(Compression::Snappy, &xerial, 1 << 20).unwrap(),
            data
        );
        // A block header claiming 4 GiB must be refused before any allocation.
        let lying = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(decompress_records(Compression::Snappy, &lying, 1 << 20).is_err());
        assert!(decompress_records(Compression::Gzip, b"not gzip", 1 << 20).is_err());
        assert!(decompress_records(Compression::Unknown(6), b"", 1 << 20).is_err());
    }
}
