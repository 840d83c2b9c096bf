"""extension.toml: what an extension is, which API it needs and where its ``setup`` lives. Pure.

    id = "xyz-plot"
    name = "X/Y/Z plot"
    version = "1.0.0"
    api = ">=1,<2"
    entry = "main:setup"
    requirements = []          # pip requirement strings; never installed at start-up
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

MANIFEST = "extension.toml"
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ENTRY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Manifest:
    id: str
    name: str
    version: str
    api: str  # a version specifier such as ">=1,<2"
    entry: str  # "module:function" inside the extension
    requirements: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""

    def supports(self, api_version: str) -> bool:
        return Version(api_version) in SpecifierSet(self.api)


def valid_id(value: str) -> bool:
    """Extension ids double as folder names: lower-case letters, digits, '-', '_', '.', never '..'."""
    return bool(ID_PATTERN.match(value)) and ".." not in value


def parse_manifest(text: str, where: str = MANIFEST) -> Manifest:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{where}: not valid TOML ({exc})") from exc
    missing = [key for key in ("id", "name", "version", "api", "entry") if not isinstance(data.get(key), str)]
    if missing:
        raise ManifestError(f"{where}: missing or not text: {', '.join(missing)}")
    if not valid_id(data["id"]):
        raise ManifestError(f"{where}: id {data['id']!r} must be lower-case letters, digits, '-', '_' or '.'")
    if not ENTRY_PATTERN.match(data["entry"]):
        raise ManifestError(f"{where}: entry {data['entry']!r} must look like 'module:function'")
    try:
        SpecifierSet(data["api"])
    except InvalidSpecifier as exc:
        raise ManifestError(f"{where}: api {data['api']!r} is not a version range such as '>=1,<2'") from exc
    requirements = data.get("requirements", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise ManifestError(f"{where}: requirements must be a list of strings")
    for requirement in requirements:
        try:
            Requirement(requirement)
        except InvalidRequirement as exc:
            raise ManifestError(f"{where}: requirement {requirement!r} is not valid ({exc})") from exc
    return Manifest(data["id"], data["name"], data["version"], data["api"], data["entry"], tuple(requirements),
                    str(data.get("description", "")))


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return parse_manifest(text, str(path))


def missing_requirements(requirements: tuple[str, ...]) -> list[str]:
    """Requirements not satisfied by what is installed."""
    from importlib.metadata import PackageNotFoundError, version

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing
