"""Who may read a file of the outputs folder: on a signed-in studio a friend reads only the pictures (and their
thumbnails) that record them as their maker; the host (no sign-in, or an admin user) reads everything.

Pure logic (no gradio). The sign-in middleware asks it for every request to Gradio's file route, and the Extras
tab for every picture of a folder it is asked to read. A file that may not be read is treated as one that does
not exist, so a friend cannot tell another's picture from a name that was never used.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..users import is_admin, owner_name
from .metadata import read_picture


def _absolute(path: str | os.PathLike[str]) -> Path:
    # The way Gradio's file route reads the path it is given (relative paths from the working folder), links
    # followed, so no spelling of the same file escapes the check.
    return Path(os.path.abspath(os.fspath(path))).resolve()


def in_outputs(outputs_dir: Path, path: str | os.PathLike[str]) -> bool:
    return _absolute(path).is_relative_to(_absolute(outputs_dir))


def file_owner(path: Path) -> str | None:
    """The user a picture (or a History thumbnail) records as its maker ("" = the host); None when the file is
    not a picture (the History index, a trash record...)."""
    info = read_picture(path) if path.is_file() else None
    return None if info is None else info.owner


def may_read(outputs_dir: Path, path: str | os.PathLike[str], user: str | None, admin_users: str) -> bool:
    """Whether ``user`` (None: a studio without sign-in) may read ``path``. Files outside the outputs folder
    are not this rule's business (Gradio's own allowed and blocked paths decide those)."""
    if is_admin(user, admin_users) or not in_outputs(outputs_dir, path):
        return True
    return file_owner(_absolute(path)) == owner_name(user)
