"""The stack configuration: the pure checks, the loader under Pulumi's config, the stack files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pulumi
import pytest
from infra_harness import REPO, stack_config

from infra.config import (
    CheckResult,
    ConfigError,
    LabConfig,
    Platform,
    check_settings,
    load_config,
)
from infra.endpoints import join_list, kafka_cluster_id, kafka_voters, sql_url

STACK_FILES = sorted(path.name for path in REPO.glob("Pulumi.*.yaml"))
REQUIRED_STACKS = {"docker-1", "docker-3", "docker-5", "k8s-3", "k8s-5", "k8s-9"}


def valid_settings(**changes) -> dict:
    """LabConfig's defaults for Docker as the plain settings check_settings takes."""
    base = LabConfig(platform=Platform.DOCKER)
    settings = {
        f.name: getattr(base, f.name)
        for f in dataclasses.fields(LabConfig)
        if f.name not in {"license_key", "sql_password"}
    }
    settings["platform"] = "docker"
    settings.update(changes)
    return settings


def check(**changes) -> CheckResult:
    has_license = changes.pop("has_license", True)
    has_password = changes.pop("has_password", False)
    return check_settings(
        valid_settings(**changes), has_license=has_license, has_password=has_password
    )


def test_defaults_are_valid():
    assert check() == CheckResult(errors=(), warnings=())


@pytest.mark.parametrize(
    ("changes", "names", "fix"),
    [
        ({"nodes": 0}, "crdblab:nodes", "pulumi config set crdblab:nodes 3"),
        ({"nodes": -2}, "crdblab:nodes", "pulumi config set crdblab:nodes 3"),
        ({"platform": "nomad"}, "crdblab:platform", "pulumi config set crdblab:platform docker"),
        (
            {"topic_partitions": 4, "consumers": 6},
            "crdblab:topicPartitions (4) is less than crdblab:consumers (6)",
            "pulumi config set crdblab:topicPartitions 6",
        ),
        ({"consumers": 0}, "crdblab:consumers", "pulumi config set crdblab:consumers 4"),
        ({"topic_partitions": 0}, "crdblab:topicPartitions", "topicPartitions 12"),
        ({"kafka_brokers": 0}, "crdblab:kafkaBrokers", "pulumi config set crdblab:kafkaBrokers"),
        ({"cpus": 0.0}, "crdblab:cpus", "pulumi config set crdblab:cpus 2"),
        ({"memory_gib": 0.5}, "crdblab:memoryGib", "pulumi config set crdblab:memoryGib 4"),
        ({"storage_gib": 0}, "crdblab:storageGib", "pulumi config set crdblab:storageGib"),
        ({"crdb_version": "latest"}, "crdblab:crdbVersion", "crdbVersion v26.2.1"),
        ({"kafka_image": "Not An Image"}, "crdblab:kafkaImage", "crdblab:kafkaImage <"),
        ({"locust_workers": -1}, "crdblab:locustWorkers", "crdblab:locustWorkers 2"),
        ({"strategy": "yolo"}, "crdblab:strategy", "crdblab:strategy micro-batch"),
        ({"k8s_overlay": "prod"}, "crdblab:k8sOverlay", "crdblab:k8sOverlay lab"),
        (
            {"secure": True, "has_password": False},
            "crdblab:sqlPassword",
            "pulumi config set --secret crdblab:sqlPassword",
        ),
    ],
)
def test_each_invalid_value_is_named_with_its_fix(changes, names, fix):
    result = check(**changes)
    assert len(result.errors) == 1, result.errors
    assert names in result.errors[0]
    assert fix in result.errors[0]


def test_secure_docker_with_a_password_is_valid():
    assert check(secure=True, has_password=True).errors == ()


def test_secure_kubernetes_needs_no_password():
    # The pods authenticate with the chart's client certificate instead.
    assert check(platform="kubernetes", secure=True, has_password=False).errors == ()


