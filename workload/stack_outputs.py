"""Names of the Pulumi stack outputs the kit reads.

One place for them: the Pulumi program exports these names, its tests assert them, and
``workload.settings`` reads them back from ``pulumi stack output --json``.
"""

SQL_URL = "sqlUrl"
"""Multi-host PostgreSQL-wire URL naming every CRDB node, with load_balance_hosts=random."""

KAFKA_BOOTSTRAP = "kafkaBootstrap"
"""Comma-separated host:port list of the Kafka brokers."""

ADMIN_URLS = "adminUrls"
"""List of CRDB DB Console (HTTP) URLs, one per node."""

TOPOLOGY = "topology"
"""A short name for what was provisioned, e.g. ``docker-3n-2cpu``; tags every run record."""

SERVICE_PASSWORDS = "servicePasswords"
"""Secure clusters only, a secret: ``{"LAB_<SERVICE>_PASSWORD": password, ...}``, the passwords
of the service roles (workload.roles), which `schema create` sets and the services log in with.
Not in ALL: an insecure stack has none."""

ALL = (SQL_URL, KAFKA_BOOTSTRAP, ADMIN_URLS, TOPOLOGY)
