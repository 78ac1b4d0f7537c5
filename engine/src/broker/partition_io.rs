//! Produce, fetch and ListOffsets on the partitions one shard owns, through the replication
//! service: a produce is admitted by the partition's leader state and, with acks=all, answered
//! at the replication mode's commit point; a consumer's fetch reads up to the high watermark
//! and a follower's fetch moves the leader's view of it. The request handlers (`broker::api`)
//! route each partition here on its owner shard.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::BytesMut;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::protocol::{error_code, RecordsSource};
use super::replicas::Replicas;
use super::shard::{now_ms, Partition};
use crate::storage::ReadError;

/// Input for one partition of a produce.
pub struct ProduceIn {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// RecordBatch bytes.
    pub records: Option<BytesMut>,
    /// The request's acks (-1 waits for the commit point).
    pub acks: i16,
    /// The request's timeout_ms (how long acks=all waits).
    pub timeout_ms: i32,
}

/// Result for one partition of a produce.
#[derive(Debug, Clone)]
pub struct ProduceOut {
    /// Kafka error code.
    pub error_code: i16,
    /// Error message for the client.
    pub error_message: Option<String>,
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Append time (LogAppendTime topics) or -1.
    pub log_append_time_ms: i64,
    /// Log start offset after the append.
    pub log_start_offset: i64,
}

/// A produce to one partition, started in order (see [`Shard::produce_local`]).
enum Started {
    Done(ProduceOut),
    Pending(Pin<Box<dyn Future<Output = ProduceOut>>>),
}

fn produce_error(code: i16, msg: Option<String>) -> ProduceOut {
    ProduceOut {
        error_code: code,
        error_message: msg,
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
    }
}

async fn append_one(rs: Rc<Replicas>, partition: Rc<Partition>, item: ProduceIn) -> ProduceOut {
    let Some(records) = item.records.filter(|r| !r.is_empty()) else {
        return produce_error(error_code::CORRUPT_MESSAGE, Some("empty record set".into()));
    };
    let bytes = records.len() as u64;
    let admitted = match super::replicas::before_append(&rs, &item.topic, item.partition, item.acks)
    {
        Ok(a) => a,
        Err((code, msg)) => return produce_error(code, Some(msg)),
    };
    let epoch = admitted.leader_epoch;
    match partition.log.append_leader(records, epoch, now_ms()).await {
        Ok(info) => {
            crate::metrics::record_produce(u64::from(info.record_count), bytes);
            // Wakes long-polling fetches: followers replicate the append, and consumers are
            // woken again when the high watermark covers it.
            partition.appended.notify_waiters();
            let (first, last) = (info.first_offset, info.last_offset);
            let committed = super::replicas::after_append(
                &rs,
                admitted,
                first,
                last,
                item.acks,
                item.timeout_ms,
            )
            .await;
            if let Err((code, msg)) = committed {
                return produce_error(code, Some(msg));
            }
            ProduceOut {
                error_code: error_code::NONE,
                error_message: None,
                base_offset: info.first_offset,
                log_append_time_ms: info.log_append_time_ms,
                log_start_offset: info.log_start_offset,
            }
        }
        Err(e) => {
            debug!(
                topic = item.topic,
                partition = item.partition,
                "append rejected: {e}"
            );
            produce_error(e.kafka_error_code(), Some(e.to_string()))
        }
    }
}

/// Input for one partition of a fetch.
#[derive(Debug, Clone)]
pub struct FetchIn {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset wanted.
    pub offset: i64,
    /// partition_max_bytes.
    pub max_bytes: i32,
    /// The fetching replica's broker id; -1 for a consumer.
    pub replica_id: i32,
    /// current_leader_epoch of the request (-1: not checked).
    pub current_leader_epoch: i32,
    /// last_fetched_epoch of the request (-1: none).
    pub last_fetched_epoch: i32,
    /// The fetching replica's log start offset (Fetch v5+ `log_start_offset`; -1: none).
    pub log_start_offset: i64,
    /// The request's isolation level is READ_COMMITTED: a consumer reads up to the last
    /// stable offset and is told the aborted transactions.
    pub read_committed: bool,
}

