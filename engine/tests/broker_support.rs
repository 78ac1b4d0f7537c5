//! Shared helpers for the broker integration tests: start the real `sluice` binary on a free
//! 127.0.0.1 port and talk to it with kafka-protocol-encoded requests.
//!
//! Included by the other `broker_*` tests with `#[path = "broker_support.rs"] mod support;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Upper bound for any single wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A running `sluice` process with its own data directory.
pub struct Broker {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub log_path: PathBuf,
}

#[path = "support/ports.rs"]
pub mod ports;
pub use ports::free_port;

impl Broker {
    /// Starts a broker with 2 shards in a fresh temp dir.
    pub fn start(extra: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut b = Broker::start_in(&dir, extra, &[]);
        b._tmp = Some(tmp);
        b
    }

    /// Starts a broker on `data_dir` with extra flags and environment.
    pub fn start_in(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log_path = data_dir.with_extension(format!("log.{port}"));
        std::fs::create_dir_all(data_dir.parent().unwrap_or(Path::new("."))).expect("mkdir");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--shards")
            .arg("2");
        cmd.args(extra).stdout(Stdio::null()).stderr(log);
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sluice");
        let mut b = Broker {
            child: Some(child),
            addr,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            log_path,
        };
        b.wait_ready();
        b
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sluice exited early with {status}: {}", self.log());
                }
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sluice did not start listening: {}", self.log());
    }

    /// The broker's log output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A new client connection whose requests carry `client_id`.
    #[allow(dead_code)]
    pub fn client_as(&self, client_id: &'static str) -> Client {
        let mut c = Client::connect(self.addr);
        c.client_id = client_id;
        c
    }

    /// Sends `signal` and waits (bounded) for the process to exit.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let mut child = self.child.take().expect("broker running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sluice did not exit after {signal:?}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking Kafka-protocol client over one TCP connection.
pub struct Client {
    pub stream: TcpStream,
    next_correlation: i32,
    /// The request header's client id (`sluice-test` unless set).
    pub client_id: &'static str,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            next_correlation: 1,
            client_id: "sluice-test",
        }
    }

    /// Encodes a request frame; returns (correlation id, frame).
    pub fn encode<R: Request>(&mut self, version: i16, req: &R) -> (i32, BytesMut) {
        let cid = self.next_correlation;
        self.next_correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(cid)
            .with_client_id(Some(StrBytes::from_static_str(self.client_id)));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .expect("encode header");
        req.encode(&mut body, version).expect("encode body");
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        (cid, frame)
    }

    pub fn send<R: Request>(&mut self, version: i16, req: &R) -> i32 {
        let (cid, frame) = self.encode(version, req);
        self.stream.write_all(&frame).expect("write request");
        cid
    }

    /// Reads one response frame (without the size prefix).
    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let size = i32::from_be_bytes(size);
        assert!(size >= 4, "response size {size}");
        let mut buf = vec![0u8; size as usize];
        self.stream.read_exact(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    pub fn recv<R: Request>(&mut self, version: i16, cid: i32) -> R::Response {
        let mut frame = self.read_frame().expect("read response");
        let header_version = if R::KEY == ApiKey::ApiVersions as i16 {
            0
        } else {
            R::Response::header_version(version)
        };
        let header =
            ResponseHeader::decode(&mut frame, header_version).expect("decode response header");
        assert_eq!(header.correlation_id, cid, "responses out of order");
        let resp = R::Response::decode(&mut frame, version).expect("decode response body");
        assert_eq!(frame.remaining(), 0, "trailing bytes in response");
        resp
    }

    pub fn request<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let cid = self.send(version, req);
        self.recv::<R>(version, cid)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A RecordBatch v2 with `n` records `prefix-i`, keys `k-i`, created `ts_offset` ms after a
/// base timestamp one hour ago (realistic timestamps: segment.ms rolls compare them to now).
/// A Produce request of `records` to one partition, with a 5 s timeout.
pub fn produce_request(
    topic: &str,
    partition: i32,
    acks: i16,
    records: Bytes,
) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::{produce_request, ProduceRequest, TopicName};
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records)),
            ])])
}

/// The base timestamp of every [`batch`] of this test process: an hour before the first
/// batch was built (one value for all tests, so compare against it, not against the clock).
pub fn batch_base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| now_ms() - 3_600_000)
}

pub fn batch(prefix: &str, n: usize, ts_offset: i64) -> Bytes {
    let timestamp = batch_base_ms() + ts_offset;
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Constant offset-sequence keeps all records in one batch; base sequence stays -1.
            sequence: i as i32 - 1,
            timestamp: timestamp + i as i64,
            key: Some(Bytes::from(format!("k-{i}"))),
            value: Some(Bytes::from(format!("{prefix}-{i}"))),
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

/// Values of every record in a fetched record set.
pub fn values(records: &Bytes) -> Vec<String> {
    let mut buf = records.clone();
    let sets =
        kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf).expect("decode records");
    sets.into_iter()
        .flat_map(|s| s.records)
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

/// Offsets of every record in a fetched record set.
pub fn offsets(records: &Bytes) -> Vec<i64> {
    let mut buf = records.clone();
    let sets =
        kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf).expect("decode records");
    sets.into_iter()
        .flat_map(|s| s.records)
        .map(|r| r.offset)
        .collect()
}
