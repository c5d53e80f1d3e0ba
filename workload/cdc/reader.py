"""Read the relay's slot one batch ahead, so the server decodes while the relay produces.

``pg_logical_slot_peek_binary_changes`` cannot read ahead: it always starts at the slot's
confirmed position, which the relay may move only once Kafka has acknowledged. Decoding the
next batch would then wait for the acknowledgement of this one, and the server's decoding and
the relay's encoding would take turns on a machine with cores for both.

So the reader consumes a *temporary copy* of the slot (``pg_copy_logical_replication_slot``)
with ``pg_logical_slot_get_binary_changes``, in a thread, a batch or two ahead. The copy moves
as it is read; the real slot still moves only when the relay advances it after the
acknowledgements. The copy belongs to the reader's session: when the relay restarts, crashes
or reconnects, the session ends, the server drops the copy, and a fresh copy starts again
from the real slot's position. Nothing read ahead and not yet acknowledged is lost; it is
read again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import errors

from workload.cdc import pgoutput

_WAL_POSITION = (
    "SELECT pg_current_wal_flush_lsn()::text, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::int8"
)
_GET = (
    "SELECT data FROM pg_logical_slot_get_binary_changes(%s, %s::pg_lsn, %s, "
    "'proto_version', '1', 'publication_names', %s)"
)
_COPY = "SELECT pg_copy_logical_replication_slot(%s, %s, true)"
_copies = itertools.count(1)

TRANSIENT_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, errors.ObjectInUse)


class SlotGone(Exception):
    """The real slot does not exist (any more)."""


CHUNK = 5000  # messages handed over at a time: a huge transaction never sits whole in memory


@dataclass(frozen=True)
class Batch:
    """pgoutput messages in commit order: one read of the slot, or a part of one.

    A read returns whole transactions; it is handed over in chunks, and only its ``last``
    chunk is sure to end with a Commit. On the last chunk: ``complete`` says the read returned
    fewer messages than the limit, so every transaction that committed before ``wal_end`` is
    in this read or an earlier one; ``server_time_ns`` is the server's clock when ``wal_end``
    was taken.
    """

    messages: list[bytes]
    wal_end: int
    server_time_ns: int
    complete: bool
    last: bool = True


class SlotReader:
    """Batches of the slot, read ahead in a thread; :meth:`next` hands them over in order and
    re-raises what went wrong in the thread. Not reusable: close it and make another."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        *,
        slot: str,
        publication: str,
        limit: int,
        idle_poll: float,
        depth: int = 1,
    ):
        self._connect = connect
        self._slot = slot
        self._publication = '"' + publication.replace('"', '""') + '"'
        self._limit = limit
        self._idle_poll = idle_poll
        self._queue: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._thread: threading.Thread | None = None
        self.copy_name = f"{slot[:40]}_read_{os.getpid()}_{next(_copies)}"

    def start(self) -> None:
        """Copy the slot (raising what fails, SlotGone if it does not exist) and start reading."""
        conn = self._connect()
        try:
            conn.execute(_COPY, (self._slot, self.copy_name))
        except errors.UndefinedObject:
            conn.close()
            raise SlotGone(f"replication slot {self._slot!r} does not exist") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="cdc-slot-reader", daemon=True)
        self._thread.start()

    def next(self, timeout: float) -> Batch | None:
        """The next batch, or None if none is ready within ``timeout``."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading and end the session (which drops the copy)."""
        self._stop.set()
        conn, thread = self._conn, self._thread
        if conn is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=2)  # a long read in progress ends now
        if thread is not None:
            while thread.is_alive():  # drain, so a thread blocked on a full queue can exit
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
            thread.join()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        self._conn = None

    def _run(self) -> None:
        assert self._conn is not None
        try:
            while not self._stop.is_set():
                if self._read(self._conn) == 0:
                    self._stop.wait(self._idle_poll)
        except BaseException as exc:
            if not self._stop.is_set():
                with contextlib.suppress(queue.Full):
                    self._queue.put(exc, timeout=5)

    def _hand_over(self, batch: Batch) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(batch, timeout=0.1)
                return True
        return False

    def _read(self, conn: psycopg.Connection) -> int:
        """One read of the slot, handed over in chunks; the number of messages read."""
        text, server_micros = conn.execute(_WAL_POSITION).fetchone()
        wal_end, server_time = pgoutput.parse_lsn(text), server_micros * 1000
        params = (self.copy_name, text, self._limit, self._publication)
        count = 0
        chunk: list[bytes] = []
        with conn.cursor(binary=True) as cursor:
            for (data,) in cursor.stream(_GET, params, size=2000):
                chunk.append(data)
                if len(chunk) == CHUNK:
                    count += len(chunk)
                    if not self._hand_over(Batch(chunk, wal_end, server_time, False, False)):
                        return count
                    chunk = []
        count += len(chunk)
        self._hand_over(Batch(chunk, wal_end, server_time, count < self._limit, True))
        return count
