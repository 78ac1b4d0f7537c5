//! Client quotas as Kafka has them (KIP-13, KIP-55, KIP-219, KIP-546), sans-IO.
//!
//! - The model: a [`QuotaEntity`] is a `user`, a `client-id` or both, each component a name
//!   or the default (Kafka's `<default>`, a null name on the wire); its values are
//!   `producer_byte_rate`, `consumer_byte_rate` and `request_percentage`. [`ClientQuotas`]
//!   is what the cluster metadata image holds; [`QuotaAlteration`] is one entity's change,
//!   validated the way Kafka's controller does (unknown key or entity type: INVALID_REQUEST).
//! - Describe filters ([`QuotaFilter`]): match types exact, default and any, `strict`.
//! - Resolution ([`ClientQuotas::resolve`]): which entity's quota applies to a (user,
//!   client-id) pair, in Kafka's order, and the sensor the traffic counts against.
//! - Measurement ([`QuotaSensors`]): a rate over `quota.window.num` windows of
//!   `quota.window.size.seconds` each, and the throttle time of a violation, as Kafka's
//!   `Rate`/`SampledStat` and `ClientQuotaManager` compute them. The caller passes the clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Entity type `user` (the principal's name).
pub const USER: &str = "user";
/// Entity type `client-id` (the request header's client id).
pub const CLIENT_ID: &str = "client-id";
/// Bytes per second a client may produce to this broker.
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
/// Bytes per second a client may fetch from this broker.
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
/// Percentage of one request-handler thread a client may use over the quota window (100 is
/// one whole thread; Sluice counts a request's time on its shard thread, see
/// [`request_time_value`]).
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
/// The keys a client quota may set.
pub const QUOTA_KEYS: [&str; 3] = [PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE];

/// Kafka's `quota.window.num` default.
pub const DEFAULT_WINDOW_NUM: usize = 11;
/// Kafka's `quota.window.size.seconds` default.
pub const DEFAULT_WINDOW_SIZE_SECONDS: u64 = 1;

/// One component of an entity: a specific name or the default entity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityName {
    /// Kafka's `<default>` entity (a null name on the wire).
    Default,
    /// A specific user or client id.
    Named(String),
}

impl EntityName {
    /// The wire form: `None` for the default.
    pub fn as_wire(&self) -> Option<&str> {
        match self {
            EntityName::Default => None,
            EntityName::Named(n) => Some(n),
        }
    }
}

/// A quota entity: a user, a client id, or both (at least one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity {
    /// The `user` component.
    pub user: Option<EntityName>,
    /// The `client-id` component.
    pub client_id: Option<EntityName>,
}

/// Why a request about quotas is invalid (Kafka's INVALID_REQUEST, with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidQuota(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, InvalidQuota> {
    Err(InvalidQuota(msg.into()))
}

impl QuotaEntity {
    /// An entity from its wire components (`(entity_type, name)`; a null name is the
    /// default). Unknown or repeated types, no component and empty names are invalid.
    pub fn from_components<'a>(
        components: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<QuotaEntity, InvalidQuota> {
        let mut entity = QuotaEntity {
            user: None,
            client_id: None,
        };
        for (entity_type, name) in components {
            let slot = match entity_type {
                USER => &mut entity.user,
                CLIENT_ID => &mut entity.client_id,
                other => return invalid(format!("unknown quota entity type '{other}'")),
            };
            if slot.is_some() {
                return invalid(format!("duplicate quota entity type '{entity_type}'"));
            }
            *slot = Some(match name {
                None => EntityName::Default,
                Some("") => return invalid(format!("empty {entity_type} entity name")),
                Some(n) => EntityName::Named(n.to_string()),
            });
        }
        if entity.user.is_none() && entity.client_id.is_none() {
            return invalid("a quota entity needs at least one component");
        }
        Ok(entity)
    }

    /// The wire components, `user` first.
    pub fn components(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut out = Vec::with_capacity(2);
        if let Some(u) = &self.user {
            out.push((USER, u.as_wire()));
        }
        if let Some(c) = &self.client_id {
            out.push((CLIENT_ID, c.as_wire()));
        }
        out
    }
}

