//! Client quotas over the protocol against the real `sluice` binary: AlterClientQuotas
//! (valid, validate_only, unknown key, bad entity), DescribeClientQuotas (match types,
//! strict), the authorizer's refusal, a quota surviving a restart, and a produce throttled
//! under `producer_byte_rate` (throttle_time_ms, then the connection muted) until the quota
//! is removed; a client id under `request_percentage` throttled by the time its requests
//! take (another client id is not), until the quota is removed.

#[path = "broker_support.rs"]
mod support;

use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use support::*;

const ALTER_V: i16 = 1;
const DESCRIBE_V: i16 = 1;
const INVALID_REQUEST: i16 = 42;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// An entity from `(type, name)` pairs (`None`: the default entity).
fn entity(parts: &[(&str, Option<&str>)]) -> Vec<alter_client_quotas_request::EntityData> {
    parts
        .iter()
        .map(|(t, n)| {
            alter_client_quotas_request::EntityData::default()
                .with_entity_type(s(t))
                .with_entity_name(n.map(s))
        })
        .collect()
}

fn set(key: &str, value: f64) -> alter_client_quotas_request::OpData {
    alter_client_quotas_request::OpData::default()
        .with_key(s(key))
        .with_value(value)
}

fn remove(key: &str) -> alter_client_quotas_request::OpData {
    alter_client_quotas_request::OpData::default()
        .with_key(s(key))
        .with_remove(true)
}

fn alter(
    c: &mut Client,
    validate_only: bool,
    entries: Vec<(
        Vec<alter_client_quotas_request::EntityData>,
        Vec<alter_client_quotas_request::OpData>,
    )>,
) -> Vec<i16> {
    let req = AlterClientQuotasRequest::default()
        .with_validate_only(validate_only)
        .with_entries(
            entries
                .into_iter()
                .map(|(e, ops)| {
                    alter_client_quotas_request::EntryData::default()
                        .with_entity(e)
                        .with_ops(ops)
                })
                .collect(),
        );
    let r: AlterClientQuotasResponse = c.request(ALTER_V, &req);
    r.entries.iter().map(|e| e.error_code).collect()
}

/// Described entries: `("type=name,...", [(key, value)])`.
type Described = Vec<(String, Vec<(String, f64)>)>;

/// Describes with `(type, match_type, match)` components; returns the error code and the
/// entries as `("type=name,...", [(key, value)])`.
fn describe(
    c: &mut Client,
    components: &[(&str, i8, Option<&str>)],
    strict: bool,
) -> (i16, Described) {
    let req = DescribeClientQuotasRequest::default()
        .with_strict(strict)
        .with_components(
            components
                .iter()
                .map(|(t, m, n)| {
                    describe_client_quotas_request::ComponentData::default()
                        .with_entity_type(s(t))
                        .with_match_type(*m)
                        .with_match(n.map(s))
                })
                .collect(),
        );
    let r: DescribeClientQuotasResponse = c.request(DESCRIBE_V, &req);
    let mut entries: Described = r
        .entries
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let name = e
                .entity
                .iter()
                .map(|c| {
                    format!(
                        "{}={}",
                        c.entity_type.as_str(),
                        c.entity_name.as_ref().map_or("<default>", |n| n.as_str())
                    )
                })
                .collect::<Vec<_>>()
                .join(",");
            let values = e
                .values
                .iter()
                .map(|v| (v.key.to_string(), v.value))
                .collect();
            (name, values)
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    (r.error_code, entries)
}

