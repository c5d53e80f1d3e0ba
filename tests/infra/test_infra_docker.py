"""The Docker topologies, as infra/__main__.py declares them for the committed stack files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from infra_harness import REPO, run_stack, secret_values

from infra.service_passwords import derive
from workload import sweep, topology
from workload.roles import SERVICES
from workload.stack_outputs import (
    ADMIN_URLS,
    KAFKA_BOOTSTRAP,
    SERVICE_PASSWORDS,
    SQL_URL,
    TOPOLOGY,
)

CONTAINER = "docker:index/container:Container"


def crdb_nodes(run) -> list:
    return [
        r for r in run.mocks.of_type(CONTAINER) if r.inputs.get("command", [None])[0] == "start"
    ]


def kafka_brokers(run) -> list:
    return [r for r in run.mocks.of_type(CONTAINER) if r.name.startswith("kafka-kafka-")]


def env_of(registration) -> dict[str, str]:
    return dict(item.split("=", 1) for item in registration.inputs["envs"])


@pytest.fixture(scope="module")
def docker3():
    return run_stack("docker-3")


def test_docker3_has_three_nodes_that_all_join_each_other(docker3):
    nodes = crdb_nodes(docker3)
    assert sorted(n.inputs["hostname"] for n in nodes) == ["crdb-1", "crdb-2", "crdb-3"]
    for node in nodes:
        command = node.inputs["command"]
        assert "--join=crdb-1:26357,crdb-2:26357,crdb-3:26357" in command
        assert f"--advertise-addr={node.inputs['hostname']}:26357" in command
        assert "--listen-addr=:26357" in command
        assert "--sql-addr=:26257" in command
        assert "--http-addr=:8080" in command
        assert "--insecure" in command
        assert node.inputs["healthcheck"]["tests"][:3] == ["CMD", "/cockroach/cockroach", "sql"]
        assert node.inputs["networksAdvanced"][0]["aliases"] == [node.inputs["hostname"]]
        assert node.inputs["cpus"] == "2"
        assert node.inputs["memory"] == 4096


def test_docker3_publishes_distinct_host_ports(docker3):
    published = [p["external"] for n in crdb_nodes(docker3) for p in n.inputs["ports"]]
    assert sorted(published) == [8080, 8081, 8082, 26257, 26258, 26259]


def test_each_node_has_its_own_volume(docker3):
    volumes = {
        v["volumeName"]
        for n in crdb_nodes(docker3)
        for v in n.inputs["volumes"]
        if "volumeName" in v
    }
    assert volumes == {f"crdblab-docker-3-crdb-{i}-data" for i in (1, 2, 3)}
    assert len(docker3.mocks.of_type("docker:index/volume:Volume")) == 3 + 3  # nodes + brokers


def test_docker3_initialises_once_against_a_joined_node(docker3):
    inits = [
        r for r in docker3.mocks.of_type(CONTAINER) if " init " in r.inputs.get("command", [""])[0]
    ]
    assert len(inits) == 1
    (init,) = inits
    assert "--host=crdb-1:26357" in init.inputs["command"][0]
    assert init.inputs["attach"] is True and init.inputs["mustRun"] is False


def test_docker3_without_license_applies_no_settings(docker3):
    names = {r.name for r in docker3.mocks.of_type(CONTAINER)}
    assert "crdb-settings" not in names
    assert any("5 open transactions" in w for w in docker3.warnings)


def test_docker3_kafka_is_a_kraft_quorum_of_the_configured_brokers(docker3):
    brokers = kafka_brokers(docker3)
    assert len(brokers) == 3
    envs = [env_of(b) for b in brokers]
    assert sorted(e["KAFKA_NODE_ID"] for e in envs) == ["1", "2", "3"]
    for env in envs:
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
            "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        )
        assert env["KAFKA_NUM_PARTITIONS"] == "12"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    images = {
        r.inputs["name"] for r in docker3.mocks.of_type("docker:index/remoteImage:RemoteImage")
    }
    assert images == {"cockroachdb/cockroach:v26.2.1", "apache/kafka:3.9.1"}


def test_docker3_outputs(docker3):
    outputs = docker3.outputs
    assert outputs[SQL_URL] == (
        "postgresql://root@localhost:26257,localhost:26258,localhost:26259/defaultdb"
        "?sslmode=disable&load_balance_hosts=random"
    )
    assert outputs[KAFKA_BOOTSTRAP] == "localhost:9092,localhost:9093,localhost:9094"
    assert outputs[ADMIN_URLS] == [f"http://localhost:{p}" for p in (8080, 8081, 8082)]
    assert outputs[TOPOLOGY] == "docker-3n-2cpu"
    assert outputs["kafkaBootstrapInternal"] == "kafka-1:19092,kafka-2:19092,kafka-3:19092"
    # Nothing secret in an insecure, unlicensed stack.
    assert docker3.secret_outputs == set()


def test_docker5_scales_nodes_joins_and_ports():
    run = run_stack("docker-5")
    nodes = crdb_nodes(run)
    assert len(nodes) == 5
    expected_join = "--join=" + ",".join(f"crdb-{i}:26357" for i in range(1, 6))
    assert all(expected_join in n.inputs["command"] for n in nodes)
    assert run.outputs[SQL_URL].count("localhost:") == 5
    assert "localhost:26261" in run.outputs[SQL_URL]
    assert run.outputs[TOPOLOGY] == "docker-5n-1cpu"
    assert all(n.inputs["memory"] == 2048 for n in nodes)
    assert len(kafka_brokers(run)) == 3


def test_docker1_is_one_node_and_one_broker():
    run = run_stack("docker-1")
    (node,) = crdb_nodes(run)
    assert "--join=crdb-1:26357" in node.inputs["command"]
    (broker,) = kafka_brokers(run)
    assert env_of(broker)["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    # A single node is not throttled without a license, so no warning either.
    assert run.warnings == []


def test_license_and_organization_are_applied_as_secrets():
    run = run_stack(
        "docker-3",
        overrides={"crdblab:organization": "Acme Lab"},
        secrets={"crdblab:licenseKey": "crl-0-LICENSE"},
    )
    settings = run.mocks.named("crdb-settings")
    secret_envs = secret_values(settings.raw_inputs["envs"])
    assert secret_envs, "the settings container's environment must be registered as secret"
    assert "CRDB_LICENSE=crl-0-LICENSE" in secret_envs[0]
    assert "CRDB_ORGANIZATION=Acme Lab" in secret_envs[0]
    # The secret is handed over by environment, never on a command line `docker inspect` shows.
    assert "crl-0-LICENSE" not in str(settings.inputs["command"])
    assert "enterprise.license" in settings.inputs["command"][0]
    assert not any("crl-0-LICENSE" in str(r.inputs) for r in crdb_nodes(run))


def test_secure_docker_uses_certificates_and_a_secret_password():
    run = run_stack(
        "docker-3",
        overrides={"crdblab:secure": "true"},
        secrets={"crdblab:sqlPassword": "s3cr3t!"},
    )
    certs = run.mocks.named("crdb-certs")
    assert "cert create-node localhost 127.0.0.1 crdb-1 crdb-2 crdb-3" in certs.inputs["command"][0]
    for node in crdb_nodes(run):
        assert "--certs-dir=/certs" in node.inputs["command"]
        assert "--insecure" not in node.inputs["command"]
    settings = run.mocks.named("crdb-settings")
    assert "LAB_PASSWORD=s3cr3t!" in secret_values(settings.raw_inputs["envs"])[0]
    assert SQL_URL in run.secret_outputs
    url = run.outputs[SQL_URL]
    assert url.startswith("postgresql://lab:s3cr3t%21@localhost:26257,")
    assert "sslmode=verify-full" in url and "/.lab/certs/docker-3/ca.crt" in url
    assert run.outputs[ADMIN_URLS][0] == "https://localhost:8080"


def test_secure_docker_exports_one_secret_password_per_service_role(monkeypatch):
    run = run_stack(
        "docker-3",
        overrides={"crdblab:secure": "true"},
        secrets={"crdblab:sqlPassword": "s3cr3t!"},
    )
    assert SERVICE_PASSWORDS in run.secret_outputs
    exported = run.outputs[SERVICE_PASSWORDS]
    assert exported == {s.env: derive("s3cr3t!", s.role) for s in SERVICES}
    assert len(set(exported.values())) == len(SERVICES)
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in exported.values())  # hex: no escaping
    # They follow the stack's sqlPassword: another one, other passwords.
    assert derive("other", "lab_allocator") != exported["LAB_ALLOCATOR_PASSWORD"]
    # No container of the stack is handed them, in plain text or otherwise.
    for registration in run.mocks.registrations:
        assert not any(p in str(registration.raw_inputs) for p in exported.values())

    # A sweep of the stack hands them to `schema create` and to its children by environment,
    # only while the stack is up.
    assert topology.password_env(run.outputs) == exported
    monkeypatch.setenv("LAB_TRADER_PASSWORD", "users-own")
    monkeypatch.delenv("LAB_ALLOCATOR_PASSWORD", raising=False)
    stack = topology.PulumiTopology("docker-3", topology.Settings(), progress=lambda _: None)
    stack._use_passwords(topology.password_env(run.outputs))
    assert os.environ["LAB_ALLOCATOR_PASSWORD"] == exported["LAB_ALLOCATOR_PASSWORD"]
    assert os.environ["LAB_TRADER_PASSWORD"] == exported["LAB_TRADER_PASSWORD"]
    endpoints = topology.Endpoints("postgresql://lab@localhost:26257/d", "k:9092", "t", False)
    deployment = topology.Deployment(endpoints, topology.Settings())
    configuration = sweep.Configuration("docker-3", "block", 1, None)
    args, env = sweep.locust_command(configuration, sweep.SweepOptions(), deployment, "t", "g")
    assert {k: env[k] for k in exported} == exported
    assert not any(p in " ".join(args) for p in exported.values())  # never on a command line
    stack.__exit__(None, None, None)
    assert "LAB_ALLOCATOR_PASSWORD" not in os.environ
    assert os.environ["LAB_TRADER_PASSWORD"] == "users-own"


def test_insecure_docker_exports_no_service_passwords(docker3):
    # An insecure cluster accepts no passwords at all, even with a sqlPassword set.
    assert SERVICE_PASSWORDS not in docker3.outputs
    run = run_stack("docker-1", secrets={"crdblab:sqlPassword": "unused"})
    assert SERVICE_PASSWORDS not in run.outputs


def test_invalid_stack_config_stops_the_program_before_any_resource():
    with pytest.raises(Exception, match="crdblab:topicPartitions \\(2\\) is less than"):
        run_stack("docker-3", overrides={"crdblab:topicPartitions": "2"})


def test_two_nodes_warns_through_pulumi_log():
    run = run_stack("docker-3", overrides={"crdblab:nodes": "2"})
    assert len(crdb_nodes(run)) == 2
    assert any("no fault tolerance" in w for w in run.warnings)


def test_program_imports_as_pulumi_runs_it_from_infra(tmp_path):
    """Pulumi starts the program with infra/ as its directory and no repository root on
    sys.path; __main__.py must still import infra.* and workload.stack_outputs."""
    script = tmp_path / "run_like_pulumi.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import runpy, sys
            sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r})]
            sys.path.insert(0, {str(REPO / "infra")!r})
            import pulumi
            from pulumi.runtime import Mocks

            class Echo(Mocks):
                def new_resource(self, args):
                    return args.name + "-id", dict(args.inputs, imageId="sha256:x")

                def call(self, args):
                    return {{}}

            pulumi.runtime.set_mocks(Echo(), project="crdblab", stack="docker-1", preview=False)
            pulumi.runtime.set_all_config({{"crdblab:platform": "docker", "crdblab:nodes": "1"}})

            @pulumi.runtime.test
            def program():
                exports = runpy.run_path("__main__.py")["exports"]
                return pulumi.Output.all(*exports.values()).apply(print)

            program()
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-I", str(script)],
        cwd=REPO / "infra",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "docker-1n-2cpu" in done.stdout
