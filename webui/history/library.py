"""The History tab's rules over the index, thumbnails and trash: a signed-in friend sees, favourites and deletes
only their own pictures; the host (no sign-in, or an admin user) sees and deletes everyone's. Pure logic: the
tab passes in who is asking (``users.user_of``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import AtelierError
from ..users import is_admin, owner_name
from .index import STATE_DIR, Entry, Filters, HistoryIndex, Page
from .thumbnails import Thumbnails
from .trash import Trash, TrashError, TrashItem


class HistoryError(AtelierError):
    """Something the History tab cannot do for this user; the message says why."""


def private_folders(outputs_dir: Path) -> list[Path]:
    """Folders inside the outputs folder the server must never serve: the index (everyone's prompts) and the
    trash. Thumbnails are served like the pictures, to whoever may see the picture (``access.may_read``)."""
    state = Path(outputs_dir) / STATE_DIR
    return [state / "history", state / "trash"]


@dataclass(frozen=True)
class Shown:
    """One page as the tab shows it: the entries and a thumbnail (or the picture itself) for each."""

    page: Page
    images: list[Path]


class History:
    def __init__(self, outputs_dir: Path, admin_users: Callable[[], str]) -> None:
        self.root = Path(outputs_dir)
        self.admin_users = admin_users
        state = self.root / STATE_DIR
        self.index = HistoryIndex(self.root, state / "history" / "index.sqlite")
        self.thumbnails = Thumbnails(state / "thumbs")
        self.trash = Trash(self.root, state / "trash")

    def close(self) -> None:
        self.index.close()

    def is_host(self, user: str | None) -> bool:
        return is_admin(user, self.admin_users())

    def scope(self, user: str | None) -> str | None:
        """Whose pictures ``user`` sees: None (everyone's) for the host, else their own."""
        return None if self.is_host(user) else owner_name(user)

    def path_of(self, rel: str) -> Path:
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise HistoryError("That picture is not in the outputs folder.")
        return path

    def show(self, user: str | None, filters: Filters | None = None, number: int = 1, per_page: int = 24,
             refresh: bool = True) -> Shown:
        """A page of ``user``'s pictures, newest first, the index brought up to date first."""
        filters = filters or Filters()
        if refresh:
            self.index.refresh()
        page = self.index.page(self.scope(user), filters, number, per_page, viewer=owner_name(user))
        images = [self.thumbnails.get(self.path_of(e.path), e.path, e.mtime_ns, e.size, e.owner) or self.path_of(e.path)
                  for e in page.entries]
        return Shown(page, images)

    def picture(self, user: str | None, rel: str) -> Entry:
        """One picture ``user`` may see (a friend only their own)."""
        entry = self.index.entry(rel, viewer=owner_name(user))
        scope = self.scope(user)
        if entry is None or (scope is not None and entry.owner != scope):
            raise HistoryError("That picture is not in your history (deleted, or not yours).")
        return entry

    def favourite(self, user: str | None, rel: str, on: bool) -> Entry:
        entry = self.picture(user, rel)
        self.index.set_favourite(owner_name(user), rel, on)
        return self.picture(user, entry.path)

    def delete(self, user: str | None, rel: str) -> TrashItem:
        """Move one of ``user``'s pictures (anyone's, for the host) to the trash."""
        entry = self.picture(user, rel)
        try:
            item = self.trash.put(entry.path, entry.owner, owner_name(user))
        except (TrashError, OSError) as exc:
            raise HistoryError(f"Could not move the picture to the trash: {exc}") from exc
        self.index.forget(entry.path)
        return item

    def trashed(self, user: str | None) -> list[tuple[TrashItem, Path | None]]:
        """``user``'s trashed pictures (everyone's for the host), each with its thumbnail when it has one."""
        shown = []
        for item in self.trash.items(self.scope(user)):
            try:
                stat = item.file.stat()
            except OSError:
                continue
            thumb = self.thumbnails.path_for(item.path, stat.st_mtime_ns, stat.st_size)
            shown.append((item, thumb if thumb.is_file() else None))
        return shown

    def restore(self, user: str | None, token: str) -> str:
        item = self.trash.find(token)
        scope = self.scope(user)
        if item is None or (scope is not None and item.owner != scope):
            raise HistoryError("That picture is not in your trash.")
        try:
            restored = self.trash.restore(token)
        except (TrashError, OSError) as exc:
            raise HistoryError(f"Could not restore the picture: {exc}") from exc
        if restored != item.path:
            self.index.move_favourites(item.path, restored)
        self.index.refresh()
        return restored
