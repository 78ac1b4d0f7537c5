//! Broker throughput over loopback, in one run so the figures are comparable:
//!
//! - `raw_sendfile`: the machine's file-to-socket limit (sendfile of the same bytes, no broker);
//! - `fetch/zero_copy` and `fetch/copy`: a consumer reading a whole partition from page cache
//!   through the broker, with `fetch.zero.copy = true` (sendfile) and `false` (read + write);
//! - `produce/shards=N`: a producer pipelining acks=1 requests of 16 KiB batches of 1 KiB
//!   records into one partition per shard.
//!
//! Run: `cargo bench -p engine --bench fetch_throughput`. Sizes are small (this machine has 2
//! cores shared with the client); `SLUICE_BENCH_MB` changes the data set size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice::broker::{BrokerConfig, Event, Server};

const RECORD: usize = 1024;
const BATCH_RECORDS: usize = 16;

fn data_mb() -> usize {
    std::env::var("SLUICE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

struct Running {
    addr: SocketAddr,
    stop: mpsc::Sender<Event>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(Event::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(shards: usize, zero_copy: bool) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags: Vec<(String, String)> = vec![
        (
            "log.dirs".into(),
            dir.path().join("data").display().to_string(),
        ),
        ("listeners".into(), "127.0.0.1:0".into()),
        ("num.shards".into(), shards.to_string()),
        ("num.partitions".into(), shards.to_string()),
        ("fetch.zero.copy".into(), zero_copy.to_string()),
    ];
    let (cfg, _) = BrokerConfig::resolve(None, Vec::new(), &flags).expect("config");
    let server = Server::start(cfg).expect("start broker");
    let addr = server.local_addr;
    let stop = server.stopper();
    let thread = std::thread::spawn(move || server.run());
    Running {
        addr,
        stop,
        thread: Some(thread),
        _dir: dir,
    }
}

struct Client {
    s: TcpStream,
    cid: i32,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Client { s, cid: 0 }
    }

    fn send<R: Request>(&mut self, version: i16, req: &R) {
        self.cid += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.cid);
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .expect("header");
        req.encode(&mut body, version).expect("body");
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.s.write_all(&frame).expect("write");
    }

    fn recv<R: Request>(&mut self, version: i16, buf: &mut Vec<u8>) -> R::Response {
        let mut size = [0u8; 4];
        self.s.read_exact(&mut size).expect("read size");
        buf.resize(i32::from_be_bytes(size) as usize, 0);
        self.s.read_exact(buf).expect("read body");
        let mut b = Bytes::copy_from_slice(buf);
        ResponseHeader::decode(&mut b, R::Response::header_version(version)).expect("header");
        R::Response::decode(&mut b, version).expect("body")
    }
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("bench"))
}

fn batch() -> Bytes {
    let value = Bytes::from(vec![b'x'; RECORD]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let records: Vec<Record> = (0..BATCH_RECORDS)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: now,
            key: None,
            value: Some(value.clone()),
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
    .expect("encode");
    buf.freeze()
}

/// Creates the topic and produces `bytes` of 1 KiB records into each partition with
/// `inflight` pipelined acks=1 requests. Returns the bytes produced.
fn produce(addr: SocketAddr, partitions: i32, bytes: usize, inflight: usize) -> usize {
    let mut c = Client::new(addr);
    let mut buf = Vec::new();
    c.send(
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(topic()))]))
            .with_allow_auto_topic_creation(true),
    );
    c.recv::<MetadataRequest>(12, &mut buf);
    let b = batch();
    let per_request = b.len() * partitions as usize;
    let requests = bytes * partitions as usize / per_request;
    let req = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(
                (0..partitions)
                    .map(|p| {
                        produce_request::PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(b.clone()))
                    })
                    .collect(),
            )]);
    let mut sent = 0;
    let mut done = 0;
    while done < requests {
        while sent < requests && sent - done < inflight {
            c.send(9, &req);
            sent += 1;
        }
        let r = c.recv::<ProduceRequest>(9, &mut buf);
        assert!(
            r.responses[0]
                .partition_responses
                .iter()
                .all(|p| p.error_code == 0),
            "produce failed"
        );
        done += 1;
    }
    requests * per_request
}

