"""The executions topic and its dead-letter topic, created with Kafka's admin API.

Both CDC sources (a CockroachDB changefeed, the PostgreSQL relay) publish into one topic keyed
by block order, and the allocation consumer dead-letters what it cannot use into a second one.
Creating them here, before anything produces, fixes their partition counts: a topic that a
producer or a changefeed auto-creates gets the broker's default instead, and adding partitions
later would move block orders to other partitions.

Every admin client here sets ``allow.auto.create.topics=false``: without it, merely asking a
broker (Tansu does this) about a missing topic creates it with the default partition count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

from workload.errors import LabError

DEFAULT_TOPIC = "trade-executions"
DEFAULT_PARTITIONS = 10  # what the original .NET proof of concept used
DEAD_LETTER_SUFFIX = ".dlq"
BROKER_DEFAULT_REPLICATION = -1

_UNREACHABLE_CODES = frozenset({KafkaError._TRANSPORT, KafkaError._TIMED_OUT})
_LEGAL_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

KAFKA_HINT = (
    "start the embedded stack with `python -m workload up`, or pass a reachable broker with "
    "--kafka-bootstrap / LAB_KAFKA_BOOTSTRAP"
)


def check_topic_name(name: str) -> str:
    """``name`` if Kafka accepts it as a topic name, else a LabError saying why."""
    if not isinstance(name, str) or not _LEGAL_NAME.fullmatch(name) or name in (".", ".."):
        raise LabError(
            f"{name!r} is not a Kafka topic name: use 1 to 249 letters, digits, '.', '_' or '-'"
        )
    return name


@dataclass(frozen=True)
class TopicSpec:
    """The executions topic: its name, partitions, and the name of its dead-letter topic."""

    name: str = DEFAULT_TOPIC
    partitions: int = DEFAULT_PARTITIONS
    replication_factor: int = BROKER_DEFAULT_REPLICATION
    dead_letter_name: str | None = None  # default: name + ".dlq"

    def __post_init__(self) -> None:
        check_topic_name(self.name)
        check_topic_name(self.dead_letter)
        if self.dead_letter == self.name:
            raise LabError(f"the dead-letter topic must differ from the topic {self.name!r}")
        if self.partitions < 1:
            raise LabError(f"a topic needs at least 1 partition, not {self.partitions}")
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise LabError(
                f"replication factor {self.replication_factor}: give a positive number, "
                "or -1 for the broker's default"
            )

    @property
    def dead_letter(self) -> str:
        return self.dead_letter_name or self.name + DEAD_LETTER_SUFFIX


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    created: bool  # False: it existed already, and was left as it was


def admin_client(bootstrap: str, *, timeout: float = 10.0) -> AdminClient:
    """An admin client that gives up on an unreachable broker within about ``timeout``."""
    millis = max(100, int(timeout * 1000))
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "allow.auto.create.topics": False,
            "socket.timeout.ms": millis,
            "socket.connection.setup.timeout.ms": millis,
            # Connection failures surface as one LabError; librdkafka's own log lines would
            # repeat the same refusal every 50 ms on stderr.
            "log_level": 0,
        }
    )


def _unreachable(bootstrap: str, error: KafkaError | str) -> LabError:
    reason = error.str() if isinstance(error, KafkaError) else error
    return LabError(f"cannot reach the Kafka broker at {bootstrap} ({reason}); {KAFKA_HINT}")


def _check_reachable(admin: AdminClient, bootstrap: str, timeout: float) -> set[str]:
    """The names of the broker's topics; a LabError if no broker answers within ``timeout``."""
    try:
        return set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise _unreachable(bootstrap, exc.args[0]) from None


def _describe(admin: AdminClient, names: list[str], bootstrap: str, timeout: float):
    futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout)
    counts: dict[str, int | None] = {}
    for name, future in futures.items():
        try:
            counts[name] = len(future.result().partitions)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                counts[name] = None
            elif error.code() in _UNREACHABLE_CODES:
                raise _unreachable(bootstrap, error) from None
            else:
                raise LabError(f"cannot describe Kafka topic {name!r}: {error.str()}") from None
    return counts


def ensure_topics(
    bootstrap: str, spec: TopicSpec | None = None, *, timeout: float = 10.0
) -> list[TopicState]:
    """Create the topic and its dead-letter topic unless they exist (safe to call again).

    Returns [topic, dead-letter topic]. An existing topic keeps its partition count even if
    ``spec`` asks for another: repartitioning would move block orders between partitions, so
    that is left to whoever deletes the topic on purpose.
    """
    spec = spec or TopicSpec()
    admin = admin_client(bootstrap, timeout=timeout)
    existing = _check_reachable(admin, bootstrap, timeout)
    wanted = [
        NewTopic(name, num_partitions=partitions, replication_factor=spec.replication_factor)
        for name, partitions in ((spec.name, spec.partitions), (spec.dead_letter, spec.partitions))
        if name not in existing
    ]
    created = set()
    if wanted:
        futures = admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
                created.add(name)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # another process created it between our look and our create
                if error.code() in _UNREACHABLE_CODES:
                    raise _unreachable(bootstrap, error) from None
                raise LabError(f"cannot create Kafka topic {name!r}: {error.str()}") from None
    names = [spec.name, spec.dead_letter]
    counts = _describe(admin, names, bootstrap, timeout)
    states = []
    for name in names:
        if counts[name] is None:
            raise LabError(f"Kafka topic {name!r} was created but the broker does not list it")
        states.append(TopicState(name, counts[name], name in created))
    return states


def partition_count(bootstrap: str, topic: str, *, timeout: float = 10.0) -> int:
    """How many partitions ``topic`` has; a LabError if it does not exist or no broker answers."""
    admin = admin_client(bootstrap, timeout=timeout)
    _check_reachable(admin, bootstrap, timeout)
    count = _describe(admin, [topic], bootstrap, timeout)[topic]
    if count is None:
        raise LabError(
            f"Kafka topic {topic!r} does not exist at {bootstrap}; create it with "
            "`python -m workload cdc start`"
        )
    return count
