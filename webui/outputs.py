"""Saving generated images the way A1111 lays them out, with their infotext inside.

    outputs/txt2img-images/2024-05-31/00042-1234567890.png
    outputs/img2img-images/...   (inpainting too)   outputs/txt2img-grids/... img2img-grids/...
    outputs/extras-images/...    (the Extras tab's upscaled pictures)

Files are written to a hidden temp file in the target folder, synced, then hard-linked to
their final name: the link fails instead of replacing when the name exists, so a saved image
is never overwritten and a crash never leaves a half-written image under a real name.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import secrets
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, PngImagePlugin

from .fileio import TEMP_PREFIX, temp_name
from .users import folder_name

PNG_KEY = "parameters"  # the tEXt/iTXt keyword A1111 and every reader of its files use
OWNER_KEY = "atelier-user"  # PNG text chunk: the signed-in user who made the picture (absent: the host)
ARTIST = ExifTags.Base.Artist  # 0x013B: where JPEG and WebP files record that user
USER_COMMENT = ExifTags.Base.UserComment  # 0x9286, in the Exif IFD
UNICODE_PREFIX = b"UNICODE\0"  # EXIF character-code header A1111 writes, then UTF-16
JPEG_QUALITY = 80  # A1111's default for JPEG and lossy WebP
COUNTER_DIGITS = 5
_TEMP_PREFIX = TEMP_PREFIX  # leading dot: hidden, and no leading digit, so never counted
_FORMATS = {"png": ("PNG", "png"), "jpg": ("JPEG", "jpg"), "jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp")}
_LEADING_DIGITS = re.compile(r"^(\d+)")

_FOLDERS = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "img2img", "extras": "extras"}
_save_lock = threading.Lock()  # one counter pick-and-link at a time within this process


@dataclass(frozen=True)
class OutputLayout:
    root: Path
    pattern: str = "[number]-[seed]"  # file name pattern (see file_stem)
    per_user: bool = False  # signed-in users' pictures go under <root>/<user>/ (the host's stay at the root)

    def folder_for(self, task: str, day: datetime.date | None = None, grid: bool = False,
                   user: str | None = None) -> Path:
        """`<root>/<txt2img|img2img|extras>-<images|grids>/YYYY-MM-DD`; inpainting shares img2img's folders.
        With ``per_user``, a signed-in ``user``'s go under `<root>/<user>/` instead."""
        name = _FOLDERS.get(str(getattr(task, "value", task)))
        if name is None:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(_FOLDERS)}")
        day = day or datetime.date.today()
        root = Path(self.root)
        if self.per_user and user:
            root = root / folder_name(user)
        return root / f"{name}-{'grids' if grid else 'images'}" / day.isoformat()


def next_counter(folder: Path) -> int:
    """One more than the highest leading number of any file name in `folder` (0 when none)."""
    highest = -1
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                match = _LEADING_DIGITS.match(entry.name)
                if match:
                    highest = max(highest, int(match.group(1)))
    except FileNotFoundError:
        pass
    return highest + 1


DEFAULT_PATTERN = "[number]-[seed]"
_UNSAFE_NAME = re.compile(r'[\x00-\x1f<>:"/\\|?*]+')
_PATTERN_TOKEN = re.compile(r"\[(\w+)\]")


def file_stem(pattern: str, counter: int, fields: dict[str, str]) -> str:
    """A file name from the user's pattern: [number] is the counter, other [tokens] come from ``fields``
    (unknown ones stay as typed); anything a file system refuses becomes '_' and the stem is capped."""

    def token(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "number":
            return f"{counter:0{COUNTER_DIGITS}d}"
        value = fields.get(key)
        return match.group(0) if value is None else _UNSAFE_NAME.sub("_", value).strip(" .")
    if "[number]" not in pattern:
        pattern = "[number]-" + pattern
    return _PATTERN_TOKEN.sub(token, pattern)[:150].rstrip(" .")


def prompt_words(prompt: str, limit: int = 8) -> str:
    return " ".join(re.findall(r"[^\W_]+", prompt)[:limit])


def save_image(
    image: Image.Image, folder: Path, seed: int, infotext: str, fmt: str = "png", pattern: str = DEFAULT_PATTERN,
    fields: dict[str, str] | None = None, owner: str | None = None,
) -> Path:
    """Save as `NNNNN-SEED.<ext>` (or the user's ``pattern``) with the infotext embedded; returns the path.
    ``owner``: the signed-in user who made it, recorded in the file for the History tab (None: the host).

    Safe to call from several threads and processes at once: each call gets its own file.
    """
    pil_format, ext = _format(fmt)
    return save_encoded(_encode(image, infotext, pil_format, owner), folder, seed, ext, pattern, fields)


def save_encoded(data: bytes, folder: Path, seed: int, ext: str = "png", pattern: str = DEFAULT_PATTERN,
                 fields: dict[str, str] | None = None) -> Path:
    """``save_image`` for a file already encoded (a remote worker's PNG, infotext inside), written as it is."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = _create_temp(folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with _save_lock:
            path = _publish(temp, folder, ext, pattern, {"seed": str(seed), **(fields or {})})
        _sync_folder(folder)
        return path
    finally:
        temp.unlink(missing_ok=True)


def encode_image(image: Image.Image, infotext: str, fmt: str = "png", owner: str | None = None) -> bytes:
    """The file bytes ``save_image`` would write, infotext (and ``owner``) inside, without saving (the REST API
    sends these; workers hand them to the head)."""
    return _encode(image, infotext, _format(fmt)[0], owner)


def _create_temp(folder: Path) -> tuple[int, Path]:
    """A new hidden file in `folder`, created with the umask's permissions (mkstemp's are 0600)."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
    while True:
        temp = folder / temp_name(secrets.token_hex(8))
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue


