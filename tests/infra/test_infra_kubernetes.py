"""The Kubernetes topologies: the chart's values, and the k8s/ overlay as Pulumi applies it.

The kustomize invoke is answered by a real kustomize (see infra_harness), so these tests need
one and skip, naming what to install, where there is none.
"""

from __future__ import annotations

import json

import pytest
from infra_harness import requires_kustomize, run_stack, secret_values

from infra import service_passwords as passwords
from infra.endpoints import kafka_cluster_id
from workload.roles import SERVICES, service_url
from workload.stack_outputs import (
    ADMIN_URLS,
    ALL,
    KAFKA_BOOTSTRAP,
    SERVICE_PASSWORDS,
    SQL_URL,
    TOPOLOGY,
)

pytestmark = requires_kustomize

RELEASE = "kubernetes:helm.sh/v3:Release"


def manifests(run, kind: str) -> dict[str, dict]:
    """Registered Kubernetes objects of a kind, by name, as Pulumi would send them."""
    token = {
        "Deployment": "kubernetes:apps/v1:Deployment",
        "StatefulSet": "kubernetes:apps/v1:StatefulSet",
        "Secret": "kubernetes:core/v1:Secret",
        "Namespace": "kubernetes:core/v1:Namespace",
        "Service": "kubernetes:core/v1:Service",
    }[kind]
    return {r.inputs["metadata"]["name"]: r.inputs for r in run.mocks.of_type(token)}


def container(manifest: dict) -> dict:
    (only,) = manifest["spec"]["template"]["spec"]["containers"]
    return only


def env(manifest: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(manifest).get("env", [])}


@pytest.fixture(scope="module")
def k8s9():
    return run_stack(
        "k8s-9",
        overrides={"crdblab:organization": "Acme Lab"},
        secrets={"crdblab:licenseKey": "crl-0-LICENSE"},
    )


