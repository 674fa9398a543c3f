"""The run's clock: training wall time, summed over resumes, as the metrics' `time` field carries it."""

import time


class Clock:
    """Training wall time, summed over resumes (metrics' `time` field)."""

    def __init__(self, offset: float):
        self.offset, self.start = offset, time.perf_counter()

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.start
