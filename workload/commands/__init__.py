"""The CLI's commands, one module per concept.

Every module here that defines ``register(commands, common)`` is a command; ``ORDER`` places
it in ``--help`` (the flow's order: stack, schema, seed, rebalance, trade, cdc, allocate, ...).
Adding a command is adding a module: no list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def _discover() -> tuple[ModuleType, ...]:
    modules = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    return tuple(sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)))


COMMAND_MODULES = _discover()
