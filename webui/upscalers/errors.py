"""The error an upscaler raises: an unknown name, a file that cannot be used, a bad size. Pure."""

from __future__ import annotations

from ..errors import AtelierError, Cause


class UpscalerError(AtelierError, ValueError):
    """``field``: the request field that chose the upscaler (``"upscaler_1"``, ``"hr_upscaler"``...), so each front
    end can point at what to fix; the message names the file when a file is at fault."""

    def __init__(self, message: str, field: str | None = "upscaler") -> None:
        super().__init__(message, field)


class ExtrasSaveError(AtelierError, OSError):
    """An upscaled picture could not be written (disk full, no permission)."""

    cause = Cause.STORAGE
