"""Progress display for the long steps (writing gigabytes, quantizing, hashing), silent when disabled.

The library functions take a :class:`Progress`; the CLI enables it on a
terminal, tests and scripts get the silent default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Progress:
    """Rich progress bars on stderr when ``enabled``; no-ops otherwise."""

    def __init__(self, enabled: bool = False, say: Callable[[str], None] | None = None) -> None:
        self.enabled = enabled
        self._say = say

    def say(self, text: str) -> None:
        if self._say is not None:
            self._say(text)

    @contextlib.contextmanager
    def bytes(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A byte-counting bar; yields ``advance(n)``."""
        if not self.enabled:
            yield lambda n: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bar

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Bar(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    @contextlib.contextmanager
    def spinner(self, description: str) -> Iterator[None]:
        """An indeterminate step (a blocking libllama call)."""
        if not self.enabled:
            yield
            return
        from rich.console import Console

        with Console(stderr=True).status(description):
            yield
