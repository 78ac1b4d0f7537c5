//! `sluicectl produce`: stdin lines to records, like kafka-console-producer.sh.
//!
//! A reader thread feeds lines through a channel so that batches go out when they fill up or
//! when stdin pauses for the linger time: a shell pipe gets batching, an interactive user
//! sees each line sent at once.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::records::Compression;
use serde::Serialize;
use sluice::partitioner::partition_for_key;

use super::parse_kv;
use crate::client::records::{encode_batch, parse_compression, OutRecord};
use crate::client::{ClientError, Cluster, TopicMeta};
use crate::{Ctx, UsageError};

/// Records per batch before it is sent without waiting for the linger time.
const BATCH_RECORDS: usize = 500;
/// Bytes per batch before it is sent.
const BATCH_BYTES: usize = 512 * 1024;
/// How long a partial batch waits for more lines.
const LINGER: Duration = Duration::from_millis(5);
/// Attempts for a batch whose leader moved or is being elected.
const SEND_ATTEMPTS: u32 = 5;

/// Input line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LineFormat {
    /// The line is the value (or key, separator, value with --key-separator).
    Plain,
    /// JSON objects: {"key", "value", "headers", "partition"}.
    Json,
}

/// Arguments of `produce`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topic to write to.
    pub topic: String,
    /// Write every record to this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Split plain lines at the first occurrence into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Header added to every record, repeatable: --header source=cli.
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// Input format.
    #[arg(long, value_enum, default_value = "plain")]
    pub format: LineFormat,
    /// Acknowledgements: all (-1), 1 or 0.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: i16,
    /// Batch compression: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "all" | "-1" => Ok(-1),
        "1" => Ok(1),
        "0" => Ok(0),
        _ => Err(format!("acks must be all, -1, 1 or 0, not '{s}'")),
    }
}

/// A JSON input line.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
    #[serde(default)]
    partition: Option<i32>,
}

/// What was produced, for `--output json`.
#[derive(Debug, Default, Serialize)]
struct Summary {
    topic: String,
    records: u64,
    batches: u64,
    /// partition -> [first offset, last offset] written (empty with acks=0).
    offsets: BTreeMap<i32, [i64; 2]>,
}

/// A line turned into a record and its explicit partition, if any.
fn parse_line(
    args: &Args,
    fixed_headers: &[(String, Option<Bytes>)],
    line: &str,
    line_no: u64,
) -> anyhow::Result<(OutRecord, Option<i32>)> {
    match args.format {
        LineFormat::Plain => {
            let (key, value) = match &args.key_separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(Bytes::from(k.to_string())), v.to_string()),
                    None => anyhow::bail!("line {line_no} has no key separator '{sep}': {line:?}"),
                },
                None => (None, line.to_string()),
            };
            Ok((
                OutRecord {
                    key,
                    value: Some(Bytes::from(value)),
                    headers: fixed_headers.to_vec(),
                },
                None,
            ))
        }
        LineFormat::Json => {
            let j: JsonLine = serde_json::from_str(line).map_err(|e| {
                anyhow::anyhow!("line {line_no} is not a record object ({e}): {line}")
            })?;
            let mut headers = fixed_headers.to_vec();
            headers.extend(j.headers.into_iter().map(|(k, v)| (k, v.map(Bytes::from))));
            Ok((
                OutRecord {
                    key: j.key.map(Bytes::from),
                    value: j.value.map(Bytes::from),
                    headers,
                },
                j.partition,
            ))
        }
    }
}

/// Per-partition batches being filled and the sticky partition for unkeyed records.
struct Producer<'a> {
    args: &'a Args,
    cluster: Cluster,
    meta: TopicMeta,
    pending: BTreeMap<i32, (Vec<OutRecord>, usize)>,
    sticky: usize,
    summary: Summary,
}

