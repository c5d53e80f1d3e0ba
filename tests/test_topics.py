"""The executions topic and its dead-letter topic on the real broker."""

from __future__ import annotations

import uuid

import pytest

from workload.embedded import free_port
from workload.errors import LabError
from workload.topics import (
    DEFAULT_PARTITIONS,
    DEFAULT_TOPIC,
    TopicSpec,
    TopicState,
    check_topic_name,
    ensure_topics,
    partition_count,
)

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:12]


def test_defaults_follow_the_proof_of_concept():
    spec = TopicSpec()
    assert (spec.name, spec.partitions, spec.dead_letter) == (
        DEFAULT_TOPIC,
        DEFAULT_PARTITIONS,
        "trade-executions.dlq",
    )
    assert DEFAULT_PARTITIONS == 10
    assert TopicSpec("x", dead_letter_name="errors").dead_letter == "errors"


def test_topics_are_created_once_with_the_configured_partitions(lab_stack):
    spec = TopicSpec(unique("t-topics-"), partitions=3)
    first = ensure_topics(lab_stack.kafka_bootstrap, spec, timeout=10)
    assert first == [
        TopicState(spec.name, 3, created=True),
        TopicState(spec.dead_letter, 3, created=True),
    ]
    # again, even asking for more partitions: nothing changes, nothing fails
    again = ensure_topics(lab_stack.kafka_bootstrap, TopicSpec(spec.name, partitions=7))
    assert again == [
        TopicState(spec.name, 3, created=False),
        TopicState(spec.dead_letter, 3, created=False),
    ]
    assert partition_count(lab_stack.kafka_bootstrap, spec.name) == 3
    assert partition_count(lab_stack.kafka_bootstrap, spec.dead_letter) == 3


def test_a_missing_topic_is_an_error_and_asking_does_not_create_it(lab_stack):
    name = unique("t-missing-")
    for _ in range(2):  # a broker that auto-created on lookup would answer the second time
        with pytest.raises(LabError, match=f"{name}' does not exist"):
            partition_count(lab_stack.kafka_bootstrap, name, timeout=5)


def test_an_unreachable_broker_is_one_clear_error():
    bootstrap = f"127.0.0.1:{free_port()}"
    with pytest.raises(LabError) as raised:
        ensure_topics(bootstrap, TopicSpec(unique("t-")), timeout=1)
    message = str(raised.value)
    assert message.startswith(f"cannot reach the Kafka broker at {bootstrap}")
    assert "python -m workload up" in message and "\n" not in message
    with pytest.raises(LabError, match="cannot reach the Kafka broker"):
        partition_count(bootstrap, "anything", timeout=1)


@pytest.mark.parametrize("name", ["", ".", "..", "has space", "slash/no", "ü", "x" * 250])
def test_illegal_topic_names_are_refused(name):
    with pytest.raises(LabError, match="not a Kafka topic name"):
        check_topic_name(name)
    with pytest.raises(LabError):
        TopicSpec(name)


def test_bad_specs_are_refused():
    with pytest.raises(LabError, match="at least 1 partition"):
        TopicSpec("t", partitions=0)
    with pytest.raises(LabError, match="must differ"):
        TopicSpec("t", dead_letter_name="t")
    with pytest.raises(LabError, match="replication factor"):
        TopicSpec("t", replication_factor=0)
