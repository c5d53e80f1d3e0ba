"""A CockroachDB cluster of N containers on one Docker host."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from infra.endpoints import CRDB_HTTP_PORT, CRDB_RPC_PORT, CRDB_SQL_PORT, join_list, sql_url

CERTS_DIR = "/certs"
COCKROACH = "/cockroach/cockroach"
LAB_USER = "lab"
"""The SQL user a secure Docker cluster hands to the kit (root authenticates by certificate only,
and the certificate's key stays root-owned inside the bind mount)."""


@dataclass(frozen=True)
class DockerCockroachClusterArgs:
    prefix: str
    """Prefix of every Docker object name (containers, volumes), unique per stack."""
    network_name: pulumi.Input[str]
    nodes: int
    image: str
    """Image reference with its tag, e.g. ``cockroachdb/cockroach:v26.2.1``."""
    cpus: float
    memory_gib: float
    secure: bool = False
    certs_host_dir: str | None = None
    """Host directory the certificates are written to; required when ``secure``. A bind mount
    (not a volume) so that the kit on the host can read ``ca.crt`` to verify the nodes."""
    sql_password: pulumi.Input[str] | None = None
    license_key: pulumi.Input[str] | None = None
    organization: str | None = None
    first_sql_port: int = CRDB_SQL_PORT
    first_http_port: int = CRDB_HTTP_PORT


def node_hosts(nodes: int) -> list[str]:
    """The network aliases of the nodes, ``crdb-1`` .. ``crdb-N``."""
    return [f"crdb-{index}" for index in range(1, nodes + 1)]


class DockerCockroachCluster(pulumi.ComponentResource):
    """N ``cockroach start`` containers that all join each other, then one ``cockroach init``.

    Each node gets its own volume and distinct host ports (SQL 26257+i, HTTP 8080+i), so the
    workload on the host can reach every node and the SQL URL can name them all.
    """

    sql_url: pulumi.Output[str]
    admin_urls: pulumi.Output[list[str]]
    node_names: list[str]
    """Container names, in node order."""

    def __init__(
        self,
        resource_name: str,
        args: DockerCockroachClusterArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("crdblab:infra:DockerCockroachCluster", resource_name, None, opts)
        if args.secure and not args.certs_host_dir:
            raise ValueError("a secure Docker cluster needs certs_host_dir")
        child = pulumi.ResourceOptions(parent=self)
        hosts = node_hosts(args.nodes)
        tls_flags = [f"--certs-dir={CERTS_DIR}"] if args.secure else ["--insecure"]
        certs_mounts = (
            [docker.ContainerVolumeArgs(host_path=args.certs_host_dir, container_path=CERTS_DIR)]
            if args.secure
            else []
        )

        image = docker.RemoteImage(
            f"{resource_name}-image", name=args.image, keep_locally=True, opts=child
        )

        certs: list[pulumi.Resource] = []
        if args.secure:
            certs.append(
                self._one_shot(
                    f"{resource_name}-certs",
                    name=f"{args.prefix}-crdb-certs",
                    image=image,
                    network_name=args.network_name,
                    script=_certs_script(hosts),
                    volumes=certs_mounts,
                )
            )

        self.node_names = []
        containers: list[docker.Container] = []
        for index, host in enumerate(hosts):
            volume = docker.Volume(
                f"{resource_name}-data-{index + 1}", name=f"{args.prefix}-{host}-data", opts=child
            )
            container_name = f"{args.prefix}-{host}"
            self.node_names.append(container_name)
            containers.append(
                docker.Container(
                    f"{resource_name}-{host}",
                    name=container_name,
                    image=image.image_id,
                    hostname=host,
                    command=[
                        "start",
                        f"--join={join_list(hosts)}",
                        f"--listen-addr=:{CRDB_RPC_PORT}",
                        f"--advertise-addr={host}:{CRDB_RPC_PORT}",
                        f"--sql-addr=:{CRDB_SQL_PORT}",
                        f"--http-addr=:{CRDB_HTTP_PORT}",
                        "--store=/cockroach/cockroach-data",
                        # Fractions of the container's memory limit, which CRDB reads from its
                        # cgroup: the documented production split of cache and SQL memory.
                        "--cache=.25",
                        "--max-sql-memory=.25",
                        *tls_flags,
                    ],
                    networks_advanced=[
                        docker.ContainerNetworksAdvancedArgs(name=args.network_name, aliases=[host])
                    ],
                    ports=[
                        docker.ContainerPortArgs(
                            internal=CRDB_SQL_PORT, external=args.first_sql_port + index
                        ),
                        docker.ContainerPortArgs(
                            internal=CRDB_HTTP_PORT, external=args.first_http_port + index
                        ),
                    ],
                    volumes=[
                        docker.ContainerVolumeArgs(
                            volume_name=volume.name, container_path="/cockroach/cockroach-data"
                        ),
                        *certs_mounts,
                    ],
                    cpus=f"{args.cpus:g}",
                    memory=int(args.memory_gib * 1024),
                    healthcheck=docker.ContainerHealthcheckArgs(
                        # Answers only once the cluster is initialised and this node serves SQL,
                        # which is what "healthy" should mean to a workload.
                        tests=[
                            "CMD",
                            COCKROACH,
                            "sql",
                            *tls_flags,
                            f"--host=localhost:{CRDB_SQL_PORT}",
                            "--execute=SELECT 1",
                        ],
                        interval="5s",
                        timeout="5s",
                        retries=12,
                        start_period="30s",
                    ),
                    restart="unless-stopped",
                    opts=pulumi.ResourceOptions(parent=self, depends_on=certs),
                )
            )

        init = self._one_shot(
            f"{resource_name}-init",
            name=f"{args.prefix}-crdb-init",
            image=image,
            network_name=args.network_name,
            script=_init_script(hosts[0], tls_flags),
            volumes=certs_mounts,
            depends_on=containers,
        )

        envs: list[pulumi.Input[str]] = []
        if args.license_key is not None:
            envs.append(pulumi.Output.concat("CRDB_LICENSE=", args.license_key))
        if args.organization:
            envs.append(f"CRDB_ORGANIZATION={args.organization}")
        if args.secure and args.sql_password is not None:
            envs.append(pulumi.Output.concat("LAB_PASSWORD=", args.sql_password))
        if envs:
            self._one_shot(
                f"{resource_name}-settings",
                name=f"{args.prefix}-crdb-settings",
                image=image,
                network_name=args.network_name,
                script=_settings_script(hosts[0], tls_flags),
                volumes=certs_mounts,
                envs=envs,
                depends_on=[init],
            )

        host_ports = [f"localhost:{args.first_sql_port + i}" for i in range(args.nodes)]
        if args.secure:
            root_cert = f"{args.certs_host_dir}/ca.crt"
            params = {"sslmode": "verify-full", "sslrootcert": root_cert}
            self.sql_url = pulumi.Output.secret(
                pulumi.Output.from_input(args.sql_password).apply(
                    lambda password: sql_url(
                        host_ports, user=LAB_USER, password=password, params=params
                    )
                )
            )
        else:
            self.sql_url = pulumi.Output.from_input(sql_url(host_ports))
        scheme = "https" if args.secure else "http"
        self.admin_urls = pulumi.Output.from_input(
            [f"{scheme}://localhost:{args.first_http_port + i}" for i in range(args.nodes)]
        )
        self.register_outputs({"sql_url": self.sql_url, "admin_urls": self.admin_urls})

    def _one_shot(
        self,
        resource_name: str,
        *,
        name: str,
        image: docker.RemoteImage,
        network_name: pulumi.Input[str],
        script: str,
        volumes: list[docker.ContainerVolumeArgs],
        envs: list[pulumi.Input[str]] | None = None,
        depends_on: list[pulumi.Resource] | None = None,
    ) -> docker.Container:
        """A container that runs a shell script to completion; Pulumi waits for it to exit
        (``attach``) and does not restart it afterwards (``must_run=False``)."""
        return docker.Container(
            resource_name,
            name=name,
            image=image.image_id,
            entrypoints=["/bin/bash", "-c"],
            command=[script],
            envs=envs,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network_name)],
            volumes=volumes,
            attach=True,
            logs=True,
            must_run=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on or []),
        )


