"""ElectLeaders from confluent-kafka's AdminClient (librdkafka) on a three-broker cluster.

The preferred replica of a partition is stopped and restarted; once it is back in the ISR,
`AdminClient.elect_leaders(ElectionType.PREFERRED, ...)` moves leadership back to it, and a
second election is ELECTION_NOT_NEEDED. Automatic rebalance is off so only the request moves it.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import ElectionType, KafkaError, KafkaException, TopicPartition

from sluice_cluster import Cluster


def code(err) -> int | None:
    """The Kafka error code of one partition's result (a KafkaException, or None)."""
    if err is None:
        return None
    if isinstance(err, KafkaException):
        err = err.args[0]
    assert isinstance(err, KafkaError), repr(err)
    return err.code()


@pytest.mark.timeout(90)
def test_elect_preferred_leader_with_admin_client(make_broker):
    cluster = Cluster(make_broker, extra=["--set", "auto.leader.rebalance.enable=false"])
    topic = "elect-me"
    cluster.create_topic(topic, partitions=1, rf=3)
    leader, replicas, _ = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3)
    preferred = replicas[0]
    assert leader == preferred

    cluster.broker(preferred).stop()
    others = tuple(b for b in cluster.ids if b != preferred)
    cluster.wait_partition(topic, "failover", lambda l, r, i: l not in (-1, preferred),
                           exclude=(preferred,))
    cluster.broker(preferred).restart()
    leader, _, _ = cluster.wait_partition(topic, "back in the ISR",
                                          lambda l, r, i: preferred in i and len(i) == 3)
    assert leader != preferred

    admin = cluster.admin(exclude=(preferred,))
    tp = TopicPartition(topic, 0)
    result = admin.elect_leaders(ElectionType.PREFERRED, [tp]).result(15)
    assert list(result.keys()) == [tp]
    assert result[tp] is None, result
    # The broker that answered (librdkafka sends it to the controller) shows the new leader at
    # once; the others within a metadata round trip.
    for node in others:
        deadline = time.monotonic() + 5
        while cluster.partition(topic, via=node)[0] != preferred:
            assert time.monotonic() < deadline, f"broker {node} never saw the new leader"
            time.sleep(0.1)

    # Again: nothing to do, reported per partition as ELECTION_NOT_NEEDED.
    result = admin.elect_leaders(ElectionType.PREFERRED, [tp]).result(15)
    assert code(result[tp]) == KafkaError.ELECTION_NOT_NEEDED, result

    # An unknown partition.
    bad = TopicPartition(topic, 7)
    result = admin.elect_leaders(ElectionType.UNCLEAN, [bad]).result(15)
    assert code(result[bad]) == KafkaError.UNKNOWN_TOPIC_OR_PART, result
    # None: every partition; the broker leaves out the ones that need nothing.
    assert admin.elect_leaders(ElectionType.PREFERRED, None).result(15) == {}
