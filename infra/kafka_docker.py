"""Kafka in KRaft mode (no ZooKeeper) as N containers of the apache/kafka image."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from infra.endpoints import (
    KAFKA_CLIENT_PORT,
    KAFKA_CONTROLLER_PORT,
    KAFKA_INTERNAL_PORT,
    kafka_cluster_id,
    kafka_voters,
)


@dataclass(frozen=True)
class DockerKafkaClusterArgs:
    prefix: str
    network_name: pulumi.Input[str]
    brokers: int
    image: str
    partitions: int
    """Default partition count of auto-created topics, so the changefeed's topic gets it."""
    replication_factor: int
    cluster_seed: str
    """Anything unique to the stack; the KRaft cluster id is derived from it."""
    first_host_port: int = KAFKA_CLIENT_PORT


def broker_hosts(brokers: int) -> list[str]:
    return [f"kafka-{index}" for index in range(1, brokers + 1)]


class DockerKafkaCluster(pulumi.ComponentResource):
    """Every broker is also a controller (combined mode), which is plenty for a lab.

    Each broker has two client listeners: INTERNAL (``kafka-i:19092``) for containers on the
    lab network, such as CockroachDB's changefeeds, and EXTERNAL (``localhost:9092+i``) for the
    kit on the host. Kafka hands clients the address of the listener they came in on, so each
    side gets addresses it can reach.
    """

    bootstrap: pulumi.Output[str]
    """For clients on the host."""
    internal_bootstrap: pulumi.Output[str]
    """For containers on the lab network (CockroachDB's ``CREATE CHANGEFEED ... INTO``)."""

    def __init__(
        self,
        resource_name: str,
        args: DockerKafkaClusterArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("crdblab:infra:DockerKafkaCluster", resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        hosts = broker_hosts(args.brokers)
        image = docker.RemoteImage(
            f"{resource_name}-image", name=args.image, keep_locally=True, opts=child
        )
        common_env = {
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": (
                f"INTERNAL://:{KAFKA_INTERNAL_PORT},EXTERNAL://:{KAFKA_CLIENT_PORT},"
                f"CONTROLLER://:{KAFKA_CONTROLLER_PORT}"
            ),
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
                "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": kafka_voters(hosts),
            "CLUSTER_ID": kafka_cluster_id(args.cluster_seed),
            "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
            "KAFKA_NUM_PARTITIONS": str(args.partitions),
            "KAFKA_DEFAULT_REPLICATION_FACTOR": str(args.replication_factor),
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": str(args.replication_factor),
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": str(args.replication_factor),
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": str(min(2, args.replication_factor)),
            # Consumers join the group as they start; waiting 3 s for more only slows a run.
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        }
        for index, host in enumerate(hosts):
            host_port = args.first_host_port + index
            env = {
                **common_env,
                "KAFKA_NODE_ID": str(index + 1),
                "KAFKA_ADVERTISED_LISTENERS": (
                    f"INTERNAL://{host}:{KAFKA_INTERNAL_PORT},EXTERNAL://localhost:{host_port}"
                ),
            }
            volume = docker.Volume(
                f"{resource_name}-data-{index + 1}", name=f"{args.prefix}-{host}-data", opts=child
            )
            docker.Container(
                f"{resource_name}-{host}",
                name=f"{args.prefix}-{host}",
                image=image.image_id,
                hostname=host,
                envs=[f"{name}={value}" for name, value in sorted(env.items())],
                networks_advanced=[
                    docker.ContainerNetworksAdvancedArgs(name=args.network_name, aliases=[host])
                ],
                ports=[docker.ContainerPortArgs(internal=KAFKA_CLIENT_PORT, external=host_port)],
                volumes=[
                    docker.ContainerVolumeArgs(
                        volume_name=volume.name, container_path="/var/lib/kafka/data"
                    )
                ],
                healthcheck=docker.ContainerHealthcheckArgs(
                    tests=[
                        "CMD",
                        "/opt/kafka/bin/kafka-broker-api-versions.sh",
                        "--bootstrap-server",
                        f"{host}:{KAFKA_INTERNAL_PORT}",
                    ],
                    interval="10s",
                    timeout="10s",
                    retries=12,
                    start_period="20s",
                ),
                # The quorum forms only once a majority of brokers is up; Pulumi creates the
                # containers in parallel, so waiting for each one's health here is safe.
                wait=True,
                wait_timeout=240,
                restart="unless-stopped",
                opts=child,
            )
        self.bootstrap = pulumi.Output.from_input(
            ",".join(f"localhost:{args.first_host_port + i}" for i in range(args.brokers))
        )
        self.internal_bootstrap = pulumi.Output.from_input(
            ",".join(f"{host}:{KAFKA_INTERNAL_PORT}" for host in hosts)
        )
        self.register_outputs(
            {"bootstrap": self.bootstrap, "internal_bootstrap": self.internal_bootstrap}
        )