/// Reads partition 0 from offset 0 to `end` with 1 MiB fetches; returns record bytes read.
fn consume(addr: SocketAddr, end: i64) -> usize {
    let mut c = Client::new(addr);
    let mut buf = Vec::new();
    let mut offset = 0i64;
    let mut total = 0usize;
    while offset < end {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(topic())
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])]);
        c.send(11, &req);
        let r = c.recv::<FetchRequest>(11, &mut buf);
        let records = r.responses[0].partitions[0]
            .records
            .clone()
            .unwrap_or_default();
        assert!(!records.is_empty(), "no progress at offset {offset}");
        total += records.len();
        // Walk batch headers: base offset (8) + length (4) ... last offset delta at 23..27.
        let mut rest = records;
        while rest.len() >= 61 {
            let base = (&rest[0..8]).get_i64();
            let len = (&rest[8..12]).get_i32() as usize + 12;
            let delta = (&rest[23..27]).get_i32();
            offset = base + i64::from(delta) + 1;
            if len > rest.len() {
                break;
            }
            rest.advance(len);
        }
    }
    total
}

fn fetch_benches(c: &mut Criterion) {
    let bytes = data_mb() << 20;
    let mut group = c.benchmark_group("fetch");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(bytes as u64));

    // The machine's limit: the same amount of bytes from a page-cached file over loopback.
    let mut file = tempfile::tempfile().expect("tempfile");
    file.write_all(&vec![7u8; bytes]).expect("fill");
    group.bench_function("raw_sendfile", |b| {
        b.iter_custom(|iters| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let reader = std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                let mut sink = vec![0u8; 1 << 20];
                let mut n = 0usize;
                while let Ok(k) = s.read(&mut sink) {
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                n
            });
            let (sock, _) = listener.accept().expect("accept");
            let start = Instant::now();
            for _ in 0..iters {
                let mut off: i64 = 0;
                while (off as usize) < bytes {
                    let left = bytes - off as usize;
                    let n = nix::sys::sendfile::sendfile(
                        sock.as_fd(),
                        file.as_fd(),
                        Some(&mut off),
                        left,
                    )
                    .expect("sendfile");
                    assert!(n > 0);
                }
            }
            drop(sock);
            let got = reader.join().expect("reader");
            assert_eq!(got, bytes * iters as usize);
            start.elapsed()
        })
    });

    for zero_copy in [true, false] {
        let broker = start(1, zero_copy);
        let produced = produce(broker.addr, 1, bytes, 8);
        let end = (produced / batch().len() * BATCH_RECORDS) as i64;
        let name = if zero_copy { "zero_copy" } else { "copy" };
        group.bench_function(name, |b| b.iter(|| consume(broker.addr, end)));
    }
    group.finish();
}

fn produce_benches(c: &mut Criterion) {
    let bytes = (data_mb() / 2).max(1) << 20;
    let mut group = c.benchmark_group("produce");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for shards in [1usize, 2] {
        // One partition per shard so both shards take writes; bytes are per partition.
        group.throughput(Throughput::Bytes((bytes * shards) as u64));
        let owners: std::collections::BTreeSet<usize> = (0..shards as i32)
            .map(|p| sluice::broker::metadata::owner_shard("bench", p, shards))
            .collect();
        assert_eq!(owners.len(), shards, "partitions must cover every shard");
        let broker = start(shards, true);
        group.bench_function(format!("shards={shards}"), |b| {
            b.iter(|| produce(broker.addr, shards as i32, bytes, 16))
        });
    }
    group.finish();
}

criterion_group!(benches, fetch_benches, produce_benches);
criterion_main!(benches);
