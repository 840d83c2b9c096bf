"""Extra-network tags in prompts: ``<lora:name:weight>`` and friends, as A1111 writes them.

Pure Python (no torch). ``extract_tags`` removes every ``<kind:...>`` tag from a prompt and returns
the text to encode plus the tags found, so the encoder never sees them while the infotext keeps
the original prompt.

Forms: ``<lora:name>`` (weight 1), ``<lora:name:w>`` (text encoder and UNet both ``w``),
``<lora:name:te:unet>``, and A1111's named forms ``<lora:name:te=0.5:unet=1>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["NetworkTag", "extract_tags", "lora_tag"]

_TAG = re.compile(r"<(?P<kind>[A-Za-z_][\w-]*):(?P<args>[^<>]+)>")


@dataclass(frozen=True)
class NetworkTag:
    kind: str  # "lora", or whatever else appeared (reported as unknown)
    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0
    text: str = ""  # the tag as written


def _number(value: str, tag: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{tag}: {value!r} is not a number") from None
    if number != number or abs(number) == float("inf"):
        raise ValueError(f"{tag}: {value!r} is not a number")
    return number


def _parse(match: re.Match[str]) -> NetworkTag:
    text = match.group(0)
    name, *rest = (part.strip() for part in match.group("args").split(":"))
    positional = [value for value in rest if "=" not in value]
    named = dict(value.split("=", 1) for value in rest if "=" in value)
    te = _number(positional[0], text) if positional else 1.0
    unet = _number(positional[1], text) if len(positional) > 1 else te
    te = _number(named["te"], text) if "te" in named else te
    unet = _number(named["unet"], text) if "unet" in named else unet
    return NetworkTag(match.group("kind").lower(), name, te, unet, text)


def extract_tags(prompt: str) -> tuple[str, list[NetworkTag], list[str]]:
    """(prompt without tags, tags in order, problems). A malformed tag is removed and reported."""
    tags: list[NetworkTag] = []
    problems: list[str] = []

    def take(match: re.Match[str]) -> str:
        try:
            tags.append(_parse(match))
        except ValueError as exc:
            problems.append(f"Ignored {exc}")
        return ""

    return _TAG.sub(take, prompt), tags, problems


def lora_tag(name: str, weight: float = 1.0) -> str:
    """The tag the UI inserts for a LoRA."""
    return f"<lora:{name}:{weight:g}>"
