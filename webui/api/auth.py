"""Who is calling: HTTP Basic credentials checked in constant time, and the caller's job owner key.

One dependency covers every /sdapi route. With credentials configured (``--api-auth``, or else the UI's
``--auth`` / generated LAN password) a missing or wrong ``Authorization: Basic`` header gets 401 with
``WWW-Authenticate: Basic``. Unlike A1111, a UI behind a password never leaves an open API beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from ..auth import Credentials, basic_credentials


@dataclass(frozen=True)
class Caller:
    user: str | None  # the signed-in user; None on an open API
    host: str  # the client's address

    @property
    def owner(self) -> str:
        """Whose jobs Interrupt/Skip/Progress reach: the user, or on an open API the client's address.
        Prefixed so it never equals a browser session's owner key."""
        return f"api-user:{self.user}" if self.user is not None else f"api-host:{self.host}"

    @property
    def user_key(self) -> str:
        """Whose turn a job takes in the queue (fairness): the signed-in user, else the address. The page uses
        the same keys, so one person's page and API jobs take turns together."""
        return f"user:{self.user}" if self.user is not None else f"host:{self.host}"

    def task_owner(self, task_id: str) -> str:
        """One job of this caller, by the task id the client gave it (A1111's force_task_id)."""
        return f"{self.owner}|task:{task_id}"


def caller_dependency(credentials: Credentials | None) -> Callable[[Request], Caller]:
    """The FastAPI dependency for every /sdapi route."""

    def caller(request: Request) -> Caller:
        host = request.client.host if request.client else "unknown"
        if credentials is None:
            return Caller(None, host)
        given = basic_credentials(request.headers.get("authorization", ""))
        # Checked even without a header (against an empty pair) so both paths take the same time.
        user, password = given or ("", "")
        accepted = credentials.check(user, password)
        if given is None or not accepted:
            raise HTTPException(status_code=401, detail="Sign in with HTTP Basic credentials",
                                headers={"WWW-Authenticate": 'Basic realm="Atelier API"'})
        return Caller(user, host)

    return caller
