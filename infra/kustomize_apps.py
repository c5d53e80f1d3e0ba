"""Kafka, Locust and the allocation consumers on Kubernetes, applied from a ``k8s/`` overlay.

The manifests live only in ``k8s/``; this component applies the overlay as it is and changes,
per topology, just the fields that the stack config owns. Each change is a small pure function
of a manifest dict, so tests can apply it to the real rendered manifests.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_kubernetes import kustomize
from pulumi_kubernetes.core import v1 as core
from pulumi_kubernetes.meta import v1 as meta

from infra import service_passwords as passwords
from infra.endpoints import KAFKA_CLIENT_PORT
from workload import roles, stack_outputs

WORKLOAD_IMAGE_PLACEHOLDER = "crdblab-workload"
"""The image name k8s/base uses for the kit's own containers; replaced by the built image."""
STACK_OUTPUTS_MANIFEST = "crdblab-stack-outputs"
"""The Secret (k8s/base/stack-outputs.yaml) whose one key holds the stack outputs document."""
STACK_OUTPUTS_KEY = "stack-outputs.json"

Manifest = dict[str, Any]
Transformation = Callable[[Manifest, pulumi.ResourceOptions], None]


@dataclass(frozen=True)
class KustomizeAppsArgs:
    directory: str
    """Absolute path of the overlay to apply, e.g. ``<repo>/k8s/overlays/lab``."""
    namespace: pulumi.Input[str]
    kafka_brokers: int
    kafka_image: str
    kafka_cluster_id: str
    partitions: int
    replication_factor: int
    locust_workers: int
    locust_web_host: str
    consumers: int
    strategy: str
    workload_image: pulumi.Input[str]
    sql_url: pulumi.Input[str]
    admin_urls: pulumi.Input[list[str]]
    topology: str
    secure: bool = False
    service_passwords: pulumi.Input[dict[str, str]] | None = None
    """``LAB_<SERVICE>_PASSWORD`` -> password (a secret), for a secure cluster: they go into
    the Secret ``crdblab-service-passwords`` and every pod that reads the stack outputs gets
    them by ``secretKeyRef``. A secure cluster without them (no ``crdblab:sqlPassword``) has
    its pods connect with the stack's own SQL user (LAB_SERVICE_ROLES=off)."""
    depends_on: tuple[pulumi.Resource, ...] = ()
    """Applied before any manifest: the apps need CockroachDB up when they start."""


def _containers(manifest: Manifest) -> list[Manifest]:
    spec = manifest.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])


def _is(manifest: Manifest, kind: str, name: str) -> bool:
    return manifest.get("kind") == kind and manifest.get("metadata", {}).get("name") == name


def set_env(container: Manifest, name: str, value: pulumi.Input[str]) -> None:
    """Set one environment variable, replacing its value if the manifest already has it."""
    env = container.setdefault("env", [])
    for entry in env:
        if entry.get("name") == name:
            entry.pop("valueFrom", None)
            entry["value"] = value
            return
    env.append({"name": name, "value": value})


def set_workload_image(image: pulumi.Input[str]) -> Transformation:
    def transform(manifest: Manifest, _opts: pulumi.ResourceOptions) -> None:
        for container in _containers(manifest):
            if container.get("image", "").split(":")[0] == WORKLOAD_IMAGE_PLACEHOLDER:
                container["image"] = image

    return transform


def size_kafka(args: KustomizeAppsArgs) -> Transformation:
    """Brokers and the settings that must agree with their number."""

    def transform(manifest: Manifest, _opts: pulumi.ResourceOptions) -> None:
        if not _is(manifest, "StatefulSet", "kafka"):
            return
        manifest["spec"]["replicas"] = args.kafka_brokers
        for container in _containers(manifest):
            container["image"] = args.kafka_image
            # The start-up script builds the voter list from CRDBLAB_KAFKA_BROKERS: it must equal
            # the replica count, or the quorum would wait for pods that never come.
            set_env(container, "CRDBLAB_KAFKA_BROKERS", str(args.kafka_brokers))
            set_env(container, "CLUSTER_ID", args.kafka_cluster_id)
            set_env(container, "KAFKA_NUM_PARTITIONS", str(args.partitions))
            rf = str(args.replication_factor)
            set_env(container, "KAFKA_DEFAULT_REPLICATION_FACTOR", rf)
            set_env(container, "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", rf)
            set_env(container, "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", rf)
            min_isr = str(min(2, args.replication_factor))
            set_env(container, "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", min_isr)

    return transform


def size_locust(workers: int, web_host: str) -> Transformation:
    def transform(manifest: Manifest, _opts: pulumi.ResourceOptions) -> None:
        if _is(manifest, "Deployment", "locust-worker"):
            manifest["spec"]["replicas"] = workers
        elif _is(manifest, "Deployment", "locust-master"):
            for container in _containers(manifest):
                set_env(container, "LOCUST_WEB_HOST", web_host)

    return transform


