"""Queue operations with many waiting jobs: 1,000 jobs from 20 users behind one busy worker.

Times each user-facing operation the page and the API make while jobs wait: submitting, a job's position,
its wait estimate, a user's job list (what /progress and the Queue tab read), the one-line status text,
cancelling, and the dispatcher's pass over the queue when a worker frees up. Target: position <= 10 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from collections.abc import Callable

from webui.jobs import JobControl
from webui.queue.dispatch import Inventory
from webui.queue.service import JobQueue, JobSpec, Owner, status_text
from webui.queue.workers import Worker


class Busy(Worker):
    name = "busy"

    def inventory(self) -> Inventory:
        return Inventory(shares_head_files=True)


def _timed(fn: Callable[[], object], times: list[float]) -> None:
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)


def _report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p95 = ordered[int(len(ordered) * 0.95)]
    print(f"{name:<28} median {statistics.median(ordered) * 1000:7.3f} ms   p95 {p95 * 1000:7.3f} ms   "
          f"max {ordered[-1] * 1000:7.3f} ms   ({len(ordered)} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()

    gate = threading.Event()
    queue = JobQueue([Busy()])
    rng = random.Random(1)
    owners = [Owner(f"user:{n}", (f"user:{n}",)) for n in range(args.users)]
    # One measured job first, so wait estimates are computed (the queue learns seconds per unit of work).
    queue.run(JobSpec(lambda worker, control: time.sleep(0.01), owners[0], cost=1.0))
    blocker = queue.submit(JobSpec(lambda worker, control: gate.wait(), owners[0]))  # holds the only worker
    submits: list[float] = []
    jobs = []
    for _ in range(args.jobs):
        owner = rng.choice(owners)
        spec = JobSpec(lambda worker, control: None, owner, cost=rng.uniform(1, 20), control=JobControl())
        start = time.perf_counter()
        jobs.append(queue.submit(spec))
        submits.append(time.perf_counter() - start)

    positions: list[float] = []
    estimates: list[float] = []
    texts: list[float] = []
    lists: list[float] = []
    for job in jobs:
        _timed(lambda job=job: queue.position(job), positions)
        _timed(lambda job=job: queue.wait_estimate(job), estimates)
        _timed(lambda job=job: status_text(queue, job), texts)
    for owner in owners:
        for _ in range(20):
            _timed(lambda owner=owner: queue.jobs_of(owner.key), lists)
    assert [queue.position(j) for j in sorted(jobs, key=lambda j: queue.position(j) or 0)] == list(range(len(jobs)))

    cancels: list[float] = []
    for job in rng.sample(jobs, 100):
        _timed(lambda job=job: queue.cancel(job.id, job.owner.key), cancels)
    pumps: list[float] = []
    for _ in range(50):  # a pass that finds no idle worker, and one that walks the whole queue for one
        _timed(lambda: queue.refresh(), pumps)

    print(f"{args.jobs} jobs from {args.users} users waiting behind one busy worker")
    _report("submit", submits)
    _report("position (target <= 10 ms)", positions)
    _report("wait estimate", estimates)
    _report("status text (position+wait)", texts)
    _report("a user's jobs (/progress)", lists)
    _report("cancel", cancels)
    _report("dispatch pass, none idle", pumps)

    gate.set()
    started = time.perf_counter()
    for job in jobs:
        job.future.exception(timeout=60)
    blocker.result(5)
    seconds = time.perf_counter() - started
    print(f"draining {len(jobs) - 100} jobs of no work through one worker: {seconds:.2f} s "
          f"({seconds / (len(jobs) - 100) * 1000:.2f} ms per job: queue and thread overhead)")


if __name__ == "__main__":
    main()
