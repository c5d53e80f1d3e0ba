"""The stack's configuration, read once and checked before any resource is declared.

Every ``crdblab:*`` key is read here and nowhere else. ``check_settings`` is a pure function
(no Pulumi runtime needed) so that the rules can be tested directly; ``load_config`` is the thin
layer that reads ``pulumi.Config``, runs the checks and fails the program with one message that
names every bad key and how to fix it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi

PROJECT = "crdblab"

STRATEGIES = ("block", "per-execution", "micro-batch")
K8S_OVERLAYS = ("lab", "kind")

_MEMORY_FLOOR_GIB = 1.0  # CRDB refuses to do useful work with less; its docs ask for 4 GiB per vCPU
_VERSION_TAG = re.compile(r"^v\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$")
_IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")


class Platform(enum.StrEnum):
    DOCKER = "docker"
    KUBERNETES = "kubernetes"

    @property
    def short(self) -> str:
        """How the platform is written in a topology name (``docker-3n-2cpu``, ``k8s-9n-2cpu``)."""
        return "k8s" if self is Platform.KUBERNETES else "docker"


class ConfigError(ValueError):
    """The stack configuration cannot be provisioned; the message says which keys and why."""


@dataclass(frozen=True)
class LabConfig:
    """Everything a stack is configured with, typed. Built only by ``load_config`` (or tests)."""

    platform: Platform
    nodes: int = 3
    crdb_image: str = "cockroachdb/cockroach"
    crdb_version: str = "v26.2.1"
    cpus: float = 2.0
    memory_gib: float = 4.0
    storage_gib: int = 20
    secure: bool = False
    kafka_brokers: int = 3
    kafka_image: str = "apache/kafka:3.9.1"
    topic_partitions: int = 12
    locust_workers: int = 2
    consumers: int = 4
    strategy: str = "micro-batch"
    workload_image: str = "crdblab-workload:latest"
    build_workload_image: bool = True
    push_workload_image: bool = False
    k8s_overlay: str = "lab"
    locust_web_host: str = "127.0.0.1"
    organization: str | None = None
    # Secrets stay Outputs so that Pulumi keeps them encrypted in state and masked in logs.
    license_key: pulumi.Output[str] | None = field(default=None, repr=False)
    sql_password: pulumi.Output[str] | None = field(default=None, repr=False)

    @property
    def crdb_image_ref(self) -> str:
        return f"{self.crdb_image}:{self.crdb_version}"

    @property
    def topology(self) -> str:
        """The short name that tags every run record, e.g. ``docker-3n-2cpu``."""
        cpus = f"{self.cpus:g}"
        return f"{self.platform.short}-{self.nodes}n-{cpus}cpu"

    @property
    def replication_factor(self) -> int:
        """Kafka's internal topics cannot ask for more replicas than there are brokers."""
        return min(3, self.kafka_brokers)


@dataclass(frozen=True)
class CheckResult:
    errors: tuple[str, ...]
    warnings: tuple[str, ...]


def key(name: str) -> str:
    """The fully qualified config key, as a user types it in ``pulumi config set``."""
    return f"{PROJECT}:{name}"