def size_consumers(consumers: int, strategy: str) -> Transformation:
    def transform(manifest: Manifest, _opts: pulumi.ResourceOptions) -> None:
        if not _is(manifest, "Deployment", "allocation-consumer"):
            return
        manifest["spec"]["replicas"] = consumers
        for container in _containers(manifest):
            container_args = container.get("args", [])
            if "--strategy" in container_args:
                container_args[container_args.index("--strategy") + 1] = strategy

    return transform


def _reads_stack_outputs(container: Manifest) -> bool:
    return any(e.get("name") == "LAB_STACK_OUTPUTS" for e in container.get("env", []))


def set_env_from_secret(container: Manifest, name: str, secret: str, key: str) -> None:
    """Set one environment variable to a Secret's key, never to a literal value."""
    env = container.setdefault("env", [])
    entry = {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    for index, existing in enumerate(env):
        if existing.get("name") == name:
            env[index] = entry
            return
    env.append(entry)


def service_roles(enabled: bool) -> Transformation:
    """Turn the kit's service roles off in every container that reads the stack outputs."""

    def transform(manifest: Manifest, _opts: pulumi.ResourceOptions) -> None:
        if enabled:
            return
        for container in _containers(manifest):
            if _reads_stack_outputs(container):
                set_env(container, "LAB_SERVICE_ROLES", "off")

    return transform


def service_password_refs(enabled: bool) -> Transformation:
    """Every ``LAB_<SERVICE>_PASSWORD`` from the service-passwords Secret, in every container
    that reads the stack outputs (its ``schema create`` sets them, its services log in)."""

    def transform(manifest: Manifest, _opts: pulumi.ResourceOptions) -> None:
        if not enabled:
            return
        for container in _containers(manifest):
            if _reads_stack_outputs(container):
                for service in roles.SERVICES:
                    set_env_from_secret(container, service.env, passwords.SECRET_NAME, service.env)

    return transform


def fill_stack_outputs(document: pulumi.Input[str]) -> Transformation:
    def transform(manifest: Manifest, _opts: pulumi.ResourceOptions) -> None:
        if _is(manifest, "Secret", STACK_OUTPUTS_MANIFEST):
            manifest.setdefault("stringData", {})[STACK_OUTPUTS_KEY] = document

    return transform


def wait_for(resources: tuple[pulumi.Resource, ...]) -> Transformation:
    """``depends_on`` for every rendered resource: Directory does not pass its own on."""

    def transform(_manifest: Manifest, opts: pulumi.ResourceOptions) -> None:
        if resources:
            opts.depends_on = list(resources)

    return transform


def topology_transformations(
    args: KustomizeAppsArgs, stack_outputs_json: pulumi.Input[str]
) -> list[Transformation]:
    return [
        set_workload_image(args.workload_image),
        size_kafka(args),
        size_locust(args.locust_workers, args.locust_web_host),
        size_consumers(args.consumers, args.strategy),
        # Insecure: the roles need no password. Secure: they need theirs, so roles stay on
        # only where the stack has them.
        service_roles(not args.secure or args.service_passwords is not None),
        service_password_refs(args.secure and args.service_passwords is not None),
        fill_stack_outputs(stack_outputs_json),
        wait_for(args.depends_on),
    ]


def kafka_bootstrap(brokers: int, namespace: str) -> str:
    """Every broker by its stable pod name (k8s/base/kafka.yaml advertises the same names)."""
    return ",".join(
        f"kafka-{index}.kafka-headless.{namespace}.svc.cluster.local:{KAFKA_CLIENT_PORT}"
        for index in range(brokers)
    )


class KustomizeApps(pulumi.ComponentResource):
    kafka_bootstrap: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        args: KustomizeAppsArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("crdblab:infra:KustomizeApps", resource_name, None, opts)
        self.kafka_bootstrap = pulumi.Output.from_input(args.namespace).apply(
            lambda ns: kafka_bootstrap(args.kafka_brokers, ns)
        )
        # The pods get the same document `pulumi stack output --json` prints, with in-cluster
        # addresses, so the kit reads its endpoints one way everywhere (--stack-outputs).
        document = pulumi.Output.all(args.sql_url, self.kafka_bootstrap, args.admin_urls).apply(
            lambda values: json.dumps(
                {
                    stack_outputs.SQL_URL: values[0],
                    stack_outputs.KAFKA_BOOTSTRAP: values[1],
                    stack_outputs.ADMIN_URLS: values[2],
                    stack_outputs.TOPOLOGY: args.topology,
                },
                indent=2,
            )
        )
        if args.secure and args.service_passwords is not None:
            secret = core.Secret(
                f"{resource_name}-service-passwords",
                metadata=meta.ObjectMetaArgs(
                    name=passwords.SECRET_NAME,
                    namespace=args.namespace,
                    labels={"app.kubernetes.io/part-of": "crdblab"},
                ),
                type="Opaque",
                string_data=pulumi.Output.secret(args.service_passwords),
                opts=pulumi.ResourceOptions(parent=self),
            )
            # The pods must not start before the Secret they read their passwords from.
            args = dataclasses.replace(args, depends_on=(*args.depends_on, secret))
        kustomize.Directory(
            f"{resource_name}-kustomize",
            directory=args.directory,
            transformations=topology_transformations(args, document),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"kafka_bootstrap": self.kafka_bootstrap})
