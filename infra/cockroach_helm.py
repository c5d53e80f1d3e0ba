"""CockroachDB on Kubernetes through the official ``cockroachdb`` Helm chart."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_kubernetes.helm import v3 as helm

from infra.endpoints import CRDB_HTTP_PORT, CRDB_SQL_PORT, sql_url

CHART = "cockroachdb"
CHART_REPO = "https://charts.cockroachdb.com/"
CHART_VERSION = "21.0.1"
"""The chart release that ships CockroachDB v26.2.1; a newer chart may rename values."""
FULLNAME = "crdb"
"""``fullnameOverride``: fixes the names the chart derives (StatefulSet ``crdb``, pods
``crdb-<i>``, discovery Service ``crdb``, client certificate Secret ``crdb-client-secret``),
which k8s/base and the SQL URL rely on."""
CLUSTER_DOMAIN = "cluster.local"
CERTS_MOUNT = "/certs"
"""Where k8s/base mounts ``crdb-client-secret`` in the workload pods."""


@dataclass(frozen=True)
class HelmCockroachClusterArgs:
    namespace: pulumi.Input[str]
    nodes: int
    image_repository: str
    image_tag: str
    cpus: float
    memory_gib: float
    storage_gib: int
    secure: bool = True
    license_key: pulumi.Input[str] | None = None
    organization: str | None = None


def chart_values(args: HelmCockroachClusterArgs) -> dict:
    """The chart values for a topology. Pure, so tests can read what the chart would get."""
    resources = {"cpu": f"{args.cpus:g}", "memory": f"{args.memory_gib:g}Gi"}
    values: dict = {
        "fullnameOverride": FULLNAME,
        "clusterDomain": CLUSTER_DOMAIN,
        "image": {"repository": args.image_repository, "tag": args.image_tag},
        "statefulset": {
            "replicas": args.nodes,
            # Requests equal to limits give the pods Guaranteed QoS: a benchmark node must not
            # be squeezed by a neighbour, and CRDB sizes its cache from the limit it sees.
            "resources": {"requests": dict(resources), "limits": dict(resources)},
        },
        "conf": {"cache": "25%", "max-sql-memory": "25%"},
        "storage": {"persistentVolume": {"size": f"{args.storage_gib}Gi"}},
        "tls": {"enabled": args.secure},
    }
    settings: dict = {}
    if args.organization:
        settings["cluster.organization"] = args.organization
    if args.license_key is not None:
        settings["enterprise.license"] = args.license_key
    if settings:
        # The chart puts these values in a Secret and the init Job reads them from there, so
        # the license never appears in a pod spec.
        values["init"] = {"provisioning": {"enabled": True, "clusterSettings": settings}}
    return values


def pod_hosts(nodes: int, namespace: str) -> list[str]:
    """Each pod's stable DNS name through the chart's headless discovery Service."""
    return [
        f"{FULLNAME}-{index}.{FULLNAME}.{namespace}.svc.{CLUSTER_DOMAIN}" for index in range(nodes)
    ]


def in_cluster_sql_url(nodes: int, namespace: str, *, secure: bool) -> str:
    """The URL the workload pods use: every pod by name, and root's client certificate from the
    chart's Secret (mounted by k8s/base) when TLS is on."""
    hosts = [f"{host}:{CRDB_SQL_PORT}" for host in pod_hosts(nodes, namespace)]
    if not secure:
        return sql_url(hosts)
    params = {
        "sslmode": "verify-full",
        "sslrootcert": f"{CERTS_MOUNT}/ca.crt",
        "sslcert": f"{CERTS_MOUNT}/client.root.crt",
        "sslkey": f"{CERTS_MOUNT}/client.root.key",
    }
    return sql_url(hosts, params=params)


class HelmCockroachCluster(pulumi.ComponentResource):
    """A Helm release (not a client-side render), because the chart relies on hooks: its
    self-signer creates the certificates before install and its init Job runs after."""

    sql_url: pulumi.Output[str]
    admin_urls: pulumi.Output[list[str]]
    release: helm.Release

    def __init__(
        self,
        resource_name: str,
        args: HelmCockroachClusterArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("crdblab:infra:HelmCockroachCluster", resource_name, None, opts)
        self.release = helm.Release(
            f"{resource_name}-release",
            name=FULLNAME,
            chart=CHART,
            version=CHART_VERSION,
            repository_opts=helm.RepositoryOptsArgs(repo=CHART_REPO),
            namespace=args.namespace,
            values=chart_values(args),
            # Wait for the init Job too: a release is only useful once the cluster is initialised.
            wait_for_jobs=True,
            timeout=900,
            opts=pulumi.ResourceOptions(parent=self),
        )
        namespace = pulumi.Output.from_input(args.namespace)
        self.sql_url = namespace.apply(
            lambda ns: in_cluster_sql_url(args.nodes, ns, secure=args.secure)
        )
        scheme = "https" if args.secure else "http"
        self.admin_urls = namespace.apply(
            lambda ns: [f"{scheme}://{host}:{CRDB_HTTP_PORT}" for host in pod_hosts(args.nodes, ns)]
        )
        self.register_outputs({"sql_url": self.sql_url, "admin_urls": self.admin_urls})
