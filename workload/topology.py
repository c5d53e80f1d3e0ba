"""Where a sweep runs: a topology is brought up, measured on, and torn down again.

A :class:`Topology` is a context manager: ``__enter__`` brings the servers up, waits until
they answer and returns a :class:`Deployment` (the endpoints every command uses, and the
stack outputs they came from); ``__exit__`` tears down what it brought up, on success,
failure and Ctrl-C alike.

- :class:`EmbeddedTopology`: the embedded PostgreSQL + Tansu stack of a run directory
  (stopping only what it started, as ``EmbeddedStack`` does);
- :class:`PulumiTopology`: one stack of the Pulumi program in ``infra/``, driven through
  the Automation API (``pulumi up`` on enter, ``pulumi destroy`` on exit). The Automation
  API runs the ``pulumi`` CLI, so a missing CLI is a :class:`LabError` before anything starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaException
from psycopg.conninfo import conninfo_to_dict

from workload import roles, stack_outputs
from workload.embedded import EmbeddedStack
from workload.endpoints import EMBEDDED_TOPOLOGY, Endpoints
from workload.errors import LabError
from workload.settings import KNOBS, Settings, redact_url

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = "embedded"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Deployment:
    """What a topology gives a run once it is up."""

    endpoints: Endpoints
    settings: Settings  # the sweep's settings with this topology's servers filled in
    outputs: Mapping[str, Any] = field(default_factory=dict)


class Topology(ABC):
    """One topology of a sweep; see the module's docstring."""

    name: str

    @abstractmethod
    def plan(self) -> list[str]:
        """The steps ``__enter__`` and ``__exit__`` take, for ``--dry-run``."""

    @abstractmethod
    def __enter__(self) -> Deployment: ...

    @abstractmethod
    def __exit__(self, *exc) -> None: ...


# -- embedded ---------------------------------------------------------------------------------


class EmbeddedTopology(Topology):
    def __init__(self, settings: Settings, progress: Progress = print):
        self.name = EMBEDDED
        self.settings = settings
        self.progress = progress
        self._stack = EmbeddedStack(settings.run_dir)

    def plan(self) -> list[str]:
        return [
            f"start the embedded PostgreSQL and Kafka broker in {self.settings.run_dir} "
            "(or reuse the running ones)",
        ]

    def __enter__(self) -> Deployment:
        self.progress(f"[{self.name}] starting the embedded stack in {self.settings.run_dir}")
        info = self._stack.__enter__()
        endpoints = Endpoints(
            dsn=info.dsn,
            kafka_bootstrap=info.kafka_bootstrap,
            topology=self.settings.topology or EMBEDDED_TOPOLOGY,
            embedded=True,
        )
        settings = dataclasses.replace(self.settings, dsn=None, kafka_bootstrap=None)
        return Deployment(endpoints, settings)

    def __exit__(self, *exc) -> None:
        # Only what this topology started stops: a stack the user already ran stays up.
        self.progress(f"[{self.name}] stopping what the sweep started of the embedded stack")
        self._stack.__exit__(*exc)


# -- Pulumi -----------------------------------------------------------------------------------


def stack_file(name: str, work_dir: Path = REPO) -> Path:
    return work_dir / f"Pulumi.{name}.yaml"


def known_stacks(work_dir: Path = REPO) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in work_dir.glob("Pulumi.*.yaml"))


def check_stack_names(names: list[str], work_dir: Path = REPO) -> None:
    """Refuse a stack without a committed ``Pulumi.<name>.yaml``: it would be created empty,
    with no platform, and fail half-way through a sweep."""
    unknown = [n for n in names if n != EMBEDDED and not stack_file(n, work_dir).is_file()]
    if unknown:
        raise LabError(
            f"--stacks: no Pulumi.<name>.yaml for {', '.join(unknown)} in {work_dir}; "
            f"choose from {EMBEDDED}, {', '.join(known_stacks(work_dir))}"
        )


