//! SCRAM users over the Kafka protocol against the real `sluice` binary:
//! DescribeUserScramCredentials (50) and AlterUserScramCredentials (51) with Kafka's error
//! codes, their authorisation, the credentials surviving a restart (they are in the metadata
//! log), and the import of `sluice format --add-scram`'s bootstrap file.

#[path = "broker_support.rs"]
mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice::security::scram::{ScramCredential, ScramMechanism};
use support::*;

const SHA256: i8 = 1;
const SHA512: i8 = 2;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn upsert(
    user: &str,
    mechanism: i8,
    password: &str,
    iterations: i32,
) -> alter_user_scram_credentials_request::ScramCredentialUpsertion {
    let salt = b"0123456789abcdef".to_vec();
    let salted = match ScramMechanism::from_kafka_type(mechanism) {
        Some(m) => ScramCredential::salted_password(
            m,
            password,
            &salt,
            u32::try_from(iterations).unwrap_or(4096).clamp(1, 20_000),
        ),
        None => vec![7; 32],
    };
    alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
        .with_name(s(user))
        .with_mechanism(mechanism)
        .with_iterations(iterations)
        .with_salt(Bytes::from(salt))
        .with_salted_password(Bytes::from(salted))
}

fn delete(
    user: &str,
    mechanism: i8,
) -> alter_user_scram_credentials_request::ScramCredentialDeletion {
    alter_user_scram_credentials_request::ScramCredentialDeletion::default()
        .with_name(s(user))
        .with_mechanism(mechanism)
}

/// Alter, answered as user -> error code.
fn alter(
    c: &mut Client,
    upsertions: Vec<alter_user_scram_credentials_request::ScramCredentialUpsertion>,
    deletions: Vec<alter_user_scram_credentials_request::ScramCredentialDeletion>,
) -> BTreeMap<String, i16> {
    let r: AlterUserScramCredentialsResponse = c.request(
        0,
        &AlterUserScramCredentialsRequest::default()
            .with_upsertions(upsertions)
            .with_deletions(deletions),
    );
    let mut out = BTreeMap::new();
    for res in r.results {
        assert!(
            out.insert(res.user.to_string(), res.error_code).is_none(),
            "one result per user"
        );
    }
    out
}

type Described = BTreeMap<String, Result<Vec<(i8, i32)>, i16>>;

/// Describe (`None`: every user), answered as top-level code and user -> infos or error.
fn describe(c: &mut Client, users: Option<&[&str]>) -> (i16, Described) {
    let req = DescribeUserScramCredentialsRequest::default().with_users(users.map(|u| {
        u.iter()
            .map(|n| describe_user_scram_credentials_request::UserName::default().with_name(s(n)))
            .collect()
    }));
    let r: DescribeUserScramCredentialsResponse = c.request(0, &req);
    let out = r
        .results
        .into_iter()
        .map(|res| {
            let v = if res.error_code == 0 {
                Ok(res
                    .credential_infos
                    .iter()
                    .map(|i| (i.mechanism, i.iterations))
                    .collect())
            } else {
                Err(res.error_code)
            };
            (res.user.to_string(), v)
        })
        .collect();
    (r.error_code, out)
}

fn codes(pairs: &[(&str, i16)]) -> BTreeMap<String, i16> {
    pairs.iter().map(|(u, c)| (u.to_string(), *c)).collect()
}

