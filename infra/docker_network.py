"""The private bridge network a Docker topology's containers share."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker


@dataclass(frozen=True)
class LabNetworkArgs:
    name: str
    """Docker's name for the network; prefixed by the stack so two stacks never share one."""


class LabNetwork(pulumi.ComponentResource):
    """A user-defined bridge: containers on it resolve each other by alias (``crdb-1``,
    ``kafka-1``), which the default bridge does not do."""

    name: pulumi.Output[str]

    def __init__(
        self, resource_name: str, args: LabNetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("crdblab:infra:LabNetwork", resource_name, None, opts)
        network = docker.Network(
            f"{resource_name}-bridge",
            name=args.name,
            driver="bridge",
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = network.name
        self.register_outputs({"name": self.name})
