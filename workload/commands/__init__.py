"""The CLI's commands, one module per concept; ``workload.cli`` registers them in this order."""

from workload.commands import demo, schema, seed, stack

COMMAND_MODULES = (stack, schema, seed, demo)
