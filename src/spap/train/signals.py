"""Pre-emption: SIGTERM/SIGINT become a request to checkpoint and stop at the next step
boundary (the loop then raises :class:`spap.errors.Preempted`); a second signal stops at
once (:class:`Interrupted`). Data-loading workers ignore both and leave them to the main
process."""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import Any

__all__ = ["Interrupted", "SignalGuard", "ignore_in_worker"]

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """A second SIGTERM/SIGINT: stop at once, without waiting for the step to end."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """First SIGTERM/SIGINT: ask the loop to checkpoint and stop at the next step
    boundary (``signum`` is set). Second: raise :class:`Interrupted`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        log.warning(
            "received %s: saving a checkpoint at the next step boundary (send again to stop now)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> SignalGuard:
        for s in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def ignore_in_worker(_: int) -> None:
    """``worker_init_fn`` of data-loading workers: the main process checkpoints and shuts
    them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
