"""The CockroachDB allocation throughput lab: everything a run does, as a library and a CLI.

Run ``python -m workload --help`` for the commands.
"""

__version__ = "0.1.0"
