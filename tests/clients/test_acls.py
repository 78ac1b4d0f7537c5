"""ACLs end to end: one broker with `authorizer.class.name` set, PLAIN users on a SASL_PLAINTEXT
listener (`admin` is a super user, `alice` and `bob` are not) and a PLAINTEXT listener whose
clients are `User:ANONYMOUS`.

CreateAcls/DescribeAcls/DeleteAcls through confluent-kafka's AdminClient (and kafka-python's),
produce with confluent-kafka, consume with kafka-python (assign, and as a group), and raw
requests on the PLAINTEXT listener for the exact error codes. The last test runs three brokers
with `User:ANONYMOUS` (the PLAINTEXT inter-broker listener) as a super user.
"""

from __future__ import annotations

import time

import pytest

import kafka_wire as kw
from sluice_broker import free_port

pytestmark = pytest.mark.single_node("one broker with an authorizer")

USERS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}
TOPIC_AUTHORIZATION_FAILED = 29
CLUSTER_AUTHORIZATION_FAILED = 31


class AclBroker:
    def __init__(self, broker, sasl_port: int):
        self.b = broker
        self.sasl = f"127.0.0.1:{sasl_port}"

    def conf(self, user: str) -> dict:
        return {
            "bootstrap.servers": self.sasl,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": user,
            "sasl.password": USERS[user],
        }

    def kp_conf(self, user: str) -> dict:
        return dict(
            bootstrap_servers=self.sasl,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username=user,
            sasl_plain_password=USERS[user],
        )


def start_acl_broker(make_broker, extra: list[str] | None = None) -> AclBroker:
    sasl_port = free_port()
    b = make_broker(shards=2, start=False)
    users = " ".join(f'user_{u}="{p}"' for u, p in USERS.items())
    jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
    b.extra_args += [
        "--set", f"listeners=PLAINTEXT://127.0.0.1:{b.port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "--set", "sasl.enabled.mechanisms=PLAIN",
        "--set", f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
        "--set", "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "--set", "super.users=User:admin",
        *(extra or []),
    ]
    b.start()
    return AclBroker(b, sasl_port)


@pytest.fixture
def acl_broker(make_broker):
    return start_acl_broker(make_broker)


_ADMINS: dict = {}


def admin(ab: AclBroker, user: str = "admin"):
    """One AdminClient per broker and user, kept alive: librdkafka fails the futures of a
    client that is destroyed before they complete."""
    from confluent_kafka.admin import AdminClient

    key = (ab.sasl, user)
    if key not in _ADMINS:
        _ADMINS[key] = AdminClient(ab.conf(user))
    return _ADMINS[key]


def create_topic(ab: AclBroker, name: str, partitions: int = 1) -> None:
    from confluent_kafka.admin import NewTopic

    for f in admin(ab).create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(timeout=15)


def binding(topic: str, principal: str, op: str, perm: str = "ALLOW", pattern: str = "LITERAL", rtype: str = "TOPIC"):
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return AclBinding(
        getattr(ResourceType, rtype), topic, getattr(ResourcePatternType, pattern),
        principal, "*", getattr(AclOperation, op), getattr(AclPermissionType, perm),
    )


def create_acls(ab: AclBroker, bindings, user: str = "admin") -> None:
    for f in admin(ab, user).create_acls(bindings, request_timeout=15).values():
        f.result(timeout=15)


def produce(ab: AclBroker, user: str, topic: str, n: int = 3) -> list:
    """Produces n records as `user`; returns the delivery errors (empty: all delivered)."""
    from confluent_kafka import Producer

    errors: list = []
    delivered: list = []

    def report(err, msg):
        (errors if err else delivered).append(err or msg)

    p = Producer({**ab.conf(user), "message.timeout.ms": 8000, "retries": 0})
    for i in range(n):
        p.produce(topic, value=f"{user}-{i}".encode(), on_delivery=report)
    p.flush(15)
    assert len(errors) + len(delivered) == n, "every record reported"
    return errors


