"""Progress bars on stderr for work that takes more than a couple of seconds."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


class TableProgress:
    """One bar per table, fed by ``update(table, done, total)`` callbacks.

    On a terminal the bar redraws in place; in a log (CI, a pipe) it prints a line at most
    every 10 seconds, so long work still shows it is alive.
    """

    def __init__(self, unit: str = "rows", enabled: bool = True):
        self.unit = unit
        self.enabled = enabled
        self._bar: tqdm | None = None
        self._table: str | None = None
        self._interactive = sys.stderr.isatty()

    def update(self, table: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if table != self._table:
            self.close()
            self._table = table
            self._bar = tqdm(
                total=total,
                desc=f"{table:<28}",
                unit=f" {self.unit}",
                unit_scale=True,
                file=sys.stderr,
                mininterval=0.2 if self._interactive else 10.0,
                leave=True,
                delay=2.0,  # quick tables print nothing
                dynamic_ncols=True,
            )
        assert self._bar is not None
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Callable[[str, int, int], None]:
        return self.update

    def __exit__(self, *exc) -> None:
        self.close()