impl std::fmt::Display for QuotaEntity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .components()
            .into_iter()
            .map(|(t, n)| format!("{t}={}", n.unwrap_or("<default>")))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A quota value (a double on the wire). Compared by bits so images stay `Eq`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QuotaValue(pub f64);

impl PartialEq for QuotaValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for QuotaValue {}

/// Checks one key and value as Kafka's controller does: a known key; the byte rates are
/// whole numbers; every value is finite and positive.
pub fn validate_value(key: &str, value: f64) -> Result<(), InvalidQuota> {
    if !QUOTA_KEYS.contains(&key) {
        return invalid(format!("unknown quota key '{key}'"));
    }
    if !value.is_finite() || value <= 0.0 {
        return invalid(format!(
            "quota {key} must be a positive number, got {value}"
        ));
    }
    if key != REQUEST_PERCENTAGE && (value.fract() != 0.0 || value > i64::MAX as f64) {
        return invalid(format!("quota {key} must be a whole number, got {value}"));
    }
    Ok(())
}

/// One entity's change: each op sets (`Some`) or removes (`None`) a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaAlteration {
    /// The entity.
    pub entity: QuotaEntity,
    /// The key changes, applied in order.
    pub ops: Vec<(String, Option<QuotaValue>)>,
}

impl QuotaAlteration {
    /// Checks every op (a removal needs only a known key) and that no key appears twice.
    pub fn validate(&self) -> Result<(), InvalidQuota> {
        for (i, (key, value)) in self.ops.iter().enumerate() {
            match value {
                Some(v) => validate_value(key, v.0)?,
                None if !QUOTA_KEYS.contains(&key.as_str()) => {
                    return invalid(format!("unknown quota key '{key}'"))
                }
                None => {}
            }
            if self.ops[..i].iter().any(|(k, _)| k == key) {
                return invalid(format!(
                    "quota key '{key}' appears twice for {}",
                    self.entity
                ));
            }
        }
        Ok(())
    }
}

/// One stored entity and its values (the snapshot form of [`ClientQuotas`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaEntry {
    /// The entity.
    pub entity: QuotaEntity,
    /// Its values by key.
    pub values: BTreeMap<String, QuotaValue>,
}

/// Every configured client quota (the metadata image's `client_quotas`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<QuotaEntry>", into = "Vec<QuotaEntry>")]
pub struct ClientQuotas {
    entries: BTreeMap<QuotaEntity, BTreeMap<String, QuotaValue>>,
    /// Whether some entity sets `request_percentage` (derived from `entries`, kept so the
    /// request path asks one flag).
    request_quotas: bool,
}

fn any_request_quota(entries: &BTreeMap<QuotaEntity, BTreeMap<String, QuotaValue>>) -> bool {
    entries.values().any(|v| v.contains_key(REQUEST_PERCENTAGE))
}

impl From<Vec<QuotaEntry>> for ClientQuotas {
    fn from(v: Vec<QuotaEntry>) -> Self {
        let entries: BTreeMap<_, _> = v
            .into_iter()
            .filter(|e| !e.values.is_empty())
            .map(|e| (e.entity, e.values))
            .collect();
        ClientQuotas {
            request_quotas: any_request_quota(&entries),
            entries,
        }
    }
}

impl From<ClientQuotas> for Vec<QuotaEntry> {
    fn from(q: ClientQuotas) -> Self {
        q.entries
            .into_iter()
            .map(|(entity, values)| QuotaEntry { entity, values })
            .collect()
    }
}

/// Which quota a sensor measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// `producer_byte_rate`: request bytes of Produce.
    Produce,
    /// `consumer_byte_rate`: response bytes of Fetch.
    Fetch,
    /// `request_percentage`: the thread time of requests, as a percentage of one thread.
    Request,
}

impl QuotaKind {
    /// The quota key this kind enforces.
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => PRODUCER_BYTE_RATE,
            QuotaKind::Fetch => CONSUMER_BYTE_RATE,
            QuotaKind::Request => REQUEST_PERCENTAGE,
        }
    }
}

/// The sensor a client's traffic counts against: Kafka's metric tags (user, client-id),
/// each the client's own name or empty, depending on the entity whose quota applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SensorKey {
    /// The quota.
    pub kind: QuotaKind,
    /// The user tag.
    pub user: String,
    /// The client-id tag.
    pub client_id: String,
}