def consume(ab: AclBroker, user: str, topic: str, n: int, timeout: float = 15.0):
    """Reads n records from partition 0 as `user` with kafka-python (no group): the values, or
    "denied" when the broker answered TOPIC_AUTHORIZATION_FAILED."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import TopicAuthorizationFailedError

    c = KafkaConsumer(**ab.kp_conf(user), group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        c.assign([TopicPartition(topic, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=300).values():
                got += [r.value for r in recs]
        return got
    except TopicAuthorizationFailedError:
        return "denied"
    finally:
        c.close()


def is_topic_auth_error(err) -> bool:
    from confluent_kafka import KafkaError

    return err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_produce_and_consume_need_acls_deny_beats_allow_and_delete_revokes(acl_broker, topic_name):
    ab = acl_broker
    create_topic(ab, topic_name)
    # No ACL on the topic, allow.everyone.if.no.acl.found=false: alice may do nothing.
    errs = produce(ab, "alice", topic_name)
    assert errs and all(is_topic_auth_error(e) for e in errs), errs
    with kw.connect(ab.b.port) as s:  # User:ANONYMOUS, raw codes
        res = kw.produce(s, topic_name, 0, kw.record_batch([b"x"], [int(time.time() * 1000)]))
        assert res.error_code == TOPIC_AUTHORIZATION_FAILED
        assert kw.fetch(s, topic_name, 0, 0).error_code == TOPIC_AUTHORIZATION_FAILED
        assert kw.list_offsets(s, topic_name, 0, -2)[0] == TOPIC_AUTHORIZATION_FAILED
        [t] = kw.metadata(s, [topic_name]).topics
        assert t.error_code == TOPIC_AUTHORIZATION_FAILED
    # ALLOW WRITE: alice produces (WRITE implies DESCRIBE), but may not read yet.
    create_acls(ab, [binding(topic_name, "User:alice", "WRITE")])
    assert produce(ab, "alice", topic_name) == []
    assert consume(ab, "alice", topic_name, 3) == "denied"
    # ALLOW READ: she reads what she wrote.
    create_acls(ab, [binding(topic_name, "User:alice", "READ")])
    assert consume(ab, "alice", topic_name, 3) == [b"alice-0", b"alice-1", b"alice-2"]
    # DescribeAcls shows both.
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    def alice_filter(op=AclOperation.ANY, perm=AclPermissionType.ANY):
        return AclBindingFilter(ResourceType.TOPIC, topic_name, ResourcePatternType.ANY, "User:alice", None, op, perm)

    described = admin(ab).describe_acls(alice_filter(), request_timeout=15).result(timeout=15)
    assert sorted(b.operation.name for b in described) == ["READ", "WRITE"]
    # A DENY beats the ALLOW.
    create_acls(ab, [binding(topic_name, "User:alice", "WRITE", perm="DENY")])
    errs = produce(ab, "alice", topic_name, n=1)
    assert errs and is_topic_auth_error(errs[0]), errs
    # DeleteAcls removes the DENY, then the READ: access changes without a restart.
    deleted = admin(ab).delete_acls([alice_filter(AclOperation.WRITE, AclPermissionType.DENY)], request_timeout=15)
    [removed] = [f.result(timeout=15) for f in deleted.values()]
    assert len(removed) == 1 and removed[0].permission_type == AclPermissionType.DENY
    assert produce(ab, "alice", topic_name, n=1) == []
    for f in admin(ab).delete_acls([alice_filter(AclOperation.READ)], request_timeout=15).values():
        assert len(f.result(timeout=15)) == 1
    assert consume(ab, "alice", topic_name, 1) == "denied"


def test_prefixed_acl_metadata_hides_topics_and_super_user(acl_broker, topic_name):
    ab = acl_broker
    mine, other = f"team-a.{topic_name}", f"team-b.{topic_name}"
    create_topic(ab, mine)
    create_topic(ab, other)
    create_acls(ab, [
        binding("team-a.", "User:bob", "WRITE", pattern="PREFIXED"),
        binding("team-a.", "User:bob", "READ", pattern="PREFIXED"),
    ])
    assert produce(ab, "bob", mine) == []
    assert consume(ab, "bob", mine, 3) == [b"bob-0", b"bob-1", b"bob-2"]
    errs = produce(ab, "bob", other, n=1)
    assert errs and is_topic_auth_error(errs[0]), errs
    # Metadata for all topics leaves out what bob may not describe.
    listed = set(admin(ab, "bob").list_topics(timeout=15).topics)
    assert mine in listed and other not in listed
    assert {mine, other} <= set(admin(ab).list_topics(timeout=15).topics)
    # The super user needs no ACL.
    assert produce(ab, "admin", other) == []
    assert consume(ab, "admin", other, 3) == [b"admin-0", b"admin-1", b"admin-2"]
    # ACL admin APIs need ALTER/DESCRIBE on the cluster: bob has neither.
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    with pytest.raises(KafkaException) as e:
        create_acls(ab, [binding(other, "User:bob", "WRITE")], user="bob")
    assert "CLUSTER_AUTHORIZATION_FAILED" in str(e.value) or "authoriz" in str(e.value).lower()
    any_filter = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    # librdkafka hands back an empty list for DescribeAcls' top-level error: check the code on
    # the wire (User:ANONYMOUS on the PLAINTEXT listener has no cluster ACL either).
    try:
        assert admin(ab, "bob").describe_acls(any_filter, request_timeout=15).result(timeout=15) == []
    except KafkaException as e:
        assert "authoriz" in str(e).lower()
    with kw.connect(ab.b.port) as s:
        any_filter_v1 = kw.i8(1) + kw.string(None) + kw.i8(1) + kw.string(None) + kw.string(None) + kw.i8(1) + kw.i8(1)
        r = kw.Reader(kw.roundtrip(s, 29, 1, 5, any_filter_v1))  # DescribeAcls v1
        r.i32()  # throttle
        assert r.i16() == CLUSTER_AUTHORIZATION_FAILED
    assert len(admin(ab).describe_acls(any_filter, request_timeout=15).result(timeout=15)) == 2


def test_kafka_python_admin_acls_idempotent_producer_and_admin_apis(acl_broker, topic_name):
    """kafka-python's admin client creates and lists ACLs too; an idempotent producer needs
    WRITE on some topic (InitProducerId); cluster-level admin APIs need DESCRIBE on the
    cluster; group APIs answer GROUP_AUTHORIZATION_FAILED."""
    from kafka import KafkaAdminClient
    from kafka.admin import ACL, ACLFilter, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType
    from kafka.admin import ResourcePatternFilter, ACLResourcePatternType

    ab = acl_broker
    create_topic(ab, topic_name)
    a = KafkaAdminClient(**ab.kp_conf("admin"), request_timeout_ms=15000)
    try:
        acl = ACL("User:bob", "*", ACLOperation.DESCRIBE, ACLPermissionType.ALLOW,
                  ResourcePattern(ResourceType.TOPIC, topic_name))
        result = a.create_acls([acl])
        assert result["failed"] == [], result
        flt = ACLFilter("User:bob", None, ACLOperation.ANY, ACLPermissionType.ANY,
                        ResourcePatternFilter(ResourceType.TOPIC, topic_name, ACLResourcePatternType.ANY))
        acls, err = a.describe_acls(flt)
        assert [x.operation for x in acls] == [ACLOperation.DESCRIBE], (acls, err)
        # DescribeLogDirs: the super user sees this broker's log dir...
        assert a.describe_log_dirs()
    finally:
        a.close()
    with kw.connect(ab.b.port) as s:
        # ...User:ANONYMOUS gets an empty answer (no DESCRIBE on the cluster), as in Kafka.
        r = kw.Reader(kw.roundtrip(s, 35, 1, 9, kw.i32(-1)))  # DescribeLogDirs v1, every topic
        r.i32()  # throttle
        assert r.i32() == 0
        # InitProducerId without a transactional id: no IDEMPOTENT_WRITE, no WRITE anywhere.
        r = kw.Reader(kw.roundtrip(s, 22, 0, 10, kw.string(None) + kw.i32(60000)))
        r.i32()  # throttle
        assert r.i16() == CLUSTER_AUTHORIZATION_FAILED
    # An idempotent producer of a principal that may write the topic gets its producer id.
    create_acls(ab, [binding(topic_name, "User:alice", "WRITE")])
    from confluent_kafka import Producer

    p = Producer({**ab.conf("alice"), "enable.idempotence": True, "message.timeout.ms": 8000})
    errors: list = []
    for i in range(3):
        p.produce(topic_name, value=b"idem", on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(15) == 0 and errors == [None] * 3, errors
    # Group APIs are authorised: GROUP_AUTHORIZATION_FAILED (30) without a GROUP ACL.
    with kw.connect(ab.b.port) as s:
        r = kw.Reader(kw.roundtrip(s, 10, 1, 11, kw.string("some-group") + kw.i8(0)))  # FindCoordinator v1
        r.i32()  # throttle
        assert r.i16() == 30
    # bob may describe the topic now, not write it.
    with_bob = admin(ab, "bob").list_topics(topic=topic_name, timeout=15).topics[topic_name]
    assert with_bob.error is None
    errs = produce(ab, "bob", topic_name, n=1)
    assert errs and is_topic_auth_error(errs[0]), errs


def test_consumer_group_needs_group_and_topic_acls(acl_broker, topic_name):
    """A kafka-python group consumer: READ on the topic is not enough, READ on the group is
    needed too (GROUP_AUTHORIZATION_FAILED); with both it consumes and commits."""
    from kafka import KafkaConsumer
    from kafka.errors import GroupAuthorizationFailedError

    ab = acl_broker
    group = f"g-{topic_name}"
    create_topic(ab, topic_name)
    assert produce(ab, "admin", topic_name) == []
    create_acls(ab, [binding(topic_name, "User:alice", "READ")])

    def group_consume(n: int):
        c = KafkaConsumer(topic_name, **ab.kp_conf("alice"), group_id=group, auto_offset_reset="earliest",
                          enable_auto_commit=False)
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 20
            while len(got) < n and time.monotonic() < deadline:
                for recs in c.poll(timeout_ms=300).values():
                    got += [r.value for r in recs]
            c.commit()
            return got
        finally:
            c.close()

    with pytest.raises(GroupAuthorizationFailedError):
        group_consume(3)
    create_acls(ab, [binding(group, "User:alice", "READ", rtype="GROUP")])
    assert group_consume(3) == [b"admin-0", b"admin-1", b"admin-2"]
    # The committed offset is there for the group (OffsetFetch, DESCRIBE on group and topic).
    from kafka import TopicPartition

    c = KafkaConsumer(**ab.kp_conf("alice"), group_id=group, enable_auto_commit=False)
    try:
        assert c.committed(TopicPartition(topic_name, 0)) == 3
    finally:
        c.close()


def test_authorized_operations_of_topics_groups_and_the_cluster(acl_broker, topic_name):
    """KIP-430 through confluent-kafka's AdminClient: describe_topics, describe_consumer_groups
    and describe_cluster with include_authorized_operations list exactly the operations the
    ACLs allow (implied ones included); a super user gets every operation of the resource
    type; without the flag there is no list."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation as Op
    from kafka import KafkaConsumer

    ab = acl_broker
    group = f"g-{topic_name}"
    create_topic(ab, topic_name)
    create_acls(ab, [
        binding(topic_name, "User:alice", "READ"),
        binding(group, "User:alice", "READ", rtype="GROUP"),
        binding("kafka-cluster", "User:alice", "DESCRIBE", rtype="BROKER"),
        binding("kafka-cluster", "User:alice", "ALTER_CONFIGS", rtype="BROKER"),
    ])
    # The group exists once a member has joined and committed.
    c = KafkaConsumer(topic_name, **ab.kp_conf("alice"), group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False)
    try:
        deadline = time.monotonic() + 20
        while not c.assignment() and time.monotonic() < deadline:
            c.poll(timeout_ms=300)
        assert c.assignment(), "the group never assigned its partition"
        c.commit()
    finally:
        c.close()

    def ops(result) -> set:
        return set(result.authorized_operations or [])

    def topic_ops(user: str, include: bool = True):
        fs = admin(ab, user).describe_topics(TopicCollection([topic_name]), include_authorized_operations=include,
                                             request_timeout=15)
        return fs[topic_name].result(timeout=20)

    def group_ops(user: str, include: bool = True):
        fs = admin(ab, user).describe_consumer_groups([group], include_authorized_operations=include,
                                                      request_timeout=15)
        return fs[group].result(timeout=20)

    def cluster_ops(user: str, include: bool = True):
        return admin(ab, user).describe_cluster(include_authorized_operations=include,
                                                request_timeout=15).result(timeout=20)

    # READ implies DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS.
    assert ops(topic_ops("alice")) == {Op.READ, Op.DESCRIBE}
    assert ops(group_ops("alice")) == {Op.READ, Op.DESCRIBE}
    assert ops(cluster_ops("alice")) == {Op.DESCRIBE, Op.ALTER_CONFIGS, Op.DESCRIBE_CONFIGS}
    # A super user: every operation that applies to the resource type, and no other.
    assert ops(topic_ops("admin")) == {Op.READ, Op.WRITE, Op.CREATE, Op.DELETE, Op.ALTER, Op.DESCRIBE,
                                       Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS}
    assert ops(group_ops("admin")) == {Op.READ, Op.DESCRIBE, Op.DELETE}
    assert ops(cluster_ops("admin")) == {Op.CREATE, Op.CLUSTER_ACTION, Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS,
                                         Op.IDEMPOTENT_WRITE, Op.ALTER, Op.DESCRIBE}
    # Not asked for: none.
    assert topic_ops("alice", include=False).authorized_operations is None
    assert group_ops("alice", include=False).authorized_operations is None
    assert cluster_ops("alice", include=False).authorized_operations is None


