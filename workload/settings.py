"""One settings object for every command, filled from layered sources.

Lowest to highest precedence:

1. defaults written here;
2. a Pulumi stack-outputs JSON file (``--stack-outputs FILE`` or ``LAB_STACK_OUTPUTS``), as
   written by ``pulumi stack output --json``;
3. ``LAB_*`` environment variables;
4. command-line flags.

Each value remembers where it came from, so ``status`` can say why the kit talks to a server,
and every parse error names its source ("LAB_SEED='abc' is not an integer").
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workload import stack_outputs
from workload.errors import LabError

SCALES = ("small", "medium", "large")


def _parse_int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError("is not an integer") from None


def _parse_nonempty(text: str) -> str:
    value = str(text).strip()
    if not value:
        raise ValueError("is empty")
    return value


def _parse_scale(text: str) -> str:
    value = str(text).strip().lower()
    if value not in SCALES:
        raise ValueError(f"is not a scale (choose from {', '.join(SCALES)})")
    return value


def _parse_bootstrap(value: Any) -> str:
    # Stack outputs may hold a list of brokers; Kafka clients want "host:port,host:port".
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    text = _parse_nonempty(value)
    for server in text.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"has {server.strip()!r}, which is not host:port")
    return text


def _parse_on_off(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ValueError("is neither on nor off")


def _parse_dsn(value: Any) -> str:
    text = _parse_nonempty(value)
    if not (text.startswith(("postgresql://", "postgres://")) or "=" in text):
        raise ValueError(
            "is not a PostgreSQL URL (postgresql://user@host:port/db) or a key=value string"
        )
    return text


@dataclass(frozen=True)
class Knob:
    """How one setting is read from each source."""

    name: str
    env: str
    parse: Callable[[Any], Any]
    output: str | None = None  # the stack output that fills it, if any
    help: str = ""


KNOBS: tuple[Knob, ...] = (
    Knob("dsn", "LAB_DSN", _parse_dsn, stack_outputs.SQL_URL, "database URL"),
    Knob(
        "kafka_bootstrap",
        "LAB_KAFKA_BOOTSTRAP",
        _parse_bootstrap,
        stack_outputs.KAFKA_BOOTSTRAP,
        "Kafka bootstrap servers",
    ),
    Knob("topology", "LAB_TOPOLOGY", _parse_nonempty, stack_outputs.TOPOLOGY, "topology name"),
    Knob("run_dir", "LAB_RUN_DIR", lambda v: Path(_parse_nonempty(v)), None, "run directory"),
    Knob("scale", "LAB_SCALE", _parse_scale, None, "data scale"),
    Knob("seed", "LAB_SEED", _parse_int, None, "random seed"),
    Knob(
        "service_roles",
        "LAB_SERVICE_ROLES",
        _parse_on_off,
        None,
        "connect as one SQL role per service (on|off)",
    ),
)
KNOBS_BY_NAME = {knob.name: knob for knob in KNOBS}
STACK_OUTPUTS_ENV = "LAB_STACK_OUTPUTS"


@dataclass(frozen=True)
class Settings:
    """What every command needs to know about where and how to run.

    ``dsn`` and ``kafka_bootstrap`` stay ``None`` when no source gave them: commands then look
    for the embedded stack in ``run_dir`` (see ``workload.endpoints``).
    """

    dsn: str | None = None
    kafka_bootstrap: str | None = None
    topology: str | None = None
    run_dir: Path = Path(".lab")
    scale: str = "medium"
    seed: int = 42
    # Each service connects as its own least-privilege role (workload.roles); off: every
    # command uses the database URL's own user, for servers where the roles were not created.
    service_roles: bool = True
    stack_outputs: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def source_of(self, name: str) -> str:
        return self.sources.get(name, "default")


def read_stack_outputs(path: Path) -> dict[str, Any]:
    """The JSON object ``pulumi stack output --json`` wrote, or a LabError saying what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(
            f"stack outputs file {path} does not exist; write it with "
            f"`pulumi stack output --json --show-secrets > {path}`"
        ) from None
    except OSError as exc:
        raise LabError(f"cannot read stack outputs file {path}: {exc.strerror}") from None
    try:
        outputs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabError(
            f"stack outputs file {path} is not JSON (line {exc.lineno}: {exc.msg}); "
            "write it with `pulumi stack output --json --show-secrets`"
        ) from None
    if not isinstance(outputs, dict):
        raise LabError(f"stack outputs file {path} must hold a JSON object of outputs")
    if outputs.get(stack_outputs.SQL_URL) == "[secret]":
        raise LabError(
            f"stack outputs file {path} holds '[secret]' for {stack_outputs.SQL_URL}; "
            "write it with `pulumi stack output --json --show-secrets`"
        )
    return outputs


def load_settings(
    cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from every source; ``cli`` holds only flags the user actually gave."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    outputs_path = cli.get("stack_outputs") or env.get(STACK_OUTPUTS_ENV) or None
    if outputs_path:
        outputs_source = "--stack-outputs" if cli.get("stack_outputs") else f"{STACK_OUTPUTS_ENV}"
        outputs = read_stack_outputs(Path(outputs_path))
        values["stack_outputs"] = Path(outputs_path)
        sources["stack_outputs"] = outputs_source
        for knob in KNOBS:
            if knob.output and outputs.get(knob.output) not in (None, ""):
                values[knob.name] = _parse(knob, outputs[knob.output], f"output {knob.output}")
                sources[knob.name] = f"stack outputs {outputs_path}"

    for knob in KNOBS:
        if env.get(knob.env, "") != "":
            values[knob.name] = _parse(knob, env[knob.env], knob.env)
            sources[knob.name] = f"env {knob.env}"

    for knob in KNOBS:
        if knob.name in cli:
            flag = "--" + knob.name.replace("_", "-")
            values[knob.name] = _parse(knob, cli[knob.name], flag)
            sources[knob.name] = f"flag {flag}"

    return dataclasses.replace(Settings(), **values, sources=sources)


def _parse(knob: Knob, raw: Any, where: str) -> Any:
    try:
        return knob.parse(raw)
    except ValueError as exc:
        shown = raw if knob.name != "dsn" else redact_url(str(raw))
        raise LabError(f"{where}={shown!r} {exc}") from None


def redact_url(url: str) -> str:
    """A URL fit for logs and results: any password replaced by ``***``."""
    url = re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)
    return re.sub(r"((?:^|[?&\s])(?:ssl)?password=)[^&\s]*", r"\1***", url, flags=re.IGNORECASE)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h30m`` or ``250ms`` (an argparse type)."""
    import argparse

    value = str(text).strip().lower()
    matches = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value)
    if not value or "".join(n + u for n, u in matches) != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h)")
    seconds = sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in matches)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration")
    return seconds