impl ClientQuotas {
    /// Whether no quota is configured (the produce and fetch paths check this first).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some entity sets `request_percentage` (the request path checks this before
    /// timing a request).
    pub fn has_request_quotas(&self) -> bool {
        self.request_quotas
    }

    /// The values of one entity.
    pub fn get(&self, entity: &QuotaEntity) -> Option<&BTreeMap<String, QuotaValue>> {
        self.entries.get(entity)
    }

    /// Every entity and its values.
    pub fn iter(&self) -> impl Iterator<Item = (&QuotaEntity, &BTreeMap<String, QuotaValue>)> {
        self.entries.iter()
    }

    /// Checks every alteration; one invalid alteration refuses them all.
    pub fn validate(alterations: &[QuotaAlteration]) -> Result<(), InvalidQuota> {
        alterations.iter().try_for_each(QuotaAlteration::validate)
    }

    /// Applies validated alterations; an entity left without values is removed.
    pub fn apply(&mut self, alterations: &[QuotaAlteration]) -> Result<(), InvalidQuota> {
        Self::validate(alterations)?;
        for a in alterations {
            let values = self.entries.entry(a.entity.clone()).or_default();
            for (key, value) in &a.ops {
                match value {
                    Some(v) => values.insert(key.clone(), *v),
                    None => values.remove(key),
                };
            }
            if values.is_empty() {
                self.entries.remove(&a.entity);
            }
        }
        debug_assert!(self.entries.values().all(|v| !v.is_empty()));
        self.request_quotas = any_request_quota(&self.entries);
        Ok(())
    }

    /// Whether `alteration` is in effect (every set key has its value, every removed key is
    /// gone): what an AlterClientQuotas handler waits for in its broker's image.
    pub fn reflects(&self, alteration: &QuotaAlteration) -> bool {
        let values = self.entries.get(&alteration.entity);
        alteration.ops.iter().all(|(k, v)| match (v, values) {
            (Some(v), Some(vals)) => vals.get(k) == Some(v),
            (Some(_), None) => false,
            (None, vals) => vals.is_none_or(|vals| !vals.contains_key(k)),
        })
    }

    /// The entities a describe filter selects, with their values.
    pub fn describe<'a>(
        &'a self,
        filter: &'a QuotaFilter,
    ) -> impl Iterator<Item = (&'a QuotaEntity, &'a BTreeMap<String, QuotaValue>)> + 'a {
        self.entries.iter().filter(|(e, _)| filter.matches(e))
    }

    /// The quota of `kind` that applies to `user` with `client_id`, and the sensor its
    /// traffic counts against, in Kafka's order: user+client-id, user+default client-id,
    /// user, default user+client-id, default user+default client-id, default user,
    /// client-id, default client-id.
    pub fn resolve(
        &self,
        kind: QuotaKind,
        user: &str,
        client_id: &str,
    ) -> Option<(f64, SensorKey)> {
        use EntityName::{Default, Named};
        let key = kind.key();
        let named = |s: &str| Some(Named(s.to_string()));
        // (entity, whether the sensor is per user, per client id)
        let order: [(Option<EntityName>, Option<EntityName>, bool, bool); 8] = [
            (named(user), named(client_id), true, true),
            (named(user), Some(Default), true, true),
            (named(user), None, true, false),
            (Some(Default), named(client_id), true, true),
            (Some(Default), Some(Default), true, true),
            (Some(Default), None, true, false),
            (None, named(client_id), false, true),
            (None, Some(Default), false, true),
        ];
        for (u, c, by_user, by_client) in order {
            let entity = QuotaEntity {
                user: u,
                client_id: c,
            };
            if let Some(v) = self.entries.get(&entity).and_then(|v| v.get(key)) {
                let sensor = SensorKey {
                    kind,
                    user: if by_user {
                        user.to_string()
                    } else {
                        String::new()
                    },
                    client_id: if by_client {
                        client_id.to_string()
                    } else {
                        String::new()
                    },
                };
                return Some((v.0, sensor));
            }
        }
        None
    }
}

