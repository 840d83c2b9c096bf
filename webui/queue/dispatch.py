"""Which worker runs a job: what workers have, what a job needs, and the choice between them. Pure Python.

A worker reports its files (checkpoints, VAEs, LoRAs, embeddings) by relative name with size and, when
known, SHA-256, and which checkpoints it holds in memory now. A job needs its checkpoint and its VAE (when it
names one); it would like its LoRAs. The choice, among workers that have every file the job needs:

1. an idle worker that already has the job's checkpoint loaded (model affinity: no load, no swap);
2. otherwise the least-loaded idle worker (fewest preferred files missing, fewest jobs run, idle longest);
3. none idle: the job waits for one of them;
4. no worker has the files: a clear error naming what is missing, never a worker that lacks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import AtelierError

KINDS = ("checkpoint", "vae", "lora", "embedding")


@dataclass(frozen=True)
class FileFacts:
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class FileRef:
    """A file a job uses, as the head sees it."""

    kind: str  # one of KINDS
    name: str  # relative to its folder, "/"-separated (checkpoints: the registry name)
    facts: FileFacts = FileFacts()

    def matches(self, theirs: FileFacts) -> bool:
        """Another machine's file under the same name is this one: same hash when both are known, else same
        size when both are known (a different copy under the same name is not the same model)."""
        mine = self.facts
        if mine.sha256 and theirs.sha256:
            return mine.sha256 == theirs.sha256
        if mine.size is not None and theirs.size is not None:
            return mine.size == theirs.size
        return True


@dataclass
class Inventory:
    """What one worker can run, and what it holds loaded now (the checkpoint on its device first)."""

    files: dict[str, dict[str, FileFacts]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    loaded: tuple[str, ...] = ()
    device: str = "cpu"
    shares_head_files: bool = False  # reads the head's own folders: has every file the head has

    def has(self, ref: FileRef) -> bool:
        if self.shares_head_files:
            return True
        theirs = self.files.get(ref.kind, {}).get(ref.name)
        return theirs is not None and ref.matches(theirs)

    def count(self) -> dict[str, int]:
        return {kind: len(names) for kind, names in self.files.items()}


@dataclass(frozen=True)
class Needs:
    """What a job needs from a worker."""

    files: tuple[FileRef, ...] = ()  # required: a worker without one of them never gets the job
    prefer: tuple[FileRef, ...] = ()  # nice to have (LoRAs: a missing one is only a warning)
    checkpoint: str | None = None  # for model affinity
    on_head: bool = False  # runs on the head's own pipeline manager (Extras, a model switch's warm-up there)


@dataclass
class Candidate:
    """A worker as the dispatcher sees it at one moment."""

    name: str
    inventory: Inventory
    busy: bool = False
    hosts_head: bool = False  # this worker's pipeline manager is the head's
    head_only: bool = False  # takes only jobs that must run on the head (not a generation worker)
    jobs_run: int = 0
    idle_since: float = 0.0


class NoWorkerError(AtelierError, LookupError):
    """No worker has a file the job needs."""


def can_run(worker: Candidate, needs: Needs) -> bool:
    if needs.on_head:
        return worker.hosts_head
    return all(worker.inventory.has(ref) for ref in needs.files)


def missing(workers: list[Candidate], needs: Needs) -> str:
    """Why nobody can run the job, for people: the first file no worker has, with what they have instead."""
    if needs.on_head:
        return "This job runs on the main machine's own engine, which no worker here shares."
    for ref in needs.files:
        if not any(w.inventory.has(ref) for w in workers):
            names = sorted({n for w in workers for n in w.inventory.files.get(ref.kind, {})})
            shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "") if names else "none"
            what = "checkpoint" if ref.kind == "checkpoint" else ref.kind.upper() if ref.kind == "vae" else ref.kind
            return (f"No worker has the {what} {ref.name!r} (the same file under the same name in its models "
                    f"folder; workers have: {shown}). Copy it to every worker machine, or share the models folder.")
    return "No worker can run this job."


def choose(needs: Needs, workers: list[Candidate]) -> Candidate | None:
    """The worker for a job, or None when every worker able to run it is busy. Raises NoWorkerError when
    workers exist and none of them has what the job needs."""
    pool = workers if needs.on_head else [w for w in workers if not w.head_only]
    able = [w for w in pool if can_run(w, needs)]
    if not able:
        if pool:
            field = "checkpoint" if any(r.kind == "checkpoint" for r in needs.files) else None
            raise NoWorkerError(missing(pool, needs), field)
        return None  # no workers at all (yet): the job waits for one to join
    idle = [w for w in able if not w.busy]
    if not idle:
        return None
    loaded = [w for w in idle if needs.checkpoint is not None and needs.checkpoint in w.inventory.loaded]

    def load(w: Candidate) -> tuple[int, int, float]:
        lacking = sum(1 for ref in needs.prefer if not w.inventory.has(ref))
        return lacking, w.jobs_run, w.idle_since

    return min(loaded or idle, key=load)
