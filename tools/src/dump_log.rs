//! `sluicectl dump-log`: batches of a segment, CRC checks, index/timeindex consistency.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use sluice::storage::offset_index::OffsetIndex;
use sluice::storage::record_batch::{compute_crc, uncompressed_records, BatchHeader, Compression};
use sluice::storage::segment_names::{parse_segment_name, INDEX_SUFFIX, TIME_INDEX_SUFFIX};
use sluice::storage::time_index::TimeIndex;
use sluice::storage::txn_index::{self, parse_marker, TXN_INDEX_SUFFIX};

use crate::output::{write_json, Format};

/// Arguments of `dump-log`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A segment file: `<20-digit base offset>.log`.
    pub segment: PathBuf,
    /// Also check the `.index`, `.timeindex` and `.txnindex` files against the log.
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

/// A batch as `--output json` shows it.
#[derive(Debug, Serialize)]
pub struct BatchJson {
    base_offset: i64,
    last_offset: i64,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    timestamp_type: String,
    size: usize,
    position: usize,
    compression: String,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    is_transactional: bool,
    is_control: bool,
    /// Transaction marker of a control batch: "COMMIT" or "ABORT" with the coordinator epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    end_txn_marker: Option<(String, i32)>,
    crc: u32,
    crc_ok: bool,
    /// `--deep`, uncompressed batches: (offset, timestamp) of each record.
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<Vec<[i64; 2]>>,
}

/// What `dump-log` found: the text lines as printed, and the same facts for `--output json`.
#[derive(Debug, Serialize)]
pub struct Report {
    segment: String,
    base_offset: i64,
    size: usize,
    batches: Vec<BatchJson>,
    offset_index_entries: Option<usize>,
    time_index_entries: Option<usize>,
    /// `--index`: the `.txnindex` entries as [producer id, first offset, last offset, LSO].
    #[serde(skip_serializing_if = "Option::is_none")]
    aborted_transactions: Option<Vec<[i64; 4]>>,
    /// Every inconsistency, in the order found.
    problems: Vec<String>,
    ok: bool,
    #[serde(skip)]
    text: Vec<String>,
}

impl Report {
    fn line(&mut self, s: String) {
        self.text.push(s);
    }

    /// A line that is also an inconsistency.
    fn problem(&mut self, s: String) {
        self.problems.push(s.trim().to_string());
        self.text.push(s);
        self.ok = false;
    }

    /// Writes the report as text (the format `run` always printed).
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for l in &self.text {
            writeln!(out, "{l}")?;
        }
        Ok(())
    }

    /// False when the segment or its indexes are inconsistent.
    pub fn ok(&self) -> bool {
        self.ok
    }

    /// The inconsistencies found.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// Runs the command; `Ok(false)` means the segment or its indexes are inconsistent.
pub fn run(args: &Args, format: Format, out: &mut impl Write) -> anyhow::Result<bool> {
    let report = inspect(args)?;
    match format {
        Format::Table => report.write_text(out)?,
        Format::Json => write_json(out, &report)?,
    }
    Ok(report.ok)
}

/// Reads the segment (and with `--index` its indexes) and checks them.
pub fn inspect(args: &Args) -> anyhow::Result<Report> {
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
    let mut r = Report {
        segment: args.segment.display().to_string(),
        base_offset,
        size: data.len(),
        batches: Vec::new(),
        offset_index_entries: None,
        time_index_entries: None,
        aborted_transactions: None,
        problems: Vec::new(),
        ok: true,
        text: Vec::new(),
    };
    r.line(format!("Dumping {}", args.segment.display()));
    r.line(format!(
        "Base offset: {base_offset}, size: {} bytes",
        data.len()
    ));
    let mut batches = Vec::new();
    let mut pos = 0usize;
    let mut expected_next = base_offset;
    while pos < data.len() {
        let h = match BatchHeader::parse(&data[pos..]) {
            Ok(h) => h,
            Err(e) => {
                r.problem(format!("INVALID at position {pos}: {e}"));
                break;
            }
        };
        if pos + h.size() > data.len() {
            r.problem(format!(
                "INVALID at position {pos}: batch of {} bytes runs past the end of the file",
                h.size()
            ));
            break;
        }
        let bytes = &data[pos..pos + h.size()];
        let crc_ok = compute_crc(bytes) == h.crc;
        let line = format!(
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
        );
        if crc_ok {
            r.line(line);
        } else {
            r.problem(line);
        }
        if h.base_offset < expected_next {
            r.problem(format!(
                "  INCONSISTENT: base offset {} below the expected {expected_next}",
                h.base_offset
            ));
        }
        if let Err(e) = h.validate_counts() {
            r.problem(format!("  INVALID: {e}"));
        }
        let mut end_txn_marker = None;
        if h.is_control() && crc_ok {
            match parse_marker(bytes, &h) {
                Ok(Some(m)) => {
                    let kind = if m.aborted { "ABORT" } else { "COMMIT" };
                    r.line(format!(
                        "  | endTxnMarker: {kind} coordinatorEpoch: {}",
                        m.coordinator_epoch
                    ));
                    end_txn_marker = Some((kind.to_string(), m.coordinator_epoch));
                }
                Ok(None) => {}
                Err(e) if h.is_transactional() => {
                    r.problem(format!("  INVALID transaction marker: {e}"))
                }
                Err(_) => {}
            }
        }
        let mut records = None;
        if args.deep {
            if h.compression() == Compression::None {
                match uncompressed_records(bytes, &h) {
                    Ok(recs) => {
                        let mut list = Vec::new();
                        for rec in recs {
                            let offset = h.base_offset + i64::from(rec.offset_delta);
                            let ts = h.base_timestamp.saturating_add(rec.timestamp_delta);
                            r.line(format!("  | offset: {offset} timestamp: {ts}"));
                            list.push([offset, ts]);
                        }
                        records = Some(list);
                    }
                    Err(e) => r.problem(format!("  INVALID records: {e}")),
                }
            } else {
                r.line(format!(
                    "  | {} records compressed with {} (not decompressed)",
                    h.records_count,
                    h.compression()
                ));
            }
        }
        r.batches.push(BatchJson {
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            count: h.records_count,
            base_timestamp: h.base_timestamp,
            max_timestamp: h.max_timestamp,
            timestamp_type: format!("{:?}", h.timestamp_type()),
            size: h.size(),
            position: pos,
            compression: h.compression().to_string(),
            partition_leader_epoch: h.partition_leader_epoch,
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            base_sequence: h.base_sequence,
            is_transactional: h.is_transactional(),
            is_control: h.is_control(),
            end_txn_marker,
            crc: h.crc,
            crc_ok,
            records,
        });
        expected_next = h.next_offset();
        batches.push(Found {
            position: pos as u64,
            header: h,
        });
        pos += h.size();
    }
    if args.index {
        check_indexes(
            &args.segment,
            base_offset,
            data.len() as u64,
            &batches,
            &mut r,
        );
        check_txn_index(&args.segment, base_offset, expected_next, &mut r);
    }
    let verdict = if r.ok {
        "Segment is consistent."
    } else {
        "Segment is INCONSISTENT."
    };
    r.line(verdict.to_string());
    Ok(r)
}