/// Result for one partition of a fetch.
#[derive(Debug)]
pub struct FetchOut {
    /// Kafka error code.
    pub error_code: i16,
    /// High watermark.
    pub high_watermark: i64,
    /// Last stable offset (the high watermark when no transaction is undecided).
    pub last_stable_offset: i64,
    /// Log start offset.
    pub log_start_offset: i64,
    /// Records, if any.
    pub records: Option<RecordsSource>,
    /// (producer id, first offset) of the aborted transactions overlapping the records
    /// (read_committed consumers only).
    pub aborted: Vec<(i64, i64)>,
    /// The fetching replica's log diverges: where the leader's log ends for its last epoch
    /// (KIP-320; the follower truncates there, no records are sent).
    pub diverging_epoch: Option<(i32, i64)>,
}

/// Result of a ListOffsets lookup.
#[derive(Debug, Clone, Copy)]
pub struct OffsetOut {
    /// Kafka error code.
    pub error_code: i16,
    /// Timestamp of the found record (-1 for earliest/latest).
    pub timestamp: i64,
    /// The offset (-1 if none).
    pub offset: i64,
}

impl Replicas {
    /// Appends to local partitions this broker leads (acks=-1 waits for the replication rule).
    ///
    /// Two phases. First, in request order, each partition's append is started and polled
    /// once: the log takes its FIFO append lock at the first poll, so this fixes the order of
    /// the offsets (the storage contract: appends to a partition are ordered by call). Then
    /// `submitted` fires, which lets the connection start its next produce request, and the
    /// appends are awaited together.
    pub async fn produce_local(
        self: Rc<Self>,
        items: Vec<ProduceIn>,
        submitted: Option<oneshot::Sender<()>>,
    ) -> Vec<ProduceOut> {
        let mut started = Vec::with_capacity(items.len());
        for item in items {
            let partition = match self.shard.partition(&item.topic, item.partition).await {
                Ok(p) => p,
                Err(code) => {
                    started.push(Started::Done(produce_error(code, None)));
                    continue;
                }
            };
            let mut append = Box::pin(append_one(self.clone(), partition, item));
            let first = std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await;
            started.push(match first {
                Poll::Ready(out) => Started::Done(out),
                Poll::Pending => Started::Pending(append),
            });
        }
        if let Some(tx) = submitted {
            let _ = tx.send(());
        }
        let finish = started.into_iter().map(|s| async move {
            match s {
                Started::Done(out) => out,
                Started::Pending(append) => append.await,
            }
        });
        futures_util::future::join_all(finish).await
    }

