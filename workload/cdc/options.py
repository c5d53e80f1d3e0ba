"""CDC options: one dataclass, and the command-line flags that fill it (defined once here, so
that ``cdc start`` can hand the very same options to the relay process it starts)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from workload.cdc.relay import RelayOptions
from workload.cdc.slot import DEFAULT_PUBLICATION, DEFAULT_SLOT, SlotSpec
from workload.dialect import KafkaSinkConfig
from workload.errors import LabError
from workload.settings import Settings, read_stack_outputs
from workload.topics import DEFAULT_PARTITIONS, DEFAULT_TOPIC, TopicSpec

SINK_BOOTSTRAP_ENV = "LAB_SINK_BOOTSTRAP"
SINK_BOOTSTRAP_OUTPUT = "kafkaBootstrapInternal"
"""The Pulumi stack output with the brokers as CRDB's nodes reach them (infra/endpoints.py)."""


@dataclass(frozen=True)
class CdcOptions:
    """Where CDC publishes and how; every field has a flag of ``cdc start``/``cdc relay``."""

    topics: TopicSpec = field(default_factory=TopicSpec)
    slot: SlotSpec = field(default_factory=SlotSpec)
    relay: RelayOptions = field(default_factory=RelayOptions)
    sink_bootstrap: str | None = None  # CRDB: brokers as the nodes see them; default: bootstrap
    sink: KafkaSinkConfig = field(default_factory=KafkaSinkConfig)
    min_checkpoint_frequency: str | None = None  # CRDB: how fresh the job's high-water mark is
    kafka_timeout: float = 5.0  # seconds the admin calls wait for a broker

    def sink_bootstrap_for(self, settings: Settings, kafka_bootstrap: str) -> str:
        """The flag or LAB_SINK_BOOTSTRAP, else the stack's in-network brokers, else the
        bootstrap the kit itself uses (right wherever CRDB and the kit share a network)."""
        if self.sink_bootstrap:
            return self.sink_bootstrap
        if settings.stack_outputs is not None:
            internal = read_stack_outputs(settings.stack_outputs).get(SINK_BOOTSTRAP_OUTPUT)
            if isinstance(internal, list):
                internal = ",".join(map(str, internal))
            if internal:
                return str(internal)
        return kafka_bootstrap


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is < 0")
    return value