def _format(fmt: str) -> tuple[str, str]:
    key = fmt.lower().lstrip(".")
    if key not in _FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; expected png, jpg or webp")
    return _FORMATS[key]


def _publish(temp: Path, folder: Path, ext: str, pattern: str, fields: dict[str, str]) -> Path:
    """Give `temp` the next free name from ``pattern`` without ever replacing a file."""
    counter = next_counter(folder)
    while True:
        path = folder / f"{file_stem(pattern, counter, fields)}.{ext}"
        try:
            _link_exclusive(temp, path)
            return path
        except FileExistsError:  # another process took it between our scan and our link
            counter = max(counter + 1, next_counter(folder))


def _link_exclusive(temp: Path, path: Path) -> None:
    try:
        os.link(temp, path)
        return
    except FileExistsError:
        raise
    except OSError:
        pass  # no hard links on this filesystem (FAT, some network shares)
    if sys.platform == "win32":
        os.rename(temp, path)  # on Windows rename refuses an existing target
        return
    # Reserve the name exclusively, then atomically swap the finished file over the empty placeholder.
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    os.replace(temp, path)


def _sync_folder(folder: Path) -> None:
    """Make the new directory entry durable too (POSIX only; best effort)."""
    if sys.platform == "win32":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _encode(image: Image.Image, infotext: str, pil_format: str, owner: str | None = None) -> bytes:
    buffer = io.BytesIO()
    if pil_format == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, text in [(PNG_KEY, infotext)] + ([(OWNER_KEY, owner)] if owner else []):
            if _is_latin1(text):
                info.add_text(key, text)
            else:  # tEXt is latin-1 only; iTXt carries UTF-8
                info.add_itxt(key, text)
        image.save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[USER_COMMENT] = UNICODE_PREFIX + infotext.encode("utf-16-be")
    if owner:
        exif[ARTIST] = artist_bytes(owner)
    if pil_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha or palette
    image.save(buffer, format=pil_format, exif=exif.tobytes(), quality=JPEG_QUALITY)
    return buffer.getvalue()


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def read_owner(source: str | os.PathLike[str] | Image.Image) -> str | None:
    """The signed-in user a picture records as its maker (``save_image``'s ``owner``), else None (the host)."""
    if isinstance(source, Image.Image):
        return _owner_of(source)
    with Image.open(source) as image:
        return _owner_of(image)


def _owner_of(image: Image.Image) -> str | None:
    text = getattr(image, "text", None)
    if isinstance(text, dict) and text.get(OWNER_KEY):
        return str(text[OWNER_KEY])
    artist = image.getexif().get(ARTIST)
    return artist_text(artist) if artist else None


def artist_bytes(user: str) -> bytes:
    """A user name for EXIF Artist: UTF-8 (PIL would turn a str's non-ASCII letters into '?')."""
    return user.encode("utf-8")


def artist_text(value: object) -> str:
    """EXIF Artist as written by ``artist_bytes`` (PIL reads those bytes as latin-1)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = str(value).rstrip("\0")
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def read_infotext(source: str | os.PathLike[str] | Image.Image) -> str | None:
    """The infotext in a PNG `parameters` chunk or a JPEG/WebP EXIF UserComment, else None."""
    if isinstance(source, Image.Image):
        return _infotext_of(source)
    with Image.open(source) as image:
        return _infotext_of(image)


def _infotext_of(image: Image.Image) -> str | None:
    text = getattr(image, "text", None)  # PNG chunks, including ones after the image data
    if isinstance(text, dict) and PNG_KEY in text:
        return str(text[PNG_KEY])
    if PNG_KEY in image.info and isinstance(image.info[PNG_KEY], str):
        return str(image.info[PNG_KEY])
    comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(USER_COMMENT)
    return _decode_user_comment(comment) if comment else None


def _decode_user_comment(raw: object) -> str | None:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes):
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == UNICODE_PREFIX:
        # UTF-16 in the byte order A1111 writes (big-endian); some writers use little-endian,
        # which shows as zero bytes at odd offsets for mostly-ASCII text.
        little = body[1::2].count(0) > body[0::2].count(0)
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace").rstrip("\0")
    if prefix in (b"ASCII\0\0\0", b"\0" * 8):
        return body.decode("utf-8", errors="replace").rstrip("\0")
    return raw.decode("utf-8", errors="replace").rstrip("\0")