def check_settings(
    settings: Mapping[str, object], *, has_license: bool, has_password: bool
) -> CheckResult:
    """Check plain (already parsed) settings; return every error and warning, in key order.

    ``settings`` holds LabConfig field values by field name. Secrets are not passed in, only
    whether they were given, so this function never sees a license key or a password.
    """
    errors: list[str] = []
    warnings: list[str] = []

    platform = settings.get("platform")
    if platform not in {p.value for p in Platform}:
        errors.append(
            f"{key('platform')} is {platform!r}; it must be 'docker' or 'kubernetes'. "
            f"Fix: pulumi config set {key('platform')} docker"
        )

    nodes = settings["nodes"]
    if nodes < 1:
        errors.append(
            f"{key('nodes')} is {nodes}; a cluster needs at least 1 node. "
            f"Fix: pulumi config set {key('nodes')} 3"
        )
    elif nodes == 2:
        warnings.append(
            f"{key('nodes')} is 2: CockroachDB keeps 3 replicas of each range, so a 2-node "
            "cluster has no fault tolerance (losing either node stops it). Use 1 or 3+ nodes."
        )

    if not _VERSION_TAG.match(str(settings["crdb_version"])):
        errors.append(
            f"{key('crdbVersion')} is {settings['crdb_version']!r}; it must be a release tag "
            f"like v26.2.1. Fix: pulumi config set {key('crdbVersion')} v26.2.1"
        )
    for field_name, config_name in (
        ("crdb_image", "crdbImage"),
        ("kafka_image", "kafkaImage"),
        ("workload_image", "workloadImage"),
    ):
        if not _IMAGE_REF.match(str(settings[field_name])):
            errors.append(
                f"{key(config_name)} is {settings[field_name]!r}, which is not an image "
                f"reference. Fix: pulumi config set {key(config_name)} <repository[:tag]>"
            )

    cpus = settings["cpus"]
    if cpus <= 0:
        errors.append(
            f"{key('cpus')} is {cpus:g}; each node needs a positive number of CPUs. "
            f"Fix: pulumi config set {key('cpus')} 2"
        )
    memory = settings["memory_gib"]
    if memory < _MEMORY_FLOOR_GIB:
        errors.append(
            f"{key('memoryGib')} is {memory:g}; CockroachDB needs at least "
            f"{_MEMORY_FLOOR_GIB:g} GiB per node. Fix: pulumi config set {key('memoryGib')} 4"
        )
    if settings["storage_gib"] < 1:
        errors.append(
            f"{key('storageGib')} is {settings['storage_gib']}; it must be at least 1. "
            f"Fix: pulumi config set {key('storageGib')} 20"
        )

    brokers = settings["kafka_brokers"]
    if brokers < 1:
        errors.append(
            f"{key('kafkaBrokers')} is {brokers}; Kafka needs at least 1 broker. "
            f"Fix: pulumi config set {key('kafkaBrokers')} 3"
        )
    partitions = settings["topic_partitions"]
    consumers = settings["consumers"]
    if partitions < 1:
        errors.append(
            f"{key('topicPartitions')} is {partitions}; it must be at least 1. "
            f"Fix: pulumi config set {key('topicPartitions')} 12"
        )
    if consumers < 1:
        errors.append(
            f"{key('consumers')} is {consumers}; at least 1 allocation consumer must run. "
            f"Fix: pulumi config set {key('consumers')} 4"
        )
    elif partitions >= 1 and partitions < consumers:
        # A consumer group gives each partition to one member: extra consumers sit idle and
        # the throughput of the run would be misread as the cost of more consumers.
        errors.append(
            f"{key('topicPartitions')} ({partitions}) is less than {key('consumers')} "
            f"({consumers}); consumers beyond the partition count would sit idle. "
            f"Fix: pulumi config set {key('topicPartitions')} {consumers} "
            f"(or lower {key('consumers')})"
        )
    if settings["locust_workers"] < 0:
        errors.append(
            f"{key('locustWorkers')} is {settings['locust_workers']}; it cannot be negative. "
            f"Fix: pulumi config set {key('locustWorkers')} 2"
        )
    if settings["strategy"] not in STRATEGIES:
        errors.append(
            f"{key('strategy')} is {settings['strategy']!r}; it must be one of "
            f"{', '.join(STRATEGIES)}. Fix: pulumi config set {key('strategy')} micro-batch"
        )
    if settings["k8s_overlay"] not in K8S_OVERLAYS:
        errors.append(
            f"{key('k8sOverlay')} is {settings['k8s_overlay']!r}; it must name a directory "
            f"under k8s/overlays: {', '.join(K8S_OVERLAYS)}. "
            f"Fix: pulumi config set {key('k8sOverlay')} lab"
        )

    if platform == Platform.DOCKER.value and settings["secure"] and not has_password:
        errors.append(
            f"{key('secure')} is true on Docker, where the kit connects with a password; "
            f"{key('sqlPassword')} is not set. "
            f"Fix: pulumi config set --secret {key('sqlPassword')} <password>"
        )
    secure = settings["secure"]
    if platform == Platform.KUBERNETES.value and secure and not has_password:
        warnings.append(
            f"{key('secure')} is true but {key('sqlPassword')} is not set: the service roles "
            "(lab_allocator, ...) have no passwords to log in with, so the pods connect as "
            "root (LAB_SERVICE_ROLES=off). "
            f"Set one with: pulumi config set --secret {key('sqlPassword')} <password>"
        )
    if settings.get("organization") and not has_license:
        warnings.append(
            f"{key('organization')} is set but {key('licenseKey')} is not; the organization "
            "alone does not license the cluster."
        )
    if not has_license and nodes > 1:
        warnings.append(
            f"No {key('licenseKey')}: a multi-node CockroachDB cluster without a license is "
            "throttled to 5 open transactions 7 days after init. "
            f"Set one with: pulumi config set --secret {key('licenseKey')} <key>"
        )
    return CheckResult(errors=tuple(errors), warnings=tuple(warnings))


