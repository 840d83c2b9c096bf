"""Who is asking, and what they may see: the signed-in user's own pictures, or everyone's for the host.

Pure logic (no gradio). The host is whoever runs a studio without sign-in (everyone who reaches it is then the
host), or a user named in the ``admin_users`` setting (``--admin-users``, ``ATELIER_ADMIN_USERS`` or
settings.json; never the page, so a friend cannot make themselves one).
"""

from __future__ import annotations

import re
from typing import Any

HOST = ""  # the owner of pictures nobody claimed: made by the CLI, an open API, A1111, or before sign-in
_UNSAFE = re.compile(r"[^\w.@+-]+")


def user_of(request: Any) -> str | None:
    """The signed-in user name of a Gradio request (None: the studio has no sign-in)."""
    name = getattr(request, "username", None) if request is not None else None
    return str(name) if name else None


def admins(setting: str) -> set[str]:
    """``admin_users`` ("alice, bob") as a set of names."""
    return {name.strip() for name in (setting or "").split(",") if name.strip()}


def is_admin(user: str | None, admin_users: str) -> bool:
    """The host: no sign-in at all, or a user named in the admin_users setting."""
    return user is None or user in admins(admin_users)


def owner_name(user: str | None) -> str:
    """The owner recorded for a picture made by ``user`` (the host's pictures record no owner)."""
    return user or HOST


def folder_name(user: str) -> str:
    """A user name as one safe folder name (outputs/<user>/...): no separators, dots or control characters."""
    cleaned = _UNSAFE.sub("_", user).strip("._") or "_"
    return cleaned[:64]