    /// Reads from local partitions. With `zero_copy` the records are a dup'd segment fd and a
    /// range (sent later with sendfile); otherwise they are copied into memory here.
    pub async fn fetch_local(
        self: Rc<Self>,
        items: Vec<FetchIn>,
        zero_copy: bool,
    ) -> Vec<FetchOut> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.fetch_one(item, zero_copy).await);
        }
        out
    }

    async fn fetch_one(self: &Rc<Self>, item: FetchIn, zero_copy: bool) -> FetchOut {
        let fail = |code: i16, hw: i64, ls: i64| FetchOut {
            error_code: code,
            high_watermark: hw,
            last_stable_offset: hw,
            log_start_offset: ls,
            records: None,
            aborted: Vec::new(),
            diverging_epoch: None,
        };
        let partition = match self.shard.partition(&item.topic, item.partition).await {
            Ok(p) => p,
            Err(code) => return fail(code, -1, -1),
        };
        let log = &partition.log;
        let limit = match super::replicas::fetch_limit(self, &item) {
            Ok(limit) => limit,
            // The log start lets a follower behind it restart there (OFFSET_OUT_OF_RANGE).
            Err(code) => return fail(code, -1, log.log_start_offset()),
        };
        if let Some(d) = limit.diverging_epoch {
            return FetchOut {
                error_code: error_code::NONE,
                high_watermark: limit.high_watermark,
                last_stable_offset: limit.high_watermark,
                log_start_offset: log.log_start_offset(),
                records: None,
                aborted: Vec::new(),
                diverging_epoch: Some((d.leader_epoch, d.end_offset)),
            };
        }
        let (upper, hw) = (limit.read_to, limit.high_watermark);
        // Kafka reports the LSO to every fetcher; only a read_committed consumer is bounded
        // by it. Without transactions it is the high watermark and nothing changes.
        let lso = log.last_stable_offset(hw);
        let committed = item.read_committed && item.replica_id < 0;
        let max_bytes = u32::try_from(item.max_bytes.max(0)).unwrap_or(0);
        let result = if committed {
            log.read_committed(item.offset, max_bytes, upper.min(hw), true)
                .await
                .map(|c| (c.read, c.aborted))
        } else {
            log.read(item.offset, max_bytes, upper, true)
                .await
                .map(|r| (r, Vec::new()))
        };
        let (read, aborted) = match result {
            Ok(r) => r,
            Err(ReadError::OffsetOutOfRange {
                log_start, log_end, ..
            }) => {
                return fail(error_code::OFFSET_OUT_OF_RANGE, log_end, log_start);
            }
            Err(e) => {
                warn!(
                    topic = item.topic,
                    partition = item.partition,
                    "read failed: {e}"
                );
                return fail(error_code::KAFKA_STORAGE_ERROR, hw, log.log_start_offset());
            }
        };
        let records = match read.slice {
            None => None,
            Some(slice) if zero_copy => {
                // SAFETY: `slice` keeps the segment file open for the whole borrow, so the
                // raw fd is valid; we immediately duplicate it into an owned fd.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(slice.raw_fd()) };
                match borrowed.try_clone_to_owned() {
                    Ok(fd) => Some(RecordsSource::File {
                        fd,
                        position: slice.position(),
                        len: slice.len(),
                    }),
                    Err(e) => {
                        warn!("cannot dup segment fd: {e}");
                        return fail(error_code::KAFKA_STORAGE_ERROR, hw, read.log_start_offset);
                    }
                }
            }
            Some(slice) => match slice.read_to_vec().await {
                Ok(v) => Some(RecordsSource::Bytes(v.into())),
                Err(e) => {
                    warn!(
                        topic = item.topic,
                        partition = item.partition,
                        "read failed: {e}"
                    );
                    return fail(error_code::KAFKA_STORAGE_ERROR, hw, read.log_start_offset);
                }
            },
        };
        FetchOut {
            error_code: error_code::NONE,
            high_watermark: hw,
            last_stable_offset: lso,
            log_start_offset: read.log_start_offset,
            records,
            aborted,
            diverging_epoch: None,
        }
    }

    /// Waits until any of the local partitions has data at or beyond the given offset, or
    /// until `deadline`. Returns immediately if one already has.
    pub async fn wait_for_data(
        self: Rc<Self>,
        items: Vec<(String, i32, i64, bool, bool)>,
        deadline: tokio::time::Instant,
    ) {
        let mut parts = Vec::with_capacity(items.len());
        for (topic, p, offset, replica, committed) in items {
            if let Ok(part) = self.shard.partition(&topic, p).await {
                parts.push((part, offset, topic, p, replica, committed));
            }
        }
        let mut waits = Vec::with_capacity(parts.len());
        for (part, offset, topic, p, replica, committed) in &parts {
            let mut n = Box::pin(part.appended.notified());
            n.as_mut().enable();
            let mut end =
                super::replicas::wake_end(&self, topic, *p, part.log.log_end_offset(), *replica);
            if *committed {
                // A read_committed consumer has data only below the LSO: waking it for data
                // behind an open transaction would spin the long poll until its deadline.
                end = part.log.last_stable_offset(end);
            }
            if end > *offset {
                return;
            }
            waits.push(n);
        }
        if waits.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        tokio::select! {
            _ = futures_util::future::select_all(waits) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }

    /// ListOffsets on local partitions: -1 latest, -2 earliest, otherwise by timestamp.
    pub async fn list_offsets_local(
        self: Rc<Self>,
        items: Vec<(String, i32, (i64, bool))>,
    ) -> Vec<OffsetOut> {
        let mut out = Vec::with_capacity(items.len());
        for (topic, p, (ts, read_committed)) in items {
            // Only the leader answers, whatever the lookup.
            if let Err(code) = super::replicas::list_offsets_latest(&self, &topic, p) {
                out.push(OffsetOut {
                    error_code: code,
                    timestamp: -1,
                    offset: -1,
                });
                continue;
            }
            let r = match self.shard.partition(&topic, p).await {
                Err(code) => OffsetOut {
                    error_code: code,
                    timestamp: -1,
                    offset: -1,
                },
                Ok(part) => match ts {
                    -1 => match super::replicas::list_offsets_latest(&self, &topic, p) {
                        Err(code) => OffsetOut {
                            error_code: code,
                            timestamp: -1,
                            offset: -1,
                        },
                        Ok(hw) => OffsetOut {
                            error_code: 0,
                            timestamp: -1,
                            offset: if read_committed {
                                part.log.last_stable_offset(hw)
                            } else {
                                hw
                            },
                        },
                    },
                    -2 => OffsetOut {
                        error_code: 0,
                        timestamp: -1,
                        offset: part.log.log_start_offset(),
                    },
                    t if t < 0 => OffsetOut {
                        error_code: error_code::INVALID_REQUEST,
                        timestamp: -1,
                        offset: -1,
                    },
                    t => match part.log.offset_for_timestamp(t).await {
                        Ok(Some((offset, timestamp))) => OffsetOut {
                            error_code: 0,
                            timestamp,
                            offset,
                        },
                        Ok(None) => OffsetOut {
                            error_code: 0,
                            timestamp: -1,
                            offset: -1,
                        },
                        Err(e) => {
                            warn!(topic, partition = p, "timestamp lookup failed: {e}");
                            OffsetOut {
                                error_code: error_code::KAFKA_STORAGE_ERROR,
                                timestamp: -1,
                                offset: -1,
                            }
                        }
                    },
                },
            };
            out.push(r);
        }
        out
    }
}

