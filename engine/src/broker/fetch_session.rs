//! Incremental fetch sessions (KIP-227), sans-IO: one shard's session cache.
//!
//! A consumer's Fetch v7+ with session id 0 and epoch 0 asks for a session; the broker answers
//! the full fetch and, when its cache has room, a new session id. From then on the consumer
//! sends only the partitions whose fetch position (or max bytes, or epoch) changed, plus the
//! partitions it drops (`forgotten_topics_data`); every other partition is fetched at the
//! position the session remembers (the broker never advances it by itself: a client that
//! discarded a response must be able to fetch the same records again). The response carries
//! only the partitions with records, an error, or a high watermark or log start offset that
//! differs from what the session last told the client.
//!
//! This type decides; the Fetch handler (`broker::api::fetch`) reads the logs and calls it on the
//! shard that owns the session. Session ids are positive and `id % shards` names the owner
//! shard, so a session created on one shard stays usable from a connection on any other.
//! Time is the caller's (`now_ms`, any monotonic origin); ids come from a seeded generator.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::config::{parse_int, BrokerConfig, ConfigError};

/// The session id of a request or response that has no session.
pub const INVALID_SESSION_ID: i32 = 0;
/// A request epoch asking for a full fetch that creates (or re-creates) a session.
pub const INITIAL_EPOCH: i32 = 0;
/// A request epoch asking for a full fetch without a session (pre-KIP-227 behaviour).
pub const FINAL_EPOCH: i32 = -1;

/// Kafka error codes of the session paths.
pub mod error_code {
    /// The request's session id is not in the cache (evicted, closed, or never created).
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    /// The request's epoch is not the one the session expects next.
    pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
    /// The request version uses topic ids and the session does not, or the reverse.
    pub const FETCH_SESSION_TOPIC_ID_ERROR: i16 = 106;
}

/// `max.incremental.fetch.session.cache.slots`.
pub const SLOTS_KEY: &str = "max.incremental.fetch.session.cache.slots";
/// `min.incremental.fetch.session.eviction.ms`.
pub const EVICTION_KEY: &str = "min.incremental.fetch.session.eviction.ms";

/// The epoch that follows `epoch` (1 after `i32::MAX`, as Kafka wraps).
pub fn next_epoch(epoch: i32) -> i32 {
    match epoch {
        e if e < 0 => FINAL_EPOCH,
        i32::MAX => 1,
        e => e + 1,
    }
}

/// Broker-wide session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Sessions the whole broker may hold (split over the shards).
    pub slots: usize,
    /// A session idle this long may be evicted by any new one; a session younger than this
    /// is never evicted for a larger one.
    pub eviction_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            slots: 1000,
            eviction_ms: 120_000,
        }
    }
}

impl SessionConfig {
    /// Reads the two broker keys (Kafka's defaults when absent).
    pub fn from_config(cfg: &BrokerConfig) -> Result<Self, ConfigError> {
        let d = SessionConfig::default();
        let slots = match cfg.raw.get(SLOTS_KEY) {
            Some(v) => parse_int::<u32>(SLOTS_KEY, v)? as usize,
            None => d.slots,
        };
        let eviction_ms = match cfg.raw.get(EVICTION_KEY) {
            Some(v) => parse_int::<u32>(EVICTION_KEY, v)? as u64,
            None => d.eviction_ms,
        };
        Ok(SessionConfig { slots, eviction_ms })
    }

    /// The slots of shard `shard` out of `shards`: an even split, the remainder to the first
    /// shards, so the shards together hold exactly `slots`.
    pub fn shard_slots(&self, shard: usize, shards: usize) -> usize {
        let shards = shards.max(1);
        self.slots / shards + usize::from(shard < self.slots % shards)
    }
}

/// How a Fetch request uses sessions, from its session id and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// A full fetch that neither uses nor creates a session (epoch -1); `close` is a session
    /// the request names, to be closed first.
    Sessionless {
        /// The session to close, if any.
        close: Option<i32>,
    },
    /// A full fetch that asks for a new session (epoch 0), closing `close` first.
    Full {
        /// The session to close, if any.
        close: Option<i32>,
    },
    /// An incremental fetch in session `id` at `epoch`.
    Incremental {
        /// Session id.
        id: i32,
        /// The request's epoch.
        epoch: i32,
    },
}

