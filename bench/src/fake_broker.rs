//! A tiny in-process Kafka broker with an injected latency distribution, used to validate the
//! harness's recorder (its percentiles must match the injected ones) and its coordinated-omission
//! correction (a stall must show in the corrected histogram).
//!
//! It speaks just enough Kafka for the harness: ApiVersions, Metadata, CreateTopics, Produce,
//! Fetch (long poll) and ListOffsets, single node, in memory. A Produce response is released at
//! `anchor + delay`, where `anchor` is the intended send time stamped in the first record's value
//! (or the arrival time for values without the bench header) and `delay` cycles through a fixed,
//! deterministically shuffled sequence whose distribution is exactly the configured one. Produce
//! responses on one connection may leave out of order (the harness matches by correlation id),
//! so one slow response does not delay the next: the client sees the injected distribution
//! itself, not a head-of-line-blocked version of it. Plain blocking threads and `Condvar`
//! timers are used so the injected delays are accurate to tens of microseconds.

use crate::clock;
use crate::consumer::split_batches;
use crate::payload::Header;
use crate::recorder::{new_histogram, record};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    CreateTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// API versions the fake broker serves.
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
];

/// The injected Produce latency: a step distribution, and an optional stall.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    /// (delay, weight) steps; weights are counts within one cycle of the sequence.
    pub steps: Vec<(Duration, u32)>,
    /// (start after broker start, length): no Produce response leaves during this window.
    pub stall: Option<(Duration, Duration)>,
}

impl LatencyModel {
    /// Parses "20ms:50,80ms:25,400us:1" (unit ms or us; weight after the colon, default 1).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        for part in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let (d, w) = part.split_once(':').unwrap_or((part, "1"));
            let d = d.trim();
            let delay = if let Some(v) = d.strip_suffix("us") {
                Duration::from_micros(v.parse().map_err(|e| format!("{d}: {e}"))?)
            } else if let Some(v) = d.strip_suffix("ms") {
                Duration::from_secs_f64(v.parse::<f64>().map_err(|e| format!("{d}: {e}"))? / 1e3)
            } else {
                return Err(format!("{d}: delay needs a unit (ms or us)"));
            };
            let weight: u32 = w.trim().parse().map_err(|e| format!("{w}: {e}"))?;
            if weight == 0 {
                return Err(format!("{part}: weight must be > 0"));
            }
            steps.push((delay, weight));
        }
        if steps.is_empty() {
            return Err("empty latency model".into());
        }
        Ok(LatencyModel { steps, stall: None })
    }

    /// One cycle of delays: each step repeated by its weight, shuffled with a fixed seed so
    /// consecutive requests see different delays but the distribution over a cycle is exact.
    pub fn sequence(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .steps
            .iter()
            .flat_map(|(d, w)| std::iter::repeat_n(*d, *w as usize))
            .collect();
        v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0x5eed));
        v
    }
}

#[derive(Default)]
struct Store {
    topics: HashMap<String, Vec<PartitionLog>>,
}

#[derive(Default)]
struct PartitionLog {
    batches: Vec<(i64, Bytes)>,
    next_offset: i64,
}

/// State shared by the nodes of one fake cluster: the data (one copy, so a leader change loses
/// nothing) and which node leads every partition.
struct SharedCluster {
    store: Mutex<Store>,
    appended: Condvar,
    leader: AtomicI32,
    nodes: Mutex<Vec<(i32, SocketAddr)>>,
}

struct Inner {
    node_id: i32,
    addr: SocketAddr,
    started: Instant,
    shutdown: AtomicBool,
    cluster: Arc<SharedCluster>,
    delays: Vec<Duration>,
    stall: Option<(Instant, Instant)>,
    counter: AtomicU64,
    injected: Mutex<Histogram<u64>>,
}