/// How one filter component matches an entity component (DescribeClientQuotas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentMatch {
    /// Exactly this name (match type 0).
    Exact(String),
    /// The default entity (match type 1).
    Default,
    /// Any specified entity, named or default (match type 2).
    Specified,
}

/// A DescribeClientQuotas filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaFilter {
    /// Per entity type, how it must match.
    pub components: Vec<(String, ComponentMatch)>,
    /// Entities with types beyond the filter's are left out.
    pub strict: bool,
}

impl QuotaFilter {
    /// A filter from its wire components `(entity_type, match_type, match)`; unknown or
    /// repeated types and inconsistent match types are invalid.
    pub fn from_components<'a>(
        components: impl IntoIterator<Item = (&'a str, i8, Option<&'a str>)>,
        strict: bool,
    ) -> Result<QuotaFilter, InvalidQuota> {
        let mut out: Vec<(String, ComponentMatch)> = Vec::new();
        for (entity_type, match_type, name) in components {
            if entity_type != USER && entity_type != CLIENT_ID {
                return invalid(format!("unknown quota entity type '{entity_type}'"));
            }
            if out.iter().any(|(t, _)| t == entity_type) {
                return invalid(format!("duplicate filter entity type '{entity_type}'"));
            }
            let m = match (match_type, name) {
                (0, Some(n)) => ComponentMatch::Exact(n.to_string()),
                (0, None) => return invalid("match type exact needs a name"),
                (1, None) => ComponentMatch::Default,
                (2, None) => ComponentMatch::Specified,
                (1 | 2, Some(_)) => return invalid("match types default and any take no name"),
                (other, _) => return invalid(format!("unknown match type {other}")),
            };
            out.push((entity_type.to_string(), m));
        }
        Ok(QuotaFilter {
            components: out,
            strict,
        })
    }

    /// Whether `entity` is selected.
    pub fn matches(&self, entity: &QuotaEntity) -> bool {
        for (entity_type, m) in &self.components {
            let component = if entity_type == USER {
                &entity.user
            } else {
                &entity.client_id
            };
            let ok = match (m, component) {
                (_, None) => false,
                (ComponentMatch::Specified, Some(_)) => true,
                (ComponentMatch::Default, Some(c)) => *c == EntityName::Default,
                (ComponentMatch::Exact(n), Some(c)) => c.as_wire() == Some(n.as_str()),
            };
            if !ok {
                return false;
            }
        }
        if self.strict {
            let named = |t: &str| self.components.iter().any(|(ft, _)| ft == t);
            (entity.user.is_none() || named(USER))
                && (entity.client_id.is_none() || named(CLIENT_ID))
        } else {
            true
        }
    }
}

/// One window of a rate: when it started and what was recorded in it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    start_ms: i64,
    total: f64,
}

/// A rate over the last `windows` windows of `window_ms` each (Kafka's `Rate` over a
/// `SampledStat`): a window starts at the first record after the previous one ended; the
/// rate divides the windows' total by the elapsed time, counted as at least `windows - 1`
/// full windows (so a new sensor does not see a tiny elapsed time).
#[derive(Debug, Clone, Default)]
pub struct Rate {
    samples: VecDeque<Sample>,
    last_record_ms: i64,
}

impl Rate {
    fn purge(&mut self, window_ms: i64, windows: usize, now_ms: i64) {
        let max_age = window_ms * windows as i64;
        while self
            .samples
            .front()
            .is_some_and(|s| now_ms - s.start_ms >= max_age)
        {
            self.samples.pop_front();
        }
    }

    /// Adds `value` at `now_ms` (a negative value takes back an earlier record).
    pub fn record(&mut self, value: f64, window_ms: i64, windows: usize, now_ms: i64) {
        self.purge(window_ms, windows, now_ms);
        self.last_record_ms = now_ms;
        match self.samples.back_mut() {
            Some(s) if now_ms - s.start_ms < window_ms => s.total += value,
            _ => {
                self.samples.push_back(Sample {
                    start_ms: now_ms,
                    total: value,
                });
                while self.samples.len() > windows {
                    self.samples.pop_front();
                }
            }
        }
        debug_assert!(self.samples.len() <= windows);
    }

