"""Atelier's job queue (webui/queue): fair turns, positions, cancel, interrupt and skip per owner, model
affinity, and a job queued again when its worker is lost. The jobs here are plain functions on stand-in
workers, so the queue's own rules are checked in milliseconds; tests/test_workers.py runs real models."""

from __future__ import annotations

import random
import threading
import time

import pytest

from webui.jobs import JobControl
from webui.queue.dispatch import Candidate, FileFacts, FileRef, Inventory, Needs, NoWorkerError, choose
from webui.queue.fairness import FairQueue
from webui.queue.service import JobCancelled, JobQueue, JobSpec, Owner, WorkerGone, status_text
from webui.queue.workers import Worker, WorkerLost


class Slot(Worker):
    """A worker that runs whatever the job's function does; it has every file unless told otherwise."""

    def __init__(self, name: str, files: dict[str, FileFacts] | None = None, loaded: tuple[str, ...] = ()) -> None:
        self.name = name
        self.files = files
        self.loaded = loaded

    def inventory(self) -> Inventory:
        if self.files is None:
            return Inventory(loaded=self.loaded, shares_head_files=True)
        return Inventory({"checkpoint": dict(self.files), "vae": {}, "lora": {}, "embedding": {}}, self.loaded)


def owner(user: str, key: str | None = None) -> Owner:
    return Owner(user, (key or user,))