def _config_text(value: Any) -> str:
    """A stack file's value as the Pulumi CLI hands it to a program: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def check_stack_config(name: str, work_dir: Path = REPO) -> None:
    """Check ``Pulumi.<name>.yaml`` as the Pulumi program will (``infra.config.load_config``),
    before ``pulumi up``: a bad key fails the sweep at once with one line, not after the
    stacks before it ran, and not as a failed update of the Automation API.

    Runs the program's own checks in this process (the Automation API runs the program in
    another one). An encrypted secret counts as set; only whether it is set is checked.
    """
    import pulumi
    import yaml

    if str(REPO) not in sys.path:  # infra/ is the repository's, not the installed package's
        sys.path.insert(0, str(REPO))
    from infra.config import ConfigError, load_config

    path = stack_file(name, work_dir)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LabError(f"stack {name}: cannot read {path.name}: {why}") from None
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise LabError(f"stack {name}: {path.name} has no `config:` mapping of crdblab:* keys")
    values, secret_keys = {}, []
    for key, value in config.items():
        if isinstance(value, dict) and "secure" in value:
            secret_keys.append(str(key))
            value = value["secure"]
        values[str(key)] = _config_text(value)
    pulumi.runtime.set_all_config(values, secret_keys)
    try:
        # Its warnings (no license key, ...) are for `pulumi up` to show, not this check.
        with contextlib.redirect_stderr(io.StringIO()):
            load_config()
    except (ConfigError, pulumi.RunError) as exc:  # a missing required key is a RunError
        lines = [line.strip().lstrip("- ") for line in str(exc).splitlines() if line.strip()]
        raise LabError(f"stack {name} ({path.name}): " + " ".join(lines)) from None


def require_pulumi_cli(which: Callable[[str], str | None] | None = None) -> str:
    """The ``pulumi`` executable the Automation API will run, or a LabError saying so."""
    found = (which or shutil.which)("pulumi")
    if found is None:
        raise LabError(
            "the Pulumi CLI (`pulumi`) is not on PATH, and the Automation API runs it to "
            "provision a stack; install it and log in (`pulumi login --local`, see "
            "docs/infra.md), or sweep the embedded default with --stacks embedded"
        )
    return found


def output_values(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values from ``Stack.outputs()`` / ``UpResult.outputs`` (``OutputValue`` objects,
    secrets included: the kit needs the real URL, and only prints it redacted)."""
    return {k: getattr(v, "value", v) for k, v in outputs.items()}


def settings_from_outputs(outputs: Mapping[str, Any], base: Settings, stack: str) -> Settings:
    """The sweep's settings with the servers a stack exported, parsed as ``--stack-outputs``
    would parse them. The stack's outputs beat LAB_* variables here: a sweep of docker-3 must
    measure docker-3, not whatever LAB_DSN points at."""
    values: dict[str, Any] = {}
    sources = dict(base.sources)
    for knob in KNOBS:
        if not knob.output:
            continue
        raw = outputs.get(knob.output)
        if raw in (None, ""):
            if knob.name in ("dsn", "kafka_bootstrap"):
                raise LabError(
                    f"stack {stack} exported no {knob.output}; is infra/ the program that "
                    "ran? (`pulumi stack output --json` lists what it exported)"
                )
            continue
        try:
            values[knob.name] = knob.parse(raw)
        except ValueError as exc:
            shown = redact_url(str(raw)) if knob.name == "dsn" else raw
            raise LabError(f"stack {stack}: output {knob.output}={shown!r} {exc}") from None
        sources[knob.name] = f"stack {stack} outputs"
    values.setdefault("topology", stack)
    return dataclasses.replace(base, **values, sources=sources)


def password_env(outputs: Mapping[str, Any]) -> dict[str, str]:
    """The service-role passwords a secure stack exported, as ``LAB_<SERVICE>_PASSWORD``."""
    exported = outputs.get(stack_outputs.SERVICE_PASSWORDS) or {}
    return {s.env: str(exported[s.env]) for s in roles.SERVICES if exported.get(s.env)}


def endpoints_from_settings(settings: Settings) -> Endpoints:
    assert settings.dsn is not None
    return Endpoints(
        dsn=settings.dsn,
        kafka_bootstrap=settings.kafka_bootstrap,
        topology=settings.topology or "custom",
        embedded=False,
    )


def sql_nodes(dsn: str) -> list[tuple[str, str]]:
    """(host, port) of every node a multi-host URL names."""
    params = conninfo_to_dict(dsn)
    hosts = str(params.get("host") or "localhost").split(",")
    ports = str(params.get("port") or "26257").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return list(zip(hosts, ports, strict=True))