#[test]
fn scram_user_apis_alter_describe_errors_and_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut broker = Broker::start_in(&dir, &[], &[]);
    let mut c = broker.client();
    // Both APIs are advertised.
    let v: ApiVersionsResponse = c.request(3, &ApiVersionsRequest::default());
    for key in [50i16, 51] {
        let k = v
            .api_keys
            .iter()
            .find(|k| k.api_key == key)
            .unwrap_or_else(|| panic!("api {key} not advertised"));
        assert_eq!((k.min_version, k.max_version), (0, 0));
    }
    assert_eq!(describe(&mut c, None), (0, BTreeMap::new()));

    let r = alter(
        &mut c,
        vec![
            upsert("alice", SHA256, "alice-secret", 4096),
            upsert("bob", SHA512, "bob-secret", 8192),
            upsert("", SHA256, "x", 4096),
            upsert("carol", 3, "x", 4096),
            upsert("dave", SHA256, "x", 4095),
            upsert("erin", SHA512, "x", 16385),
            upsert("neg", SHA512, "x", -1),
            upsert("gina", SHA256, "x", 4096),
            upsert("hank", SHA256, "x", 4096),
            upsert("hank", SHA512, "x", 4096),
        ],
        vec![delete("ghost", SHA256), delete("gina", SHA512)],
    );
    assert_eq!(
        r,
        codes(&[
            ("alice", 0),
            ("bob", 0),
            ("", 93),
            ("carol", 33),
            ("dave", 93),
            ("erin", 93),
            ("neg", 93),
            ("ghost", 91),
            // Its deletion failed first (no such credential): that error is its answer.
            ("gina", 91),
            ("hank", 92),
        ])
    );
    // A salted password of the wrong length or an empty salt is not a credential.
    let mut short = upsert("ivan", SHA512, "x", 4096);
    short.salted_password = Bytes::from_static(b"short");
    let mut unsalted = upsert("judy", SHA256, "x", 4096);
    unsalted.salt = Bytes::new();
    assert_eq!(
        alter(&mut c, vec![short, unsalted], vec![]),
        codes(&[("ivan", 93), ("judy", 93)])
    );

    let (code, d) = describe(&mut c, Some(&["bob", "nobody", "alice", "alice"]));
    assert_eq!(code, 0);
    assert_eq!(d["bob"], Ok(vec![(SHA512, 8192)]));
    assert_eq!(d["nobody"], Err(91));
    assert_eq!(d["alice"], Err(92), "a user named twice");
    assert_eq!(d.len(), 3);
    let (_, all) = describe(&mut c, None);
    assert_eq!(all.keys().collect::<Vec<_>>(), vec!["alice", "bob"]);
    assert_eq!(
        describe(&mut c, Some(&[])).1,
        all,
        "an empty list is every user"
    );

    // A user both deleted and upserted in one request: DUPLICATE_RESOURCE, nothing changes.
    assert_eq!(
        alter(
            &mut c,
            vec![upsert("bob", SHA256, "bob-secret", 4096)],
            vec![delete("bob", SHA512)]
        ),
        codes(&[("bob", 92)])
    );
    assert_eq!(
        describe(&mut c, Some(&["bob"])).1["bob"],
        Ok(vec![(SHA512, 8192)])
    );
    // One request deletes one user's credential and adds another's second mechanism.
    assert_eq!(
        alter(
            &mut c,
            vec![upsert("bob", SHA256, "bob-secret", 4096)],
            vec![delete("alice", SHA256)]
        ),
        codes(&[("alice", 0), ("bob", 0)])
    );
    let (_, d) = describe(&mut c, Some(&["alice", "bob"]));
    assert_eq!(d["alice"], Err(91));
    assert_eq!(d["bob"], Ok(vec![(SHA256, 4096), (SHA512, 8192)]));
    // Deleting it again: it no longer exists.
    assert_eq!(
        alter(&mut c, vec![], vec![delete("alice", SHA256)]),
        codes(&[("alice", 91)])
    );

    // The credentials are in the metadata log: a restart keeps them.
    broker.stop_with(nix::sys::signal::Signal::SIGTERM);
    drop(c);
    let broker = Broker::start_in(&dir, &[], &[]);
    let mut c = broker.client();
    let (_, d) = describe(&mut c, None);
    assert_eq!(d.len(), 1);
    assert_eq!(d["bob"], Ok(vec![(SHA256, 4096), (SHA512, 8192)]));
}

/// With an authorizer: ALTER (alter) and DESCRIBE (describe) on the cluster, else
/// CLUSTER_AUTHORIZATION_FAILED and nothing stored; a super user may.
#[test]
fn scram_user_apis_need_cluster_acls_with_an_authorizer() {
    let flags = [
        "--set",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "--set",
        "allow.everyone.if.no.acl.found=true",
    ];
    let broker = Broker::start(&flags);
    let mut c = broker.client();
    // No ACL names the cluster yet: everyone may (allow.everyone.if.no.acl.found).
    assert_eq!(
        alter(&mut c, vec![upsert("early", SHA256, "pw", 4096)], vec![]),
        codes(&[("early", 0)])
    );
    // An ACL for someone else on the cluster: User:ANONYMOUS may no longer.
    let r: CreateAclsResponse = c.request(
        3,
        &CreateAclsRequest::default().with_creations(vec![
            create_acls_request::AclCreation::default()
                .with_resource_type(4) // CLUSTER
                .with_resource_name(s("kafka-cluster"))
                .with_resource_pattern_type(3) // LITERAL
                .with_principal(s("User:admin"))
                .with_host(s("*"))
                .with_operation(7) // ALTER
                .with_permission_type(3),
        ]), // ALLOW
    );
    assert_eq!(r.results[0].error_code, 0);
    assert_eq!(
        alter(
            &mut c,
            vec![upsert("alice", SHA256, "pw", 4096)],
            vec![delete("early", SHA256)]
        ),
        codes(&[("alice", 31), ("early", 31)])
    );
    let (code, d) = describe(&mut c, None);
    assert_eq!(code, 31);
    assert!(d.is_empty());
    drop(c);
    drop(broker);
    // A super user may do both.
    let mut flags = flags.to_vec();
    flags.extend(["--set", "super.users=User:ANONYMOUS"]);
    let broker = Broker::start(&flags);
    let mut c = broker.client();
    assert_eq!(
        alter(&mut c, vec![upsert("alice", SHA256, "pw", 4096)], vec![]),
        codes(&[("alice", 0)])
    );
    assert_eq!(describe(&mut c, None).1["alice"], Ok(vec![(SHA256, 4096)]));
}

