"""Where the database and the broker are: given explicitly, or the running embedded stack."""

from __future__ import annotations

from dataclasses import dataclass

from workload import roles
from workload.embedded import EmbeddedStack
from workload.errors import LabError
from workload.settings import Settings

EMBEDDED_TOPOLOGY = "embedded-postgres"


@dataclass(frozen=True)
class Endpoints:
    dsn: str
    """The admin URL: DDL, resets, CDC set-up. Services connect with :meth:`url_for`."""
    kafka_bootstrap: str | None
    topology: str
    embedded: bool
    service_roles: bool = True

    def url_for(self, service: str) -> str:
        """The URL ``service`` (a name in ``workload.roles.SERVICES``, or "admin") connects
        with: its own least-privilege role on the same server and database, unless service
        roles are off."""
        if not self.service_roles:
            return self.dsn
        return roles.service_url(self.dsn, service)


def resolve(settings: Settings, *, need_kafka: bool = False) -> Endpoints:
    """The servers a command talks to. Without --dsn (or LAB_DSN, or stack outputs) the kit
    finds the embedded stack through the run directory; it never starts one silently."""
    if settings.dsn is not None:
        if need_kafka and settings.kafka_bootstrap is None:
            raise LabError(
                "a database URL was given but no Kafka bootstrap; pass --kafka-bootstrap "
                "(or LAB_KAFKA_BOOTSTRAP, or --stack-outputs)"
            )
        return Endpoints(
            dsn=settings.dsn,
            kafka_bootstrap=settings.kafka_bootstrap,
            topology=settings.topology or "custom",
            embedded=False,
            service_roles=settings.service_roles,
        )
    if settings.stack_outputs is not None:
        # Stack outputs were given to name the servers; the embedded stack would be a surprise.
        raise LabError(
            f"stack outputs file {settings.stack_outputs} has no sqlUrl (the database URL); "
            "write it with `pulumi stack output --json --show-secrets` from a stack of infra/, "
            "or pass --dsn (LAB_DSN)"
        )
    found = EmbeddedStack(settings.run_dir).find()
    if found is None:
        raise LabError(
            f"no database URL given and no embedded stack running in {settings.run_dir}; "
            "start one with `python -m workload up`, or pass --dsn (LAB_DSN)"
        )
    return Endpoints(
        dsn=found.dsn,
        kafka_bootstrap=settings.kafka_bootstrap or found.kafka_bootstrap,
        topology=settings.topology or EMBEDDED_TOPOLOGY,
        embedded=True,
        service_roles=settings.service_roles,
    )
