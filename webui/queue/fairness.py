"""Which waiting job goes next: round-robin across users, first in, first out within one user. Pure Python.

Users take turns by how long ago they were last served: the user whose last job *started* longest ago (or
who was never served) goes first. So when Alice has queued 10 jobs and her first one is running, Bob's one
job, queued after all of hers, still starts before her second: Bob has not been served, Alice just was.
Within one user, jobs keep the order they came in (a job queued again after its worker was lost goes back
to the front of its user's line).

The dispatch order is therefore a rotation: users sorted by (last served, first seen), and round ``d``
takes each user's ``d``-th job. A job's position follows from that in O(users) without walking the queue.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

NEVER = -1  # the "last served" ticket of a user who has not been served yet


@dataclass
class _Line(Generic[T]):
    """One user's waiting jobs, in order."""

    first_seen: int
    jobs: OrderedDict[str, T]


class FairQueue(Generic[T]):
    """Waiting jobs by user. Not thread-safe: the job service calls it under its own lock."""

    def __init__(self) -> None:
        self._lines: dict[str, _Line[T]] = {}
        self._user_of: dict[str, str] = {}  # job key -> user
        self._served: dict[str, int] = {}  # user -> ticket of their last start
        self._tickets = itertools.count()

    def __len__(self) -> int:
        return len(self._user_of)

    def __contains__(self, key: str) -> bool:
        return key in self._user_of

    def push(self, user: str, key: str, item: T, front: bool = False) -> None:
        """Queue ``item`` at the end of ``user``'s line (``front``: at its start, for a job queued again)."""
        if key in self._user_of:
            raise KeyError(f"job {key} is already queued")
        line = self._lines.get(user)
        if line is None:
            line = self._lines[user] = _Line(next(self._tickets), OrderedDict())
        line.jobs[key] = item
        if front:
            line.jobs.move_to_end(key, last=False)
        self._user_of[key] = user

    def remove(self, key: str) -> T | None:
        """Take a job out (it starts, or it was cancelled); None when it is not queued."""
        user = self._user_of.pop(key, None)
        if user is None:
            return None
        line = self._lines[user]
        item = line.jobs.pop(key)
        if not line.jobs:
            del self._lines[user]
        return item

    def served(self, user: str) -> None:
        """A job of ``user`` started: they go to the back of the rotation."""
        self._served[user] = next(self._tickets)

    def _rotation(self) -> list[str]:
        return sorted(self._lines, key=lambda u: (self._served.get(u, NEVER), self._lines[u].first_seen))

    def in_order(self) -> Iterator[tuple[str, T]]:
        """(key, item) in the order they would start if every worker could run every job."""
        lines = [list(self._lines[user].jobs.items()) for user in self._rotation()]
        for depth in itertools.count():
            found = False
            for jobs in lines:
                if depth < len(jobs):
                    found = True
                    yield jobs[depth]
            if not found:
                return

    def first(self, accept: Callable[[T], bool]) -> tuple[str, T] | None:
        """The first job in dispatch order that ``accept`` takes."""
        return next(((key, item) for key, item in self.in_order() if accept(item)), None)

    def position(self, key: str) -> int | None:
        """How many queued jobs start before this one (0: it is next); None when it is not queued."""
        user = self._user_of.get(key)
        if user is None:
            return None
        depth = list(self._lines[user].jobs).index(key)
        ahead = depth
        before = True  # users ahead of ``user`` in the rotation also get their turn at ``depth``
        for other in self._rotation():
            if other == user:
                before = False
                continue
            count = len(self._lines[other].jobs)
            ahead += min(count, depth) + (1 if before and count > depth else 0)
        return ahead

    def ahead(self, key: str) -> list[T]:
        """The queued jobs that start before this one, in order (for a time estimate)."""
        out: list[T] = []
        for other, item in self.in_order():
            if other == key:
                return out
            out.append(item)
        return []

    def users(self) -> dict[str, int]:
        """Waiting jobs per user."""
        return {user: len(line.jobs) for user, line in self._lines.items()}
