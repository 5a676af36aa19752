"""The concurrency harness shared by the limiter benchmark and the limiter tests: many threads
released together against one decision function, counting how many were admitted."""
from __future__ import annotations

import threading
from collections.abc import Callable


def concurrent_admissions(decide: Callable[[], bool], *, threads: int = 64, attempts_each: int = 4) -> int:
    """`threads` threads start at one barrier, each calls `decide` `attempts_each` times; returns
    the number of True answers."""
    admitted: list[int] = []
    barrier = threading.Barrier(threads)

    def worker():
        barrier.wait()
        admitted.append(sum(1 for _ in range(attempts_each) if decide()))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(admitted)