def _certs_script(hosts: list[str]) -> str:
    """Create a CA (once), one node certificate valid for every node's names, and root's
    client certificate, which ``cockroach init`` and the settings step use."""
    ca = f"--certs-dir={CERTS_DIR} --ca-key={CERTS_DIR}/ca.key"
    names = " ".join(["localhost", "127.0.0.1", *hosts])
    return "\n".join(
        [
            "set -e",
            f"[ -f {CERTS_DIR}/ca.crt ] || {COCKROACH} cert create-ca {ca}",
            f"{COCKROACH} cert create-node {names} {ca} --overwrite",
            f"{COCKROACH} cert create-client root {ca} --overwrite",
            # The kit on the host verifies the nodes with the CA certificate, so it must be
            # readable by the host user, not only by root.
            f"chmod 0644 {CERTS_DIR}/ca.crt",
        ]
    )


def _init_script(first_host: str, tls_flags: list[str]) -> str:
    """Initialise the cluster once; tolerate nodes still starting and a re-run after success."""
    flags = " ".join(tls_flags)
    return "\n".join(
        [
            "attempt=0",
            "while :; do",
            f"  out=$({COCKROACH} init {flags} --host={first_host}:{CRDB_RPC_PORT} 2>&1) && break",
            '  case "$out" in *"already been initialized"*) break ;; esac',
            "  attempt=$((attempt + 1))",
            '  [ "$attempt" -ge 60 ] && { echo "$out" >&2; exit 1; }',
            "  sleep 2",
            "done",
            'echo "$out"',
        ]
    )


def _settings_script(first_host: str, tls_flags: list[str]) -> str:
    """Apply the license, organization and lab user from environment variables, so the secrets
    never appear in the container's command line (which ``docker inspect`` shows)."""
    sql = f"{COCKROACH} sql {' '.join(tls_flags)} --host={first_host}:{CRDB_SQL_PORT}"
    # ${VAR//\'/\'\'} doubles single quotes (bash), so each value is a valid SQL literal.
    return "\n".join(
        [
            "set -e",
            "organization=${CRDB_ORGANIZATION//\\'/\\'\\'}",
            "license=${CRDB_LICENSE//\\'/\\'\\'}",
            "password=${LAB_PASSWORD//\\'/\\'\\'}",
            "tries=0",
            f"until {sql} --execute='SELECT 1' >/dev/null 2>&1; do",
            '  tries=$((tries + 1)); [ "$tries" -ge 150 ] && exit 1; sleep 2',
            "done",
            'if [ -n "$organization" ]; then',
            f"  {sql} --execute=\"SET CLUSTER SETTING cluster.organization = '$organization'\"",
            "fi",
            'if [ -n "$license" ]; then',
            f"  {sql} --execute=\"SET CLUSTER SETTING enterprise.license = '$license'\"",
            "fi",
            'if [ -n "$password" ]; then',
            f'  {sql} --execute="CREATE USER IF NOT EXISTS {LAB_USER}"',
            f"  {sql} --execute=\"ALTER USER {LAB_USER} WITH PASSWORD '$password'\"",
            f'  {sql} --execute="GRANT admin TO {LAB_USER}"',
            "fi",
        ]
    )