impl FetchKind {
    /// Classifies a request's `(session_id, session_epoch)` as KIP-227 defines them.
    pub fn of(session_id: i32, epoch: i32) -> FetchKind {
        let close = (session_id != INVALID_SESSION_ID).then_some(session_id);
        match epoch {
            FINAL_EPOCH => FetchKind::Sessionless { close },
            INITIAL_EPOCH => FetchKind::Full { close },
            epoch => FetchKind::Incremental {
                id: session_id,
                epoch,
            },
        }
    }
}

/// How a request names a topic: by name (versions <= 12) or by id (13+).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicKey {
    /// Topic name.
    Name(String),
    /// Topic id.
    Id(Uuid),
}

/// One partition of a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    /// The topic.
    pub topic: TopicKey,
    /// Partition index.
    pub partition: i32,
}

/// What the client asks of one partition; kept by the session until the client changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchParams {
    /// Next offset to read.
    pub fetch_offset: i64,
    /// Partition max bytes.
    pub max_bytes: i32,
    /// The client's current leader epoch (-1: none).
    pub current_leader_epoch: i32,
    /// Epoch of the last record fetched (-1: none).
    pub last_fetched_epoch: i32,
    /// A follower's own log start offset (-1 from consumers), so the leader knows how far
    /// DeleteRecords has reached on its replicas.
    pub log_start_offset: i64,
}

/// What a fetch returned for one partition, as far as the session must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The response carries record bytes for it.
    pub has_records: bool,
    /// Partition error code.
    pub error_code: i16,
    /// High watermark returned.
    pub high_watermark: i64,
    /// Log start offset returned.
    pub log_start_offset: i64,
    /// The response carries a diverging epoch.
    pub diverging: bool,
}

#[derive(Debug, Clone)]
struct Cached {
    key: PartitionKey,
    params: FetchParams,
    /// Last values the client was told (-1: never, or an error since).
    high_watermark: i64,
    log_start_offset: i64,
}

impl Cached {
    /// Records `o` as told to the client; true when the partition must be in the response.
    fn update(&mut self, o: &Outcome) -> bool {
        let mut respond = o.has_records || o.diverging;
        if self.high_watermark != o.high_watermark {
            self.high_watermark = o.high_watermark;
            respond = true;
        }
        if self.log_start_offset != o.log_start_offset {
            self.log_start_offset = o.log_start_offset;
            respond = true;
        }
        if o.error_code != 0 {
            // Forget the watermark: when the error clears, the partition is sent again.
            self.high_watermark = -1;
            respond = true;
        }
        respond
    }
}

#[derive(Debug)]
struct Session {
    /// The epoch the next request must carry.
    epoch: i32,
    uses_topic_ids: bool,
    created_ms: u64,
    last_used_ms: u64,
    /// Fetch order: partitions that returned something move to the back, so a response-wide
    /// byte limit does not starve the partitions at the end.
    partitions: Vec<Cached>,
    index: HashMap<PartitionKey, usize>,
}

impl Session {
    fn reindex(&mut self) {
        self.index = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key.clone(), i))
            .collect();
        debug_assert_eq!(self.index.len(), self.partitions.len());
    }
}

/// The partitions an incremental fetch must read, in session order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalPlan {
    /// Every partition of the session with its remembered (or just updated) parameters.
    pub partitions: Vec<(PartitionKey, FetchParams)>,
    /// The epoch the session moved to; [`FetchSessionCache::finish_incremental`] checks it.
    pub epoch: i32,
    /// The request forgot every partition: the session is closed, and the response is an
    /// empty sessionless one.
    pub closed: bool,
}

/// Counters a scrape reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Open sessions.
    pub sessions: usize,
    /// Partitions over all open sessions.
    pub partitions: usize,
}

/// One shard's fetch sessions.
#[derive(Debug)]
pub struct FetchSessionCache {
    shard: usize,
    shards: usize,
    slots: usize,
    eviction_ms: u64,
    sessions: HashMap<i32, Session>,
    partitions: usize,
    rng: StdRng,
}

