//! `sluicectl dump-log`: batches of a segment, CRC checks, index/timeindex consistency.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sluice::storage::offset_index::OffsetIndex;
use sluice::storage::record_batch::{compute_crc, uncompressed_records, BatchHeader, Compression};
use sluice::storage::segment_names::{parse_segment_name, INDEX_SUFFIX, TIME_INDEX_SUFFIX};
use sluice::storage::time_index::TimeIndex;

/// Arguments of `dump-log`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A segment file: `<20-digit base offset>.log`.
    pub segment: PathBuf,
    /// Also check the `.index` and `.timeindex` files against the log.
    #[arg(long)]
    pub index: bool,
    /// Print every record of uncompressed batches (offset, timestamp).
    #[arg(long)]
    pub deep: bool,
}

/// One batch found in the file.
struct Found {
    position: u64,
    header: BatchHeader,
}

/// Runs the command; `Ok(false)` means the segment or its indexes are inconsistent.
pub fn run(args: &Args, out: &mut impl Write) -> anyhow::Result<bool> {
    let name = args
        .segment
        .file_name()
        .and_then(|n| n.to_str())
        .context("segment path has no file name")?;
    let Some((base_offset, "log")) = parse_segment_name(name) else {
        bail!(
            "{} is not a segment file (<20-digit offset>.log)",
            args.segment.display()
        );
    };
    let data = std::fs::read(&args.segment)
        .with_context(|| format!("reading {}", args.segment.display()))?;
    writeln!(out, "Dumping {}", args.segment.display())?;
    writeln!(
        out,
        "Base offset: {base_offset}, size: {} bytes",
        data.len()
    )?;
    let mut ok = true;
    let mut batches = Vec::new();
    let mut pos = 0usize;
    let mut expected_next = base_offset;
    while pos < data.len() {
        let h = match BatchHeader::parse(&data[pos..]) {
            Ok(h) => h,
            Err(e) => {
                writeln!(out, "INVALID at position {pos}: {e}")?;
                ok = false;
                break;
            }
        };
        if pos + h.size() > data.len() {
            writeln!(
                out,
                "INVALID at position {pos}: batch of {} bytes runs past the end of the file",
                h.size()
            )?;
            ok = false;
            break;
        }
        let bytes = &data[pos..pos + h.size()];
        let crc_ok = compute_crc(bytes) == h.crc;
        ok &= crc_ok;
        writeln!(
            out,
            "baseOffset: {} lastOffset: {} count: {} baseTimestamp: {} maxTimestamp: {} timestampType: {:?} \
             size: {} position: {} compression: {} partitionLeaderEpoch: {} producerId: {} producerEpoch: {} \
             baseSequence: {} isTransactional: {} isControl: {} crc: {:#010x} ({})",
            h.base_offset,
            h.last_offset(),
            h.records_count,
            h.base_timestamp,
            h.max_timestamp,
            h.timestamp_type(),
            h.size(),
            pos,
            h.compression(),
            h.partition_leader_epoch,
            h.producer_id,
            h.producer_epoch,
            h.base_sequence,
            h.is_transactional(),
            h.is_control(),
            h.crc,
            if crc_ok { "ok" } else { "BAD" }
        )?;
        if h.base_offset < expected_next {
            writeln!(
                out,
                "  INCONSISTENT: base offset {} below the expected {expected_next}",
                h.base_offset
            )?;
            ok = false;
        }
        if let Err(e) = h.validate_counts() {
            writeln!(out, "  INVALID: {e}")?;
            ok = false;
        }
        if args.deep {
            if h.compression() == Compression::None {
                match uncompressed_records(bytes, &h) {
                    Ok(records) => {
                        for r in records {
                            writeln!(
                                out,
                                "  | offset: {} timestamp: {}",
                                h.base_offset + i64::from(r.offset_delta),
                                h.base_timestamp.saturating_add(r.timestamp_delta)
                            )?;
                        }
                    }
                    Err(e) => {
                        writeln!(out, "  INVALID records: {e}")?;
                        ok = false;
                    }
                }
            } else {
                writeln!(
                    out,
                    "  | {} records compressed with {} (not decompressed)",
                    h.records_count,
                    h.compression()
                )?;
            }
        }
        expected_next = h.next_offset();
        batches.push(Found {
            position: pos as u64,
            header: h,
        });
        pos += h.size();
    }
    if args.index {
        ok &= check_indexes(&args.segment, base_offset, data.len() as u64, &batches, out)?;
    }
    writeln!(
        out,
        "{}",
        if ok {
            "Segment is consistent."
        } else {
            "Segment is INCONSISTENT."
        }
    )?;
    Ok(ok)
}