/// A running fake broker; stops when dropped.
pub struct FakeBroker {
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl FakeBroker {
    /// Starts node 0 of a new cluster on `bind` (use "127.0.0.1:0" for an ephemeral port); it
    /// leads every partition.
    pub fn start(bind: &str, model: LatencyModel) -> std::io::Result<Self> {
        let cluster = Arc::new(SharedCluster {
            store: Mutex::new(Store::default()),
            appended: Condvar::new(),
            leader: AtomicI32::new(0),
            nodes: Mutex::new(Vec::new()),
        });
        Self::start_node(bind, model, cluster)
    }

    /// Starts another node of this broker's cluster (same data); see [`FakeBroker::set_leader`].
    pub fn join(&self, bind: &str, model: LatencyModel) -> std::io::Result<Self> {
        Self::start_node(bind, model, self.inner.cluster.clone())
    }

    /// Moves the leadership of every partition to `node`: the other nodes answer Produce and
    /// Fetch with NOT_LEADER_OR_FOLLOWER, and Metadata names `node`, as after a failover.
    pub fn set_leader(&self, node: i32) {
        self.inner.cluster.leader.store(node, Ordering::SeqCst);
        self.inner.cluster.appended.notify_all();
    }

    /// This node's id.
    pub fn node_id(&self) -> i32 {
        self.inner.node_id
    }

    fn start_node(
        bind: &str,
        model: LatencyModel,
        cluster: Arc<SharedCluster>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let node_id = {
            let mut nodes = cluster.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let id = nodes.len() as i32;
            nodes.push((id, addr));
            id
        };
        let started = Instant::now();
        let inner = Arc::new(Inner {
            node_id,
            addr,
            started,
            shutdown: AtomicBool::new(false),
            cluster,
            delays: model.sequence(),
            stall: model.stall.map(|(s, l)| (started + s, started + s + l)),
            counter: AtomicU64::new(0),
            injected: Mutex::new(new_histogram()),
        });
        let acc_inner = inner.clone();
        let accept = std::thread::Builder::new()
            .name("fake-broker-accept".into())
            .spawn(move || accept_loop(listener, acc_inner))?;
        Ok(FakeBroker {
            inner,
            accept: Some(accept),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// When the broker started (the stall window is relative to it).
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// The delays actually applied to Produce responses, from their anchors (microseconds).
    pub fn injected(&self) -> Histogram<u64> {
        self.inner
            .injected
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Stops accepting and lets every connection thread exit.
    pub fn shutdown(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.cluster.appended.notify_all();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let mut conns = Vec::new();
    while !inner.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let i = inner.clone();
                if let Ok(h) = std::thread::Builder::new()
                    .name("fake-broker-conn".into())
                    .spawn(move || serve(stream, i))
                {
                    conns.push(h);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::warn!(error = %e, "fake broker accept failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    for h in conns {
        let _ = h.join();
    }
}

type Outbox = Arc<(Mutex<BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>>, Condvar)>;

fn serve(stream: TcpStream, inner: Arc<Inner>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let outbox: Outbox = Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));
    let closed = Arc::new(AtomicBool::new(false));
    let writer = {
        let outbox = outbox.clone();
        let inner = inner.clone();
        let closed = closed.clone();
        std::thread::spawn(move || write_loop(write_half, outbox, inner, closed))
    };
    let mut stream = stream;
    let mut seq = 0u64;
    loop {
        if inner.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let frame = match read_frame(&mut stream, &inner) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        let arrived = Instant::now();
        match handle(&inner, frame, arrived) {
            Ok(Some((deadline, bytes))) => {
                let (lock, cv) = &*outbox;
                if let Ok(mut q) = lock.lock() {
                    q.push(Reverse((deadline, seq, bytes)));
                    seq += 1;
                }
                cv.notify_one();
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "fake broker closing connection");
                break;
            }
        }
    }
    closed.store(true, Ordering::SeqCst);
    outbox.1.notify_one();
    let _ = writer.join();
}

/// Reads one frame, tolerating read timeouts (used to poll the shutdown flag).
fn read_frame(stream: &mut TcpStream, inner: &Inner) -> std::io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    read_full(stream, &mut len, inner)?;
    let n = i32::from_be_bytes(len);
    if !(0..=64 * 1024 * 1024).contains(&n) {
        return Ok(None);
    }
    let mut buf = vec![0u8; n as usize];
    read_full(stream, &mut buf, inner)?;
    Ok(Some(Bytes::from(buf)))
}

fn read_full(stream: &mut TcpStream, buf: &mut [u8], inner: &Inner) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match stream.read(&mut buf[at..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if inner.shutdown.load(Ordering::SeqCst) {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_loop(mut stream: TcpStream, outbox: Outbox, inner: Arc<Inner>, closed: Arc<AtomicBool>) {
    let (lock, cv) = &*outbox;
    let Ok(mut q) = lock.lock() else { return };
    loop {
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        match q.peek() {
            None => {
                if closed.load(Ordering::SeqCst) {
                    return;
                }
                q = match cv.wait_timeout(q, Duration::from_millis(100)) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
            Some(Reverse((deadline, _, _))) if *deadline > now => {
                let wait = (*deadline - now).min(Duration::from_millis(100));
                q = match cv.wait_timeout(q, wait) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
            Some(_) => {
                let Some(Reverse((_, _, bytes))) = q.pop() else {
                    continue;
                };
                drop(q);
                if stream.write_all(&bytes).is_err() {
                    return;
                }
                q = match lock.lock() {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
        }
    }
}

fn frame<R: Encodable>(
    correlation_id: i32,
    header_version: i16,
    body: &R,
    version: i16,
) -> anyhow::Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)?;
    body.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}

fn handle(
    inner: &Inner,
    mut frame_bytes: Bytes,
    arrived: Instant,
) -> anyhow::Result<Option<(Instant, Vec<u8>)>> {
    if frame_bytes.len() < 8 {
        anyhow::bail!("short request");
    }
    let api_key = (&frame_bytes[0..2]).get_i16();
    let version = (&frame_bytes[2..4]).get_i16();
    let key =
        ApiKey::try_from(api_key).map_err(|_| anyhow::anyhow!("unknown api key {api_key}"))?;
    // ApiVersions is answered even for versions we do not know (with UNSUPPORTED_VERSION, v0).
    if key == ApiKey::ApiVersions && version > 3 {
        let correlation_id = (&frame_bytes[4..8]).get_i32();
        let resp = api_versions_response(35);
        return Ok(Some((arrived, frame(correlation_id, 0, &resp, 0)?)));
    }
    let header = RequestHeader::decode(&mut frame_bytes, key.request_header_version(version))?;
    let cid = header.correlation_id;
    let hv = key.response_header_version(version);
    let now = arrived;
    match key {
        ApiKey::ApiVersions => {
            let _ = ApiVersionsRequest::decode(&mut frame_bytes, version)?;
            Ok(Some((
                now,
                frame(cid, hv, &api_versions_response(0), version)?,
            )))
        }
        ApiKey::Metadata => {
            let req = MetadataRequest::decode(&mut frame_bytes, version)?;
            Ok(Some((
                now,
                frame(cid, hv, &metadata(inner, &req), version)?,
            )))
        }
        ApiKey::CreateTopics => {
            let req = CreateTopicsRequest::decode(&mut frame_bytes, version)?;
            let mut results = Vec::new();
            if let Ok(mut store) = inner.cluster.store.lock() {
                for t in &req.topics {
                    let name = t.name.0.as_str().to_string();
                    // TOPIC_ALREADY_EXISTS (36), INVALID_PARTITIONS (37).
                    let code = match store.topics.entry(name) {
                        std::collections::hash_map::Entry::Occupied(_) => 36,
                        std::collections::hash_map::Entry::Vacant(_) if t.num_partitions <= 0 => 37,
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(
                                (0..t.num_partitions)
                                    .map(|_| PartitionLog::default())
                                    .collect(),
                            );
                            0
                        }
                    };
                    results.push(
                        CreatableTopicResult::default()
                            .with_name(t.name.clone())
                            .with_error_code(code)
                            .with_num_partitions(t.num_partitions)
                            .with_replication_factor(1),
                    );
                }
            }
            let resp = CreateTopicsResponse::default().with_topics(results);
            Ok(Some((now, frame(cid, hv, &resp, version)?)))
        }
        ApiKey::Produce => {
            let req = ProduceRequest::decode(&mut frame_bytes, version)?;
            let (resp, anchor) = produce(inner, &req, arrived);
            if req.acks == 0 {
                return Ok(None);
            }
            let i = inner.counter.fetch_add(1, Ordering::Relaxed) as usize;
            let delay = inner
                .delays
                .get(i % inner.delays.len().max(1))
                .copied()
                .unwrap_or_default();
            let mut deadline = anchor + delay;
            if let Some((s, e)) = inner.stall {
                if (deadline >= s && deadline < e) || (arrived >= s && arrived < e) {
                    deadline = deadline.max(e);
                }
            }
            if let Ok(mut h) = inner.injected.lock() {
                record(
                    &mut h,
                    deadline.saturating_duration_since(anchor).as_micros() as u64,
                );
            }
            Ok(Some((deadline, frame(cid, hv, &resp, version)?)))
        }
        ApiKey::Fetch => {
            let req = FetchRequest::decode(&mut frame_bytes, version)?;
            let resp = fetch(inner, &req);
            Ok(Some((Instant::now(), frame(cid, hv, &resp, version)?)))
        }
        ApiKey::ListOffsets => {
            let req = ListOffsetsRequest::decode(&mut frame_bytes, version)?;
            let store = inner
                .cluster
                .store
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            let topics = req
                .topics
                .iter()
                .map(|t| {
                    let log = store.topics.get(t.name.0.as_str());
                    ListOffsetsTopicResponse::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    let r = ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_timestamp(-1);
                                    match log.and_then(|l| l.get(p.partition_index as usize)) {
                                        Some(pl) => r.with_offset(if p.timestamp == -2 {
                                            0
                                        } else {
                                            pl.next_offset
                                        }),
                                        None => r.with_error_code(3).with_offset(-1),
                                    }
                                })
                                .collect(),
                        )
                })
                .collect();
            let resp = ListOffsetsResponse::default().with_topics(topics);
            Ok(Some((now, frame(cid, hv, &resp, version)?)))
        }
        other => anyhow::bail!("fake broker does not serve {other:?}"),
    }
}

fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(*k as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        )
}

fn metadata(inner: &Inner, req: &MetadataRequest) -> MetadataResponse {
    let leader = BrokerId(inner.cluster.leader.load(Ordering::SeqCst));
    let nodes = inner
        .cluster
        .nodes
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    let replicas: Vec<BrokerId> = nodes.iter().map(|(id, _)| BrokerId(*id)).collect();
    let store = inner
        .cluster
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let names: Vec<String> = match &req.topics {
        None => store.topics.keys().cloned().collect(),
        Some(ts) => ts
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()))
            .collect(),
    };
    let topics = names
        .into_iter()
        .map(|n| {
            let t = MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(n.clone()))));
            match store.topics.get(&n) {
                None => t.with_error_code(3),
                Some(parts) => t.with_partitions(
                    (0..parts.len() as i32)
                        .map(|i| {
                            MetadataResponsePartition::default()
                                .with_partition_index(i)
                                .with_leader_id(leader)
                                .with_replica_nodes(replicas.clone())
                                .with_isr_nodes(replicas.clone())
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(
            nodes
                .iter()
                .map(|(id, addr)| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(*id))
                        .with_host(StrBytes::from_string(addr.ip().to_string()))
                        .with_port(addr.port() as i32)
                })
                .collect(),
        )
        .with_controller_id(BrokerId(0))
        .with_cluster_id(Some(StrBytes::from_static_str("fake")))
        .with_topics(topics)
}

/// Appends the request's batches; returns the response and the latency anchor.
fn produce(inner: &Inner, req: &ProduceRequest, arrived: Instant) -> (ProduceResponse, Instant) {
    let mut anchor: Option<Instant> = None;
    let mut responses = Vec::new();
    let leads = inner.cluster.leader.load(Ordering::SeqCst) == inner.node_id;
    let mut store = inner
        .cluster
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for t in &req.topic_data {
        let mut parts = Vec::new();
        for p in &t.partition_data {
            if !leads {
                // NOT_LEADER_OR_FOLLOWER: nothing is appended.
                parts.push(
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(6),
                );
                continue;
            }
            let log = store
                .topics
                .get_mut(t.name.0.as_str())
                .and_then(|l| l.get_mut(p.index as usize));
            let Some(log) = log else {
                parts.push(
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(3),
                );
                continue;
            };
            let base = log.next_offset;
            for batch in split_batches(p.records.clone().unwrap_or_default()) {
                if batch.len() < 61 {
                    continue;
                }
                if anchor.is_none() {
                    let mut b = batch.clone();
                    if let Ok(set) = RecordBatchDecoder::decode(&mut b) {
                        if let Some(h) = set
                            .records
                            .first()
                            .and_then(|r| r.value.as_ref())
                            .and_then(|v| Header::parse(v))
                        {
                            anchor = Some(clock::instant_of(h.intended_micros));
                        }
                    }
                }
                let last_delta = (&batch[23..27]).get_i32().max(0) as i64;
                let mut owned = BytesMut::from(&batch[..]);
                owned[0..8].copy_from_slice(&log.next_offset.to_be_bytes());
                log.batches.push((log.next_offset, owned.freeze()));
                log.next_offset += last_delta + 1;
            }
            parts.push(
                PartitionProduceResponse::default()
                    .with_index(p.index)
                    .with_base_offset(base)
                    .with_log_append_time_ms(-1),
            );
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(parts),
        );
    }
    drop(store);
    inner.cluster.appended.notify_all();
    (
        ProduceResponse::default().with_responses(responses),
        anchor.unwrap_or(arrived),
    )
}

fn fetch(inner: &Inner, req: &FetchRequest) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.clamp(0, 30_000) as u64);
    let mut store = inner
        .cluster
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    loop {
        let leads = inner.cluster.leader.load(Ordering::SeqCst) == inner.node_id;
        let mut total = 0usize;
        let topics: Vec<FetchableTopicResponse> = req
            .topics
            .iter()
            .map(|t| {
                let logs = store.topics.get(t.topic.0.as_str());
                FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                let pd = PartitionData::default().with_partition_index(p.partition);
                                if !leads {
                                    return pd.with_error_code(6);
                                }
                                let Some(log) = logs.and_then(|l| l.get(p.partition as usize))
                                else {
                                    return pd.with_error_code(3);
                                };
                                let mut out = BytesMut::new();
                                // First batch whose range contains or follows the fetch offset.
                                let start = log
                                    .batches
                                    .partition_point(|(base, _)| *base <= p.fetch_offset)
                                    .saturating_sub(1);
                                for (base, b) in &log.batches[start..] {
                                    let last = *base + (&b[23..27]).get_i32() as i64;
                                    if last < p.fetch_offset {
                                        continue;
                                    }
                                    if !out.is_empty()
                                        && out.len() + b.len()
                                            > p.partition_max_bytes.max(0) as usize
                                    {
                                        break;
                                    }
                                    out.extend_from_slice(b);
                                }
                                total += out.len();
                                pd.with_high_watermark(log.next_offset)
                                    .with_last_stable_offset(log.next_offset)
                                    .with_log_start_offset(0)
                                    .with_records(Some(out.freeze()))
                            })
                            .collect(),
                    )
            })
            .collect();
        let now = Instant::now();
        if total > 0 || !leads || now >= deadline || inner.shutdown.load(Ordering::SeqCst) {
            return FetchResponse::default().with_responses(topics);
        }
        store = match inner.cluster.appended.wait_timeout(store, deadline - now) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_model_parses_and_cycles_exactly() {
        let m = LatencyModel::parse("20ms:3, 500us:1").unwrap();
        let seq = m.sequence();
        assert_eq!(seq.len(), 4);
        assert_eq!(
            seq.iter()
                .filter(|d| **d == Duration::from_millis(20))
                .count(),
            3
        );
        assert_eq!(
            seq.iter()
                .filter(|d| **d == Duration::from_micros(500))
                .count(),
            1
        );
        assert!(LatencyModel::parse("20").is_err());
        assert!(LatencyModel::parse("20ms:0").is_err());
        assert!(LatencyModel::parse("").is_err());
    }
}
