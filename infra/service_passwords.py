"""Passwords of the kit's service roles (``workload.roles``) on a secure cluster.

A secure CockroachDB cluster authenticates a service role by password, so every service needs
one, and ``schema create`` must set the same ones. They are derived from the stack's secret
``crdblab:sqlPassword``: HMAC-SHA256 keyed by it, over the role's name. That needs no provider
or plugin, gives the same passwords on every ``pulumi up`` (no churn of the pods), differs per
role, reveals nothing of the key, and rotates when ``sqlPassword`` does. They only ever exist
as secret Outputs: encrypted in state, masked in logs, handed to pods by ``secretKeyRef``.
"""

from __future__ import annotations

import hashlib
import hmac

import pulumi

from workload.roles import SERVICES

SECRET_NAME = "crdblab-service-passwords"  # noqa: S105 - a Secret's name, not a password
"""The Kubernetes Secret whose keys are the services' ``LAB_<SERVICE>_PASSWORD`` names."""


def derive(sql_password: str, role: str) -> str:
    """One role's password: hex HMAC-SHA256 (64 characters, nothing to escape anywhere)."""
    return hmac.new(sql_password.encode(), role.encode(), hashlib.sha256).hexdigest()


def password_env(sql_password: str) -> dict[str, str]:
    """``LAB_<SERVICE>_PASSWORD`` -> password, for every service of ``workload.roles``."""
    return {service.env: derive(sql_password, service.role) for service in SERVICES}


def service_passwords(sql_password: pulumi.Input[str]) -> pulumi.Output[dict[str, str]]:
    """Every service's password, keyed by its environment variable, as one secret Output."""
    return pulumi.Output.secret(pulumi.Output.from_input(sql_password).apply(password_env))
