//! The idempotent producer over the wire, against the real `sluice` binary: InitProducerId,
//! a retried batch stored once with the original offset, sequence gaps, fenced epochs,
//! pipelined requests of one producer, the state surviving clean and kill -9 restarts, and
//! the transactional APIs refused with well-formed UNSUPPORTED_VERSION responses.

#[path = "broker_support.rs"]
mod support;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use nix::sys::signal::Signal;
use support::*;

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn create(c: &mut Client, topic: &str) {
    let req = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(tn(topic)))]))
        .with_allow_auto_topic_creation(true);
    let r: MetadataResponse = c.request(12, &req);
    assert_eq!(r.topics[0].error_code, 0);
}

fn init_producer_id(c: &mut Client, version: i16, txn: Option<&str>) -> InitProducerIdResponse {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(txn.map(|t| TransactionalId(StrBytes::from_string(t.into()))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    c.request(version, &req)
}

/// An idempotent batch of `n` records `tag-i` with sequences `seq..seq+n`.
fn idem_batch(pid: i64, epoch: i16, seq: i32, n: usize, tag: &str, transactional: bool) -> Bytes {
    let ts = now_ms();
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional,
            control: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: seq + i as i32,
            timestamp: ts,
            key: None,
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

fn produce_req(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records)),
            ])])
}

/// (error code, base offset) of a single-partition produce.
fn produce(c: &mut Client, topic: &str, records: Bytes) -> (i16, i64) {
    let r: ProduceResponse = c.request(9, &produce_req(topic, records));
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn log_end(c: &mut Client, topic: &str) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1),
            ])]);
    let r: ListOffsetsResponse = c.request(7, &req);
    r.topics[0].partitions[0].offset
}

fn fetch_values(c: &mut Client, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = 0i64;
    loop {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(64 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(tn(topic))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(next)
                    .with_partition_max_bytes(64 << 20)])]);
        let r: FetchResponse = c.request(11, &req);
        let part = &r.responses[0].partitions[0];
        assert_eq!(part.error_code, 0);
        let Some(records) = part.records.as_ref().filter(|r| !r.is_empty()) else {
            return out;
        };
        let offs = offsets(records);
        out.extend(values(records));
        match offs.last() {
            Some(last) => next = last + 1,
            None => return out,
        }
    }
}

#[test]
fn init_producer_id_retries_gaps_and_fenced_epochs() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    let versions: ApiVersionsResponse = c.request(3, &ApiVersionsRequest::default());
    let init = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::InitProducerId as i16)
        .expect("InitProducerId advertised");
    assert_eq!((init.min_version, init.max_version), (0, 5));
    // TxnOffsetCommit (the group coordinator's half) is served: broker_txn_offsets.rs.
    for k in [ApiKey::AddPartitionsToTxn, ApiKey::EndTxn] {
        assert!(versions.api_keys.iter().all(|a| a.api_key != k as i16));
    }

    let first = init_producer_id(&mut c, 4, None);
    assert_eq!((first.error_code, first.producer_epoch), (0, 0));
    let second = init_producer_id(&mut c, 0, None);
    assert_eq!(second.error_code, 0);
    assert_ne!(
        first.producer_id, second.producer_id,
        "ids are never reused"
    );
    assert_eq!(init_producer_id(&mut c, 4, Some("txn")).error_code, 35);

    let pid = first.producer_id.0;
    create(&mut c, "idem");
    let b0 = idem_batch(pid, 0, 0, 5, "a", false);
    assert_eq!(produce(&mut c, "idem", b0.clone()), (0, 0));
    assert_eq!(
        produce(&mut c, "idem", idem_batch(pid, 0, 5, 5, "b", false)),
        (0, 5)
    );
    // The same batch again: acknowledged with its original offset, stored once.
    assert_eq!(produce(&mut c, "idem", b0), (0, 0));
    assert_eq!(log_end(&mut c, "idem"), 10);
    let got = fetch_values(&mut c, "idem");
    assert_eq!(got.len(), 10);
    assert_eq!(got.iter().filter(|v| v.as_str() == "a-0").count(), 1);
    // A gap.
    assert_eq!(
        produce(&mut c, "idem", idem_batch(pid, 0, 11, 1, "gap", false)).0,
        45
    );
    // A new epoch starts at 0; the old epoch is then fenced.
    assert_eq!(
        produce(&mut c, "idem", idem_batch(pid, 1, 0, 1, "e1", false)),
        (0, 10)
    );
    assert_eq!(
        produce(&mut c, "idem", idem_batch(pid, 0, 10, 1, "old", false)).0,
        47
    );
    // Another producer and plain batches are unaffected.
    assert_eq!(
        produce(
            &mut c,
            "idem",
            idem_batch(second.producer_id.0, 0, 0, 2, "p2", false)
        ),
        (0, 11)
    );
    assert_eq!(produce(&mut c, "idem", batch("plain", 3, 0)), (0, 13));
    assert_eq!(produce(&mut c, "idem", batch("plain", 3, 0)), (0, 16));
    assert_eq!(log_end(&mut c, "idem"), 19);
}