def sql_answers(dsn: str, host: str, port: str, timeout: float = 5.0) -> str | None:
    """None when the node answers a query, else why not (one line)."""
    try:
        with psycopg.connect(
            dsn, host=host, port=port, load_balance_hosts="disable", connect_timeout=timeout
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    return None


def kafka_answers(bootstrap: str, timeout: float = 5.0) -> str | None:
    from workload.topics import admin_client

    try:
        admin_client(bootstrap, timeout=timeout).list_topics(timeout=timeout)
    except KafkaException as exc:
        return exc.args[0].str()
    return None


def wait_healthy(
    endpoints: Endpoints, progress: Progress, timeout: float = 600.0, interval: float = 5.0
) -> None:
    """Until SQL answers on every node and the Kafka bootstrap answers: ``pulumi up`` returns
    once the containers exist, which is before CockroachDB has joined and Kafka elected."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = [
            f"SQL on {host}:{port}: {why}"
            for host, port in sql_nodes(endpoints.dsn)
            if (why := sql_answers(endpoints.dsn, host, port)) is not None
        ]
        if endpoints.kafka_bootstrap and (why := kafka_answers(endpoints.kafka_bootstrap)):
            waiting.append(f"Kafka at {endpoints.kafka_bootstrap}: {why}")
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise LabError(f"not healthy after {timeout:.0f} s: {'; '.join(waiting)}")
        progress(
            f"   waiting for {waiting[0]}" + (f" (+{len(waiting) - 1})" if waiting[1:] else "")
        )
        time.sleep(interval)


class PulumiTopology(Topology):
    """One Pulumi stack of ``infra/``: up on enter, destroy on exit (Ctrl-C too)."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        progress: Progress = print,
        work_dir: Path = REPO,
        healthy_timeout: float = 600.0,
    ):
        self.name = name
        self.settings = settings
        self.progress = progress
        self.work_dir = work_dir
        self.healthy_timeout = healthy_timeout
        self._stack = None
        self._saved_env: dict[str, str | None] = {}

    def _use_passwords(self, passwords: Mapping[str, str]) -> None:
        """The stack's service-role passwords into this process's environment, where `schema
        create` and the services read them (and the sweep's children inherit them), until
        ``__exit__``: environment only, never a command line or a log."""
        for name, password in passwords.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = password

    def _restore_env(self) -> None:
        saved, self._saved_env = self._saved_env, {}
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def plan(self) -> list[str]:
        return [
            f"pulumi up: stack {self.name} (Pulumi.{self.name}.yaml) through the Automation API",
            "wait until SQL answers on every node and the Kafka bootstrap answers",
        ]

    def select(self):
        """The Automation API's stack, created on this backend the first time."""
        require_pulumi_cli()
        check_stack_names([self.name], self.work_dir)
        check_stack_config(self.name, self.work_dir)
        from pulumi import automation as auto

        return auto.create_or_select_stack(stack_name=self.name, work_dir=str(self.work_dir))

    def _pulumi_line(self, line: str) -> None:
        line = line.rstrip()
        if line:
            self.progress(f"   pulumi: {line}")

    def __enter__(self) -> Deployment:
        self._stack = self.select()
        self.progress(f"[{self.name}] pulumi up")
        try:
            result = self._stack.up(on_output=self._pulumi_line)
            outputs = output_values(result.outputs)
            settings = settings_from_outputs(outputs, self.settings, self.name)
            self._use_passwords(password_env(outputs))
            endpoints = endpoints_from_settings(settings)
            self.progress(
                f"[{self.name}] up: {redact_url(endpoints.dsn)}, Kafka {endpoints.kafka_bootstrap}"
                f"; waiting until healthy"
            )
            wait_healthy(endpoints, self.progress, timeout=self.healthy_timeout)
        except BaseException:
            # A half-made stack costs money and holds host ports: tear it down as well.
            self.__exit__(None, None, None)
            raise
        return Deployment(endpoints, settings, outputs)

    def __exit__(self, *exc) -> None:
        self._restore_env()
        if self._stack is None:
            return
        stack, self._stack = self._stack, None
        self.progress(f"[{self.name}] pulumi destroy")
        stack.destroy(on_output=self._pulumi_line)


def topology_for(name: str, settings: Settings, progress: Progress = print) -> Topology:
    if name == EMBEDDED:
        return EmbeddedTopology(settings, progress)
    return PulumiTopology(name, settings, progress)