def load_config(config: pulumi.Config | None = None) -> LabConfig:
    """Read every ``crdblab:*`` key once, check it, and return the typed configuration.

    Fails with ``ConfigError`` (which stops ``pulumi up`` before anything is created) when any
    value is invalid; logs warnings through ``pulumi.log.warn``.
    """
    config = config or pulumi.Config(PROJECT)
    raw_platform = config.require("platform")
    defaults = LabConfig(platform=Platform.DOCKER)
    # Kubernetes gets TLS unless told otherwise: a shared cluster is no place for an insecure
    # database. On Docker the cluster lives on the laptop's loopback, where insecure is simpler.
    secure_default = raw_platform == Platform.KUBERNETES.value

    def get_int(name: str, default: int) -> int:
        return _typed(config.get_int, name, default)

    def get_float(name: str, default: float) -> float:
        return _typed(config.get_float, name, default)

    def get_bool(name: str, default: bool) -> bool:
        return _typed(config.get_bool, name, default)

    settings = {
        "platform": raw_platform,
        "nodes": get_int("nodes", defaults.nodes),
        "crdb_image": config.get("crdbImage") or defaults.crdb_image,
        "crdb_version": config.get("crdbVersion") or defaults.crdb_version,
        "cpus": get_float("cpus", defaults.cpus),
        "memory_gib": get_float("memoryGib", defaults.memory_gib),
        "storage_gib": get_int("storageGib", defaults.storage_gib),
        "secure": get_bool("secure", secure_default),
        "kafka_brokers": get_int("kafkaBrokers", defaults.kafka_brokers),
        "kafka_image": config.get("kafkaImage") or defaults.kafka_image,
        "topic_partitions": get_int("topicPartitions", defaults.topic_partitions),
        "locust_workers": get_int("locustWorkers", defaults.locust_workers),
        "consumers": get_int("consumers", defaults.consumers),
        "strategy": config.get("strategy") or defaults.strategy,
        "workload_image": config.get("workloadImage") or defaults.workload_image,
        "build_workload_image": get_bool("buildWorkloadImage", defaults.build_workload_image),
        "push_workload_image": get_bool("pushWorkloadImage", defaults.push_workload_image),
        "k8s_overlay": config.get("k8sOverlay") or defaults.k8s_overlay,
        "locust_web_host": config.get("locustWebHost") or defaults.locust_web_host,
        "organization": config.get("organization"),
    }
    license_key = config.get_secret("licenseKey")
    sql_password = config.get_secret("sqlPassword")

    result = check_settings(
        settings, has_license=license_key is not None, has_password=sql_password is not None
    )
    if result.errors:
        raise ConfigError(
            "The stack configuration is invalid:\n  - " + "\n  - ".join(result.errors)
        )
    for warning in result.warnings:
        pulumi.log.warn(warning)

    settings["platform"] = Platform(raw_platform)
    return LabConfig(**settings, license_key=license_key, sql_password=sql_password)


def _typed(getter, name: str, default):
    """Call a typed ``pulumi.Config`` getter, turning its type error into a ConfigError."""
    try:
        value = getter(name)
    except pulumi.ConfigTypeError as exc:
        raise ConfigError(
            f"The stack configuration is invalid:\n  - {key(name)}: {exc}. "
            f"Fix: pulumi config set {key(name)} <value of the right type>"
        ) from exc
    return default if value is None else value