def test_cluster_brokers_share_acls_and_replicate_with_anonymous_super_user(make_broker, topic_name):
    """Three brokers with an authorizer and the PLAINTEXT inter-broker listener's
    User:ANONYMOUS in super.users (as docs/security.md says): followers still replicate (they
    need CLUSTER_ACTION), and an ACL created through one broker is seen by the others."""
    from sluice_cluster import Cluster

    cluster = Cluster(make_broker, extra=[
        "--set", "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "--set", "super.users=User:ANONYMOUS",
    ])
    cluster.create_topic(topic_name, rf=3)
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all"})
    for i in range(5):
        p.produce(topic_name, value=f"v{i}".encode())
    assert p.flush(20) == 0
    cluster.wait_partition(topic_name, "ISR of 3 with an authorizer on", lambda leader, replicas, isr: len(isr) == 3)
    a1 = AdminClientFor(cluster.broker(1).bootstrap)
    for f in a1.create_acls([binding(topic_name, "User:carol", "READ")], request_timeout=15).values():
        f.result(timeout=15)
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    flt = AclBindingFilter(ResourceType.TOPIC, topic_name, ResourcePatternType.ANY, None, None,
                           AclOperation.ANY, AclPermissionType.ANY)
    for node in (2, 3):
        a = AdminClientFor(cluster.broker(node).bootstrap)
        deadline = time.monotonic() + 10
        seen = []
        while time.monotonic() < deadline and not seen:
            seen = a.describe_acls(flt, request_timeout=15).result(timeout=15)
            time.sleep(0.1)
        assert [b.principal for b in seen] == ["User:carol"], node


def AdminClientFor(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    key = (bootstrap, "plaintext")
    if key not in _ADMINS:
        _ADMINS[key] = AdminClient({"bootstrap.servers": bootstrap})
    return _ADMINS[key]
