"""Errors the REST API answers with: a status code, the request field at fault and a message.

Bodies keep FastAPI's 422 shape (``detail`` is a list of {loc, msg, type}) so generic clients read them,
and add ``field`` and ``error`` at the top so a person reading the JSON sees at once what to fix.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str, kind: str = "value_error") -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
        self.kind = kind

    def body(self) -> dict[str, Any]:
        loc = ["body", self.field] if self.field else ["body"]
        return {"error": type(self).__name__ if self.kind == "value_error" else self.kind, "field": self.field,
                "detail": [{"loc": loc, "msg": self.message, "type": self.kind}]}


def invalid(field: str | None, message: str) -> ApiError:
    """422: a value out of range or unknown (steps, sampler, checkpoint...)."""
    return ApiError(422, field, message)


def bad_input(field: str | None, message: str) -> ApiError:
    """400: input that cannot be read at all (bad base64, not an image)."""
    return ApiError(400, field, message, "bad_input")


def too_large(field: str | None, message: str) -> ApiError:
    """413: an image or body over the limits."""
    return ApiError(413, field, message, "too_large")


def not_found(field: str | None, message: str) -> ApiError:
    return ApiError(404, field, message, "not_found")
