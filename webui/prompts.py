"""A1111's prompt language: emphasis weights, BREAK, prompt editing and alternation.

Pure Python (no torch), so other tools and the tests can call it directly:

- ``parse_attention("a (b:1.5) c")`` -> ``[("a ", 1.0), ("b", 1.5), (" c", 1.0)]``
- ``prompt_schedule("a [b:c:5] d", 10)`` -> ``[(5, "a b d"), (10, "a c d")]``

Emphasis: ``(x)`` ×1.1, ``[x]`` ÷1.1, ``(x:w)`` ×w, nesting multiplies, ``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal
brackets. A bracket left open applies to the rest of the prompt; a closing one with no opener is text.
``BREAK`` (upper case, a word on its own) comes out as the marker ``("BREAK", -1.0)``, inside brackets too.

Composition (A1111's composable diffusion): ``split_and("a red circle :1.2 AND a blue background :0.8")`` ->
``[("a red circle", 1.2), ("a blue background", 0.8)]``; each part is conditioned separately and its CFG delta
weighted. A trailing ``:w`` weights a part even without ``AND``, as in A1111.

Editing: ``[from:to:when]``, ``[to:when]``, ``[from::when]``; ``when`` below 1 is a fraction of the steps,
otherwise a step number. ``[a|b|c]`` alternates every step. Both nest. Round and square brackets
that are not editing keep their text, so the scheduled prompts still carry their emphasis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["BREAK", "parse_attention", "prompt_schedule", "split_and"]

BREAK = ("BREAK", -1.0)
ROUND = 1.1
SQUARE = 1 / 1.1

_ATTENTION_TOKEN = re.compile(
    r"""
      (?P<escape>\\[()\[\]\\])          # \( \) \[ \] \\ : the character itself
    | (?P<open>[(\[])
    | (?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))   # ":1.3)" closes a round bracket with a weight
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|[\\:])
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
# A1111's prompt_parser.re_AND / re_weight: parts split at the word AND, each with an optional trailing ":weight".
_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The prompt's ``AND`` parts with their weights (1 where none is written), in order."""
    parts: list[tuple[str, float]] = []
    for part in _AND.split(prompt):
        match = _PART_WEIGHT.search(part)
        text, weight = match.groups() if match is not None else (part, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def parse_attention(text: str) -> list[tuple[str, float]]:
    """The prompt split into (fragment, weight), adjacent fragments of equal weight merged."""
    pieces: list[list] = []  # [text, weight], mutable while brackets close
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if len(piece) == 2:  # BREAK markers (3 items) keep their weight
                piece[1] *= factor

    def add_text(value: str) -> None:
        for index, part in enumerate(_BREAK_WORD.split(value)):
            if index:
                pieces.append([*BREAK, "marker"])
            pieces.append([part, 1.0])

    for match in _ATTENTION_TOKEN.finditer(text):
        token = match.group(0)
        if match.group("escape"):
            pieces.append([token[1], 1.0])
        elif match.group("open"):
            (round_open if token == "(" else square_open).append(len(pieces))
        elif match.group("weight"):
            weight = _float(match.group("number"))
            if round_open and weight is not None:
                scale(round_open.pop(), weight)
            else:
                add_text(token)
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            add_text(token)
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)

    merged: list[tuple[str, float]] = []
    for value, weight, *marker in pieces:
        if marker:
            merged.append(BREAK)
        elif merged and merged[-1][1] == weight and merged[-1] is not BREAK:
            merged[-1] = (merged[-1][0] + value, weight)
        else:
            merged.append((value, weight))
    return merged or [("", 1.0)]


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------- prompt editing


@dataclass
class _Edit:
    before: list
    after: list
    when: float  # as written; resolved against the step count later
    step: int = 0


@dataclass
class _Alternate:
    options: list[list] = field(default_factory=list)


_NUMBER = re.compile(r"\s*(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


class _Parser:
    """Recursive descent over the prompt. Nodes are str, _Edit or _Alternate; sequences are lists."""

    def __init__(self, text: str) -> None:
        self.text = text

    def sequence(self, pos: int, stops: str) -> tuple[list, int]:
        nodes: list = []
        buffer = []
        text = self.text
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                buffer.append(text[pos:pos + 2])
                pos += 2
                continue
            if char in stops:
                break
            if char in "[(":
                node, end = self.bracket(pos) if char == "[" else self.round(pos)
                if node is not None:
                    if buffer:
                        nodes.append("".join(buffer))
                        buffer = []
                    nodes.extend(node if isinstance(node, list) else [node])
                    pos = end
                    continue
            buffer.append(char)  # text, or a bracket that never closes: kept as typed
            pos += 1
        if buffer:
            nodes.append("".join(buffer))
        return nodes, pos

    def round(self, pos: int) -> tuple[list | None, int]:
        """``( ... )`` keeps its brackets (and any ``:weight``); editing inside it still works."""
        inner, end = self.sequence(pos + 1, ")")
        if end >= len(self.text):
            return None, pos
        return ["(", *inner, ")"], end + 1

    def bracket(self, pos: int) -> tuple[object | None, int]:
        parts: list[list] = []
        separators: list[str] = []
        cursor = pos + 1
        while True:
            part, cursor = self.sequence(cursor, ":|]")
            parts.append(part)
            if cursor >= len(self.text):
                return None, pos
            separator = self.text[cursor]
            cursor += 1
            if separator == "]":
                break
            separators.append(separator)
        if separators and all(s == "|" for s in separators):
            return _Alternate(parts), cursor
        if separators and all(s == ":" for s in separators) and len(parts) in (2, 3):
            when_text = "".join(p for p in parts[-1] if isinstance(p, str)) if len(parts[-1]) <= 1 else None
            if when_text is not None and _NUMBER.match(when_text):
                before, after = (parts[0], parts[1]) if len(parts) == 3 else ([], parts[0])
                return _Edit(before, after, float(when_text)), cursor
        if not separators:
            return ["[", *parts[0], "]"], cursor  # plain de-emphasis
        # Anything else ("[a:b]", "[a|b:c]"): the text as typed, with editing inside it resolved.
        flat: list = ["["]
        for part, separator in zip(parts, [*separators, "]"], strict=True):
            flat.extend(part)
            flat.append(separator)
        return flat, cursor


def _walk(nodes: list, visit) -> None:
    for node in nodes:
        visit(node)
        if isinstance(node, _Edit):
            _walk(node.before, visit)
            _walk(node.after, visit)
        elif isinstance(node, _Alternate):
            for option in node.options:
                _walk(option, visit)


def _render(nodes: list, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            out.append(_render(node.before if step <= node.step else node.after, step))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """The prompt in force up to and including each listed step, for a run of ``steps`` steps."""
    steps = max(1, int(steps))
    nodes, _ = _Parser(prompt).sequence(0, "")
    boundaries = {steps}

    def collect(node: object) -> None:
        if isinstance(node, _Edit):
            when = node.when * steps if node.when < 1 else node.when
            node.step = min(steps, int(when))
            if node.step >= 1:
                boundaries.add(node.step)
        elif isinstance(node, _Alternate):
            boundaries.update(range(1, steps + 1))

    _walk(nodes, collect)
    return [(step, _render(nodes, step)) for step in sorted(boundaries)]