    /// The elapsed time the rate is measured over, in ms.
    pub fn window_size_ms(&mut self, window_ms: i64, windows: usize, now_ms: i64) -> i64 {
        self.purge(window_ms, windows, now_ms);
        let oldest = self.samples.front().map_or(now_ms, |s| s.start_ms);
        let mut elapsed = (now_ms - oldest).max(0);
        let full = elapsed / window_ms;
        let min_full = windows.saturating_sub(1) as i64;
        if full < min_full {
            elapsed += (min_full - full) * window_ms;
        }
        elapsed.max(1)
    }

    /// Units per second at `now_ms`.
    pub fn rate(&mut self, window_ms: i64, windows: usize, now_ms: i64) -> f64 {
        let size = self.window_size_ms(window_ms, windows, now_ms);
        let total: f64 = self.samples.iter().map(|s| s.total).sum();
        total / (size as f64 / 1000.0)
    }
}

/// One broker's quota sensors, shared by its shards (a client's connections may sit on any
/// shard, and Kafka enforces the quota on the broker's whole traffic). Only traffic that a
/// quota applies to takes the lock.
#[derive(Debug)]
pub struct QuotaSensors {
    window_ms: i64,
    windows: usize,
    state: Mutex<SensorState>,
}

#[derive(Debug, Default)]
struct SensorState {
    sensors: HashMap<SensorKey, Rate>,
    last_sweep_ms: i64,
}

/// How often idle sensors are dropped.
const SWEEP_INTERVAL_MS: i64 = 60_000;

impl QuotaSensors {
    /// Sensors measuring over `windows` windows of `window_ms` each.
    pub fn new(windows: usize, window_ms: u64) -> QuotaSensors {
        assert!(
            windows >= 1 && window_ms >= 1,
            "quota windows must not be empty"
        );
        QuotaSensors {
            window_ms: window_ms.min(i64::MAX as u64) as i64,
            windows,
            state: Mutex::new(SensorState::default()),
        }
    }

    /// The longest throttle: the whole measured span (`windows` × `window_ms`).
    pub fn max_throttle_ms(&self) -> i64 {
        self.window_ms.saturating_mul(self.windows as i64)
    }

    /// One window (`quota.window.size.seconds`): the longest request-quota throttle, as
    /// Kafka's request quota manager bounds it.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Records `value` against `sensor` under the quota `bound` (units per second) and
    /// returns the throttle time in ms: 0 within the quota, else how long the client must
    /// wait for its rate to come back to the bound, `(rate - bound) / bound × window`, at
    /// most [`Self::max_throttle_ms`].
    pub fn record(&self, sensor: &SensorKey, bound: f64, value: f64, now_ms: i64) -> i32 {
        self.record_bounded(sensor, bound, value, now_ms, self.max_throttle_ms())
    }

    /// [`Self::record`] with the throttle at most `max_throttle_ms` (at least 0).
    pub fn record_bounded(
        &self,
        sensor: &SensorKey,
        bound: f64,
        value: f64,
        now_ms: i64,
        max_throttle_ms: i64,
    ) -> i32 {
        debug_assert!(bound > 0.0);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep(&mut state, now_ms);
        let (w, n) = (self.window_ms, self.windows);
        let rate = match state.sensors.get_mut(sensor) {
            Some(r) => r,
            None => state.sensors.entry(sensor.clone()).or_default(),
        };
        rate.record(value, w, n, now_ms);
        let measured = rate.rate(w, n, now_ms);
        if measured <= bound {
            return 0;
        }
        let window = rate.window_size_ms(w, n, now_ms) as f64;
        let throttle = ((measured - bound) / bound * window).round();
        let max = max_throttle_ms.clamp(0, i32::MAX as i64) as f64;
        // NaN (a bound that is not positive) is no throttle.
        if throttle.is_nan() {
            return 0;
        }
        throttle.clamp(0.0, max) as i32
    }