def test_k8s9_chart_gets_nine_replicas_and_the_topology_resources(k8s9):
    (release,) = k8s9.mocks.of_type(RELEASE)
    inputs = release.inputs
    assert inputs["chart"] == "cockroachdb"
    assert inputs["repositoryOpts"]["repo"].startswith("https://")
    assert inputs["namespace"] == "crdblab"
    values = inputs["values"]
    assert values["statefulset"]["replicas"] == 9
    assert values["statefulset"]["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert values["statefulset"]["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert values["storage"]["persistentVolume"]["size"] == "50Gi"
    assert values["image"] == {"repository": "cockroachdb/cockroach", "tag": "v26.2.1"}
    assert values["tls"]["enabled"] is True
    assert values["fullnameOverride"] == "crdb"


def test_k8s9_license_is_a_secret_chart_value(k8s9):
    (release,) = k8s9.mocks.of_type(RELEASE)
    settings = release.inputs["values"]["init"]["provisioning"]
    assert settings["enabled"] is True
    assert settings["clusterSettings"] == {
        "enterprise.license": "crl-0-LICENSE",
        "cluster.organization": "Acme Lab",
    }
    secrets = secret_values(release.raw_inputs["values"])
    assert secrets, "the chart values carrying the license must be registered as secret"
    assert "crl-0-LICENSE" in json.dumps(secrets)
    # Nowhere else in the plain (non-secret) inputs of any resource.
    for registration in k8s9.mocks.registrations:
        if registration is not release:
            assert "crl-0-LICENSE" not in json.dumps(registration.inputs)


def test_k8s9_outputs_name_every_pod(k8s9):
    outputs = k8s9.outputs
    assert set(ALL) <= set(outputs)
    hosts = outputs[SQL_URL].split("@", 1)[1].split("/", 1)[0].split(",")
    assert hosts == [f"crdb-{i}.crdb.crdblab.svc.cluster.local:26257" for i in range(9)]
    assert "load_balance_hosts=random" in outputs[SQL_URL]
    assert "sslmode=verify-full" in outputs[SQL_URL]
    assert "sslcert=/certs/client.root.crt" in outputs[SQL_URL]
    assert len(outputs[ADMIN_URLS]) == 9
    assert outputs[ADMIN_URLS][0] == "https://crdb-0.crdb.crdblab.svc.cluster.local:8080"
    assert outputs[KAFKA_BOOTSTRAP].count(":9092") == 5
    assert outputs[TOPOLOGY] == "k8s-9n-2cpu"


def test_k8s9_applies_the_kustomize_overlay_and_the_namespace(k8s9):
    directories = [args["directory"] for token, args in k8s9.mocks.invokes]
    assert any(d.endswith("k8s/namespace") for d in directories)
    assert any(d.endswith("k8s/overlays/lab") for d in directories)
    assert set(manifests(k8s9, "Namespace")) == {"crdblab"}


def test_k8s9_sizes_the_apps_from_the_stack_config(k8s9):
    deployments = manifests(k8s9, "Deployment")
    assert deployments["allocation-consumer"]["spec"]["replicas"] == 18
    assert deployments["locust-worker"]["spec"]["replicas"] == 6
    assert deployments["locust-master"]["spec"]["replicas"] == 1
    kafka = manifests(k8s9, "StatefulSet")["kafka"]
    assert kafka["spec"]["replicas"] == 5
    kafka_env = env(kafka)
    assert kafka_env["CRDBLAB_KAFKA_BROKERS"] == "5"
    assert kafka_env["KAFKA_NUM_PARTITIONS"] == "36"
    assert kafka_env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
    assert kafka_env["CLUSTER_ID"] == kafka_cluster_id("crdblab/k8s-9")
    assert container(kafka)["image"] == "apache/kafka:3.9.1"


def test_k8s9_runs_the_built_workload_image_with_the_configured_commands(k8s9):
    (build,) = k8s9.mocks.of_type("docker:index/image:Image")
    assert build.inputs["imageName"] == "crdblab-workload:latest"
    assert build.inputs["build"]["dockerfile"].endswith("/Dockerfile")
    assert build.inputs["skipPush"] is True
    deployments = manifests(k8s9, "Deployment")
    for name in ("allocation-consumer", "locust-master", "locust-worker"):
        assert container(deployments[name])["image"] == "crdblab-workload:latest"
    consumer_args = container(deployments["allocation-consumer"])["args"]
    assert consumer_args[:5] == ["allocate", "--strategy", "micro-batch", "--consumers", "1"]
    master = deployments["locust-master"]
    assert container(master)["args"][:2] == ["-f", "locustfiles/allocation.py"]
    assert env(master)["LOCUST_WEB_HOST"] == "127.0.0.1"
    # Secure by default, but this stack has no sqlPassword to derive the service-role
    # passwords from: roles off there, and pulumi up says how to turn them on.
    for name in ("allocation-consumer", "locust-master", "locust-worker"):
        assert env(deployments[name])["LAB_SERVICE_ROLES"] == "off"
        assert not any(key.endswith("_PASSWORD") for key in env(deployments[name]))
    assert any("crdblab:sqlPassword is not set" in w for w in k8s9.warnings)
    assert SERVICE_PASSWORDS not in k8s9.outputs
    assert passwords.SECRET_NAME not in manifests(k8s9, "Secret")


def test_k8s9_hands_the_pods_the_stack_outputs(k8s9):
    secret = manifests(k8s9, "Secret")["crdblab-stack-outputs"]
    document = json.loads(secret["stringData"]["stack-outputs.json"])
    assert document[SQL_URL] == k8s9.outputs[SQL_URL]
    assert document[KAFKA_BOOTSTRAP] == k8s9.outputs[KAFKA_BOOTSTRAP]
    assert document[TOPOLOGY] == "k8s-9n-2cpu"


@pytest.mark.parametrize(("stack", "nodes", "consumers"), [("k8s-3", 3, 6), ("k8s-5", 5, 10)])
def test_smaller_kubernetes_stacks_scale_accordingly(stack, nodes, consumers):
    run = run_stack(stack)
    (release,) = run.mocks.of_type(RELEASE)
    assert release.inputs["values"]["statefulset"]["replicas"] == nodes
    # Without a license the chart is not asked to provision settings.
    assert "init" not in release.inputs["values"]
    assert manifests(run, "Deployment")["allocation-consumer"]["spec"]["replicas"] == consumers
    assert run.outputs[SQL_URL].count(".crdb.crdblab.svc.cluster.local:26257") == nodes


def test_configured_strategy_web_host_overlay_and_insecure_mode():
    run = run_stack(
        "k8s-3",
        overrides={
            "crdblab:strategy": "per-execution",
            "crdblab:locustWebHost": "0.0.0.0",  # noqa: S104 - the test sets what a user may
            "crdblab:k8sOverlay": "kind",
            "crdblab:secure": "false",
            "crdblab:buildWorkloadImage": "false",
            "crdblab:workloadImage": "registry.example/crdblab:7",
        },
    )
    deployments = manifests(run, "Deployment")
    consumer = container(deployments["allocation-consumer"])
    assert consumer["args"][consumer["args"].index("--strategy") + 1] == "per-execution"
    assert consumer["imagePullPolicy"] == "Never"  # from the kind overlay
    assert consumer["image"] == "registry.example/crdblab:7"
    assert env(deployments["locust-master"])["LOCUST_WEB_HOST"] == "0.0.0.0"  # noqa: S104
    # Insecure: no passwords needed, so the pods connect as their service roles.
    assert "LAB_SERVICE_ROLES" not in env(deployments["allocation-consumer"])
    assert run.mocks.of_type("docker:index/image:Image") == []
    (release,) = run.mocks.of_type(RELEASE)
    assert release.inputs["values"]["tls"]["enabled"] is False
    assert "sslmode=disable" in run.outputs[SQL_URL]


SQL_PASSWORD = "k8s-s3cr3t!"
APP_DEPLOYMENTS = ("allocation-consumer", "locust-master", "locust-worker")


@pytest.fixture(scope="module")
def k8s3_roles():
    """A secure Kubernetes stack with a sqlPassword: its service roles get passwords."""
    return run_stack("k8s-3", secrets={"crdblab:sqlPassword": SQL_PASSWORD})


def test_secure_k8s_keeps_one_secret_password_per_service_role(k8s3_roles):
    secret = manifests(k8s3_roles, "Secret")[passwords.SECRET_NAME]
    assert secret["metadata"]["namespace"] == "crdblab"
    expected = {s.env: passwords.derive(SQL_PASSWORD, s.role) for s in SERVICES}
    assert secret["stringData"] == expected
    assert len(set(expected.values())) == len(SERVICES)  # one per role, none shared
    (registration,) = [
        r
        for r in k8s3_roles.mocks.of_type("kubernetes:core/v1:Secret")
        if r.inputs["metadata"]["name"] == passwords.SECRET_NAME
    ]
    assert secret_values(registration.raw_inputs["stringData"]) == [expected]
    # Exported too (secret), for the kit outside the cluster.
    assert k8s3_roles.outputs[SERVICE_PASSWORDS] == expected
    assert SERVICE_PASSWORDS in k8s3_roles.secret_outputs


def test_secure_k8s_pods_read_the_passwords_by_secret_reference(k8s3_roles):
    deployments = manifests(k8s3_roles, "Deployment")
    for name in APP_DEPLOYMENTS:
        entries = {e["name"]: e for e in container(deployments[name])["env"]}
        for service in SERVICES:
            entry = entries[service.env]
            assert "value" not in entry, f"{name} has {service.env} as a literal value"
            assert entry["valueFrom"] == {
                "secretKeyRef": {"name": passwords.SECRET_NAME, "key": service.env}
            }
        # Passwords at hand, so every service connects as its own role.
        assert "LAB_SERVICE_ROLES" not in entries
    assert not any("sqlPassword is not set" in w for w in k8s3_roles.warnings)


def test_secure_k8s_renders_no_password_in_plain_text(k8s3_roles):
    plain = [SQL_PASSWORD, *(passwords.derive(SQL_PASSWORD, s.role) for s in SERVICES)]
    for registration in k8s3_roles.mocks.registrations:
        if registration.inputs.get("metadata", {}).get("name") == passwords.SECRET_NAME:
            continue  # the Secret itself, registered as secret (above)
        rendered = json.dumps(registration.inputs)
        assert not any(p in rendered for p in plain), registration.name
    document = manifests(k8s3_roles, "Secret")["crdblab-stack-outputs"]
    assert not any(p in json.dumps(document) for p in plain)


def test_service_role_urls_log_in_by_password_not_by_roots_certificate(k8s3_roles):
    """A secure CockroachDB authenticates a connection that presents a client certificate by
    that certificate alone: a role's URL must not carry root's."""
    admin = k8s3_roles.outputs[SQL_URL]
    assert "sslcert=" in admin
    url = service_url(admin, "allocator", env={"LAB_ALLOCATOR_PASSWORD": "pw"})
    assert url.startswith("postgresql://lab_allocator:pw@crdb-0.")
    assert "sslcert=" not in url and "sslkey=" not in url
    assert "sslmode=verify-full" in url and "sslrootcert=/certs/ca.crt" in url