impl Replicas {
    /// Writes a transaction's COMMIT or ABORT marker to `topic`-`partition`, which this
    /// broker must lead (Kafka's WriteTxnMarkers on one partition), and waits until the
    /// replication rule committed it (markers are written with acks=all, as Kafka's are).
    /// Returns a Kafka error code (NONE on success).
    #[allow(clippy::too_many_arguments)]
    pub async fn write_txn_marker_local(
        self: Rc<Self>,
        topic: String,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        commit: bool,
        timeout_ms: i32,
    ) -> i16 {
        let admitted = match super::replicas::before_append(&self, &topic, partition, -1) {
            Ok(a) => a,
            Err((code, msg)) => {
                debug!(topic, partition, code, "transaction marker refused: {msg}");
                return code;
            }
        };
        let part = match self.shard.partition(&topic, partition).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        let info = match part
            .log
            .append_txn_marker(
                producer_id,
                producer_epoch,
                coordinator_epoch,
                !commit,
                admitted.leader_epoch,
                now_ms(),
            )
            .await
        {
            Ok(info) => {
                part.appended.notify_waiters();
                info
            }
            Err(e) => {
                let code = e.kafka_error_code();
                debug!(
                    topic,
                    partition, producer_id, code, "transaction marker not written: {e}"
                );
                return code;
            }
        };
        match super::replicas::after_append(
            &self,
            admitted,
            info.first_offset,
            info.last_offset,
            -1,
            timeout_ms,
        )
        .await
        {
            Ok(()) => {
                // The marker is committed: refresh the log's view of which transactions are
                // decided (what the cleaner may pass), as a fetch would.
                if let Ok(hw) = super::replicas::list_offsets_latest(&self, &topic, partition) {
                    part.log.last_stable_offset(hw);
                }
                error_code::NONE
            }
            Err((code, msg)) => {
                debug!(
                    topic,
                    partition, code, "transaction marker not committed: {msg}"
                );
                code
            }
        }
    }
}

/// Bytes read per step while replaying a partition (Kafka's `offsets.load.buffer.size`).
const REPLAY_BUFFER_BYTES: u32 = 5 * 1024 * 1024;

/// Reads `part` from its log start up to `end`, handing every batch (its header and bytes)
/// to `on_batch`, while `current()` holds: how a coordinator loads its state from its
/// partition. Returns false when it stopped early (a read failed, or `current()` turned
/// false).
pub async fn replay_batches(
    part: &Partition,
    end: i64,
    current: &dyn Fn() -> bool,
    on_batch: &mut dyn FnMut(&crate::storage::record_batch::BatchHeader, bytes::Bytes),
) -> bool {
    let mut offset = part.log.log_start_offset();
    while offset < end {
        if !current() {
            return false;
        }
        let read = match part.log.read(offset, REPLAY_BUFFER_BYTES, end, true).await {
            Ok(r) => r,
            Err(e) => {
                warn!(offset, "replay stopped: {e}");
                return false;
            }
        };
        let Some(slice) = read.slice else { break };
        let bytes = match slice.read_to_vec().await {
            Ok(v) => bytes::Bytes::from(v),
            Err(e) => {
                warn!(offset, "replay stopped: {e}");
                return false;
            }
        };
        let mut next = offset;
        for item in crate::storage::BatchIter::new(&bytes) {
            let (pos, h) = match item {
                Ok(x) => x,
                Err(e) => {
                    warn!(offset = next, "bad batch while replaying: {e}");
                    break;
                }
            };
            next = h.next_offset();
            on_batch(&h, bytes.slice(pos..pos + h.size()));
        }
        if next <= offset {
            warn!(offset, "replay made no progress; stopping");
            return false;
        }
        offset = next;
    }
    current()
}
