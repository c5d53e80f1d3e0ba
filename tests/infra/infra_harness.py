"""Run the Pulumi program under Pulumi's mocks: no CLI, no engine, no cloud.

``run_stack`` executes infra/__main__.py exactly as ``pulumi up`` would (config from the
committed Pulumi.<stack>.yaml), while the mocks record every resource registration with its
inputs as the SDK serialised them, secret markers included. The kustomize invoke, which the
Kubernetes provider would answer by running kustomize, is answered by a real kustomize
(``kubectl kustomize``) so the program's transformations act on the real manifests.
"""

from __future__ import annotations

import gc
import json
import logging
import runpy
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime import rpc

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROGRAM = REPO / "infra" / "__main__.py"
KUSTOMIZE_APT_HINT = (
    "needs kustomize: `kubectl kustomize` (kubectl >= 1.27, which embeds kustomize v5) or a "
    "`kustomize` binary on PATH. This machine image ships kubectl; Debian bookworm has no "
    "kustomize package and its kubernetes-client (1.20) embeds a kustomize too old for k8s/"
)


def kustomize_command() -> list[str] | None:
    """The command that renders a kustomization, or None if this machine has none."""
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl and _kubectl_kustomize_major(kubectl) >= 5:
        return [kubectl, "kustomize"]
    return None


def _kubectl_kustomize_major(kubectl: str) -> int:
    """The major version of the kustomize built into kubectl; 0 if kubectl does not say (older
    kubectl, whose kustomize v2/v3 does not know the `labels` and `patches` fields k8s/ uses)."""
    done = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    try:
        version = json.loads(done.stdout).get("kustomizeVersion", "")
        return int(version.lstrip("v").split(".")[0])
    except ValueError:
        return 0


requires_kustomize = pytest.mark.skipif(kustomize_command() is None, reason=KUSTOMIZE_APT_HINT)


def render(directory: Path | str) -> list[dict]:
    """Render a kustomization with the real kustomize; every document, in kustomize's order."""
    command = kustomize_command()
    if command is None:
        pytest.skip(KUSTOMIZE_APT_HINT)
    done = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, f"kustomize failed on {directory}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def unwrap(value: Any) -> Any:
    """The plain value, with Pulumi's secret markers removed at any depth."""
    if rpc.is_rpc_secret(value):
        return unwrap(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def secret_values(value: Any) -> list[Any]:
    """Every value that was registered as a secret, at any depth, unwrapped."""
    if rpc.is_rpc_secret(value):
        return [unwrap(value)]
    if isinstance(value, dict):
        return [found for v in value.values() for found in secret_values(v)]
    if isinstance(value, list):
        return [found for v in value for found in secret_values(v)]
    return []


@dataclass
class Registration:
    type: str
    name: str
    raw_inputs: dict
    """As serialised by the SDK: secret values are still wrapped in Pulumi's secret marker."""

    @property
    def inputs(self) -> dict:
        return unwrap(self.raw_inputs)


@dataclass
class LabMocks(pulumi.runtime.Mocks):
    registrations: list[Registration] = field(default_factory=list)
    invokes: list[tuple[str, dict]] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.registrations.append(Registration(args.typ, args.name, args.inputs))
        outputs = dict(args.inputs)
        if args.typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = f"sha256:{args.name}"
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.invokes.append((args.token, args.args))
        if args.token == "kubernetes:kustomize:directory":
            return {"result": render(args.args["directory"])}
        return {}

    def of_type(self, type_token: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_token]

    def named(self, name: str) -> Registration:
        (found,) = [r for r in self.registrations if r.name == name]
        return found


@dataclass
class StackRun:
    mocks: LabMocks
    outputs: dict[str, Any]
    secret_outputs: set[str]
    warnings: list[str]


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def stack_config(stack: str) -> dict[str, str]:
    """The config a committed stack file sets, as the Pulumi CLI would hand it to the program."""
    document = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
    return {key: str(value) for key, value in document["config"].items()}


def run_stack(
    stack: str,
    *,
    overrides: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> StackRun:
    """Run infra/__main__.py for a stack under mocks and return what it registered/exported.

    ``overrides`` change plain keys of the stack file; ``secrets`` are set as secret config,
    as ``pulumi config set --secret`` would (they are never in a stack file).
    """
    config = {**stack_config(stack), **(overrides or {}), **(secrets or {})}
    mocks = LabMocks()
    handler = _ListHandler()
    logger = logging.getLogger(f"pulumi-mocks-{stack}-{id(mocks)}")
    logger.addHandler(handler)
    logger.propagate = False
    pulumi.runtime.set_mocks(mocks, project="crdblab", stack=stack, preview=False, logger=logger)
    pulumi.runtime.set_all_config(config, secret_keys=list(secrets or {}))

    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def program():
        namespace = runpy.run_path(str(PROGRAM), run_name="__pulumi_program__")
        exports: dict[str, pulumi.Output] = {
            name: pulumi.Output.from_input(value) for name, value in namespace["exports"].items()
        }
        secrecy = {
            name: pulumi.Output.from_input(output.is_secret()) for name, output in exports.items()
        }
        return pulumi.Output.all(pulumi.Output.all(**exports), pulumi.Output.all(**secrecy)).apply(
            lambda pair: result.update(values=pair[0], secrecy=pair[1])
        )

    program()
    # The mock monitor leaves an asyncio event loop per worker thread unclosed. Collect them now,
    # with their ResourceWarning silenced, so that they are not reported (as an error, under
    # filterwarnings=error) in whichever later test the garbage collector happens to run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return StackRun(
        mocks=mocks,
        outputs=result["values"],
        secret_outputs={name for name, secret in result["secrecy"].items() if secret},
        warnings=handler.messages,
    )
