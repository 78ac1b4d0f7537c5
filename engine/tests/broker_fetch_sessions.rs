//! Incremental fetch sessions (KIP-227) at the topic-id versions (Fetch v13+), which no Python
//! client in the suite speaks: a session keyed by topic id, an unknown topic id inside a session,
//! and FETCH_SESSION_TOPIC_ID_ERROR when a request's version does not match its session's.

#[path = "broker_support.rs"]
mod support;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use support::*;
use uuid::Uuid;

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn topic_id(c: &mut Client, topic: &str) -> Uuid {
    let req = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(tn(topic)))]))
        .with_allow_auto_topic_creation(true);
    let md: MetadataResponse = c.request(12, &req);
    assert_eq!(md.topics[0].error_code, 0);
    md.topics[0].topic_id
}

fn produce(c: &mut Client, topic: &str, partition: i32, prefix: &str, n: usize) {
    let req = produce_request(topic, partition, 1, batch(prefix, n, 0));
    let resp: ProduceResponse = c.request(9, &req);
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
}

/// A session fetch by topic id of `parts` ((topic id, partition, offset)).
fn fetch(
    session_id: i32,
    epoch: i32,
    parts: &[(Uuid, i32, i64)],
    forget: &[(Uuid, i32)],
) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(50)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(
            parts
                .iter()
                .map(|(id, p, off)| {
                    fetch_request::FetchTopic::default()
                        .with_topic_id(*id)
                        .with_partitions(vec![fetch_request::FetchPartition::default()
                            .with_partition(*p)
                            .with_fetch_offset(*off)
                            .with_partition_max_bytes(1 << 20)])
                })
                .collect(),
        )
        .with_forgotten_topics_data(
            forget
                .iter()
                .map(|(id, p)| {
                    fetch_request::ForgottenTopic::default()
                        .with_topic_id(*id)
                        .with_partitions(vec![*p])
                })
                .collect(),
        )
}

fn parts(resp: &FetchResponse) -> Vec<(Uuid, i32, i16)> {
    resp.responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic_id, p.partition_index, p.error_code))
        })
        .collect()
}

#[test]
fn topic_id_sessions() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    let a = topic_id(&mut c, "sessions-a");
    let b = topic_id(&mut c, "sessions-b");
    produce(&mut c, "sessions-a", 0, "a", 3);

    // v16 full fetch, epoch 0: a session keyed by topic ids, every partition answered.
    let full: FetchResponse = c.request(16, &fetch(0, 0, &[(a, 0, 0), (b, 0, 0)], &[]));
    assert_eq!(full.error_code, 0);
    let sid = full.session_id;
    assert!(sid > 0);
    assert_eq!(parts(&full), vec![(a, 0, 0), (b, 0, 0)]);
    assert_eq!(
        values(full.responses[0].partitions[0].records.as_ref().unwrap()),
        vec!["a-0", "a-1", "a-2"]
    );

    // Incremental: a moves to its end, b gets data; only b is answered.
    produce(&mut c, "sessions-b", 0, "b", 2);
    let inc: FetchResponse = c.request(16, &fetch(sid, 1, &[(a, 0, 3)], &[]));
    assert_eq!((inc.error_code, inc.session_id), (0, sid));
    assert_eq!(parts(&inc), vec![(b, 0, 0)]);
    assert_eq!(
        values(inc.responses[0].partitions[0].records.as_ref().unwrap()),
        vec!["b-0", "b-1"]
    );

    // A topic id the broker does not know joins the session: it is answered with
    // UNKNOWN_TOPIC_ID on every fetch (an error is always reported), the rest stays quiet.
    let ghost = Uuid::from_u128(0x5e55_1011);
    let inc: FetchResponse = c.request(16, &fetch(sid, 2, &[(b, 0, 2), (ghost, 0, 0)], &[]));
    assert_eq!(inc.error_code, 0);
    assert_eq!(parts(&inc), vec![(ghost, 0, 100)]);
    let inc: FetchResponse = c.request(16, &fetch(sid, 3, &[], &[(ghost, 0)]));
    assert_eq!((inc.error_code, inc.session_id), (0, sid));
    assert_eq!(parts(&inc), vec![]);

    // A name-based version (v12) in a topic-id session: FETCH_SESSION_TOPIC_ID_ERROR, and the
    // session keeps its epoch.
    let mixed: FetchResponse = c.request(12, &fetch(sid, 4, &[], &[]));
    assert_eq!((mixed.error_code, mixed.session_id), (106, 0));
    assert!(mixed.responses.is_empty());
    let inc: FetchResponse = c.request(13, &fetch(sid, 4, &[], &[]));
    assert_eq!((inc.error_code, inc.session_id), (0, sid));

    // And the reverse: a v12 session used at v13.
    let by_name = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_session_id(0)
        .with_session_epoch(0)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(tn("sessions-a"))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(3)
                .with_partition_max_bytes(1 << 20)])]);
    let named: FetchResponse = c.request(12, &by_name);
    assert!(named.session_id > 0 && named.session_id != sid);
    let mixed: FetchResponse = c.request(13, &fetch(named.session_id, 1, &[], &[]));
    assert_eq!(mixed.error_code, 106);
    let ok: FetchResponse = c.request(12, &fetch(named.session_id, 1, &[], &[]));
    assert_eq!(ok.error_code, 0);
}