impl Producer<'_> {
    fn partition_for(&self, rec: &OutRecord, explicit: Option<i32>) -> i32 {
        let n = self.meta.partitions.len().max(1) as u32;
        if let Some(p) = self.args.partition.or(explicit) {
            return p;
        }
        match &rec.key {
            Some(k) => partition_for_key(k, n) as i32,
            // Sticky (KIP-480): unkeyed records fill one partition's batch, then move on.
            None => self
                .meta
                .partitions
                .get(self.sticky % n as usize)
                .map_or(-1, |p| p.partition),
        }
    }

    fn add(&mut self, rec: OutRecord, explicit: Option<i32>) -> anyhow::Result<()> {
        let p = self.partition_for(&rec, explicit);
        if !self.meta.partitions.iter().any(|m| m.partition == p) {
            return Err(ClientError::Kafka {
                what: format!(
                    "partition {}-{p} (the topic has {} partitions)",
                    self.meta.name,
                    self.meta.partitions.len()
                ),
                code: 3,
                message: None,
            }
            .into());
        }
        let size = rec.key.as_ref().map_or(0, |k| k.len())
            + rec.value.as_ref().map_or(0, |v| v.len())
            + rec
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>();
        let (recs, bytes) = self.pending.entry(p).or_default();
        recs.push(rec);
        *bytes += size;
        if recs.len() >= BATCH_RECORDS || *bytes >= BATCH_BYTES {
            self.send(p)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let ps: Vec<i32> = self.pending.keys().copied().collect();
        for p in ps {
            self.send(p)?;
        }
        Ok(())
    }

    fn send(&mut self, p: i32) -> anyhow::Result<()> {
        let Some((recs, _)) = self.pending.remove(&p) else {
            return Ok(());
        };
        if recs.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let batch = encode_batch(&recs, self.args.compression, now)?;
        let mut attempt = 0;
        let base = loop {
            attempt += 1;
            match self
                .cluster
                .produce(&self.meta, p, batch.clone(), self.args.acks)
            {
                Ok(b) => break b,
                // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, or the leader went away:
                // refresh metadata and retry. (With acks=all a retried batch may be stored
                // twice if the first attempt was written; this producer is not idempotent.)
                Err(e)
                    if attempt < SEND_ATTEMPTS
                        && (matches!(e.kafka_code(), Some(5) | Some(6)) || e.is_unreachable()) =>
                {
                    if e.is_unreachable() {
                        if let Ok(leader) = Cluster::leader_of(&self.meta, p) {
                            self.cluster.forget(leader);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                    self.meta = self.cluster.topic(&self.meta.name)?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let n = recs.len() as i64;
        self.summary.records += n as u64;
        self.summary.batches += 1;
        if let Some(base) = base {
            let e = self.summary.offsets.entry(p).or_insert([base, base]);
            e[1] = base + n - 1;
        }
        if recs.iter().any(|r| r.key.is_none()) {
            self.sticky = self.sticky.wrapping_add(1);
        }
        Ok(())
    }
}

/// Runs `produce`.
pub fn run(ctx: &Ctx, args: Args, out: &mut impl Write) -> anyhow::Result<()> {
    if args.format == LineFormat::Json && args.key_separator.is_some() {
        return Err(UsageError("--key-separator applies to --format plain only".into()).into());
    }
    let fixed_headers = args
        .headers
        .iter()
        .map(|h| parse_kv(h).map(|(k, v)| (k, Some(Bytes::from(v)))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cluster = ctx.cluster()?;
    let meta = cluster.topic(&args.topic)?;
    let mut producer = Producer {
        args: &args,
        cluster,
        sticky: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize),
        meta,
        pending: BTreeMap::new(),
        summary: Summary {
            topic: args.topic.clone(),
            ..Summary::default()
        },
    };

    let (tx, rx) = sync_channel::<std::io::Result<String>>(4 * BATCH_RECORDS);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut line_no = 0u64;
    loop {
        let next = if producer.pending.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(LINGER)
        };
        match next {
            Ok(line) => {
                let line = line.map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
                line_no += 1;
                if args.format == LineFormat::Json && line.trim().is_empty() {
                    continue;
                }
                match parse_line(&args, &fixed_headers, &line, line_no) {
                    Ok((rec, explicit)) => producer.add(rec, explicit)?,
                    Err(e) => {
                        // The lines before the bad one are sent, as a pipeline would expect.
                        producer.flush()?;
                        return Err(e);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => producer.flush()?,
            Err(RecvTimeoutError::Disconnected) => {
                producer.flush()?;
                break;
            }
        }
    }
    let s = &producer.summary;
    match ctx.format {
        crate::output::Format::Json => crate::output::write_json(out, s)?,
        crate::output::Format::Table => eprintln!(
            "Produced {} records to {} in {} batches.",
            s.records, s.topic, s.batches
        ),
    }
    Ok(())
}
