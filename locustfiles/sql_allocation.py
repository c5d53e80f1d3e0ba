"""The SQL anchor under Locust: transaction users that each allocate one execution at a time.

    locust -f locustfiles/sql_allocation.py --headless -u 8 -r 8 --pool-size 8 --skip-verify

Each ``SqlAllocationUser`` claims the next execution of the benchmark queue (``bench.queue``,
filled by :func:`workload.allocate.sql_transaction.fill_queue`) and allocates it with the
very SQL text pgbench and dbworkload run (:mod:`workload.allocate.sql_transaction`), one
Locust request of type ``transaction`` each. A user stops once the queue is empty, and the
last one to stop ends the test, so a headless run allocates the queue exactly once.
bench/anchors.py runs it next to pgbench and dbworkload at the same concurrency.
"""

import gevent
from lab_users import LabUser
from locust import constant, task
from locust.exception import StopUser

from workload.allocate import sql_transaction

WEIGHTS = {"allocate one execution (SQL)": 1}
_busy: set[str] = set()  # users still allocating


class SqlAllocationUser(LabUser):
    kind = "transactions"
    task_weights = WEIGHTS  # recorded with the run
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        # One connection for the user's life, as a pgbench client or a dbworkload thread
        # holds one: taking it from the pool per task would add the pool's check (a round
        # trip) to every transaction.
        self.pool = self.lab.pool()
        self.conn = self.pool.getconn()
        _busy.add(self.name)

    def on_stop(self) -> None:
        _busy.discard(self.name)
        self.pool.putconn(self.conn)
        super().on_stop()

    @task
    def allocate_one_execution(self) -> None:
        with self.allocation("allocate one execution (SQL)") as txn:
            applied = sql_transaction.allocate_next(self.conn, self.lab.retry_stats)
            txn.found = applied is not None
            txn.response_length = applied or 0
        if self.conn.closed:  # lost with an error Locust reported: the next task reconnects
            self.pool.putconn(self.conn)
            self.conn = self.pool.getconn()
        if not txn.found and txn.error is None:
            _busy.discard(self.name)
            if not _busy:
                gevent.spawn(self.environment.runner.quit)
            raise StopUser()
