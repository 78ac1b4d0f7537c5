//! `sluicectl consume`: records to stdout, like kafka-console-consumer.sh.
//!
//! Without `--group` nothing is committed. With `--group` the tool acts as a consumer with
//! manually assigned partitions (the Java consumer's `assign()` mode): it starts from the
//! group's committed offsets and commits its position on exit with generation -1, which a
//! coordinator accepts only while the group has no active members.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::groups::{commit_offsets, committed_offsets};
use super::parse_time_ms;
use crate::client::ops::{EARLIEST, LATEST};
use crate::client::records::{decode_records, InRecord};
use crate::client::{ClientError, Cluster};
use crate::{Ctx, UsageError};

/// Longest single long-poll, so the idle timeout and Ctrl-C are noticed promptly.
const POLL_WAIT: Duration = Duration::from_millis(500);

/// Set by SIGINT/SIGTERM: stop reading, commit (with --group), report, exit 0.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C ends the consumer like --max-messages does, so a --group position is committed.
fn install_stop_handler() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and no
        // other code in this process installs handlers for these signals.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Output line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LineFormat {
    /// The value (key, separator, value with --print-key).
    Plain,
    /// One JSON object per record: topic, partition, offset, timestamp, key, value, headers.
    Json,
}

/// Arguments of `consume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topic to read.
    pub topic: String,
    /// Read only this partition (all partitions otherwise).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Start at the log start offset (also where a group without a commit starts).
    #[arg(long, conflicts_with_all = ["offset", "from_timestamp"])]
    pub from_beginning: bool,
    /// Start at this offset in every partition read.
    #[arg(long, conflicts_with = "from_timestamp")]
    pub offset: Option<i64>,
    /// Start at the first record at or after this time (RFC 3339 or epoch ms).
    #[arg(long)]
    pub from_timestamp: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Stop when no record arrived for this long (milliseconds).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "plain")]
    pub format: LineFormat,
    /// Print the key before the value (plain format).
    #[arg(long)]
    pub print_key: bool,
    /// Separator between key and value with --print-key.
    #[arg(long, default_value = "\t")]
    pub key_separator: String,
    /// Start from this group's committed offsets and commit the position on exit.
    #[arg(long)]
    pub group: Option<String>,
}

/// One record as a JSON line.
#[derive(Debug, Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<String>,
    value: Option<String>,
    headers: BTreeMap<String, Option<String>>,
}

fn text(b: &Option<Bytes>) -> Option<String> {
    b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn print(args: &Args, partition: i32, r: &InRecord, out: &mut impl Write) -> anyhow::Result<()> {
    match args.format {
        LineFormat::Plain => {
            let value = text(&r.value).unwrap_or_else(|| "null".into());
            if args.print_key {
                let key = text(&r.key).unwrap_or_else(|| "null".into());
                writeln!(out, "{key}{}{value}", args.key_separator)?;
            } else {
                writeln!(out, "{value}")?;
            }
        }
        LineFormat::Json => {
            let j = JsonRecord {
                topic: &args.topic,
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: text(&r.key),
                value: text(&r.value),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), text(v)))
                    .collect(),
            };
            serde_json::to_writer(&mut *out, &j)?;
            writeln!(out)?;
        }
    }
    // Flush per record so `| head -n 3` and `| grep` see lines as they come.
    out.flush()?;
    Ok(())
}

