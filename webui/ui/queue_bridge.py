"""REST API jobs wait in the same Gradio queue as the Generate buttons, so UI and API jobs run first in,
first out together and a browser's queue position counts the API jobs ahead of it.

The bridge adds one private function to the Blocks with the generation queue's concurrency id and
limit. An API route hands it a callable (``run``); the bridge puts an event for that function on
Gradio's queue and waits, without blocking the event loop, until the queue has run it.

Gradio has no public way to enqueue an event from the server side, so ``run`` uses the queue's own
``push`` with the request body its ``/queue/join`` route would build, and reads the completion from
the queue's per-session messages the way its ``/queue/data`` route does. The tests that drive an API
job behind a UI job catch any change in those internals.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gradio as gr
from fastapi import Request
from gradio.data_classes import PredictBodyInternal
from gradio.server_messages import ProcessCompletedMessage
from starlette.requests import Request as StarletteRequest

T = TypeVar("T")

# What Gradio's queue expects a queued request's path to be (it derives the app's root URL from it).
_JOIN_PATH = "/gradio_api/queue/join"


class QueueUnavailable(RuntimeError):
    """The queue refused the job (stopped or full)."""


@dataclass
class _Turn:
    work: Callable[[], Any]
    result: Any = None
    error: BaseException | None = None
    ran: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:  # handed back to the API route, which answers with it
            self.error = exc
        finally:
            self.ran.set()


class QueueBridge:
    """Runs callables in the turn of one Gradio concurrency group (``concurrency_id``)."""

    def __init__(self, demo: gr.Blocks, concurrency_id: str) -> None:
        self.demo = demo
        self._turns: dict[str, _Turn] = {}
        self._lock = threading.Lock()

        def api_job(key: str) -> str:
            with self._lock:
                turn = self._turns.get(key)
            if turn is not None:  # an unknown key (nobody waits for it) runs nothing
                turn.run()
            return ""

        with demo:
            self._fn = gr.api(api_job, api_name="atelier_api_job", queue=True, concurrency_id=concurrency_id,
                              concurrency_limit=1, api_visibility="private")
        self._fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == "atelier_api_job")

    def waiting(self) -> int:
        """Events waiting in the queue (all groups), for the progress endpoint's job count."""
        queue = self.demo._queue
        return len(queue) if queue is not None else 0

    async def run(self, work: Callable[[], T], request: Request) -> T:
        """Queue ``work`` behind whatever is queued now; return its result or raise its exception."""
        queue = self.demo._queue
        key = uuid.uuid4().hex
        turn = _Turn(work)
        with self._lock:
            self._turns[key] = turn
        # The queue reads the request's path to find the app's root URL; give it the path it knows.
        scope = {**request.scope, "path": _JOIN_PATH, "raw_path": _JOIN_PATH.encode(), "root_path": ""}
        queued_request = StarletteRequest(scope)
        body = PredictBodyInternal(data=[key], fn_index=self._fn_index, request=queued_request)
        try:
            if queue.server_app is None:
                queue.set_server_app(self.demo.server_app)
            ok, event_id, state = await queue.push(body=body, request=queued_request, username=None)
            if not ok:
                raise QueueUnavailable(f"the job queue refused the job ({state}): {event_id}")
            await self._wait(queue, str(body.session_hash), str(event_id), turn)
        finally:
            self._forget_session(body.session_hash)
            with self._lock:
                self._turns.pop(key, None)
        if turn.error is not None:
            raise turn.error
        if not turn.ran.is_set():
            raise QueueUnavailable("the job queue dropped the job")
        return turn.result

    def _forget_session(self, session_hash: str | None) -> None:
        # Each job ran as its own Gradio session; drop the session state Gradio kept for it.
        holder = getattr(self.demo, "state_holder", None)
        if session_hash and holder is not None:
            with holder.lock:
                holder.session_data.pop(session_hash, None)
                holder.time_last_used.pop(session_hash, None)

    @staticmethod
    async def _wait(queue: Any, session_hash: str, event_id: str, turn: _Turn) -> None:
        try:
            while True:
                messages = queue.pending_messages_per_session.get(session_hash)
                if messages is None:  # evicted by Gradio's bounded cache: fall back to the job's own flag
                    if turn.ran.is_set():
                        return
                    await asyncio.sleep(0.05)
                    continue
                try:
                    message = await asyncio.wait_for(messages.get(), timeout=1.0)
                except (TimeoutError, asyncio.TimeoutError):
                    if queue.stopped:
                        return
                    continue
                if isinstance(message, ProcessCompletedMessage) and message.event_id == event_id:
                    return
        finally:
            queue.pending_messages_per_session.pop(session_hash, None)
            queue.pending_event_ids_session.pop(session_hash, None)
