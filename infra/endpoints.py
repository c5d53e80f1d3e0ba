"""Connection strings the kit hands to the workload: pure functions, tested without Pulumi."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode

CRDB_SQL_PORT = 26257
"""Where clients connect (``--sql-addr``); the chart uses the same port."""
CRDB_RPC_PORT = 26357
"""Where nodes talk to each other (``--listen-addr``) and where ``cockroach init`` connects."""
CRDB_HTTP_PORT = 8080
"""DB Console and the health endpoints (``--http-addr``)."""
KAFKA_CLIENT_PORT = 9092
KAFKA_INTERNAL_PORT = 19092
KAFKA_CONTROLLER_PORT = 9093


def sql_url(
    hosts: Sequence[str],
    *,
    user: str = "root",
    password: str | None = None,
    database: str = "defaultdb",
    params: Mapping[str, str] | None = None,
) -> str:
    """A libpq multi-host URL naming every node, so the driver spreads connections over them.

    ``hosts`` are ``host:port`` strings. ``load_balance_hosts=random`` makes libpq (16+) pick a
    node at random per connection instead of always trying the first one.
    """
    if not hosts:
        raise ValueError("a SQL URL needs at least one host")
    credentials = quote(user, safe="")
    if password is not None:
        credentials += ":" + quote(password, safe="")
    query = {"sslmode": "disable", **(params or {}), "load_balance_hosts": "random"}
    return f"postgresql://{credentials}@{','.join(hosts)}/{database}?{urlencode(query, safe='/')}"


def join_list(hosts: Sequence[str], port: int = CRDB_RPC_PORT) -> str:
    """The ``--join`` value: every node's inter-node address, so any node can start first."""
    return ",".join(f"{host}:{port}" for host in hosts)


def kafka_voters(hosts: Sequence[str], *, first_id: int = 1) -> str:
    """KRaft's ``controller.quorum.voters``: ``id@host:port`` for every combined-mode node."""
    return ",".join(
        f"{first_id + index}@{host}:{KAFKA_CONTROLLER_PORT}" for index, host in enumerate(hosts)
    )


def kafka_cluster_id(seed: str) -> str:
    """A KRaft cluster id (22 url-safe base64 characters) that is stable for a given stack.

    Every broker must be formatted with the same id; deriving it from the stack's name means
    re-running ``pulumi up`` never hands a broker a different id than its volume holds.
    """
    digest = hashlib.sha256(seed.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


KAFKA_BOOTSTRAP_IN_NETWORK = "kafkaBootstrapInternal"
"""Stack output: the Kafka bootstrap as seen from CockroachDB's own network (what a changefeed's
``kafka://`` sink URI needs). On Docker it differs from ``kafkaBootstrap``, which is for the host;
on Kubernetes they are equal. A candidate for ``workload.stack_outputs`` once the CDC step
reads it."""
