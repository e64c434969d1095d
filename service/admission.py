"""Admission by capacity: the seconds of engine work in flight, shared by every model of the process.

Each model's cost per text is measured at start-up on the longest admissible texts, alone on the machine. On
one CPU (or one GPU) the engines share the device, so their work adds up: a request is admitted while the
work in flight, its own included, fits in a share of the request deadline, so what is admitted finishes in
time. A request that alone exceeds the share is still admitted on an idle server (every request within the
documented limits can run). A refusal is immediate, and its Retry-After is the work still in flight."""

from __future__ import annotations

import math


class WorkBudget:
    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.used_s = 0.0

    def admit(self, cost_s: float) -> bool:
        if self.used_s > 0 and self.used_s + cost_s > self.limit_s:
            return False
        self.used_s += cost_s
        return True

    def release(self, cost_s: float) -> None:
        self.used_s = max(0.0, self.used_s - cost_s)

    def retry_after_s(self) -> int:
        """Seconds until the work now in flight is done, at the measured rates."""
        return max(1, math.ceil(self.used_s))