#[test]
fn pipelined_requests_of_one_producer() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    create(&mut c, "pipe");
    let pid = init_producer_id(&mut c, 4, None).producer_id.0;
    // Five requests in flight at once, as max.in.flight=5 allows, the last a retry of the first.
    let first = idem_batch(pid, 0, 0, 5, "s0", false);
    let mut cids = vec![c.send(9, &produce_req("pipe", first.clone()))];
    for i in 1..4 {
        let b = idem_batch(pid, 0, i * 5, 5, &format!("s{i}"), false);
        cids.push(c.send(9, &produce_req("pipe", b)));
    }
    cids.push(c.send(9, &produce_req("pipe", first)));
    let bases: Vec<(i16, i64)> = cids
        .into_iter()
        .map(|cid| {
            let r: ProduceResponse = c.recv::<ProduceRequest>(9, cid);
            let p = &r.responses[0].partition_responses[0];
            (p.error_code, p.base_offset)
        })
        .collect();
    assert_eq!(bases, vec![(0, 0), (0, 5), (0, 10), (0, 15), (0, 0)]);
    assert_eq!(log_end(&mut c, "pipe"), 20);
}

#[test]
fn duplicates_are_recognised_after_clean_and_kill_9_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let extra = ["--set", "log.segment.bytes=2000"];
    let mut b = Broker::start_in(&dir, &extra, &[]);
    let mut c = b.client();
    create(&mut c, "dur");
    let pid = init_producer_id(&mut c, 4, None).producer_id.0;
    let batches: Vec<Bytes> = (0..20)
        .map(|i| idem_batch(pid, 0, i * 3, 3, &format!("x{i}"), false))
        .collect();
    for (i, bt) in batches.iter().enumerate() {
        assert_eq!(produce(&mut c, "dur", bt.clone()), (0, i as i64 * 3));
    }
    drop(c);
    assert!(b.stop_with(Signal::SIGTERM).success());

    let mut b = Broker::start_in(&dir, &extra, &[]);
    let mut c = b.client();
    assert_eq!(log_end(&mut c, "dur"), 60);
    assert_eq!(produce(&mut c, "dur", batches[19].clone()), (0, 57));
    assert_eq!(produce(&mut c, "dur", batches[15].clone()), (0, 45));
    assert_eq!(
        produce(&mut c, "dur", idem_batch(pid, 0, 60, 3, "y0", false)),
        (0, 60)
    );
    // Ids handed out before the restart are not handed out again.
    assert!(init_producer_id(&mut c, 4, None).producer_id.0 > pid);
    drop(c);
    assert!(!b.stop_with(Signal::SIGKILL).success());

    let b = Broker::start_in(&dir, &extra, &[]);
    let mut c = b.client();
    assert_eq!(log_end(&mut c, "dur"), 63);
    let retry = idem_batch(pid, 0, 60, 3, "y0", false);
    assert_eq!(produce(&mut c, "dur", retry), (0, 60));
    assert_eq!(
        produce(&mut c, "dur", idem_batch(pid, 0, 64, 1, "gap", false)).0,
        45
    );
    assert_eq!(
        produce(&mut c, "dur", idem_batch(pid, 0, 63, 3, "y1", false)),
        (0, 63)
    );
    let got = fetch_values(&mut c, "dur");
    assert_eq!(got.len(), 66);
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 66, "no record stored twice");
}