impl FetchSessionCache {
    /// The cache of shard `shard` of `shards`, holding its share of `config.slots`.
    pub fn new(config: SessionConfig, shard: usize, shards: usize, seed: u64) -> Self {
        let shards = shards.max(1);
        debug_assert!(shard < shards, "shard {shard} of {shards}");
        let shard = shard % shards;
        FetchSessionCache {
            shard,
            shards,
            slots: config.shard_slots(shard, shards),
            eviction_ms: config.eviction_ms,
            sessions: HashMap::new(),
            partitions: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The shard that holds session `id` (any shard for an id no shard hands out: the lookup
    /// there answers FETCH_SESSION_ID_NOT_FOUND).
    pub fn owner(id: i32, shards: usize) -> usize {
        usize::try_from(id).map_or(0, |id| id % shards.max(1))
    }

    /// Open sessions and cached partitions.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            sessions: self.sessions.len(),
            partitions: self.partitions,
        }
    }

    /// Closes session `id`; false when it was not open.
    pub fn remove(&mut self, id: i32) -> bool {
        match self.sessions.remove(&id) {
            Some(s) => {
                self.partitions -= s.partitions.len();
                true
            }
            None => false,
        }
    }

    /// Creates a session for a full fetch that read `partitions` (in request order) with the
    /// given outcomes. Returns the new id and the session evicted for it, or
    /// `(INVALID_SESSION_ID, None)` when the cache is full and no session may be evicted.
    pub fn create(
        &mut self,
        now_ms: u64,
        uses_topic_ids: bool,
        partitions: Vec<(PartitionKey, FetchParams, Outcome)>,
    ) -> (i32, Option<i32>) {
        if self.slots == 0 {
            return (INVALID_SESSION_ID, None);
        }
        let mut evicted = None;
        if self.sessions.len() >= self.slots {
            match self.evictable(now_ms, partitions.len()) {
                Some(victim) => {
                    self.remove(victim);
                    evicted = Some(victim);
                }
                None => return (INVALID_SESSION_ID, None),
            }
        }
        let mut cached: Vec<Cached> = Vec::with_capacity(partitions.len());
        let mut seen: HashSet<PartitionKey> = HashSet::with_capacity(partitions.len());
        for (key, params, outcome) in partitions {
            // A partition listed twice keeps its last parameters, as a map would.
            if !seen.insert(key.clone()) {
                if let Some(c) = cached.iter_mut().find(|c| c.key == key) {
                    c.params = params;
                    c.update(&outcome);
                }
                continue;
            }
            let mut c = Cached {
                key,
                params,
                high_watermark: -1,
                log_start_offset: -1,
            };
            c.update(&outcome);
            cached.push(c);
        }
        let id = self.new_id();
        let mut session = Session {
            epoch: next_epoch(INITIAL_EPOCH),
            uses_topic_ids,
            created_ms: now_ms,
            last_used_ms: now_ms,
            partitions: cached,
            index: HashMap::new(),
        };
        session.reindex();
        self.partitions += session.partitions.len();
        self.sessions.insert(id, session);
        debug_assert!(self.sessions.len() <= self.slots);
        (id, evicted)
    }

    /// The session a new one of `size` partitions may replace: the least recently used one if
    /// it has been idle longer than the eviction time; otherwise the smallest (then least
    /// recently used) of the sessions older than the eviction time, if it has fewer
    /// partitions than the new one.
    fn evictable(&self, now_ms: u64, size: usize) -> Option<i32> {
        let idle = |s: &Session| now_ms.saturating_sub(s.last_used_ms);
        let lru = self
            .sessions
            .iter()
            .min_by_key(|(id, s)| (s.last_used_ms, **id))?;
        if idle(lru.1) > self.eviction_ms {
            return Some(*lru.0);
        }
        self.sessions
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.created_ms) > self.eviction_ms)
            .min_by_key(|(id, s)| (s.partitions.len(), s.last_used_ms, **id))
            .filter(|(_, s)| s.partitions.len() < size)
            .map(|(id, _)| *id)
    }

    fn new_id(&mut self) -> i32 {
        // id % shards == shard, id > 0.
        let shards = self.shards as i64;
        let shard = self.shard as i64;
        let max_k = (i64::from(i32::MAX) - shard) / shards;
        let min_k = if shard == 0 { 1 } else { 0 };
        loop {
            let k = self.rng.gen_range(min_k..=max_k);
            let id = i32::try_from(k * shards + shard).unwrap_or(i32::MAX);
            if id > 0
                && !self.sessions.contains_key(&id)
                && Self::owner(id, self.shards) == self.shard
            {
                return id;
            }
        }
    }

    /// The session `id` if the request's `epoch` is its current one; else the error code
    /// the response carries (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH).
    fn session_at(&mut self, id: i32, epoch: i32) -> Result<&mut Session, i16> {
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(error_code::FETCH_SESSION_ID_NOT_FOUND)?;
        if session.epoch != epoch {
            return Err(error_code::INVALID_FETCH_SESSION_EPOCH);
        }
        Ok(session)
    }

    /// First half of an incremental fetch: checks the session and epoch, applies the
    /// request's added/changed partitions and forgotten ones, and moves the session to its next
    /// epoch. Returns the partitions to read, or the Kafka error code for the response.
    pub fn begin_incremental(
        &mut self,
        id: i32,
        epoch: i32,
        uses_topic_ids: bool,
        now_ms: u64,
        changes: Vec<(PartitionKey, FetchParams)>,
        forgotten: &[PartitionKey],
    ) -> Result<IncrementalPlan, i16> {
        let session = self.session_at(id, epoch)?;
        if session.uses_topic_ids != uses_topic_ids {
            return Err(error_code::FETCH_SESSION_TOPIC_ID_ERROR);
        }
        let before = session.partitions.len();
        for (key, params) in changes {
            match session.index.get(&key) {
                Some(&i) => session.partitions[i].params = params,
                None => {
                    session.index.insert(key.clone(), session.partitions.len());
                    session.partitions.push(Cached {
                        key,
                        params,
                        high_watermark: -1,
                        log_start_offset: -1,
                    });
                }
            }
        }
        if !forgotten.is_empty() {
            let gone: HashSet<&PartitionKey> = forgotten.iter().collect();
            session.partitions.retain(|c| !gone.contains(&c.key));
            session.reindex();
        }
        let after = session.partitions.len();
        self.partitions = self.partitions + after - before;
        if after == 0 {
            self.remove(id);
            return Ok(IncrementalPlan {
                partitions: Vec::new(),
                epoch,
                closed: true,
            });
        }
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(error_code::FETCH_SESSION_ID_NOT_FOUND)?;
        session.epoch = next_epoch(session.epoch);
        session.last_used_ms = now_ms.max(session.last_used_ms);
        Ok(IncrementalPlan {
            partitions: session
                .partitions
                .iter()
                .map(|c| (c.key.clone(), c.params))
                .collect(),
            epoch: session.epoch,
            closed: false,
        })
    }

    /// The response of an incremental fetch was replaced by an empty one (a throttled fetch):
    /// forget what the session recorded as told, so the next incremental response carries
    /// every partition's current state again. Unknown ids are ignored.
    pub fn forget_told(&mut self, id: i32) {
        if let Some(session) = self.sessions.get_mut(&id) {
            for c in &mut session.partitions {
                c.high_watermark = -1;
                c.log_start_offset = -1;
            }
        }
    }

    /// Second half of an incremental fetch: `outcomes` are the plan's partitions in plan
    /// order. Records what the client is told and returns, per partition, whether it goes in
    /// the response. Fails with the Kafka error code when the session was closed or moved to
    /// another epoch meanwhile (a duplicate request).
    pub fn finish_incremental(
        &mut self,
        id: i32,
        epoch: i32,
        outcomes: &[(PartitionKey, Outcome)],
    ) -> Result<Vec<bool>, i16> {
        let session = self.session_at(id, epoch)?;
        let mut include = Vec::with_capacity(outcomes.len());
        let mut moved = vec![false; session.partitions.len()];
        for (key, outcome) in outcomes {
            let respond = match session.index.get(key) {
                Some(&i) => {
                    let r = session.partitions[i].update(outcome);
                    moved[i] = r;
                    r
                }
                // Not in the session (cannot happen for a plan's partition): tell the client.
                None => true,
            };
            include.push(respond);
        }
        if moved.iter().any(|m| *m) {
            let all = std::mem::take(&mut session.partitions);
            let (back, front): (Vec<_>, Vec<_>) =
                all.into_iter().zip(moved).partition(|(_, moved)| *moved);
            session.partitions = front.into_iter().chain(back).map(|(c, _)| c).collect();
            session.reindex();
        }
        Ok(include)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, p: i32) -> PartitionKey {
        PartitionKey {
            topic: TopicKey::Name(topic.into()),
            partition: p,
        }
    }

    fn params(offset: i64) -> FetchParams {
        FetchParams {
            fetch_offset: offset,
            max_bytes: 1 << 20,
            current_leader_epoch: -1,
            last_fetched_epoch: -1,
            log_start_offset: -1,
        }
    }

    fn quiet(hw: i64) -> Outcome {
        Outcome {
            has_records: false,
            error_code: 0,
            high_watermark: hw,
            log_start_offset: 0,
            diverging: false,
        }
    }

    fn data(hw: i64) -> Outcome {
        Outcome {
            has_records: true,
            ..quiet(hw)
        }
    }

    fn cache(slots: usize) -> FetchSessionCache {
        FetchSessionCache::new(
            SessionConfig {
                slots,
                eviction_ms: 1000,
            },
            0,
            1,
            7,
        )
    }

    /// A session over t-0..t-(n-1), all at offset 0 with hw 10.
    fn session(c: &mut FetchSessionCache, now: u64, n: i32) -> i32 {
        let parts = (0..n)
            .map(|p| (key("t", p), params(0), quiet(10)))
            .collect();
        c.create(now, false, parts).0
    }

    #[test]
    fn classifies_session_id_and_epoch() {
        assert_eq!(FetchKind::of(0, -1), FetchKind::Sessionless { close: None });
        assert_eq!(FetchKind::of(0, 0), FetchKind::Full { close: None });
        assert_eq!(FetchKind::of(5, 0), FetchKind::Full { close: Some(5) });
        assert_eq!(
            FetchKind::of(5, -1),
            FetchKind::Sessionless { close: Some(5) }
        );
        assert_eq!(
            FetchKind::of(5, 3),
            FetchKind::Incremental { id: 5, epoch: 3 }
        );
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(i32::MAX), 1);
        assert_eq!(next_epoch(-1), -1);
    }

    #[test]
    fn create_then_incremental_reads_remembered_positions() {
        let mut c = cache(10);
        let id = session(&mut c, 0, 3);
        assert_ne!(id, INVALID_SESSION_ID);
        assert_eq!(
            c.stats(),
            CacheStats {
                sessions: 1,
                partitions: 3
            }
        );
        // Epoch 1 with only t-1 moved to offset 5.
        let plan = c
            .begin_incremental(id, 1, false, 1, vec![(key("t", 1), params(5))], &[])
            .unwrap();
        assert!(!plan.closed);
        assert_eq!(plan.epoch, 2);
        let offsets: Vec<_> = plan
            .partitions
            .iter()
            .map(|(k, p)| (k.partition, p.fetch_offset))
            .collect();
        assert_eq!(offsets, vec![(0, 0), (1, 5), (2, 0)]);
    }

    #[test]
    fn a_throttled_response_is_told_again() {
        let mut c = cache(10);
        let id = session(&mut c, 0, 2);
        // t-0's watermark moved to 11 and the session recorded it, but the response was
        // replaced by a throttled empty one: the client never saw it.
        let plan = c.begin_incremental(id, 1, false, 1, vec![], &[]).unwrap();
        let outcomes = vec![(key("t", 0), quiet(11)), (key("t", 1), quiet(10))];
        assert_eq!(
            c.finish_incremental(id, plan.epoch, &outcomes).unwrap(),
            vec![true, false]
        );
        c.forget_told(id);
        c.forget_told(id + 1); // unknown: ignored
                               // The next quiet fetch reports every partition's state again.
        let plan = c.begin_incremental(id, 2, false, 2, vec![], &[]).unwrap();
        let outcomes: Vec<_> = plan
            .partitions
            .iter()
            .map(|(k, _)| (k.clone(), quiet(if k.partition == 0 { 11 } else { 10 })))
            .collect();
        assert_eq!(
            c.finish_incremental(id, plan.epoch, &outcomes).unwrap(),
            vec![true, true]
        );
    }

    #[test]
    fn incremental_adds_and_forgets() {
        let mut c = cache(10);
        let id = session(&mut c, 0, 2);
        let plan = c
            .begin_incremental(
                id,
                1,
                false,
                1,
                vec![(key("u", 0), params(0))],
                &[key("t", 0)],
            )
            .unwrap();
        let keys: Vec<_> = plan.partitions.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![key("t", 1), key("u", 0)]);
        assert_eq!(c.stats().partitions, 2);
        // The added partition was never reported: it is in the next response even if quiet.
        let include = c
            .finish_incremental(
                id,
                plan.epoch,
                &[(key("t", 1), quiet(10)), (key("u", 0), quiet(0))],
            )
            .unwrap();
        assert_eq!(include, vec![false, true]);
        // Forgetting everything closes the session.
        let plan = c
            .begin_incremental(id, 2, false, 2, vec![], &[key("t", 1), key("u", 0)])
            .unwrap();
        assert!(plan.closed && plan.partitions.is_empty());
        assert_eq!(c.stats(), CacheStats::default());
    }

    #[test]
    fn response_keeps_only_changed_partitions_and_rotates_them_back() {
        let mut c = cache(10);
        let id = session(&mut c, 0, 4);
        let plan = c.begin_incremental(id, 1, false, 1, vec![], &[]).unwrap();
        let outcomes = vec![
            (key("t", 0), data(11)),  // records
            (key("t", 1), quiet(10)), // unchanged: omitted
            (key("t", 2), quiet(12)), // new high watermark
            (
                key("t", 3),
                Outcome {
                    error_code: 1,
                    high_watermark: -1,
                    ..quiet(10)
                },
            ),
        ];
        let include = c.finish_incremental(id, plan.epoch, &outcomes).unwrap();
        assert_eq!(include, vec![true, false, true, true]);
        // Partitions that answered go to the back of the fetch order.
        let plan = c.begin_incremental(id, 2, false, 2, vec![], &[]).unwrap();
        let order: Vec<_> = plan.partitions.iter().map(|(k, _)| k.partition).collect();
        assert_eq!(order, vec![1, 0, 2, 3]);
        // A partition that recovers from its error is reported again; quiet ones are not.
        let outcomes: Vec<_> = plan
            .partitions
            .iter()
            .map(|(k, _)| {
                (
                    k.clone(),
                    if k.partition == 3 {
                        quiet(10)
                    } else {
                        quiet(c_hw(k))
                    },
                )
            })
            .collect();
        let include = c.finish_incremental(id, plan.epoch, &outcomes).unwrap();
        assert_eq!(include, vec![false, false, false, true]);
    }

    fn c_hw(k: &PartitionKey) -> i64 {
        match k.partition {
            0 => 11,
            2 => 12,
            _ => 10,
        }
    }

    #[test]
    fn session_errors() {
        let mut c = cache(10);
        let id = session(&mut c, 0, 1);
        assert_eq!(
            c.begin_incremental(id + 1, 1, false, 0, vec![], &[]),
            Err(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
        assert_eq!(
            c.begin_incremental(id, 2, false, 0, vec![], &[]),
            Err(error_code::INVALID_FETCH_SESSION_EPOCH)
        );
        assert_eq!(
            c.begin_incremental(id, 1, true, 0, vec![], &[]),
            Err(error_code::FETCH_SESSION_TOPIC_ID_ERROR)
        );
        // A failed request does not move the epoch.
        let plan = c.begin_incremental(id, 1, false, 0, vec![], &[]).unwrap();
        // A duplicate of the same request is refused, and the first one's answer too, since
        // the session moved on.
        assert_eq!(
            c.begin_incremental(id, 1, false, 0, vec![], &[]),
            Err(error_code::INVALID_FETCH_SESSION_EPOCH)
        );
        let again = c.begin_incremental(id, 2, false, 0, vec![], &[]).unwrap();
        assert_eq!(
            c.finish_incremental(id, plan.epoch, &[(key("t", 0), quiet(10))]),
            Err(error_code::INVALID_FETCH_SESSION_EPOCH)
        );
        assert!(c
            .finish_incremental(id, again.epoch, &[(key("t", 0), quiet(10))])
            .is_ok());
        assert!(c.remove(id));
        assert!(!c.remove(id));
        assert_eq!(
            c.begin_incremental(id, 3, false, 0, vec![], &[]),
            Err(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
    }

    #[test]
    fn eviction_prefers_idle_then_small_old_sessions() {
        let mut c = cache(2);
        let a = session(&mut c, 0, 1);
        let b = session(&mut c, 0, 5);
        // Full, nothing idle or old enough: no session for the newcomer.
        assert_eq!(session(&mut c, 500, 9), INVALID_SESSION_ID);
        // b is used; a goes idle past the eviction time and is evicted by any newcomer.
        c.begin_incremental(b, 1, false, 1500, vec![], &[]).unwrap();
        let (d, evicted) = c.create(1600, false, vec![(key("x", 0), params(0), quiet(0))]);
        assert_ne!(d, INVALID_SESSION_ID);
        assert_eq!(evicted, Some(a));
        assert_eq!(
            c.begin_incremental(a, 1, false, 1600, vec![], &[]),
            Err(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
        // Nobody idle now (d, b recently used); d is young, b is old but larger than 3.
        assert_eq!(session(&mut c, 1700, 3), INVALID_SESSION_ID);
        // A bigger newcomer evicts the smallest old session: b (5 partitions) once d is
        // still young; a newcomer with 6 partitions may evict b.
        let (e, evicted) = c.create(
            1700,
            false,
            (0..6).map(|p| (key("y", p), params(0), quiet(0))).collect(),
        );
        assert_ne!(e, INVALID_SESSION_ID);
        assert_eq!(evicted, Some(b));
        assert_eq!(
            c.begin_incremental(b, 2, false, 1700, vec![], &[]),
            Err(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
        assert_eq!(
            c.stats(),
            CacheStats {
                sessions: 2,
                partitions: 7
            }
        );
    }

    #[test]
    fn zero_slots_never_create() {
        let mut c = cache(0);
        assert_eq!(session(&mut c, 0, 1), INVALID_SESSION_ID);
    }

    #[test]
    fn ids_name_their_shard() {
        let config = SessionConfig {
            slots: 10,
            eviction_ms: 1,
        };
        assert_eq!(
            (0..3).map(|s| config.shard_slots(s, 3)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        for shard in 0..3 {
            let mut c = FetchSessionCache::new(config, shard, 3, shard as u64);
            for _ in 0..3 {
                let id = session(&mut c, 0, 1);
                assert!(id > 0);
                assert_eq!(FetchSessionCache::owner(id, 3), shard);
            }
        }
        assert_eq!(FetchSessionCache::owner(-5, 3), 0);
    }

    #[test]
    fn duplicate_partitions_in_a_full_fetch_keep_one_entry() {
        let mut c = cache(1);
        let (id, _) = c.create(
            0,
            true,
            vec![
                (key("t", 0), params(0), quiet(1)),
                (key("t", 0), params(4), quiet(1)),
            ],
        );
        assert_eq!(c.stats().partitions, 1);
        let plan = c.begin_incremental(id, 1, true, 0, vec![], &[]).unwrap();
        assert_eq!(plan.partitions, vec![(key("t", 0), params(4))]);
    }
}

#[cfg(test)]
mod proptests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Advance the clock, then create a session over `n` partitions.
        Create {
            advance: u64,
            n: i32,
        },
        /// An incremental fetch of the `pick`-th known session (or an unknown id), with the
        /// right epoch or not, moving `moved` partitions and forgetting `forget` ones, then
        /// finishing it with the given watermarks.
        Incremental {
            pick: usize,
            good_epoch: bool,
            moved: Vec<(i32, i64)>,
            forget: Vec<i32>,
            hw: i64,
        },
        Remove {
            pick: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..700, 0i32..6).prop_map(|(advance, n)| Op::Create { advance, n }),
            (
                0usize..8,
                any::<bool>(),
                proptest::collection::vec((0i32..8, 0i64..50), 0..4),
                proptest::collection::vec(0i32..8, 0..3),
                0i64..4,
            )
                .prop_map(|(pick, good_epoch, moved, forget, hw)| Op::Incremental {
                    pick,
                    good_epoch,
                    moved,
                    forget,
                    hw
                }),
            (0usize..8).prop_map(|pick| Op::Remove { pick }),
        ]
    }

    fn key(p: i32) -> PartitionKey {
        PartitionKey {
            topic: TopicKey::Name("t".into()),
            partition: p,
        }
    }

    fn params(offset: i64) -> FetchParams {
        FetchParams {
            fetch_offset: offset,
            max_bytes: 100,
            current_leader_epoch: -1,
            last_fetched_epoch: -1,
            log_start_offset: -1,
        }
    }

    /// A model session: its next epoch and partition -> fetch offset.
    type Model = BTreeMap<i32, (i32, BTreeMap<i32, i64>)>;

    proptest! {
        /// The cache against a model: epochs, remembered positions, add/forget, accounting,
        /// ids naming the shard, never more sessions than slots.
        #[test]
        fn cache_matches_model(ops in proptest::collection::vec(op(), 1..60), shard in 0usize..3) {
            let slots = 4;
            let mut c = FetchSessionCache::new(
                SessionConfig { slots: slots * 3, eviction_ms: 1000 },
                shard,
                3,
                11,
            );
            let mut model: Model = BTreeMap::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Create { advance, n } => {
                        now += advance;
                        let parts = (0..n).map(|p| (key(p), params(0), Outcome {
                            has_records: false, error_code: 0, high_watermark: 0,
                            log_start_offset: 0, diverging: false,
                        })).collect();
                        let (id, evicted) = c.create(now, false, parts);
                        if let Some(gone) = evicted {
                            prop_assert!(model.remove(&gone).is_some());
                        }
                        if id != INVALID_SESSION_ID {
                            prop_assert_eq!(FetchSessionCache::owner(id, 3), shard);
                            prop_assert!(!model.contains_key(&id));
                            model.insert(id, (1, (0..n).map(|p| (p, 0)).collect()));
                        } else {
                            prop_assert!(evicted.is_none());
                            prop_assert_eq!(model.len(), slots);
                        }
                    }
                    Op::Incremental { pick, good_epoch, moved, forget, hw } => {
                        let known: Vec<i32> = model.keys().copied().collect();
                        let id = known.get(pick).copied().unwrap_or(i32::MAX);
                        let expected = model.get(&id).map(|m| m.0);
                        let epoch = match (expected, good_epoch) {
                            (Some(e), true) => e,
                            (Some(e), false) => next_epoch(e),
                            (None, _) => 1,
                        };
                        let changes: Vec<_> = moved.iter().map(|(p, o)| (key(*p), params(*o))).collect();
                        let forgotten: Vec<_> = forget.iter().map(|p| key(*p)).collect();
                        let r = c.begin_incremental(id, epoch, false, now, changes, &forgotten);
                        match (expected, good_epoch) {
                            (None, _) => prop_assert_eq!(r, Err(error_code::FETCH_SESSION_ID_NOT_FOUND)),
                            (Some(_), false) => prop_assert_eq!(r, Err(error_code::INVALID_FETCH_SESSION_EPOCH)),
                            (Some(_), true) => {
                                let plan = r.unwrap();
                                let m = model.get_mut(&id).unwrap();
                                for (p, o) in &moved {
                                    m.1.insert(*p, *o);
                                }
                                for p in &forget {
                                    m.1.remove(p);
                                }
                                if m.1.is_empty() {
                                    prop_assert!(plan.closed);
                                    model.remove(&id);
                                    continue;
                                }
                                m.0 = next_epoch(m.0);
                                prop_assert_eq!(plan.epoch, m.0);
                                let got: BTreeMap<i32, i64> = plan.partitions.iter()
                                    .map(|(k, p)| (k.partition, p.fetch_offset)).collect();
                                prop_assert_eq!(&got, &m.1);
                                prop_assert_eq!(got.len(), plan.partitions.len());
                                let outcomes: Vec<_> = plan.partitions.iter().map(|(k, _)| (k.clone(), Outcome {
                                    has_records: false, error_code: 0, high_watermark: hw,
                                    log_start_offset: 0, diverging: false,
                                })).collect();
                                let include = c.finish_incremental(id, plan.epoch, &outcomes).unwrap();
                                prop_assert_eq!(include.len(), outcomes.len());
                            }
                        }
                    }
                    Op::Remove { pick } => {
                        let known: Vec<i32> = model.keys().copied().collect();
                        if let Some(id) = known.get(pick) {
                            prop_assert!(c.remove(*id));
                            model.remove(id);
                        }
                    }
                }
                let st = c.stats();
                prop_assert_eq!(st.sessions, model.len());
                prop_assert!(st.sessions <= slots);
                prop_assert_eq!(st.partitions, model.values().map(|m| m.1.len()).sum::<usize>());
            }
        }
    }
}