    /// Takes back a recorded value (a throttled fetch whose records were not sent).
    pub fn unrecord(&self, sensor: &SensorKey, value: f64, now_ms: i64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rate) = state.sensors.get_mut(sensor) {
            rate.record(-value, self.window_ms, self.windows, now_ms);
        }
    }

    /// The measured rate of `sensor` (tests and metrics).
    pub fn rate(&self, sensor: &SensorKey, now_ms: i64) -> Option<f64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (w, n) = (self.window_ms, self.windows);
        state.sensors.get_mut(sensor).map(|r| r.rate(w, n, now_ms))
    }

    fn sweep(&self, state: &mut SensorState, now_ms: i64) {
        if now_ms - state.last_sweep_ms < SWEEP_INTERVAL_MS {
            return;
        }
        state.last_sweep_ms = now_ms;
        let idle = self.max_throttle_ms();
        state
            .sensors
            .retain(|_, r| now_ms - r.last_record_ms < idle.max(SWEEP_INTERVAL_MS));
    }
}

/// What a request's thread time counts as under `request_percentage`: percent of one
/// thread × seconds, so that its rate per second is the percentage of a thread used (Kafka
/// records `nanos × 100 / 1e9` the same way).
pub fn request_time_value(spent: std::time::Duration) -> f64 {
    spent.as_secs_f64() * 100.0
}