fn format(dir: &std::path::Path, specs: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("format").arg("--data-dir").arg(dir);
    for spec in specs {
        cmd.args(["--add-scram", spec]);
    }
    let out = cmd.output().expect("run sluice format");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sluice format --add-scram` writes the bootstrap file; the first start imports it into the
/// metadata and renames it, so a credential deleted later stays deleted across restarts, and a
/// later bootstrap never replaces a credential the metadata holds.
#[test]
fn format_add_scram_bootstraps_the_metadata_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    format(
        &dir,
        &[
            "SCRAM-SHA-256=[name=admin,password=admin-secret]",
            "SCRAM-SHA-512=[name=admin,password=admin-secret,iterations=8192]",
            "SCRAM-SHA-256=[name=temp,password=temp-secret]",
        ],
    );
    let file = dir.join("scram-credentials.json");
    assert!(file.exists());
    let mut broker = Broker::start_in(&dir, &[], &[]);
    assert!(
        !file.exists(),
        "the bootstrap file is renamed once imported"
    );
    assert!(dir.join("scram-credentials.json.imported").exists());
    let mut c = broker.client();
    let (_, d) = describe(&mut c, None);
    assert_eq!(d["admin"], Ok(vec![(SHA256, 4096), (SHA512, 8192)]));
    assert_eq!(d["temp"], Ok(vec![(SHA256, 4096)]));
    assert_eq!(
        alter(&mut c, vec![], vec![delete("temp", SHA256)]),
        codes(&[("temp", 0)])
    );
    broker.stop_with(nix::sys::signal::Signal::SIGTERM);
    drop(c);
    // A second format adds a new user and tries to change admin's iterations.
    format(
        &dir,
        &[
            "SCRAM-SHA-256=[name=admin,password=other,iterations=9000]",
            "SCRAM-SHA-256=[name=late,password=late-secret]",
        ],
    );
    let broker = Broker::start_in(&dir, &[], &[]);
    let mut c = broker.client();
    let (_, d) = describe(&mut c, None);
    assert_eq!(
        d.keys().collect::<Vec<_>>(),
        vec!["admin", "late"],
        "temp stays deleted"
    );
    assert_eq!(
        d["admin"],
        Ok(vec![(SHA256, 4096), (SHA512, 8192)]),
        "a bootstrap credential never replaces one in the metadata"
    );
}

/// A malformed AlterUserScramCredentials (an upsertion array claiming 2^31 - 1 entries) closes
/// its connection only; the broker keeps answering, and stored nothing.
#[test]
fn malformed_alter_request_closes_only_its_connection() {
    use std::io::{Read, Write};
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    // Header v2: api key 51, version 0, correlation id 9, client id "t", no tagged fields.
    let mut frame = vec![0, 51, 0, 0, 0, 0, 0, 9, 0, 1, b't', 0];
    // Body: deletions = 0 entries (compact array: 1), upsertions = a huge compact count.
    frame.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0xff, 0x07, 0]);
    let mut sized = (frame.len() as u32).to_be_bytes().to_vec();
    sized.extend_from_slice(&frame);
    c.stream.write_all(&sized).expect("write");
    c.stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let mut buf = [0u8; 16];
    let n = c.stream.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed without an answer");
    let mut c = broker.client();
    assert_eq!(describe(&mut c, None), (0, BTreeMap::new()));
    assert!(
        broker.log().contains("AlterUserScramCredentials"),
        "{}",
        broker.log()
    );
}
