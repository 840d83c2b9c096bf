"""Who may use a shared server: --auth / --auth-file credentials, and the generated LAN password.

Pure logic (no gradio): the UI layer hands the resulting list to its one auth check.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from .fileio import write_text_atomic

GENERATED_USER = "atelier"


class AuthError(ValueError):
    """A credential string or file that cannot be used; the message says which part is wrong."""


@dataclass(frozen=True)
class Credentials:
    pairs: tuple[tuple[str, str], ...]
    generated: bool = False  # made up by us for --listen without --auth; printed at start-up

    def check(self, user: str, password: str) -> bool:
        # Compare every pair in constant time so timing does not reveal which user exists.
        ok = False
        for known_user, known_password in self.pairs:
            ok |= hmac.compare_digest(user.encode(), known_user.encode()) & hmac.compare_digest(
                password.encode(), known_password.encode())
        return ok


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header value; None if it is not one.

    UTF-8 as RFC 7617 asks; bytes that are not UTF-8 are read as latin-1, which older clients send."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def parse_auth(text: str) -> list[tuple[str, str]]:
    """"user:pass,user2:pass2" (A1111's --gradio-auth format) -> pairs. Passwords may contain ':'."""
    pairs = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise AuthError(f"credentials must look like user:password, got {item.split(':')[0]!r}:…")
        pairs.append((user.strip(), password))
    return pairs


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthError(f"cannot read auth file {path}: {exc.strerror or exc}") from exc
    pairs = parse_auth(text)
    if not pairs:
        raise AuthError(f"auth file {path} holds no user:password line")
    return pairs


def generated_password(path: Path) -> str:
    """The LAN password kept in ``path`` (created on first use, private to the user, stable across restarts)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        password = data.get("password") if isinstance(data, dict) else None
        if isinstance(password, str) and len(password) >= 8:
            return password
    except (OSError, ValueError):
        pass
    password = secrets.token_urlsafe(12)
    write_text_atomic(path, json.dumps({"user": GENERATED_USER, "password": password}), mode=0o600)
    return password


def resolve_credentials(
    auth: str | None, auth_file: Path | None, listen: bool, no_auth: bool, password_file: Path
) -> Credentials | None:
    """The credentials a server must ask for, or None for an open server.

    Explicit --auth/--auth-file win. A server reachable from the network (--listen) is never open by
    accident: without credentials it gets a generated password, unless --no-auth says so explicitly.
    """
    pairs: list[tuple[str, str]] = []
    if auth:
        pairs += parse_auth(auth)
    if auth_file is not None:
        pairs += read_auth_file(auth_file)
    if pairs:
        return Credentials(tuple(pairs))
    if listen and not no_auth:
        return Credentials(((GENERATED_USER, generated_password(password_file)),), generated=True)
    return None
