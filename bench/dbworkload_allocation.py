"""dbworkload's view of the SQL anchor: "allocate one execution" as a workload class.

    dbworkload run -w bench/dbworkload_allocation.py --uri URL -c 8 -i 6000

bench/anchors.py runs it next to pgbench and Locust users on the same queue
(``bench.queue``, filled by :func:`workload.allocate.sql_transaction.fill_queue`); each
iteration claims the next execution and allocates it with the very SQL text pgbench runs
(:mod:`workload.allocate.sql_transaction`), through the kit's retry helper. dbworkload names
the class after this file and imports it in each of its worker processes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workload.allocate import sql_transaction


class DbworkloadAllocation:
    def __init__(self, args: dict):
        self.args = args or {}

    def setup(self, conn, id: int, total_thread_count: int) -> None:
        # The queue is the benchmark's, filled before the run: nothing to prepare per thread.
        pass

    def loop(self):
        return [self.txn_allocate_one_execution]

    def txn_allocate_one_execution(self, conn) -> None:
        sql_transaction.allocate_next(conn)
