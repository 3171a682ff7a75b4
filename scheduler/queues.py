"""Waiting requests in per-task queues, served by priority class with aging."""

from __future__ import annotations

import bisect
from collections import defaultdict

from scheduler.sequence import Sequence


class TaskQueues:
    """One queue per task; the next sequence is the queue head with the best effective priority.

    effective priority = priority - waited_seconds / aging_seconds (lower is served first), so a
    sequence gains one priority class for every `aging_seconds` it waits and none starves. Among
    equal effective priorities the earlier arrival wins. Since every waiting sequence ages at the
    same rate, that order never changes with time: it is the order of priority + arrival_time /
    aging_seconds, which keeps each queue sorted (arrival order within a priority class).
    """

    def __init__(self, aging_seconds: float):
        if aging_seconds <= 0:
            raise ValueError("aging_seconds must be positive")
        self.aging_seconds = aging_seconds
        self._queues: dict[str, list[Sequence]] = defaultdict(list)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self):
        for queue in self._queues.values():
            yield from queue

    def depth_by_task(self) -> dict[str, int]:
        """Waiting sequences per task (a copy first: metrics read it while the engine thread steps)."""
        return {task: len(q) for task, q in list(self._queues.items())}

    def _order(self, seq: Sequence) -> tuple:
        return seq.priority + seq.arrival_time / self.aging_seconds, seq.arrival_time, seq.seq_id

    def push(self, seq: Sequence) -> None:
        """Enqueue in service order, so a preempted sequence returns ahead of later arrivals of its class."""
        bisect.insort(self._queues[seq.task], seq, key=self._order)
        self._size += 1

    def effective_priority(self, seq: Sequence, now: float) -> float:
        return seq.priority - (now - seq.arrival_time) / self.aging_seconds

    def peek(self, now: float) -> Sequence | None:
        """The sequence that would be served next, without removing it."""
        heads = [q[0] for q in self._queues.values() if q]
        if not heads:
            return None
        return min(heads, key=lambda s: (self.effective_priority(s, now), s.arrival_time, s.seq_id))

    def remove(self, seq: Sequence) -> bool:
        """Take a sequence out wherever it stands; False if it was not queued."""
        queue = self._queues.get(seq.task, [])
        for i, s in enumerate(queue):
            if s is seq:
                del queue[i]
                self._size -= 1
                return True
        return False