def test_secure_kubernetes_without_a_password_warns_that_service_roles_are_off():
    result = check(platform="kubernetes", secure=True, has_password=False)
    (warning,) = [w for w in result.warnings if "sqlPassword" in w]
    assert "LAB_SERVICE_ROLES=off" in warning
    assert "pulumi config set --secret crdblab:sqlPassword" in warning
    for quiet in (
        check(platform="kubernetes", secure=True, has_password=True),
        check(platform="kubernetes", secure=False, has_password=False),
    ):
        assert not any("sqlPassword" in w for w in quiet.warnings)


def test_every_error_is_reported_at_once():
    result = check(nodes=0, strategy="nope", platform="x")
    joined = "\n".join(result.errors)
    assert len(result.errors) == 3
    assert all(k in joined for k in ("crdblab:nodes", "crdblab:strategy", "crdblab:platform"))


def test_two_nodes_warns_about_fault_tolerance():
    result = check(nodes=2)
    assert result.errors == ()
    assert any("no fault tolerance" in w and "crdblab:nodes" in w for w in result.warnings)


@pytest.mark.parametrize("nodes", [1, 3, 9])
def test_other_sizes_do_not_warn_about_fault_tolerance(nodes):
    assert not any("fault tolerance" in w for w in check(nodes=nodes).warnings)


def test_multi_node_without_license_warns_about_the_throttle_single_node_does_not():
    assert any("5 open transactions" in w for w in check(nodes=3, has_license=False).warnings)
    assert check(nodes=1, has_license=False).warnings == ()


def test_consumers_equal_to_partitions_is_fine():
    assert check(topic_partitions=6, consumers=6).errors == ()


def test_topology_name():
    assert LabConfig(platform=Platform.DOCKER, nodes=3, cpus=2).topology == "docker-3n-2cpu"
    assert LabConfig(platform=Platform.KUBERNETES, nodes=9, cpus=0.5).topology == "k8s-9n-0.5cpu"


def test_replication_factor_never_exceeds_brokers():
    assert LabConfig(platform=Platform.DOCKER, kafka_brokers=1).replication_factor == 1
    assert LabConfig(platform=Platform.DOCKER, kafka_brokers=5).replication_factor == 3


# --- load_config, through pulumi.Config as the program reads it --------------------------------


class _NoMocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return f"{args.name}-id", args.inputs

    def call(self, args):
        return {}


@pytest.fixture
def pulumi_config():
    """Set the stack config the way the CLI hands it over; return a loader for it."""
    pulumi.runtime.set_mocks(_NoMocks(), project="crdblab", stack="test", preview=False)

    def load(config: dict[str, str], secret_keys: tuple[str, ...] = ()) -> LabConfig:
        pulumi.runtime.set_all_config(config, secret_keys=list(secret_keys))
        return load_config()

    return load


def test_load_config_reads_every_key(pulumi_config):
    cfg = pulumi_config(
        {
            "crdblab:platform": "kubernetes",
            "crdblab:nodes": "5",
            "crdblab:cpus": "4",
            "crdblab:memoryGib": "16",
            "crdblab:storageGib": "100",
            "crdblab:kafkaBrokers": "3",
            "crdblab:topicPartitions": "24",
            "crdblab:consumers": "8",
            "crdblab:locustWorkers": "3",
            "crdblab:workloadImage": "registry.example/crdblab:1",
            "crdblab:crdbVersion": "v25.4.2",
            "crdblab:licenseKey": "crl-0-abc",
        },
        secret_keys=("crdblab:licenseKey",),
    )
    assert (cfg.platform, cfg.nodes, cfg.cpus, cfg.memory_gib) == (Platform.KUBERNETES, 5, 4, 16)
    assert (cfg.storage_gib, cfg.kafka_brokers, cfg.topic_partitions) == (100, 3, 24)
    assert (cfg.consumers, cfg.locust_workers) == (8, 3)
    assert cfg.workload_image == "registry.example/crdblab:1"
    assert cfg.crdb_image_ref == "cockroachdb/cockroach:v25.4.2"
    # TLS is on by default on Kubernetes.
    assert cfg.secure is True
    assert isinstance(cfg.license_key, pulumi.Output)
    assert "crl-0-abc" not in repr(cfg)


