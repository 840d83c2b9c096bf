"""Admin actions on the extensions folder: install from a git URL, update, uninstall, install an
extension's Python requirements. They run code from the internet, so the UI allows them only when
the server is reachable from this machine alone, unless started with --enable-insecure-extension-access.

Nothing is ever written outside the extensions folder: folder names taken from URLs are validated,
and every target path is checked to resolve inside it. No install script of the extension is run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .manifest import ManifestError, read_manifest

FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
GIT_SECONDS = 300
PIP_SECONDS = 900


class AdminError(RuntimeError):
    pass


def refusal(host: str, shared: bool, insecure_allowed: bool) -> str | None:
    """Why admin actions are refused here, or None when they are allowed."""
    if insecure_allowed:
        return None
    if shared:
        return "the server is shared through a public link"
    if host not in ("127.0.0.1", "localhost", "::1"):
        return f"the server listens on {host}, so other machines can reach it"
    return None


def folder_name_for(url: str, name: str | None = None) -> str:
    """The folder an install goes to: ``name``, or the URL's last path part without ``.git``."""
    candidate = (name or "").strip() or re.split(r"[/:\\]", url.strip().rstrip("/"))[-1].removesuffix(".git")
    if not FOLDER_NAME.match(candidate) or ".." in candidate or candidate.endswith(".disabled"):
        raise AdminError(f"{candidate!r} is not a usable folder name: letters, digits, '-', '_' and '.' only")
    return candidate


def inside(folder: Path, root: Path) -> Path:
    """``folder`` resolved, refused unless it lies directly in ``root``."""
    resolved = folder.resolve()
    if resolved.parent != root.resolve():
        raise AdminError(f"{folder} is not inside {root}")
    return resolved


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_SECONDS)
    except FileNotFoundError as exc:
        raise AdminError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise AdminError(f"git {args[0]} took longer than {GIT_SECONDS} s") from exc
    if done.returncode != 0:
        raise AdminError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout.strip()


def install_from_git(url: str, extensions_dir: Path, name: str | None = None) -> Path:
    """Clone ``url`` into extensions/<name>; the clone must hold a valid extension.toml. Takes effect at restart."""
    if not url.strip() or url.strip().startswith("-"):
        raise AdminError("give the git URL of the extension")
    folder = folder_name_for(url, name)
    extensions_dir.mkdir(parents=True, exist_ok=True)
    target = inside(extensions_dir / folder, extensions_dir)
    if target.exists():
        raise AdminError(f"extensions/{folder} already exists")
    staging = inside(extensions_dir / f".installing-{folder}", extensions_dir)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _git("clone", "--depth", "1", "--", url.strip(), str(staging))
        try:
            read_manifest(staging)
        except ManifestError as exc:
            raise AdminError(f"not an Atelier extension: {exc}") from exc
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def update(folder: Path, extensions_dir: Path) -> str:
    target = inside(folder, extensions_dir)
    if not (target / ".git").exists():
        raise AdminError(f"extensions/{target.name} was not installed from git")
    return _git("pull", "--ff-only", cwd=target) or "up to date"


def uninstall(folder: Path, extensions_dir: Path) -> None:
    if folder.is_symlink():
        raise AdminError(f"extensions/{folder.name} is a link; remove it by hand")
    target = inside(folder, extensions_dir)
    shutil.rmtree(target)


def install_requirements(requirements: list[str]) -> str:
    if not requirements:
        return "nothing to install"
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--", *requirements], capture_output=True,
                              text=True, timeout=PIP_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise AdminError(f"pip took longer than {PIP_SECONDS} s") from exc
    if done.returncode != 0:
        raise AdminError(f"pip failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return "installed: " + ", ".join(requirements)
