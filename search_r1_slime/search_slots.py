"""The ``search_concurrency`` slots of the turn loop, and what waiting for one costs.

Why: a GRPO step can ask for more searches at once than the backend should get; the rest queue.
Waiting is what a trajectory wants (a search that fails only because others came first would
teach the policy that searching fails), so the wait for a slot is not part of ``search_timeout``,
which bounds the search itself. It is bounded by ``search_slot_timeout`` so that no trajectory
can wait forever, and measured, so a starved backend shows up in the metrics.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from search_r1_slime.http_client import PerLoop, RequestFailed

# Per event loop: search_concurrency -> its semaphore (an asyncio primitive must not cross loops).
_SEMAPHORES: PerLoop[dict[int, asyncio.Semaphore]] = PerLoop(dict)


class SlotTimeout(RequestFailed):
    """No slot came free within ``search_slot_timeout``; the search was not sent."""


class SearchSlot:
    """``async with SearchSlot(limit, timeout):`` holds one of ``limit`` slots of the running loop.

    ``waited`` is the seconds spent waiting for it, set on entry whether or not a slot came;
    ``SlotTimeout`` is raised when none came within ``timeout`` seconds.
    """

    def __init__(self, limit: int, timeout: float):
        semaphores = _SEMAPHORES.get()
        if limit not in semaphores:
            semaphores[limit] = asyncio.Semaphore(limit)
        self._semaphore = semaphores[limit]
        self._timeout = timeout
        self.waited = 0.0

    async def __aenter__(self) -> SearchSlot:
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self._timeout)
        except asyncio.TimeoutError:
            raise SlotTimeout(
                f"no search slot came free within search_slot_timeout ({self._timeout:g} s); the search was not sent"
            ) from None
        finally:
            self.waited = time.monotonic() - started
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._semaphore.release()