#[test]
fn quota_apis_validate_store_describe_and_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut broker = Broker::start_in(&dir, &[], &[]);
    let mut c = broker.client();

    // Both APIs are advertised.
    let v: ApiVersionsResponse = c.request(3, &ApiVersionsRequest::default());
    for k in [ApiKey::DescribeClientQuotas, ApiKey::AlterClientQuotas] {
        let a = v.api_keys.iter().find(|a| a.api_key == k as i16);
        assert!(
            a.is_some_and(|a| a.min_version == 0 && a.max_version == 1),
            "{k:?}"
        );
    }

    // validate_only: accepted, nothing stored.
    let codes = alter(
        &mut c,
        true,
        vec![(
            entity(&[("user", Some("alice"))]),
            vec![set("producer_byte_rate", 1024.0)],
        )],
    );
    assert_eq!(codes, vec![0]);
    assert!(describe(&mut c, &[], false).1.is_empty());

    // A valid entry and three invalid ones in one request: each answered on its own.
    let codes = alter(
        &mut c,
        false,
        vec![
            (
                entity(&[("user", Some("alice")), ("client-id", None)]),
                vec![
                    set("producer_byte_rate", 1024.0),
                    set("request_percentage", 12.5),
                ],
            ),
            (
                entity(&[("user", Some("bob"))]),
                vec![set("bogus_rate", 1.0)],
            ),
            (
                entity(&[("ip", Some("10.0.0.1"))]),
                vec![set("producer_byte_rate", 1.0)],
            ),
            (entity(&[]), vec![set("consumer_byte_rate", 1.0)]),
        ],
    );
    assert_eq!(
        codes,
        vec![0, INVALID_REQUEST, INVALID_REQUEST, INVALID_REQUEST]
    );
    // A non-integer byte rate and a duplicated entity type are invalid too.
    let codes = alter(
        &mut c,
        false,
        vec![
            (
                entity(&[("client-id", Some("c"))]),
                vec![set("consumer_byte_rate", 1.5)],
            ),
            (
                entity(&[("user", Some("a")), ("user", Some("b"))]),
                vec![set("consumer_byte_rate", 1.0)],
            ),
        ],
    );
    assert_eq!(codes, vec![INVALID_REQUEST, INVALID_REQUEST]);
    let codes = alter(
        &mut c,
        false,
        vec![
            (
                entity(&[("client-id", None)]),
                vec![set("consumer_byte_rate", 2048.0)],
            ),
            (
                entity(&[("client-id", Some("slow"))]),
                vec![set("producer_byte_rate", 4096.0)],
            ),
        ],
    );
    assert_eq!(codes, vec![0, 0]);

    let all = describe(&mut c, &[], false);
    assert_eq!(all.0, 0);
    let names: Vec<&str> = all.1.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "client-id=<default>",
            "client-id=slow",
            "user=alice,client-id=<default>"
        ]
    );
    let alice = &all.1[2].1;
    assert!(alice.contains(&("producer_byte_rate".into(), 1024.0)));
    assert!(alice.contains(&("request_percentage".into(), 12.5)));
    // Exact, default, any; strict leaves out entities with other types.
    let exact = describe(&mut c, &[("user", 0, Some("alice"))], false).1;
    assert_eq!(exact.len(), 1);
    assert!(describe(&mut c, &[("user", 0, Some("alice"))], true)
        .1
        .is_empty());
    let defaults = describe(&mut c, &[("client-id", 1, None)], false).1;
    assert_eq!(defaults.len(), 2, "{defaults:?}");
    let strict_defaults = describe(&mut c, &[("client-id", 1, None)], true).1;
    assert_eq!(strict_defaults.len(), 1);
    let any_client = describe(&mut c, &[("client-id", 2, None)], true).1;
    assert_eq!(any_client.len(), 2);
    // Bad filters.
    assert_eq!(
        describe(&mut c, &[("user", 0, None)], false).0,
        INVALID_REQUEST
    );
    assert_eq!(
        describe(&mut c, &[("host", 2, None)], false).0,
        INVALID_REQUEST
    );
    assert_eq!(
        describe(&mut c, &[("user", 9, None)], false).0,
        INVALID_REQUEST
    );

    // Removing the last key removes the entity.
    let codes = alter(
        &mut c,
        false,
        vec![(
            entity(&[("client-id", None)]),
            vec![remove("consumer_byte_rate")],
        )],
    );
    assert_eq!(codes, vec![0]);
    assert_eq!(describe(&mut c, &[], false).1.len(), 2);

    // The quotas are in the metadata log: a restart keeps them.
    drop(c);
    broker.stop_with(nix::sys::signal::Signal::SIGTERM);
    let broker = Broker::start_in(&dir, &[], &[]);
    let mut c = broker.client();
    let names: Vec<String> = describe(&mut c, &[], false)
        .1
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        names,
        vec!["client-id=slow", "user=alice,client-id=<default>"]
    );
}

#[test]
fn quota_apis_need_cluster_configs_permissions_with_an_authorizer() {
    // No ACLs and no `allow.everyone.if.no.acl.found`: User:ANONYMOUS may do nothing.
    let broker = Broker::start(&[
        "--set",
        "authorizer.class.name=kafka.security.authorizer.AclAuthorizer",
    ]);
    let mut c = broker.client();
    let codes = alter(
        &mut c,
        false,
        vec![(
            entity(&[("user", Some("x"))]),
            vec![set("producer_byte_rate", 1.0)],
        )],
    );
    assert_eq!(codes, vec![CLUSTER_AUTHORIZATION_FAILED]);
    assert_eq!(describe(&mut c, &[], false).0, CLUSTER_AUTHORIZATION_FAILED);
}

/// Produces `bytes` of records in one request; returns the response's throttle time.
fn produce_big(c: &mut Client, topic: &str, bytes: usize, n: i64) -> i32 {
    let records = batch(&"x".repeat(bytes / 100), 100, n * 1000);
    let r: ProduceResponse = c.request(9, &produce_request(topic, 0, 1, records));
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0);
    r.throttle_time_ms
}

