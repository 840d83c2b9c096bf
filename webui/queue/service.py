"""The job service: Atelier's one queue. Every job goes through it, from every front end.

    job = queue.submit(JobSpec(run, owner, needs))   # run(worker, control) -> result, on the job's thread
    job.result()                                     # or await asyncio.wrap_future(job.future)

- **Fair**: waiting jobs start in ``fairness.FairQueue`` order (round-robin across users, FIFO within one).
- **Owned**: a job has a user (whose turn it is) and control keys (who may see, stop, skip or cancel it:
  a signed-in user, a browser, an API caller, one API task id). Jobs outlive the page that asked for them.
- **Cancel**: interrupting a waiting job takes it out of the queue; it never runs.
- **Workers**: each idle worker gets the first job in fair order that ``dispatch.choose`` gives it. A job
  whose worker is lost mid-job (``WorkerLost``) is queued again once, at the front of its user's line, with
  a note; its pictures are saved by the head only when a run completes, so none is lost or saved twice.

Dispatching happens synchronously whenever something changes (a job comes or ends, a worker joins), under
one lock: there is no polling thread, so a job starts on an idle worker at once. Pure Python: no torch,
gradio or fastapi here.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import AtelierError
from ..jobs import JobControl, Progress, progress_text
from .dispatch import Candidate, Needs, NoWorkerError, choose
from .fairness import FairQueue
from .workers import Worker, WorkerLost

log = logging.getLogger(__name__)

HISTORY = 200  # finished jobs remembered (for a page that reconnects, and the Queue tab)
# A finished job's result (its pictures) is kept this long for whoever waits for it, then dropped; a page job
# nobody has shown yet (its page went away) keeps it for a page that reconnects, this long at most.
KEEP_RESULT_SECONDS = 60.0
KEEP_UNSEEN_SECONDS = 3600.0
COST_MEMORY = 0.3  # weight of the newest job in the seconds-per-cost average


@dataclass(frozen=True)
class Owner:
    """``user``: whose turn a job takes (fairness). ``keys``: who may see and stop it; the first is the one a
    front end asks with (the page's browser or signed-in user, the API caller)."""

    user: str
    keys: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.keys[0]


LOCAL = Owner("local", ("local",))  # the command line, benchmarks, code calling the context directly


class JobCancelled(AtelierError):
    """The job was taken out of the queue before it started."""


class WorkerGone(AtelierError):
    """The job's worker was lost, and the job had been queued again once already."""


@dataclass
class JobSpec:
    run: Callable[[Worker, JobControl], Any]  # on the job's own thread on the head, with its worker
    owner: Owner = LOCAL
    needs: Needs = field(default_factory=Needs)
    label: str = ""  # for people: "txt2img: a red circle…"
    kind: str = "generate"  # generate | load | extras
    mode: str | None = None  # the page tab that asked (txt2img / img2img / inpaint), for reconnecting
    cost: float = 1.0  # relative work (steps x pictures x megapixels), for time estimates
    control: JobControl | None = None
    cancelled: Callable[[], Any] | None = None  # what a cancelled job returns; None: it raises JobCancelled
    retries: int = 1  # times it is queued again when its worker is lost


class Job:
    """One queued, running or finished job. Its ``future`` holds the result or the error."""

    def __init__(self, spec: JobSpec, control: JobControl, now: float) -> None:
        self.id = uuid.uuid4().hex
        self.spec = spec
        self.control = control
        self.state = "queued"  # queued | running | done | failed | cancelled
        self.future: Future[Any] = Future()
        self.submitted = now
        self.started: float | None = None
        self.finished: float | None = None
        self.worker: str | None = None
        self.attempts = 0
        self.notes: list[str] = []
        self.delivered = False  # a page showed its result
        self.released = False  # its result was dropped from memory (long finished)
        self._watchers: list[Callable[[], None]] = []
        self._own_listener = control.listener
        control.listener = self._changed

    @property
    def owner(self) -> Owner:
        return self.spec.owner

    @property
    def progress(self) -> Progress:
        return self.control.progress

    @property
    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Any:
        return self.future.result(timeout)

    def error(self) -> BaseException | None:
        return self.future.exception() if self.future.done() else None

    def release(self) -> None:
        """Drop the result (whoever waited has it): the job stays listed with its state and notes."""
        error = self.future.exception()
        self.future = Future()
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(None)
        self.released = True

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (no arguments, on any thread) whenever the job's progress or state changes;
        returns the function that stops it."""
        self._watchers.append(callback)

        def stop() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return stop

    def _changed(self, progress: Progress | None = None) -> None:
        if self._own_listener is not None and progress is not None:
            self._own_listener(progress)
        for callback in list(self._watchers):
            callback()

    def _release_control(self) -> None:
        self.control.listener = self._own_listener


@dataclass
class _Slot:
    worker: Worker
    job: Job | None = None
    jobs_run: int = 0
    idle_since: float = 0.0
    leaving: bool = False


@dataclass(frozen=True)
class WorkerView:
    name: str
    device: str
    busy: str | None  # the running job's label
    jobs_run: int
    loaded: tuple[str, ...]
    head_only: bool


class JobQueue:
    def __init__(self, workers: Iterable[Worker] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._queue: FairQueue[Job] = FairQueue()
        self._live: dict[str, Job] = {}  # queued and running, by id
        self._history: deque[Job] = deque(maxlen=HISTORY)
        self._slots: dict[str, _Slot] = {}
        self._by_control: dict[int, Job] = {}  # running jobs by id(control): code inside a job reuses its worker
        self._seconds_per_cost: float | None = None
        self._closed = False
        self.notice = ""  # why no worker is there, when a pool knows (shown to people waiting for one)
        for worker in workers:
            self.add_worker(worker)

    # ------------------------------------------------------------------ workers
    def add_worker(self, worker: Worker) -> None:
        with self._lock:
            if worker.name in self._slots:
                raise ValueError(f"a worker named {worker.name!r} is already there")
            self._slots[worker.name] = _Slot(worker, idle_since=self._clock())
            log.info("Worker %s joined (%s)", worker.name, worker.describe())
            self._pump()

    def remove_worker(self, name: str) -> Worker | None:
        """A worker leaves: at once when idle, else after its job (a lost one's job is queued again)."""
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                return None
            slot.leaving = True
            if slot.job is None:
                del self._slots[name]
                log.info("Worker %s left", name)
            return slot.worker

    def workers(self) -> list[WorkerView]:
        with self._lock:
            slots = list(self._slots.values())
        views = []
        for slot in slots:
            inventory = slot.worker.inventory()
            views.append(WorkerView(slot.worker.name, inventory.device, slot.job.spec.label if slot.job else None,
                                    slot.jobs_run, inventory.loaded, slot.worker.head_only))
        return views

    def worker(self, name: str) -> Worker | None:
        with self._lock:
            slot = self._slots.get(name)
            return slot.worker if slot is not None else None

    def generation_workers(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots.values() if not s.worker.head_only and not s.leaving)

    def refresh(self) -> None:
        """Every worker looks at its model folders again; waiting jobs are matched anew."""
        with self._lock:
            workers = [s.worker for s in self._slots.values()]
        for worker in workers:
            try:
                worker.refresh()
            except Exception as exc:  # a worker that cannot answer keeps what it reported before
                log.warning("Worker %s could not refresh its files: %s", worker.name, exc)
        with self._lock:
            self._pump()

    # ------------------------------------------------------------------ jobs
    def submit(self, spec: JobSpec) -> Job:
        control = spec.control or JobControl()
        with self._lock:
            if self._closed:
                raise JobCancelled("Atelier is shutting down; the job was not queued")
            job = Job(spec, control, self._clock())
            control.update(state="queued", step=0)
            self._live[job.id] = job
            self._queue.push(spec.owner.user, job.id, job)
            self._pump()
        return job

    def run(self, spec: JobSpec) -> Any:
        """Submit and wait for the result (or raise the job's error)."""
        return self.submit(spec).result()

    def worker_of(self, control: JobControl | None) -> Worker | None:
        """The worker a running job holds, found by its control: a script's generations run on it inline."""
        if control is None:
            return None
        with self._lock:
            job = self._by_control.get(id(control))
            if job is None or job.control is not control or job.worker is None:
                return None
            slot = self._slots.get(job.worker)
            return slot.worker if slot is not None else None

    def find(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._live.get(job_id)
            if job is not None:
                return job
            return next((j for j in reversed(self._history) if j.id == job_id), None)

    def jobs_of(self, key: str, finished: bool = False) -> list[Job]:
        """A key's jobs: running ones first, then waiting ones in the order they will start (then, with
        ``finished``, the ones that ended, oldest first)."""
        with self._lock:
            running = [j for j in self._live.values() if j.state == "running" and key in j.owner.keys]
            waiting = [j for _, j in self._queue.in_order() if key in j.owner.keys]
            done = [j for j in self._history if key in j.owner.keys] if finished else []
        return running + waiting + done

    def position(self, job: Job) -> int | None:
        """Jobs that start before this one (0: it is next); None when it is not waiting."""
        with self._lock:
            return self._queue.position(job.id)

    def wait_estimate(self, job: Job) -> float | None:
        """Seconds until a waiting job starts, from the measured seconds per unit of work; None before
        the first job has been measured."""
        with self._lock:
            rate = self._seconds_per_cost
            if rate is None or job.id not in self._queue:
                return None
            workers = max(1, sum(1 for s in self._slots.values() if not s.worker.head_only))
            left = sum((1.0 - j.progress.fraction) * j.spec.cost for j in self._live.values() if j.state == "running")
            ahead = sum(j.spec.cost for j in self._queue.ahead(job.id))
            return (left + ahead) * rate / workers

    def counts(self) -> dict[str, int]:
        with self._lock:
            running = sum(1 for j in self._live.values() if j.state == "running")
            users = {j.owner.user for j in self._live.values()}
            return {"waiting": len(self._queue), "running": running, "users": len(users)}

    def cancel(self, job_id: str, key: str | None = None) -> bool:
        """Take a waiting job out of the queue (only its owner's ``key`` may); it never runs."""
        with self._lock:
            job = self._live.get(job_id)
            if job is None or job.state != "queued" or (key is not None and key not in job.owner.keys):
                return False
            self._queue.remove(job.id)
            self._end(job, "cancelled")
        self._settle(job, cancelled=True)
        return True

    def interrupt(self, who: Owner | str) -> bool:
        """Stop a key's running jobs within a step and cancel its waiting ones."""
        key = who.key if isinstance(who, Owner) else who
        jobs = self.jobs_of(key)
        for job in jobs:
            if not self.cancel(job.id, key):
                job.control.interrupt()
        return bool(jobs)

    def skip(self, who: Owner | str) -> bool:
        """End the current batch of a key's running jobs; the next batch goes on."""
        key = who.key if isinstance(who, Owner) else who
        running = [j for j in self.jobs_of(key) if j.state == "running"]
        for job in running:
            job.control.skip()
        return bool(running)

    def close(self) -> None:
        """Cancel what waits; running jobs end on their own. Workers are closed by their owners."""
        with self._lock:
            self._closed = True
            waiting = [job for _, job in self._queue.in_order()]
            for job in waiting:
                self._queue.remove(job.id)
                self._end(job, "cancelled")
        for job in waiting:
            self._settle(job, error=JobCancelled("Atelier is shutting down; the job did not run"))

    # ------------------------------------------------------------------ inside
    def _candidates(self) -> list[Candidate]:
        return [Candidate(name, slot.worker.inventory(), busy=slot.job is not None, hosts_head=slot.worker.hosts_head,
                          head_only=slot.worker.head_only, jobs_run=slot.jobs_run, idle_since=slot.idle_since)
                for name, slot in self._slots.items() if not slot.leaving]

    def _pump(self) -> None:
        """Give idle workers the first jobs they can run, in fair order (under the lock)."""
        if self._closed or not len(self._queue):
            return
        candidates = self._candidates()
        if all(c.busy for c in candidates) and candidates:
            return
        failed: list[tuple[Job, BaseException]] = []
        for key, job in list(self._queue.in_order()):
            if candidates and all(c.busy for c in candidates):
                break
            try:
                chosen = choose(job.spec.needs, candidates)
            except NoWorkerError as exc:
                self._queue.remove(key)
                self._end(job, "failed")
                failed.append((job, exc))
                continue
            if chosen is None:
                continue
            chosen.busy = True
            self._start(job, self._slots[chosen.name])
        for gone, why in failed:  # settled once the loop's state changes are done
            self._settle(gone, error=why)

    def _start(self, job: Job, slot: _Slot) -> None:
        self._queue.remove(job.id)
        self._queue.served(job.owner.user)
        job.state, job.started, job.worker = "running", self._clock(), slot.worker.name
        job.attempts += 1
        slot.job = job
        self._by_control[id(job.control)] = job
        thread = threading.Thread(target=self._execute, args=(job, slot), name=f"job-{job.id[:8]}", daemon=True)
        thread.start()

    def _execute(self, job: Job, slot: _Slot) -> None:
        result: Any = None
        error: BaseException | None = None
        lost = False
        try:
            result = job.spec.run(slot.worker, job.control)
        except WorkerLost as exc:
            lost, error = True, exc
        except BaseException as exc:  # the job's error goes to whoever waits for it
            error = exc
        settle = True
        with self._lock:
            slot.job = None
            slot.jobs_run += 1
            slot.idle_since = self._clock()
            self._by_control.pop(id(job.control), None)
            if lost:
                settle = not self._worker_lost(job, slot, error)
            elif error is None:
                self._learn(job)
                self._end(job, "done")
            else:
                self._end(job, "failed")
            if slot.leaving and self._slots.get(slot.worker.name) is slot:
                del self._slots[slot.worker.name]
                log.info("Worker %s left", slot.worker.name)
            self._pump()
        if settle:
            if error is not None:
                self._settle(job, error=error if not lost else WorkerGone(
                    f"The job's worker was lost twice ({'; '.join(job.notes)}); it did not finish. Try again."))
            else:
                self._settle(job, result=result)

    def _worker_lost(self, job: Job, slot: _Slot, error: BaseException | None) -> bool:
        """The worker died mid-job: it leaves; the job is queued again (True) unless it was already."""
        name = slot.worker.name
        if self._slots.get(name) is slot:
            del self._slots[name]
        log.warning("Worker %s was lost during job %s: %s", name, job.id[:8], error)
        note = f"Worker {name} was lost during this job ({error}); it ran again on another worker."
        if job.attempts > job.spec.retries or job.control.interrupted:
            job.notes.append(f"Worker {name} was lost during this job ({error})")
            self._end(job, "failed")
            return False
        job.notes.append(note)
        job.state, job.worker = "queued", None
        job.control.update(state="queued", step=0, batch=0, preview=None)
        self._queue.push(job.owner.user, job.id, job, front=True)
        return True

    def _learn(self, job: Job) -> None:
        if job.spec.kind != "generate" or job.started is None or job.spec.cost <= 0 or job.control.interrupted:
            return
        rate = (self._clock() - job.started) / job.spec.cost
        old = self._seconds_per_cost
        self._seconds_per_cost = rate if old is None else (1 - COST_MEMORY) * old + COST_MEMORY * rate

    def _end(self, job: Job, state: str) -> None:
        job.state, job.finished = state, self._clock()
        self._live.pop(job.id, None)
        self._history.append(job)
        self._trim_history(job.finished)

    def _trim_history(self, now: float) -> None:
        """Finished jobs stay listed, but their pictures leave memory once nobody can still want them."""
        for old in self._history:
            if old.released or old.finished is None or not old.future.done():
                continue
            unseen = old.spec.mode is not None and not old.delivered and old.state == "done"
            if now - old.finished > (KEEP_UNSEEN_SECONDS if unseen else KEEP_RESULT_SECONDS):
                old.release()

    def _settle(self, job: Job, result: Any = None, error: BaseException | None = None,
                cancelled: bool = False) -> None:
        """Hand the outcome to whoever waits (outside the lock)."""
        job._release_control()
        if cancelled:
            job.control.update(state="cancelled")
            if job.spec.cancelled is not None:
                job.future.set_result(job.spec.cancelled())
            else:
                job.future.set_exception(JobCancelled("The job was cancelled before it started."))
        elif error is not None:
            if job.progress.state not in ("done", "interrupted"):
                job.control.progress.state = "failed"
            job.future.set_exception(error)
        else:
            warnings = getattr(result, "warnings", None)
            if job.notes and isinstance(warnings, list):  # a generation's result says its worker was lost
                warnings.extend(n for n in job.notes if n not in warnings)
            job.future.set_result(result)
        job._changed()


def status_text(queue: JobQueue, job: Job) -> str:
    """One line for people about a job: its place in the queue and time to wait, or its progress."""
    if job.state == "queued":
        if not queue.generation_workers() and not job.spec.needs.on_head:
            text = "Waiting for a worker to join" + (f" ({queue.notice})" if queue.notice else "")
        else:
            ahead = queue.position(job)
            wait = queue.wait_estimate(job)
            text = "Waiting: yours is next" if not ahead else \
                f"Waiting: {ahead} job{'s' if ahead != 1 else ''} ahead of yours"
            if wait is not None and wait >= 1:
                text += f", about {wait:.0f} s"
        return text + (f" ({job.notes[-1]})" if job.notes else "")
    return progress_text(job.progress)