/// The user name of a principal as quota entities name it (`User:alice` is `alice`).
pub fn user_of(principal: &str) -> &str {
    principal.strip_prefix("User:").unwrap_or(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(user: Option<Option<&str>>, client: Option<Option<&str>>) -> QuotaEntity {
        let name = |n: Option<&str>| n.map_or(EntityName::Default, |n| EntityName::Named(n.into()));
        QuotaEntity {
            user: user.map(name),
            client_id: client.map(name),
        }
    }

    fn set(e: QuotaEntity, key: &str, v: f64) -> QuotaAlteration {
        QuotaAlteration {
            entity: e,
            ops: vec![(key.to_string(), Some(QuotaValue(v)))],
        }
    }

    #[test]
    fn entities_are_validated() {
        assert!(QuotaEntity::from_components([("user", Some("a"))]).is_ok());
        assert!(QuotaEntity::from_components([("user", None), ("client-id", Some("c"))]).is_ok());
        assert!(QuotaEntity::from_components([]).is_err());
        assert!(QuotaEntity::from_components([("ip", Some("1.2.3.4"))]).is_err());
        assert!(QuotaEntity::from_components([("user", Some("a")), ("user", None)]).is_err());
        assert!(QuotaEntity::from_components([("client-id", Some(""))]).is_err());
    }

    #[test]
    fn values_are_validated() {
        assert!(validate_value(PRODUCER_BYTE_RATE, 1024.0).is_ok());
        assert!(validate_value(REQUEST_PERCENTAGE, 12.5).is_ok());
        assert!(validate_value("bogus", 1.0).is_err());
        assert!(validate_value(PRODUCER_BYTE_RATE, 1.5).is_err());
        assert!(validate_value(CONSUMER_BYTE_RATE, 0.0).is_err());
        assert!(validate_value(CONSUMER_BYTE_RATE, f64::NAN).is_err());
        assert!(validate_value(CONSUMER_BYTE_RATE, f64::INFINITY).is_err());
        let twice = QuotaAlteration {
            entity: entity(Some(Some("a")), None),
            ops: vec![
                (PRODUCER_BYTE_RATE.into(), Some(QuotaValue(1.0))),
                (PRODUCER_BYTE_RATE.into(), None),
            ],
        };
        assert!(twice.validate().is_err());
    }

    #[test]
    fn apply_sets_removes_and_drops_empty_entities() {
        let mut q = ClientQuotas::default();
        let e = entity(None, Some(Some("slow")));
        q.apply(&[set(e.clone(), PRODUCER_BYTE_RATE, 100.0)])
            .unwrap();
        assert_eq!(q.get(&e).unwrap()[PRODUCER_BYTE_RATE], QuotaValue(100.0));
        let remove = QuotaAlteration {
            entity: e.clone(),
            ops: vec![(PRODUCER_BYTE_RATE.into(), None)],
        };
        assert!(q.reflects(&set(e.clone(), PRODUCER_BYTE_RATE, 100.0)));
        q.apply(std::slice::from_ref(&remove)).unwrap();
        assert!(q.is_empty());
        assert!(q.reflects(&remove));
        // One bad alteration refuses all.
        let bad = set(e.clone(), "bogus", 1.0);
        assert!(q.apply(&[set(e, PRODUCER_BYTE_RATE, 1.0), bad]).is_err());
        assert!(q.is_empty());
    }

    #[test]
    fn snapshot_form_round_trips() {
        let mut q = ClientQuotas::default();
        q.apply(&[
            set(entity(Some(None), Some(Some("c"))), PRODUCER_BYTE_RATE, 5.0),
            set(entity(Some(Some("u")), None), REQUEST_PERCENTAGE, 2.5),
        ])
        .unwrap();
        let json = serde_json::to_vec(&q).unwrap();
        let back: ClientQuotas = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, q);
    }

    #[test]
    fn resolution_follows_kafkas_order() {
        let mut q = ClientQuotas::default();
        let levels = [
            (entity(None, Some(None)), 8.0),
            (entity(None, Some(Some("c"))), 7.0),
            (entity(Some(None), None), 6.0),
            (entity(Some(None), Some(None)), 5.0),
            (entity(Some(None), Some(Some("c"))), 4.0),
            (entity(Some(Some("u")), None), 3.0),
            (entity(Some(Some("u")), Some(None)), 2.0),
            (entity(Some(Some("u")), Some(Some("c"))), 1.0),
        ];
        // Adding each more specific level makes it win.
        for (e, v) in levels {
            q.apply(&[set(e, PRODUCER_BYTE_RATE, v)]).unwrap();
            let (got, _) = q.resolve(QuotaKind::Produce, "u", "c").unwrap();
            assert_eq!(got, v);
        }
        assert!(q.resolve(QuotaKind::Fetch, "u", "c").is_none());
        // Sensors: a client-id quota is shared by every user of that client id; a default
        // client-id quota gives each client id its own sensor.
        let mut q = ClientQuotas::default();
        q.apply(&[set(entity(None, Some(Some("c"))), PRODUCER_BYTE_RATE, 1.0)])
            .unwrap();
        let (_, s) = q.resolve(QuotaKind::Produce, "u", "c").unwrap();
        assert_eq!((s.user.as_str(), s.client_id.as_str()), ("", "c"));
        assert!(q.resolve(QuotaKind::Produce, "u", "other").is_none());
        q.apply(&[set(entity(None, Some(None)), PRODUCER_BYTE_RATE, 1.0)])
            .unwrap();
        let (_, s) = q.resolve(QuotaKind::Produce, "u", "other").unwrap();
        assert_eq!((s.user.as_str(), s.client_id.as_str()), ("", "other"));
    }

    #[test]
    fn filters_match_as_kafka() {
        let u = entity(Some(Some("u")), None);
        let uc = entity(Some(Some("u")), Some(Some("c")));
        let dc = entity(None, Some(None));
        let f = |c: Vec<(&str, i8, Option<&str>)>, strict| {
            QuotaFilter::from_components(c, strict).unwrap()
        };
        let exact_u = f(vec![("user", 0, Some("u"))], false);
        assert!(exact_u.matches(&u) && exact_u.matches(&uc) && !exact_u.matches(&dc));
        let strict_u = f(vec![("user", 0, Some("u"))], true);
        assert!(strict_u.matches(&u) && !strict_u.matches(&uc));
        let default_c = f(vec![("client-id", 1, None)], false);
        assert!(default_c.matches(&dc) && !default_c.matches(&uc));
        let any_c = f(vec![("client-id", 2, None)], false);
        assert!(any_c.matches(&dc) && any_c.matches(&uc) && !any_c.matches(&u));
        let all = f(vec![], false);
        assert!(all.matches(&u) && all.matches(&dc));
        assert!(QuotaFilter::from_components([("user", 0, None)], false).is_err());
        assert!(QuotaFilter::from_components([("user", 1, Some("x"))], false).is_err());
        assert!(QuotaFilter::from_components([("user", 7, None)], false).is_err());
        assert!(QuotaFilter::from_components([("ip", 2, None)], false).is_err());
    }

    #[test]
    fn rate_and_throttle_follow_the_windows() {
        let s = QuotaSensors::new(11, 1000);
        let key = SensorKey {
            kind: QuotaKind::Produce,
            user: String::new(),
            client_id: "c".into(),
        };
        // A new sensor measures over at least 10 windows: 10 000 bytes at once is 1000 B/s.
        assert_eq!(s.record(&key, 1000.0, 10_000.0, 0), 0);
        // 1000 more: 1100 B/s over 10 s, 10% over the bound: throttle 1 s.
        assert_eq!(s.record(&key, 1000.0, 1000.0, 0), 1000);
        // Throttles are bounded by the measured span.
        assert_eq!(s.record(&key, 1000.0, 1e9, 0), 11_000);
        s.unrecord(&key, 1e9, 0);
        let r = s.rate(&key, 0).unwrap();
        assert!((r - 1100.0).abs() < 1e-6, "{r}");
        // After 11 windows every sample has expired.
        assert_eq!(s.rate(&key, 11_000).unwrap(), 0.0);
        // Steady traffic under the bound is not throttled; a burst over it is.
        let key2 = SensorKey {
            client_id: "d".into(),
            ..key
        };
        let mut throttled = 0;
        for t in 0..1000 {
            throttled += s.record(&key2, 1000.0, 90.0, 20_000 + t * 100);
        }
        assert_eq!(throttled, 0);
        assert!(s.record(&key2, 1000.0, 5000.0, 20_000 + 1000 * 100) > 0);
    }

    #[test]
    fn request_time_is_a_percentage_of_a_thread_and_its_throttle_is_one_window() {
        use std::time::Duration;
        assert_eq!(request_time_value(Duration::from_secs(1)), 100.0);
        assert!((request_time_value(Duration::from_millis(10)) - 1.0).abs() < 1e-9);
        let s = QuotaSensors::new(11, 1000);
        let key = SensorKey {
            kind: QuotaKind::Request,
            user: "u".into(),
            client_id: String::new(),
        };
        // request_percentage 1 over at least 10 s of windows: 100 ms of thread time is
        // exactly the bound.
        let v = request_time_value(Duration::from_millis(100));
        assert_eq!(s.record_bounded(&key, 1.0, v, 0, s.window_ms()), 0);
        // 10 ms more is 1.1%: 10% over, throttle 10% of the 10 s measured, 1 s, which is
        // also the most a request throttle may be.
        let v = request_time_value(Duration::from_millis(10));
        assert_eq!(s.record_bounded(&key, 1.0, v, 0, s.window_ms()), 1000);
        // Far over: bounded by one window, where a byte quota's would be 11.
        let v = request_time_value(Duration::from_secs(5));
        assert_eq!(s.record_bounded(&key, 1.0, v, 0, s.window_ms()), 1000);
        assert_eq!(s.record(&key, 1.0, 0.0, 0), 11_000);
        // A zero record after the windows expire is within the quota again.
        assert_eq!(s.record_bounded(&key, 1.0, 0.0, 11_000, 1000), 0);
        // Bounds that make no throttle: a negative maximum clamps to 0.
        assert_eq!(s.record_bounded(&key, 1.0, 1e6, 11_000, -5), 0);
    }

    #[test]
    fn request_quotas_are_flagged_through_apply_and_snapshots() {
        let mut q = ClientQuotas::default();
        assert!(!q.has_request_quotas());
        let e = entity(Some(Some("u")), None);
        q.apply(&[set(e.clone(), PRODUCER_BYTE_RATE, 10.0)])
            .unwrap();
        assert!(!q.has_request_quotas());
        q.apply(&[set(e.clone(), REQUEST_PERCENTAGE, 1.0)]).unwrap();
        assert!(q.has_request_quotas());
        let json = serde_json::to_vec(&q).unwrap();
        let back: ClientQuotas = serde_json::from_slice(&json).unwrap();
        assert!(back.has_request_quotas());
        assert_eq!(back, q);
        let (bound, sensor) = q.resolve(QuotaKind::Request, "u", "c").unwrap();
        assert_eq!((bound, sensor.kind), (1.0, QuotaKind::Request));
        q.apply(&[QuotaAlteration {
            entity: e,
            ops: vec![(REQUEST_PERCENTAGE.into(), None)],
        }])
        .unwrap();
        assert!(!q.has_request_quotas());
        assert!(q.resolve(QuotaKind::Request, "u", "c").is_none());
    }
}
