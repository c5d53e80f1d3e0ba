"""The lab's Kubernetes namespace, applied from ``k8s/namespace`` (its only definition)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_kubernetes import kustomize


@dataclass(frozen=True)
class LabNamespaceArgs:
    directory: str
    """Absolute path of the kustomization that defines the Namespace (``k8s/namespace``)."""


class LabNamespace(pulumi.ComponentResource):
    """Applied on its own, before the CockroachDB chart, which installs into it, and before
    ``k8s/base``, whose apps need CockroachDB up (see k8s/namespace/kustomization.yaml)."""

    name: pulumi.Output[str]

    def __init__(
        self, resource_name: str, args: LabNamespaceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("crdblab:infra:LabNamespace", resource_name, None, opts)
        directory = kustomize.Directory(
            f"{resource_name}-kustomize",
            directory=args.directory,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = directory.resources.apply(_namespace_name)
        self.register_outputs({"name": self.name})


def _namespace_name(resources: dict) -> pulumi.Output[str]:
    """The name of the one Namespace the directory renders; a clear error if there is not
    exactly one, because every other resource of the lab is placed by that name."""
    namespaces = [
        res for gvk_name, res in resources.items() if gvk_name.startswith("v1/Namespace:")
    ]
    if len(namespaces) != 1:
        raise ValueError(f"k8s/namespace must render exactly one Namespace, got {len(namespaces)}")
    return namespaces[0].metadata.apply(lambda metadata: metadata["name"])