def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Recorder:
    """Jobs that note when they start and wait for a gate (one per job) before they end."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def job(self, label: str, hold: bool = True):
        gate = self.gates.setdefault(label, threading.Event())
        if not hold:
            gate.set()

        def run(worker: Worker, control: JobControl) -> str:
            with self.lock:
                self.started.append(label)
            while not gate.wait(0.01):
                if control.interrupted:
                    return f"{label} interrupted"
            return f"{label} on {worker.name}"

        return run

    def release(self, label: str) -> None:
        self.gates[label].set()


def test_round_robin_across_users_and_first_in_first_out_within_one():
    queue: FairQueue[str] = FairQueue()
    for i in range(10):
        queue.push("alice", f"a{i}", f"a{i}")
    queue.served("alice")  # her first job, a0, started
    queue.remove("a0")
    queue.push("bob", "b0", "b0")
    assert [k for k, _ in queue.in_order()][:4] == ["b0", "a1", "a2", "a3"]
    queue.push("carol", "c0", "c0")
    queue.push("bob", "b1", "b1")
    order = [k for k, _ in queue.in_order()]
    assert order[:5] == ["b0", "c0", "a1", "b1", "a2"], "never served first, then turns; each user in order"
    assert [queue.position(k) for k in order] == list(range(len(order)))


def test_positions_agree_with_the_dispatch_order_for_many_users():
    rng = random.Random(3)
    queue: FairQueue[int] = FairQueue()
    for n in range(300):
        user = f"u{rng.randrange(12)}"
        queue.push(user, str(n), n)
        if rng.random() < 0.2:
            key, _ = next(queue.in_order())
            queue.remove(key)
            queue.served(user)
    order = [k for k, _ in queue.in_order()]
    assert [queue.position(k) for k in order] == list(range(len(order)))
    assert queue.ahead(order[5]) == [int(k) for k in order[:5]]


def test_a_friend_with_one_job_goes_before_the_second_of_ten():
    jobs = JobQueue([Slot("w")])
    rec = Recorder()
    alice = [jobs.submit(JobSpec(rec.job(f"a{i}", hold=i == 0), owner("alice"))) for i in range(10)]
    _until(lambda: rec.started == ["a0"])
    bob = jobs.submit(JobSpec(rec.job("b0", hold=False), owner("bob")))
    assert jobs.position(bob) == 0 and jobs.position(alice[1]) == 1 and jobs.position(alice[9]) == 9
    assert status_text(jobs, bob) == "Waiting: yours is next"
    assert status_text(jobs, alice[2]).startswith("Waiting: 2 jobs ahead of yours")
    rec.release("a0")
    assert [j.result(5) for j in alice][-1] == "a9 on w" and bob.result(5) == "b0 on w"
    assert rec.started[:3] == ["a0", "b0", "a1"]
    assert rec.started == ["a0", "b0"] + [f"a{i}" for i in range(1, 10)]


def test_a_cancelled_job_never_runs_and_only_its_owner_may_cancel_it():
    jobs = JobQueue([Slot("w")])
    rec = Recorder()
    first = jobs.submit(JobSpec(rec.job("first"), owner("alice")))
    _until(lambda: rec.started == ["first"])
    second = jobs.submit(JobSpec(rec.job("second", hold=False), owner("alice")))
    third = jobs.submit(JobSpec(rec.job("third", hold=False), owner("alice"),
                                cancelled=lambda: "not run"))
    assert not jobs.cancel(second.id, "bob"), "another user's key cannot cancel it"
    assert not jobs.cancel(first.id, "alice"), "a running job is interrupted, not cancelled"
    assert jobs.cancel(second.id, "alice") and jobs.cancel(third.id, "alice")
    assert second.progress.state == "cancelled" and third.result(1) == "not run"
    with pytest.raises(JobCancelled):
        second.result(1)
    rec.release("first")
    assert first.result(5) == "first on w"
    time.sleep(0.05)
    assert rec.started == ["first"], "cancelled jobs never started"


def test_interrupt_and_skip_reach_only_their_owners_jobs():
    jobs = JobQueue([Slot("w1"), Slot("w2")])
    rec = Recorder()
    mine = jobs.submit(JobSpec(rec.job("mine"), Owner("host:1", ("browser:me",))))
    theirs = jobs.submit(JobSpec(rec.job("theirs"), Owner("host:1", ("browser:them",))))
    waiting = jobs.submit(JobSpec(rec.job("waiting"), Owner("host:1", ("browser:me",))))
    _until(lambda: len(rec.started) == 2)
    assert [j.id for j in jobs.jobs_of("browser:me")] == [mine.id, waiting.id]
    assert jobs.skip("browser:me") and mine.control.skipped and not theirs.control.skipped
    assert jobs.interrupt("browser:me")
    assert mine.result(5) == "mine interrupted" and waiting.progress.state == "cancelled"
    assert not theirs.control.interrupted and not jobs.interrupt("browser:nobody")
    rec.release("theirs")
    assert theirs.result(5) == "theirs on w2" or theirs.result(5) == "theirs on w1"
    assert "waiting" not in rec.started


def test_a_job_whose_worker_is_lost_runs_once_more_on_another():
    jobs = JobQueue([Slot("doomed")])
    calls: list[str] = []

    def run(worker: Worker, control: JobControl) -> list[str]:
        calls.append(worker.name)
        if worker.name == "doomed":
            jobs.add_worker(Slot("spare"))  # joins while the job runs; busy "doomed" cannot take it back
            raise WorkerLost("process killed")
        return ["picture"]

    job = jobs.submit(JobSpec(run, owner("alice")))
    assert job.result(5) == ["picture"] and calls == ["doomed", "spare"]
    assert "doomed was lost" in job.notes[0] and [w.name for w in jobs.workers()] == ["spare"]

    def always_lost(worker: Worker, control: JobControl) -> None:
        jobs.add_worker(Slot(f"next-{len(calls)}"))
        calls.append(worker.name)
        raise WorkerLost("machine lost")

    doomed = jobs.submit(JobSpec(always_lost, owner("alice")))
    with pytest.raises(WorkerGone, match="lost"):
        doomed.result(5)
    assert len(calls) == 4, "queued again once, not forever"


def test_model_affinity_then_the_least_loaded_worker_that_has_the_file():
    ref = FileRef("checkpoint", "b.safetensors", FileFacts(10, "bb"))
    needs = Needs((ref,), checkpoint="b.safetensors")
    has_b = {"b.safetensors": FileFacts(10, "bb")}
    a = Candidate("A", Inventory({"checkpoint": dict(has_b)}, loaded=("a.safetensors",)), jobs_run=0)
    b = Candidate("B", Inventory({"checkpoint": dict(has_b)}, loaded=("b.safetensors",)), jobs_run=5)
    lacking = Candidate("C", Inventory({"checkpoint": {"a.safetensors": FileFacts(10, "aa")}}), jobs_run=0)
    other_copy = Candidate("D", Inventory({"checkpoint": {"b.safetensors": FileFacts(10, "different")}}))
    assert choose(needs, [a, b, lacking, other_copy]).name == "B", "B has it loaded"
    b.busy = True
    assert choose(needs, [a, b, lacking, other_copy]).name == "A", "else the least-loaded one with the file"
    a.busy = True
    assert choose(needs, [a, b, lacking, other_copy]) is None, "the job waits; C and D do not have the file"
    with pytest.raises(NoWorkerError, match="No worker has the checkpoint 'b.safetensors'"):
        choose(needs, [lacking, other_copy])
    assert choose(needs, []) is None, "no workers yet: the job waits for one to join"


def test_a_job_nobody_can_run_fails_with_a_clear_error_and_others_go_on():
    jobs = JobQueue([Slot("w", files={"a.safetensors": FileFacts(1)})])
    needs_b = Needs((FileRef("checkpoint", "b.safetensors"),), checkpoint="b.safetensors")
    needs_a = Needs((FileRef("checkpoint", "a.safetensors"),), checkpoint="a.safetensors")
    missing = jobs.submit(JobSpec(lambda w, c: "ran", owner("alice"), needs_b))
    fine = jobs.submit(JobSpec(lambda w, c: "ran", owner("alice"), needs_a))
    with pytest.raises(NoWorkerError, match="b.safetensors"):
        missing.result(5)
    assert fine.result(5) == "ran"


def test_code_inside_a_job_finds_the_worker_its_job_holds():
    jobs = JobQueue([Slot("w")])
    seen: list[object] = []

    def run(worker: Worker, control: JobControl) -> None:
        seen.append(jobs.worker_of(control))

    jobs.submit(JobSpec(run, owner("alice"))).result(5)
    assert [getattr(w, "name", None) for w in seen] == ["w"] and jobs.worker_of(JobControl()) is None


def test_finished_jobs_stay_listed_but_their_pictures_leave_memory():
    now = [0.0]
    jobs = JobQueue([Slot("w")], clock=lambda: now[0])
    api_job = jobs.submit(JobSpec(lambda w, c: ["picture"], owner("alice")))
    page_job = jobs.submit(JobSpec(lambda w, c: ["unseen"], owner("alice"), mode="txt2img"))
    assert api_job.result(5) == ["picture"] and page_job.result(5) == ["unseen"]
    now[0] = 61.0
    jobs.submit(JobSpec(lambda w, c: None, owner("bob"))).result(5)
    assert api_job.released and api_job.result() is None, "whoever waited has had it for a minute"
    assert not page_job.released and page_job.result() == ["unseen"], "kept for a page that comes back"
    assert [j.id for j in jobs.jobs_of("alice", finished=True)] == [api_job.id, page_job.id]