/// Runs `consume`.
pub fn run(ctx: &Ctx, args: Args, out: &mut impl Write) -> anyhow::Result<()> {
    if args.offset.is_some_and(|o| o < 0) {
        return Err(UsageError("--offset must be >= 0".into()).into());
    }
    let from_ts = args
        .from_timestamp
        .as_deref()
        .map(parse_time_ms)
        .transpose()?;
    let mut cluster = ctx.cluster()?;
    let mut meta = cluster.topic(&args.topic)?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) => {
            Cluster::leader_of(&meta, p)?;
            vec![p]
        }
        None => meta.partitions.iter().map(|p| p.partition).collect(),
    };
    if partitions.is_empty() {
        return Err(
            ClientError::Cluster(format!("topic '{}' has no partitions", args.topic)).into(),
        );
    }
    let reset = if args.from_beginning {
        EARLIEST
    } else {
        LATEST
    };
    let mut positions: BTreeMap<i32, i64> = if let Some(o) = args.offset {
        partitions.iter().map(|&p| (p, o)).collect()
    } else if let Some(ts) = from_ts {
        let found = cluster.list_offsets(&meta, &partitions, ts)?;
        let latest = cluster.list_offsets(&meta, &partitions, LATEST)?;
        partitions
            .iter()
            .map(|&p| {
                let o = found.get(&p).copied().filter(|o| *o >= 0);
                (p, o.or_else(|| latest.get(&p).copied()).unwrap_or(0))
            })
            .collect()
    } else {
        let mut pos = match &args.group {
            Some(g) => committed_offsets(&mut cluster, g, &args.topic, &partitions)?,
            None => BTreeMap::new(),
        };
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !pos.contains_key(p))
            .collect();
        if !missing.is_empty() {
            pos.extend(cluster.list_offsets(&meta, &missing, reset)?);
        }
        pos
    };

    install_stop_handler()?;
    let mut consumed = 0u64;
    let mut last_record = Instant::now();
    let max = args.max_messages.unwrap_or(u64::MAX);
    let idle = args.timeout_ms.map(Duration::from_millis);
    'outer: while consumed < max && !STOP.load(Ordering::Relaxed) {
        let wait = match idle {
            Some(idle) => {
                let left = idle.saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    break;
                }
                left.min(POLL_WAIT)
            }
            None => POLL_WAIT,
        };
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        for (&p, &o) in &positions {
            by_leader
                .entry(Cluster::leader_of(&meta, p)?)
                .or_default()
                .push((p, o));
        }
        let per_leader_wait = wait / by_leader.len().max(1) as u32;
        for (leader, pos) in by_leader {
            let fetched = match cluster.fetch(&args.topic, leader, &pos, per_leader_wait) {
                Ok(f) => f,
                Err(e) => match e.kafka_code() {
                    // OFFSET_OUT_OF_RANGE: reset as auto.offset.reset would.
                    Some(1) => {
                        let ps: Vec<i32> = pos.iter().map(|(p, _)| *p).collect();
                        positions.extend(cluster.list_offsets(&meta, &ps, reset)?);
                        continue;
                    }
                    // Leadership moved: refresh and try again next round.
                    Some(5) | Some(6) => {
                        std::thread::sleep(Duration::from_millis(200));
                        meta = cluster.topic(&args.topic)?;
                        continue;
                    }
                    // The leader went away: its partitions get a new leader in the metadata
                    // (the idle timeout still bounds the wait).
                    _ if e.is_unreachable() => {
                        eprintln!("sluicectl: {e}; refreshing metadata");
                        cluster.forget(leader);
                        std::thread::sleep(Duration::from_millis(500));
                        meta = cluster.topic(&args.topic)?;
                        continue;
                    }
                    _ => return Err(e.into()),
                },
            };
            for f in fetched {
                let Some(position) = positions.get(&f.partition).copied() else {
                    continue;
                };
                let (records, next_offset) = decode_records(&f.records, position)?;
                for r in records {
                    print(&args, f.partition, &r, out)?;
                    positions.insert(f.partition, r.offset + 1);
                    consumed += 1;
                    last_record = Instant::now();
                    if consumed >= max {
                        break 'outer;
                    }
                }
                if let Some(next) = next_offset.filter(|n| *n > position) {
                    positions.insert(f.partition, next);
                }
            }
        }
    }
    if let Some(g) = &args.group {
        commit_offsets(&mut cluster, g, &args.topic, &positions)?;
    }
    eprintln!("Processed a total of {consumed} messages");
    Ok(())
}
