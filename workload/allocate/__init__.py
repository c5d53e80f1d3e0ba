"""Phase ii: the allocation engine (consumer group, fair-price snapshots, strategies)."""

from workload.allocate.consumer import STRATEGIES, AllocatorOptions, ConsumerMetrics
from workload.allocate.runner import AllocationReport, RunOptions, run_allocation
from workload.allocate.store import AllocationStore, BatchOutcome

__all__ = [
    "STRATEGIES",
    "AllocationReport",
    "AllocationStore",
    "AllocatorOptions",
    "BatchOutcome",
    "ConsumerMetrics",
    "RunOptions",
    "run_allocation",
]
