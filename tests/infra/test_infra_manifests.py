"""k8s/ rendered by the real kustomize and validated offline against Kubernetes' own schemas.

kubernetes-validate ships the OpenAPI-derived JSON schemas of each Kubernetes release, so the
validation needs no cluster and no network. ``strict`` schemas also reject unknown fields, which
is what catches a misspelt or misplaced key.
"""

from __future__ import annotations

import copy
import subprocess

import kubernetes_validate
import pytest
import yaml
from infra_harness import REPO, render, requires_kustomize

from infra.kustomize_apps import (
    STACK_OUTPUTS_KEY,
    STACK_OUTPUTS_MANIFEST,
    WORKLOAD_IMAGE_PLACEHOLDER,
    KustomizeAppsArgs,
    topology_transformations,
)

pytestmark = requires_kustomize

KUBERNETES_VERSION = "1.32.0"
"""The oldest Kubernetes the lab targets (the chart asks for recent clusters too)."""
OVERLAYS = sorted(p.name for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}


def by_name(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(REPO / "k8s" / "overlays" / request.param)


@pytest.fixture(scope="module")
def namespace_docs() -> list[dict]:
    return render(REPO / "k8s" / "namespace")


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_both_overlays_exist():
    assert set(OVERLAYS) == {"lab", "kind"}


def test_every_rendered_manifest_is_valid(overlay, namespace_docs):
    _, docs = overlay
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment"] * 3 + ["Secret"] + ["Service"] * 3 + ["StatefulSet"]
    for doc in [*docs, *namespace_docs]:
        validate(doc)


def test_the_validation_would_catch_a_broken_manifest(overlay):
    _, docs = overlay
    deployment = copy.deepcopy(by_name(docs, "Deployment")["allocation-consumer"])
    deployment["spec"]["replicas"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    misspelt = copy.deepcopy(by_name(docs, "StatefulSet")["kafka"])
    misspelt["spec"]["template"]["spec"]["containers"][0]["enviroment"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(misspelt)


def test_everything_lands_in_the_namespace_k8s_namespace_creates(overlay, namespace_docs):
    (namespace,) = namespace_docs
    assert namespace["kind"] == "Namespace"
    _, docs = overlay
    assert {d["metadata"]["namespace"] for d in docs} == {namespace["metadata"]["name"]}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "crdblab" for d in docs)


def test_services_select_the_pods_they_front(overlay):
    _, docs = overlay
    pod_labels = {
        name: d["spec"]["template"]["metadata"]["labels"]
        for kind in WORKLOAD_KINDS
        for name, d in by_name(docs, kind).items()
    }
    for service in by_name(docs, "Service").values():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels.values()), service


def test_locust_runs_the_allocation_locustfile_with_its_ui_on_loopback(overlay):
    _, docs = overlay
    deployments = by_name(docs, "Deployment")
    master = pod_spec(deployments["locust-master"])["containers"][0]
    worker = pod_spec(deployments["locust-worker"])["containers"][0]
    assert master["command"] == ["locust"] == worker["command"]
    assert master["args"] == ["-f", "locustfiles/allocation.py", "--master"]
    assert worker["args"] == [
        "-f",
        "locustfiles/allocation.py",
        "--worker",
        "--master-host",
        "locust-master",
    ]
    assert {"name": "LOCUST_WEB_HOST", "value": "127.0.0.1"} in master["env"]
    # The web UI is not published through a Service; port-forward reaches it.
    ports = by_name(docs, "Service")["locust-master"]["spec"]["ports"]
    assert [p["port"] for p in ports] == [5557]


def test_each_consumer_pod_is_one_group_member(overlay):
    _, docs = overlay
    consumer = pod_spec(by_name(docs, "Deployment")["allocation-consumer"])["containers"][0]
    assert "command" not in consumer  # the image's entrypoint, python -m workload
    assert consumer["args"][:5] == ["allocate", "--strategy", "micro-batch", "--consumers", "1"]
    assert consumer["args"][5:] == ["--stack-outputs", f"/etc/crdblab/{STACK_OUTPUTS_KEY}"]


def test_kit_pods_mount_the_stack_outputs_and_the_optional_client_certs(overlay):
    _, docs = overlay
    for deployment in by_name(docs, "Deployment").values():
        spec = pod_spec(deployment)
        assert spec["containers"][0]["image"].startswith(WORKLOAD_IMAGE_PLACEHOLDER)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["stack-outputs"]["secret"]["secretName"] == STACK_OUTPUTS_MANIFEST
        (source,) = volumes["crdb-client-certs"]["projected"]["sources"]
        assert source["secret"]["name"] == "crdb-client-secret"
        assert source["secret"]["optional"] is True
        assert volumes["crdb-client-certs"]["projected"]["defaultMode"] == 0o400


def test_kind_overlay_never_pulls_the_workload_image():
    docs = render(REPO / "k8s" / "overlays" / "kind")
    for deployment in by_name(docs, "Deployment").values():
        assert pod_spec(deployment)["containers"][0]["imagePullPolicy"] == "Never"
    claim = by_name(docs, "StatefulSet")["kafka"]["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"


def kafka_startup(docs: list[dict], hostname: str, brokers: int) -> dict[str, str]:
    """Run the Kafka pod's real start-up script with sh, stopping before Kafka itself."""
    kafka = pod_spec(by_name(docs, "StatefulSet")["kafka"])["containers"][0]
    assert kafka["command"][:2] == ["/bin/sh", "-c"]
    script = kafka["command"][2]
    assert script.rstrip().endswith("exec /etc/kafka/docker/run")
    script = script.replace("exec /etc/kafka/docker/run", "env")
    done = subprocess.run(
        ["/bin/sh", "-c", script],
        env={
            "HOSTNAME": hostname,
            "CRDBLAB_KAFKA_BROKERS": str(brokers),
            "POD_NAMESPACE": "crdblab",
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_kafka_pods_derive_their_id_and_the_full_voter_list(overlay):
    _, docs = overlay
    env = kafka_startup(docs, "kafka-2", 5)
    assert env["KAFKA_NODE_ID"] == "2"
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [
        f"{i}@kafka-{i}.kafka-headless.crdblab.svc.cluster.local:9093" for i in range(5)
    ]
    assert env["KAFKA_ADVERTISED_LISTENERS"] == (
        "PLAINTEXT://kafka-2.kafka-headless.crdblab.svc.cluster.local:9092"
    )


def test_kafka_quorum_can_form_before_readiness(overlay):
    _, docs = overlay
    kafka = by_name(docs, "StatefulSet")["kafka"]
    assert kafka["spec"]["podManagementPolicy"] == "Parallel"
    assert kafka["spec"]["serviceName"] == "kafka-headless"
    assert by_name(docs, "Service")["kafka-headless"]["spec"]["publishNotReadyAddresses"] is True


def test_manifests_stay_valid_after_pulumi_sizes_them(overlay):
    """The program's transformations, applied to the rendered overlay, keep every object valid."""
    _, docs = overlay
    args = KustomizeAppsArgs(
        directory="unused",
        namespace="crdblab",
        kafka_brokers=5,
        kafka_image="apache/kafka:3.9.1",
        kafka_cluster_id="AMUJT2keHPBct2q1kWrALg",
        partitions=36,
        replication_factor=3,
        locust_workers=6,
        locust_web_host="127.0.0.1",
        consumers=18,
        strategy="block",
        workload_image="registry.example/crdblab:1",
        sql_url="postgresql://root@crdb-0:26257/defaultdb",
        admin_urls=[],
        topology="k8s-9n-2cpu",
    )
    transformed = copy.deepcopy(docs)
    for doc in transformed:
        for transformation in topology_transformations(args, '{"topology": "k8s-9n-2cpu"}'):
            transformation(doc, None)
        validate(doc)
    deployments = by_name(transformed, "Deployment")
    assert deployments["allocation-consumer"]["spec"]["replicas"] == 18
    consumer = pod_spec(deployments["allocation-consumer"])["containers"][0]
    assert consumer["args"][2] == "block"
    assert consumer["image"] == "registry.example/crdblab:1"
    secret = by_name(transformed, "Secret")[STACK_OUTPUTS_MANIFEST]
    assert yaml.safe_load(secret["stringData"][STACK_OUTPUTS_KEY]) == {"topology": "k8s-9n-2cpu"}
