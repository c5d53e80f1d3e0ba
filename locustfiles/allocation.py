"""Allocation under load: consumer users in one Kafka consumer group, and market users.

    locust -f locustfiles/allocation.py                      # web UI on :8089
    locust -f locustfiles/allocation.py --headless -u 4 -r 4 --run-time 1m --strategy block

Each ``AllocationConsumerUser`` is one member of the consumer group running ``--strategy``;
every database transaction it commits is one Locust request (type ``allocate``, name the
strategy, response length the executions in it). Spawning users adds members up to the
topic's partition count (a user beyond it waits for a free partition); stopping users makes
their consumers flush, commit and leave the group.

Each ``MarketUser`` streams executions against open block orders at ``--market-rate`` per
second, on its own shard i of n (``--market-shards``) of the block orders: the test's slot
ledger hands each market user the lowest free shard, so no two write one block order. With
CDC running, its executions reach the consumers through the topic.

Options, the Pipeline tab and the run record: see docs/locust.md.
"""

from lab_users import LabUser
from locust import constant, task


class AllocationConsumerUser(LabUser):
    kind = "consumer"
    needs_kafka = True
    weight = 4
    # How often the user hands its consumer's transactions over to Locust; the consumer
    # itself never waits for the user.
    wait_time = constant(0.1)

    @task
    def allocate(self) -> None:
        self.consume()


class MarketUser(LabUser):
    kind = "market"
    weight = 1
    wait_time = constant(0.05)

    @task
    def execute_against_block_orders(self) -> None:
        self.trade()
