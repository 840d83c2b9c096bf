"""The one base class for errors caused by what the user asked for or by the machine's state.

Such an error is not a bug: its message is written for the person who made the request, and every
front end shows it as it is: the page as a pop-up, the REST API as a 4xx/5xx naming the field, the CLI
on stderr with exit status 2. Anything else that escapes a job is a fault of Atelier's and is logged.

Pure: no torch, no gradio.
"""

from __future__ import annotations

import enum


class Cause(str, enum.Enum):
    """What kind of trouble it is; the REST API picks its status code from this."""

    INPUT = "input"  # a request field is wrong or names something that does not exist (422)
    STORAGE = "storage"  # a picture could not be written: disk full, no permission (507)
    EXTENSION = "extension"  # an extension broke this job and was switched off (500)


class AtelierError(Exception):
    """``field``: the GenerationRequest field the error concerns (``"steps"``, ``"checkpoint"``), or None."""

    cause: Cause = Cause.INPUT

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