fn sibling(segment: &Path, suffix: &str) -> PathBuf {
    segment.with_extension(suffix)
}

fn batch_holding(batches: &[Found], offset: i64) -> Option<&Found> {
    let i = batches.partition_point(|b| b.header.last_offset() < offset);
    batches.get(i).filter(|b| b.header.base_offset <= offset)
}

fn check_indexes(
    segment: &Path,
    base_offset: i64,
    log_size: u64,
    batches: &[Found],
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let mut ok = true;
    let index_path = sibling(segment, INDEX_SUFFIX);
    match std::fs::read(&index_path) {
        Err(e) => {
            writeln!(
                out,
                "Offset index {}: cannot read: {e}",
                index_path.display()
            )?;
            ok = false;
        }
        Ok(bytes) => {
            match OffsetIndex::decode(base_offset, &bytes, usize::MAX, log_size.max(1)) {
                Err(e) => {
                    writeln!(out, "Offset index {}: INVALID: {e}", index_path.display())?;
                    ok = false;
                }
                Ok(idx) => {
                    writeln!(
                        out,
                        "Offset index {}: {} entries",
                        index_path.display(),
                        idx.len()
                    )?;
                    for i in 0..idx.len() {
                        let Some((offset, position)) = idx.entry(i) else {
                            continue;
                        };
                        let at = batches.iter().find(|b| b.position == u64::from(position));
                        match at {
                            Some(b) if b.header.last_offset() == offset => {}
                            Some(b) => {
                                writeln!(
                                out,
                                "  MISMATCH entry {i}: offset {offset} -> position {position}, but the batch there ends at {}",
                                b.header.last_offset()
                            )?;
                                ok = false;
                            }
                            None => {
                                writeln!(out, "  MISMATCH entry {i}: position {position} is not a batch start")?;
                                ok = false;
                            }
                        }
                    }
                }
            }
        }
    }
    let time_path = sibling(segment, TIME_INDEX_SUFFIX);
    match std::fs::read(&time_path) {
        Err(e) => {
            writeln!(out, "Time index {}: cannot read: {e}", time_path.display())?;
            ok = false;
        }
        Ok(bytes) => match TimeIndex::decode(base_offset, &bytes, usize::MAX) {
            Err(e) => {
                writeln!(out, "Time index {}: INVALID: {e}", time_path.display())?;
                ok = false;
            }
            Ok(tidx) => {
                writeln!(
                    out,
                    "Time index {}: {} entries",
                    time_path.display(),
                    tidx.len()
                )?;
                for i in 0..tidx.len() {
                    let Some((ts, offset)) = tidx.entry(i) else {
                        continue;
                    };
                    match batch_holding(batches, offset) {
                        Some(b) if b.header.max_timestamp == ts => {}
                        Some(b) => {
                            writeln!(
                                out,
                                "  MISMATCH entry {i}: timestamp {ts} at offset {offset}, but that batch's max timestamp is {}",
                                b.header.max_timestamp
                            )?;
                            ok = false;
                        }
                        None => {
                            writeln!(
                                out,
                                "  MISMATCH entry {i}: offset {offset} is not in the log"
                            )?;
                            ok = false;
                        }
                    }
                }
            }
        },
    }
    Ok(ok)
}
