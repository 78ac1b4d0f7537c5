//! Bad input: random and truncated frames, absurd sizes, unknown API keys. The broker answers
//! or closes that connection, and keeps serving others.

#[path = "broker_support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rand::{Rng, SeedableRng};
use support::*;

fn still_serving(b: &Broker) {
    let mut c = b.client();
    let r: ApiVersionsResponse = c.request(
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("t"))
            .with_client_software_version(StrBytes::from_static_str("1")),
    );
    assert_eq!(r.error_code, 0);
}

/// Sends `bytes`, then reads until the broker closes the connection (or answers and closes).
/// Returns true if the connection was closed by the broker within the timeout.
fn send_and_expect_close(b: &Broker, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn oversized_and_negative_frames_close_the_connection() {
    let b = Broker::start(&["--set", "socket.request.max.bytes=1048576"]);
    // 2 GiB announced: refused from the size alone, nothing allocated.
    assert!(send_and_expect_close(&b, &i32::MAX.to_be_bytes()));
    assert!(send_and_expect_close(
        &b,
        &(2 * 1024 * 1024i32).to_be_bytes()
    ));
    assert!(send_and_expect_close(&b, &(-5i32).to_be_bytes()));
    assert!(send_and_expect_close(&b, &3i32.to_be_bytes()));
    still_serving(&b);
    assert!(b.log().contains("frame size out of range"), "{}", b.log());
}

#[test]
fn unknown_api_key_and_unserved_versions_close_the_connection() {
    let b = Broker::start(&[]);
    let frame = |key: i16, version: i16| {
        let body = [
            &key.to_be_bytes()[..],
            &version.to_be_bytes(),
            &7i32.to_be_bytes(),
            &[0xff, 0xff],
        ]
        .concat();
        [&(body.len() as i32).to_be_bytes()[..], &body].concat()
    };
    assert!(send_and_expect_close(&b, &frame(9999, 0)));
    assert!(
        send_and_expect_close(&b, &frame(ApiKey::JoinGroup as i16, 5)),
        "group APIs are not served"
    );
    assert!(
        send_and_expect_close(&b, &frame(ApiKey::Produce as i16, 0)),
        "Produce v0 is not served"
    );
    assert!(send_and_expect_close(&b, &frame(ApiKey::Fetch as i16, 99)));
    still_serving(&b);
}

#[test]
fn truncated_and_random_frames_never_take_the_broker_down() {
    let b = Broker::start(&[]);
    // A valid Metadata request cut short inside its body.
    let mut c = b.client();
    let (_, full) = c.encode(12, &MetadataRequest::default().with_topics(None));
    let cut = full.len() - 3;
    let mut truncated = ((cut - 4) as i32).to_be_bytes().to_vec();
    truncated.extend_from_slice(&full[4..cut]);
    assert!(send_and_expect_close(&b, &truncated));
    // A frame that announces more than it sends, then the client goes away.
    {
        let mut s = TcpStream::connect(b.addr).unwrap();
        s.write_all(&1000i32.to_be_bytes()).unwrap();
        s.write_all(&[1, 2, 3]).unwrap();
    }
    // Random frames with valid sizes and random API keys/versions/bodies.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x51u64);
    for _ in 0..60 {
        let len = rng.gen_range(8..300usize);
        let mut body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Half of them carry a real API key so the body decoders get exercised.
        if rng.gen_bool(0.5) {
            let key = [0i16, 1, 2, 3, 18, 32, 44, 60][rng.gen_range(0..8)];
            body[0..2].copy_from_slice(&key.to_be_bytes());
            body[2..4].copy_from_slice(&rng.gen_range(0i16..14).to_be_bytes());
        }
        let mut frame = (len as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut s = TcpStream::connect(b.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&frame);
        // Either an answer or a close; a hang hits the read timeout and fails here.
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf);
        assert!(
            r.is_ok()
                || matches!(
                    r.as_ref().map_err(|e| e.kind()),
                    Err(std::io::ErrorKind::ConnectionReset)
                ),
            "connection neither answered nor closed: {r:?}"
        );
    }
    still_serving(&b);
    assert!(!b.log().contains("panicked"), "{}", b.log());
}

/// Frames whose arrays claim ~2^31 elements (kafka-protocol pre-allocates by that count).
#[test]
fn huge_array_counts_do_not_abort_the_broker() {
    let b = Broker::start(&[]);
    let header = |key: i16, version: i16, flexible: bool| {
        let mut h = [
            &key.to_be_bytes()[..],
            &version.to_be_bytes(),
            &6i32.to_be_bytes(),
            &16i16.to_be_bytes(),
            b"sluice-raw-tests",
        ]
        .concat();
        if flexible {
            h.push(0); // header tagged fields
        }
        h
    };
    let frame = |body: Vec<u8>| [&(body.len() as i32).to_be_bytes()[..], &body].concat();
    let huge_i32 = 0x7fff_ffffi32.to_be_bytes();
    let huge_uvarint = [0xff, 0xff, 0xff, 0xff, 0x0f];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "metadata v1",
            [header(3, 1, false), huge_i32.to_vec()].concat(),
        ),
        (
            "metadata v9 compact",
            [header(3, 9, true), huge_uvarint.to_vec()].concat(),
        ),
        (
            "create topics v2",
            [header(19, 2, false), huge_i32.to_vec()].concat(),
        ),
        (
            "describe configs v1",
            [header(32, 1, false), huge_i32.to_vec()].concat(),
        ),
        (
            "produce v3",
            [
                header(0, 3, false),
                vec![0xff, 0xff, 0, 1, 0, 0, 0x13, 0x88],
                huge_i32.to_vec(),
            ]
            .concat(),
        ),
        (
            "fetch v4",
            [
                header(1, 4, false),
                vec![
                    0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0xf4, 0, 0, 0, 1, 0, 0x10, 0, 0, 0,
                ],
                huge_i32.to_vec(),
            ]
            .concat(),
        ),
        (
            "delete topics v1",
            [header(20, 1, false), huge_i32.to_vec()].concat(),
        ),
    ];
    for (name, body) in cases {
        assert!(
            send_and_expect_close(&b, &frame(body)),
            "{name}: connection not closed"
        );
        still_serving(&b);
    }
    let log = b.log();
    assert!(!log.contains("memory allocation"), "{log}");
}
