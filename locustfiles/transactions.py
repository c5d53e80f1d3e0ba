"""The domain transactions, straight against the database, with task weights.

    locust -f locustfiles/transactions.py --headless -u 8 -r 8 --run-time 1m

- allocate one execution: an execution with no fill yet, allocated by the allocation engine's
  store in one transaction through the retry helper;
- rebalance one account: the account's orders for the last seeded day (the group rebalance's
  rules, written account by account; see workload/transaction_mix.py);
- positions: one account's positions, a follower read on CockroachDB, a plain read on
  PostgreSQL.

Each is one Locust request of type ``transaction``. The run record counts the allocations
(strategy per-execution, driver locust-transactions, the weights below as a knob).
"""

from lab_users import LabUser
from locust import between, task

from workload.allocate.store import AllocationStore
from workload.rebalance import trading_day
from workload.transaction_mix import (
    allocate_one_execution,
    read_positions,
    rebalance_one_account,
)

WEIGHTS = {"allocate one execution": 6, "positions": 3, "rebalance one account": 1}


class TransactionsUser(LabUser):
    kind = "transactions"
    task_weights = WEIGHTS  # recorded with the run
    wait_time = between(0, 0.02)

    def on_start(self) -> None:
        super().on_start()
        self.store = AllocationStore(self.dialect)  # caches block orders, per user like a consumer
        with self.connection() as conn:
            self.day = trading_day(conn, None)

    @task(WEIGHTS["allocate one execution"])
    def allocate_one_execution(self) -> None:
        with self.allocation("allocate one execution") as txn:
            with self.connection() as conn:
                outcome = allocate_one_execution(conn, self.store, self.rng, self.lab.retry_stats)
            txn.found = outcome is not None
            txn.response_length = len(outcome.applied) if outcome is not None else 0

    @task(WEIGHTS["rebalance one account"])
    def rebalance_one_account(self) -> None:
        account = self.rng.choice(self.lab.accounts())
        with self.measure("transaction", "rebalance one account") as measured:
            with self.connection() as conn:
                done = rebalance_one_account(conn, account, self.day, stats=self.lab.retry_stats)
            measured.response_length = done.customer_orders

    @task(WEIGHTS["positions"])
    def positions(self) -> None:
        account = self.rng.choice(self.lab.accounts())
        name = "positions (follower read)" if self.dialect.is_cockroachdb else "positions"
        with self.measure("transaction", name) as measured, self.connection() as conn:
            measured.response_length = read_positions(conn, self.dialect, account)
