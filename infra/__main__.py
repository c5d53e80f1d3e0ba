"""The Pulumi program: read the stack's config, compose the components, export the outputs.

Pulumi runs this file with infra/ as its directory; the repository root goes on sys.path so that
``infra.*`` and ``workload.stack_outputs`` (the output names the kit reads back) import.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pulumi  # noqa: E402

from infra.cockroach_docker import DockerCockroachCluster, DockerCockroachClusterArgs  # noqa: E402
from infra.cockroach_helm import HelmCockroachCluster, HelmCockroachClusterArgs  # noqa: E402
from infra.config import ConfigError, Platform, load_config  # noqa: E402
from infra.docker_network import LabNetwork, LabNetworkArgs  # noqa: E402
from infra.endpoints import KAFKA_BOOTSTRAP_IN_NETWORK, kafka_cluster_id  # noqa: E402
from infra.k8s_namespace import LabNamespace, LabNamespaceArgs  # noqa: E402
from infra.kafka_docker import DockerKafkaCluster, DockerKafkaClusterArgs  # noqa: E402
from infra.kustomize_apps import KustomizeApps, KustomizeAppsArgs  # noqa: E402
from infra.service_passwords import service_passwords  # noqa: E402
from infra.workload_image import WorkloadImage, WorkloadImageArgs  # noqa: E402
from workload.stack_outputs import (  # noqa: E402
    ADMIN_URLS,
    KAFKA_BOOTSTRAP,
    SERVICE_PASSWORDS,
    SQL_URL,
    TOPOLOGY,
)

try:
    cfg = load_config()
except ConfigError as exc:
    # pulumi.RunError is how a program stops with its message and no traceback: the Python
    # language host logs it as one error and exits non-zero (pulumi-language-python-exec:
    # `except pulumi.RunError as e: pulumi.log.error(str(e))`; the Automation API's inline
    # server does the same). Any other exception is logged with its whole traceback.
    raise pulumi.RunError(str(exc)) from None
stack = pulumi.get_stack()
prefix = f"{pulumi.get_project()}-{stack}"
cluster_seed = f"{pulumi.get_project()}/{stack}"
# A secure cluster authenticates the kit's service roles by password: one per role, derived
# from the stack's secret sqlPassword (infra/service_passwords.py). None where no role needs one
# (insecure) or there is nothing to derive them from (config.py warns).
role_passwords = (
    service_passwords(cfg.sql_password) if cfg.secure and cfg.sql_password is not None else None
)

if cfg.platform is Platform.DOCKER:
    network = LabNetwork("network", LabNetworkArgs(name=prefix))
    crdb = DockerCockroachCluster(
        "crdb",
        DockerCockroachClusterArgs(
            prefix=prefix,
            network_name=network.name,
            nodes=cfg.nodes,
            image=cfg.crdb_image_ref,
            cpus=cfg.cpus,
            memory_gib=cfg.memory_gib,
            secure=cfg.secure,
            certs_host_dir=str(REPO_ROOT / ".lab" / "certs" / stack) if cfg.secure else None,
            sql_password=cfg.sql_password,
            license_key=cfg.license_key,
            organization=cfg.organization,
        ),
    )
    kafka = DockerKafkaCluster(
        "kafka",
        DockerKafkaClusterArgs(
            prefix=prefix,
            network_name=network.name,
            brokers=cfg.kafka_brokers,
            image=cfg.kafka_image,
            partitions=cfg.topic_partitions,
            replication_factor=cfg.replication_factor,
            cluster_seed=cluster_seed,
        ),
    )
    sql_url, admin_urls = crdb.sql_url, crdb.admin_urls
    kafka_bootstrap, kafka_in_network = kafka.bootstrap, kafka.internal_bootstrap
else:
    namespace = LabNamespace(
        "namespace", LabNamespaceArgs(directory=str(REPO_ROOT / "k8s" / "namespace"))
    )
    crdb = HelmCockroachCluster(
        "crdb",
        HelmCockroachClusterArgs(
            namespace=namespace.name,
            nodes=cfg.nodes,
            image_repository=cfg.crdb_image,
            image_tag=cfg.crdb_version,
            cpus=cfg.cpus,
            memory_gib=cfg.memory_gib,
            storage_gib=cfg.storage_gib,
            secure=cfg.secure,
            license_key=cfg.license_key,
            organization=cfg.organization,
        ),
    )
    image = WorkloadImage(
        "workload-image",
        WorkloadImageArgs(
            image_name=cfg.workload_image,
            context=str(REPO_ROOT),
            build=cfg.build_workload_image,
            push=cfg.push_workload_image,
        ),
    )
    apps = KustomizeApps(
        "apps",
        KustomizeAppsArgs(
            directory=str(REPO_ROOT / "k8s" / "overlays" / cfg.k8s_overlay),
            namespace=namespace.name,
            kafka_brokers=cfg.kafka_brokers,
            kafka_image=cfg.kafka_image,
            kafka_cluster_id=kafka_cluster_id(cluster_seed),
            partitions=cfg.topic_partitions,
            replication_factor=cfg.replication_factor,
            locust_workers=cfg.locust_workers,
            locust_web_host=cfg.locust_web_host,
            consumers=cfg.consumers,
            strategy=cfg.strategy,
            workload_image=image.ref,
            sql_url=crdb.sql_url,
            admin_urls=crdb.admin_urls,
            topology=cfg.topology,
            secure=cfg.secure,
            service_passwords=role_passwords,
            depends_on=(crdb,),
        ),
    )
    sql_url, admin_urls = crdb.sql_url, crdb.admin_urls
    # Inside the cluster there is one network, so both bootstraps are the same.
    kafka_bootstrap = kafka_in_network = apps.kafka_bootstrap

exports = {
    SQL_URL: sql_url,
    KAFKA_BOOTSTRAP: kafka_bootstrap,
    KAFKA_BOOTSTRAP_IN_NETWORK: kafka_in_network,
    ADMIN_URLS: admin_urls,
    TOPOLOGY: cfg.topology,
}
if role_passwords is not None:
    exports[SERVICE_PASSWORDS] = role_passwords
for name, value in exports.items():
    pulumi.export(name, value)