#[test]
fn transactional_apis_get_unsupported_version_and_the_connection_stays_open() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    create(&mut c, "tx");
    let r: AddPartitionsToTxnResponse = c.request(
        3,
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str("t")))
            .with_v3_and_below_topics(vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(tn("tx"))
                    .with_partitions(vec![0, 1]),
            ]),
    );
    let parts = &r.results_by_topic_v3_and_below[0].results_by_partition;
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.partition_error_code == 35));
    let r: AddPartitionsToTxnResponse = c.request(
        4,
        &AddPartitionsToTxnRequest::default().with_transactions(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("t"))),
        ]),
    );
    assert_eq!(r.error_code, 35);
    let r: AddOffsetsToTxnResponse = c.request(3, &AddOffsetsToTxnRequest::default());
    assert_eq!(r.error_code, 35);
    let r: EndTxnResponse = c.request(3, &EndTxnRequest::default());
    assert_eq!(r.error_code, 35);
    // v0-3 are served; v4 is known to the codec but not served.
    let r: TxnOffsetCommitResponse = c.request(
        4,
        &TxnOffsetCommitRequest::default().with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(tn("tx"))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(3),
                ]),
        ]),
    );
    assert_eq!(r.topics[0].partitions[0].error_code, 35);
    let r: WriteTxnMarkersResponse = c.request(
        1,
        &WriteTxnMarkersRequest::default().with_markers(vec![
            write_txn_markers_request::WritableTxnMarker::default()
                .with_producer_id(ProducerId(9))
                .with_topics(vec![
                    write_txn_markers_request::WritableTxnMarkerTopic::default()
                        .with_name(tn("tx"))
                        .with_partition_indexes(vec![0]),
                ]),
        ]),
    );
    assert_eq!(r.markers[0].topics[0].partitions[0].error_code, 35);
    let r: DescribeTransactionsResponse = c.request(
        0,
        &DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(StrBytes::from_static_str("t"))]),
    );
    assert_eq!(r.transaction_states[0].error_code, 35);
    let r: ListTransactionsResponse = c.request(1, &ListTransactionsRequest::default());
    assert_eq!(r.error_code, 35);
    // A transactional batch: no transaction can be ongoing.
    let pid = init_producer_id(&mut c, 4, None).producer_id.0;
    assert_eq!(
        produce(&mut c, "tx", idem_batch(pid, 0, 0, 1, "t", true)).0,
        48
    );
    // Same connection still serves requests.
    assert_eq!(
        produce(&mut c, "tx", idem_batch(pid, 0, 0, 1, "ok", false)),
        (0, 0)
    );
}

#[test]
fn producer_ids_are_never_reused_across_kill_9_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut b = Broker::start_in(&dir, &[], &[]);
    let mut c = b.client();
    let first = init_producer_id(&mut c, 4, None).producer_id.0;
    drop(c);
    // A crash right after the first id: the controller's log holds the block handed out, so
    // the next start allocates past it.
    assert!(!b.stop_with(Signal::SIGKILL).success());
    let mut b = Broker::start_in(&dir, &[], &[]);
    let mut c = b.client();
    let after = init_producer_id(&mut c, 4, None);
    assert_eq!(after.error_code, 0);
    assert!(
        after.producer_id.0 > first,
        "{} after {first}",
        after.producer_id.0
    );
    drop(c);
    assert!(b.stop_with(Signal::SIGTERM).success());
    let b = Broker::start_in(&dir, &[], &[]);
    let mut c = b.client();
    let third = init_producer_id(&mut c, 4, None);
    assert_eq!(third.error_code, 0);
    assert!(third.producer_id.0 > after.producer_id.0);
}
