"""The kit's own container image (Dockerfile at the repository root), run by the Kubernetes pods."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker


@dataclass(frozen=True)
class WorkloadImageArgs:
    image_name: str
    """Reference to build and tag, e.g. ``crdblab-workload:latest`` or ``ghcr.io/me/crdblab:1``."""
    context: str
    """The repository root (absolute), which holds the Dockerfile."""
    build: bool = True
    """False: use ``image_name`` as it is, built and pushed by someone else."""
    push: bool = False
    """True for a real cluster, which pulls from a registry (``docker login`` first); False for
    kind or minikube, where the image is side-loaded from the local Docker engine."""


class WorkloadImage(pulumi.ComponentResource):
    ref: pulumi.Output[str]
    """What the pods should run: the pushed digest when pushed, else the local tag."""

    def __init__(
        self,
        resource_name: str,
        args: WorkloadImageArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("crdblab:infra:WorkloadImage", resource_name, None, opts)
        if not args.build:
            self.ref = pulumi.Output.from_input(args.image_name)
        else:
            image = docker.Image(
                f"{resource_name}-build",
                image_name=args.image_name,
                build=docker.DockerBuildArgs(
                    context=args.context,
                    dockerfile=f"{args.context}/Dockerfile",
                    # Cluster nodes are amd64 far more often than the laptop that builds.
                    platform="linux/amd64",
                ),
                skip_push=not args.push,
                opts=pulumi.ResourceOptions(parent=self),
            )
            # A digest makes a rebuilt image roll the pods; a local tag is all kind can load.
            self.ref = image.repo_digest if args.push else image.image_name
        self.register_outputs({"ref": self.ref})