def add_arguments(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    """The CDC flags. Commands that only find what exists (status, stop) get the names;
    ``creating`` adds how to create topics, the changefeed and the relay."""
    group = parser.add_argument_group("topic")
    group.add_argument("--topic", default=DEFAULT_TOPIC, help="executions topic (%(default)s)")
    group.add_argument(
        "--kafka-timeout",
        type=_positive_float,
        default=CdcOptions.kafka_timeout,
        metavar="SECONDS",
        help="how long to wait for the broker before giving up (%(default)s)",
    )
    if creating:
        group.add_argument(
            "--partitions",
            type=int,
            default=DEFAULT_PARTITIONS,
            help="partitions of a topic created now (%(default)s); an existing one keeps its own",
        )
        group.add_argument("--dlq-topic", help="dead-letter topic (default: TOPIC.dlq)")
        group.add_argument(
            "--replication-factor",
            type=int,
            default=-1,
            help="replicas of a topic created now (default: the broker's default)",
        )

    group = parser.add_argument_group("PostgreSQL source")
    group.add_argument("--slot", default=DEFAULT_SLOT, help="replication slot (%(default)s)")
    group.add_argument(
        "--publication", default=DEFAULT_PUBLICATION, help="publication (%(default)s)"
    )
    if not creating:
        return

    group = parser.add_argument_group("CockroachDB source")
    group.add_argument(
        "--sink-bootstrap",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers as the CockroachDB nodes reach them (Docker: the in-network "
        "addresses); default: stack output kafkaBootstrapInternal, else the Kafka bootstrap "
        f"[env {SINK_BOOTSTRAP_ENV}]",
    )
    group.add_argument(
        "--flush-messages",
        type=int,
        default=KafkaSinkConfig.flush_messages,
        help="changefeed: messages per Kafka flush (%(default)s)",
    )
    group.add_argument(
        "--flush-frequency",
        default=KafkaSinkConfig.flush_frequency,
        help="changefeed: longest wait before a Kafka flush, a Go duration (%(default)s)",
    )
    group.add_argument(
        "--required-acks",
        choices=("NONE", "ONE", "ALL"),
        default=KafkaSinkConfig.required_acks,
        help="changefeed: Kafka acknowledgement level (%(default)s)",
    )
    group.add_argument(
        "--min-checkpoint-frequency",
        help="changefeed: how often the job records progress (CockroachDB's default: 30s)",
    )
    add_relay_arguments(parser)


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RelayOptions()
    group = parser.add_argument_group("relay (PostgreSQL)")
    group.add_argument(
        "--batch-changes",
        type=int,
        default=defaults.batch_changes,
        help="changes read from the slot per batch (%(default)s)",
    )
    group.add_argument(
        "--resolved-interval",
        type=_non_negative_float,
        default=defaults.resolved_interval,
        metavar="SECONDS",
        help="seconds between resolved messages, 0 for none (%(default)s)",
    )
    group.add_argument(
        "--idle-poll",
        type=_positive_float,
        default=defaults.idle_poll,
        metavar="SECONDS",
        help="seconds between reads of an empty slot (%(default)s)",
    )
    group.add_argument(
        "--status-interval",
        type=_positive_float,
        default=defaults.status_interval,
        metavar="SECONDS",
        help="seconds between writes of RUN_DIR/cdc/relay.json (%(default)s)",
    )
    group.add_argument(
        "--linger-ms",
        type=int,
        default=defaults.linger_ms,
        help="producer batching delay in ms (%(default)s)",
    )


def from_arguments(args: argparse.Namespace) -> CdcOptions:
    """The options the flags (and LAB_SINK_BOOTSTRAP) give; flags a command lacks keep their
    defaults."""
    defaults = RelayOptions()

    def given(name: str, default=None):
        value = getattr(args, name, None)
        return default if value is None else value

    try:
        topic_spec = TopicSpec(
            name=args.topic,
            partitions=given("partitions", DEFAULT_PARTITIONS),
            replication_factor=given("replication_factor", -1),
            dead_letter_name=given("dlq_topic"),
        )
        sink = KafkaSinkConfig(
            flush_messages=given("flush_messages", KafkaSinkConfig.flush_messages),
            flush_frequency=given("flush_frequency", KafkaSinkConfig.flush_frequency),
            required_acks=given("required_acks", KafkaSinkConfig.required_acks),
        )
    except ValueError as exc:
        raise LabError(str(exc)) from None
    relay = RelayOptions(
        batch_changes=given("batch_changes", defaults.batch_changes),
        resolved_interval=given("resolved_interval", defaults.resolved_interval),
        idle_poll=given("idle_poll", defaults.idle_poll),
        status_interval=given("status_interval", defaults.status_interval),
        linger_ms=given("linger_ms", defaults.linger_ms),
    )
    return CdcOptions(
        topics=topic_spec,
        slot=SlotSpec(slot=args.slot, publication=args.publication),
        relay=relay,
        sink_bootstrap=given("sink_bootstrap") or os.environ.get(SINK_BOOTSTRAP_ENV) or None,
        sink=sink,
        min_checkpoint_frequency=given("min_checkpoint_frequency"),
        kafka_timeout=given("kafka_timeout", CdcOptions.kafka_timeout),
    )


def relay_arguments(options: CdcOptions) -> list[str]:
    """The flags that make ``cdc relay`` run with ``options`` (for the background process)."""
    topic = options.topics
    relay = options.relay
    argv = [
        "--topic", topic.name,
        "--partitions", str(topic.partitions),
        "--dlq-topic", topic.dead_letter,
        "--replication-factor", str(topic.replication_factor),
        "--slot", options.slot.slot,
        "--publication", options.slot.publication,
        "--batch-changes", str(relay.batch_changes),
        "--resolved-interval", repr(relay.resolved_interval),
        "--idle-poll", repr(relay.idle_poll),
        "--status-interval", repr(relay.status_interval),
        "--linger-ms", str(relay.linger_ms),
    ]  # fmt: skip
    return argv