def test_docker_is_insecure_by_default(pulumi_config):
    assert pulumi_config({"crdblab:platform": "docker"}).secure is False


def test_invalid_config_fails_with_one_message_naming_the_keys(pulumi_config):
    with pytest.raises(ConfigError) as failure:
        pulumi_config(
            {
                "crdblab:platform": "docker",
                "crdblab:nodes": "0",
                "crdblab:topicPartitions": "2",
                "crdblab:consumers": "3",
            }
        )
    message = str(failure.value)
    assert message.startswith("The stack configuration is invalid:")
    assert "crdblab:nodes is 0" in message
    assert "crdblab:topicPartitions (2) is less than crdblab:consumers (3)" in message


def test_a_value_of_the_wrong_type_names_its_key(pulumi_config):
    with pytest.raises(ConfigError, match="crdblab:nodes"):
        pulumi_config({"crdblab:platform": "docker", "crdblab:nodes": "three"})


def test_unknown_platform_fails(pulumi_config):
    with pytest.raises(ConfigError, match="crdblab:platform is 'swarm'"):
        pulumi_config({"crdblab:platform": "swarm"})


def test_missing_platform_fails_naming_the_key(pulumi_config):
    with pytest.raises(pulumi.ConfigMissingError, match="crdblab:platform"):
        pulumi_config({"crdblab:nodes": "3"})


# --- the committed stack files --------------------------------------------------------------


def test_the_required_topologies_have_stack_files():
    stacks = {name.removeprefix("Pulumi.").removesuffix(".yaml") for name in STACK_FILES}
    assert stacks >= REQUIRED_STACKS


@pytest.mark.parametrize("stack_file", STACK_FILES)
def test_each_stack_file_is_valid_and_matches_its_name(pulumi_config, stack_file):
    stack = stack_file.removeprefix("Pulumi.").removesuffix(".yaml")
    config = stack_config(stack)
    assert "crdblab:licenseKey" not in config, "a license key must never be in a stack file"
    assert "crdblab:sqlPassword" not in config
    cfg = pulumi_config(config)
    platform, nodes = stack.split("-")
    assert cfg.platform.short == platform
    assert cfg.nodes == int(nodes)


def test_pulumi_yaml_runs_infra_with_the_repo_venv():
    import yaml

    project = yaml.safe_load(Path(REPO, "Pulumi.yaml").read_text())
    assert project["name"] == "crdblab"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["virtualenv"] == ".venv"
    assert project["main"].rstrip("/") == "infra"


# --- endpoints ------------------------------------------------------------------------------


def test_sql_url_names_every_host_and_balances():
    url = sql_url(["a:26257", "b:26258"], user="lab", password="p@ss word")
    assert url == (
        "postgresql://lab:p%40ss%20word@a:26257,b:26258/defaultdb"
        "?sslmode=disable&load_balance_hosts=random"
    )


def test_sql_url_needs_a_host():
    with pytest.raises(ValueError):
        sql_url([])


def test_join_list_and_voters():
    assert join_list(["crdb-1", "crdb-2"]) == "crdb-1:26357,crdb-2:26357"
    assert kafka_voters(["kafka-1", "kafka-2"]) == "1@kafka-1:9093,2@kafka-2:9093"


def test_kafka_cluster_id_is_a_stable_kraft_uuid():
    import base64

    first, again, other = (kafka_cluster_id(s) for s in ("crdblab/a", "crdblab/a", "crdblab/b"))
    assert first == again != other
    assert len(first) == 22
    assert len(base64.urlsafe_b64decode(first + "==")) == 16


def test_dockerfile_builds_the_kit_image_from_an_allowlisted_context():
    dockerfile = (REPO / "Dockerfile").read_text().splitlines()
    instructions = [line for line in dockerfile if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert "RUN pip install -r requirements.txt" in instructions
    assert instructions[-2] == 'ENTRYPOINT ["python", "-m", "workload"]'
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert sorted(allowed) == ["infra", "locustfiles", "requirements.txt", "workload"]
    assert "*" in (REPO / ".dockerignore").read_text().splitlines()