#[test]
fn produce_over_the_quota_is_throttled_and_muted_until_the_quota_goes() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    let md: MetadataResponse = c.request(
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(TopicName(s("quota-t"))))]))
            .with_allow_auto_topic_creation(true),
    );
    assert_eq!(md.topics[0].error_code, 0);
    // No quota: no throttle.
    assert_eq!(produce_big(&mut c, "quota-t", 200_000, 0), 0);

    // The test client's id is `sluice-test`. 15 000 B/s measured over at least 10 s of
    // windows: one 200 kB request is ~20 000 B/s, ~37% over, so ~3.7 s of throttle.
    let codes = alter(
        &mut c,
        false,
        vec![(
            entity(&[("client-id", Some("sluice-test"))]),
            vec![set("producer_byte_rate", 15_000.0)],
        )],
    );
    assert_eq!(codes, vec![0]);
    let mut p = broker.client();
    let throttle = produce_big(&mut p, "quota-t", 200_000, 1);
    assert!((3000..=4500).contains(&throttle), "throttle {throttle} ms");
    // The connection is muted: its next request is not even read before the throttle ends.
    let started = Instant::now();
    let _: ApiVersionsResponse = p.request(3, &ApiVersionsRequest::default());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(throttle as u64 - 200),
        "answered after {waited:?}, throttle {throttle} ms"
    );
    // Another connection is not muted.
    let started = Instant::now();
    let _: ApiVersionsResponse = c.request(3, &ApiVersionsRequest::default());
    assert!(started.elapsed() < Duration::from_millis(throttle as u64 / 2));

    // The quota removed: the next produce is not throttled, without a restart.
    let codes = alter(
        &mut c,
        false,
        vec![(
            entity(&[("client-id", Some("sluice-test"))]),
            vec![remove("producer_byte_rate")],
        )],
    );
    assert_eq!(codes, vec![0]);
    assert_eq!(produce_big(&mut p, "quota-t", 200_000, 2), 0);
}

/// A produce of a few small records from `c`; returns its throttle time.
fn produce_small(c: &mut Client, topic: &str, n: i64) -> i32 {
    produce_big(c, topic, 1000, n)
}

/// Runs rounds of `metadata_per_round` all-topics Metadata requests followed by one small
/// produce until a produce reports a throttle or `rounds` rounds have run; returns the
/// throttles seen (0 when none) and the rounds run.
fn busy_rounds(c: &mut Client, topic: &str, rounds: usize, stop_on_throttle: bool) -> (i32, usize) {
    let all = MetadataRequest::default().with_topics(None);
    let mut worst = 0;
    for round in 0..rounds {
        for _ in 0..20 {
            let md: MetadataResponse = c.request(12, &all);
            assert!(!md.topics.is_empty());
        }
        let t = produce_small(c, topic, round as i64);
        worst = worst.max(t);
        if t > 0 && stop_on_throttle {
            return (worst, round + 1);
        }
    }
    (worst, rounds)
}

#[test]
fn request_percentage_throttles_a_busy_client_id_and_no_other_until_removed() {
    let broker = Broker::start(&[]);
    let mut admin = broker.client_as("quota-admin");
    // A few topics, so that Metadata for all of them has some work to do.
    for i in 0..8 {
        let md: MetadataResponse = admin.request(
            12,
            &MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(s(&format!("rq-{i}")))))]))
                .with_allow_auto_topic_creation(true),
        );
        assert_eq!(md.topics[0].error_code, 0);
    }
    // 1% of one thread: 100 ms of request time over the (at least) 10 s measured.
    let busy_entity = || entity(&[("client-id", Some("busy"))]);
    let codes = alter(
        &mut admin,
        false,
        vec![(busy_entity(), vec![set("request_percentage", 1.0)])],
    );
    assert_eq!(codes, vec![0]);

    // The client under the quota, sending back to back, is throttled before long.
    let mut busy = broker.client_as("busy");
    let (throttle, rounds) = busy_rounds(&mut busy, "rq-0", 2000, true);
    assert!(throttle > 0, "no throttle after {rounds} rounds");
    // A request throttle is at most one quota window (1 s).
    assert!(throttle <= 1000, "throttle {throttle} ms");
    // The connection is muted: its next request is not read before the throttle ends.
    let started = Instant::now();
    let _: ApiVersionsResponse = busy.request(3, &ApiVersionsRequest::default());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis((throttle as u64).saturating_sub(200)),
        "answered after {waited:?}, throttle {throttle} ms"
    );

    // Another client id on the same broker, doing as much work, is never throttled.
    let mut free = broker.client_as("free");
    let (free_throttle, _) = busy_rounds(&mut free, "rq-1", rounds, false);
    assert_eq!(
        free_throttle, 0,
        "a client id without a request quota was throttled"
    );

    // The quota removed: the busy client id is not throttled any more, without a restart.
    let codes = alter(
        &mut admin,
        false,
        vec![(busy_entity(), vec![remove("request_percentage")])],
    );
    assert_eq!(codes, vec![0]);
    let (after, _) = busy_rounds(&mut busy, "rq-0", rounds.min(50), false);
    assert_eq!(after, 0, "throttled after the quota was removed");
}