/// Checks the `.txnindex` (if any): a readable file whose every entry names an ABORT marker
/// of its producer in this segment.
fn check_txn_index(segment: &Path, base_offset: i64, next_offset: i64, r: &mut Report) {
    let path = sibling(segment, TXN_INDEX_SUFFIX);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.line("No .txnindex (no aborted transaction in this segment)".to_string());
            r.aborted_transactions = Some(Vec::new());
            return;
        }
        Err(e) => {
            r.problem(format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let entries = match txn_index::decode(&bytes, base_offset, next_offset) {
        Ok(e) => e,
        Err(e) => {
            r.problem(format!("INVALID {}: {e}", path.display()));
            return;
        }
    };
    r.line(format!(
        "Transaction index: {} aborted transactions",
        entries.len()
    ));
    let mut list = Vec::with_capacity(entries.len());
    for e in &entries {
        r.line(format!(
            "  | producerId: {} firstOffset: {} lastOffset: {} lastStableOffset: {}",
            e.producer_id, e.first_offset, e.last_offset, e.last_stable_offset
        ));
        let marker = r.batches.iter().find(|b| b.base_offset == e.last_offset);
        let ok = marker.is_some_and(|b| {
            b.producer_id == e.producer_id
                && b.end_txn_marker.as_ref().is_some_and(|(k, _)| k == "ABORT")
        });
        if !ok {
            r.problem(format!(
                "  INCONSISTENT: no ABORT marker of producer {} at offset {}",
                e.producer_id, e.last_offset
            ));
        }
        list.push([
            e.producer_id,
            e.first_offset,
            e.last_offset,
            e.last_stable_offset,
        ]);
    }
    r.aborted_transactions = Some(list);
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
    r: &mut Report,
) {
    let index_path = sibling(segment, INDEX_SUFFIX);
    match std::fs::read(&index_path) {
        Err(e) => r.problem(format!(
            "Offset index {}: cannot read: {e}",
            index_path.display()
        )),
        Ok(bytes) => match OffsetIndex::decode(base_offset, &bytes, usize::MAX, log_size.max(1)) {
            Err(e) => r.problem(format!(
                "Offset index {}: INVALID: {e}",
                index_path.display()
            )),
            Ok(idx) => {
                r.offset_index_entries = Some(idx.len());
                r.line(format!(
                    "Offset index {}: {} entries",
                    index_path.display(),
                    idx.len()
                ));
                for i in 0..idx.len() {
                    let Some((offset, position)) = idx.entry(i) else {
                        continue;
                    };
                    match batches.iter().find(|b| b.position == u64::from(position)) {
                        Some(b) if b.header.last_offset() == offset => {}
                        Some(b) => r.problem(format!(
                            "  MISMATCH entry {i}: offset {offset} -> position {position}, but the batch there ends at {}",
                            b.header.last_offset()
                        )),
                        None => r.problem(format!(
                            "  MISMATCH entry {i}: position {position} is not a batch start"
                        )),
                    }
                }
            }
        },
    }
    let time_path = sibling(segment, TIME_INDEX_SUFFIX);
    match std::fs::read(&time_path) {
        Err(e) => r.problem(format!(
            "Time index {}: cannot read: {e}",
            time_path.display()
        )),
        Ok(bytes) => match TimeIndex::decode(base_offset, &bytes, usize::MAX) {
            Err(e) => r.problem(format!("Time index {}: INVALID: {e}", time_path.display())),
            Ok(tidx) => {
                r.time_index_entries = Some(tidx.len());
                r.line(format!(
                    "Time index {}: {} entries",
                    time_path.display(),
                    tidx.len()
                ));
                for i in 0..tidx.len() {
                    let Some((ts, offset)) = tidx.entry(i) else {
                        continue;
                    };
                    match batch_holding(batches, offset) {
                        Some(b) if b.header.max_timestamp == ts => {}
                        Some(b) => r.problem(format!(
                            "  MISMATCH entry {i}: timestamp {ts} at offset {offset}, but that batch's max timestamp is {}",
                            b.header.max_timestamp
                        )),
                        None => r.problem(format!(
                            "  MISMATCH entry {i}: offset {offset} is not in the log"
                        )),
                    }
                }
            }
        },
    }
}
