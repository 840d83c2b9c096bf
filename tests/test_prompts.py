"""The prompt language as A1111 reads it: emphasis weights and prompt editing schedules (pure Python)."""

from __future__ import annotations

import sys

import pytest

from webui.prompts import BREAK, parse_attention, prompt_schedule


def approx(pairs):
    return [(text, pytest.approx(weight)) for text, weight in pairs]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a (b:1.5) c", [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("a ((very)) b", [("a ", 1.0), ("very", 1.21), (" b", 1.0)]),
        ("a [less] b", [("a ", 1.0), ("less", 1 / 1.1), (" b", 1.0)]),
        ("a [[less]] b", [("a ", 1.0), ("less", 1 / 1.21), (" b", 1.0)]),
        ("(a (b:2) c:0.5)", [("a ", 0.5), ("b", 1.0), (" c", 0.5)]),
        ("(word:-0.5)", [("word", -0.5)]),
        ("( spaced : 1.2 )", [(" spaced ", 1.2)]),
        ("unbalanced (open", [("unbalanced ", 1.0), ("open", 1.1)]),
        ("unbalanced [open", [("unbalanced ", 1.0), ("open", 1 / 1.1)]),
        ("close) only]", [("close) only]", 1.0)]),
        ("weight:1.2) without bracket", [("weight:1.2) without bracket", 1.0)]),
        (r"\(literal\) \[too\]", [("(literal) [too]", 1.0)]),
        (r"back\\slash", [("back\\slash", 1.0)]),
        ("a: b", [("a: b", 1.0)]),
        ("(a:1.2)(b:1.2)", [("ab", 1.2)]),
        ("", [("", 1.0)]),
        ("(nested [mix])", [("nested ", 1.1), ("mix", 1.0)]),
    ],
)
def test_parse_attention(prompt, expected):
    assert parse_attention(prompt) == approx(expected)


def test_break_starts_a_new_chunk_marker():
    assert parse_attention("a BREAK b") == [("a", 1.0), BREAK, ("b", 1.0)]
    assert parse_attention("(x BREAK y)") == approx([("x", 1.1), BREAK, ("y", 1.1)])
    assert parse_attention("BREAKFAST break") == [("BREAKFAST break", 1.0)]  # only the upper-case word


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("a [b:c:5] d", 10, [(5, "a b d"), (10, "a c d")]),
        ("a [b:c:0.5] d", 10, [(5, "a b d"), (10, "a c d")]),
        ("a [b:0.25] c", 20, [(5, "a  c"), (20, "a b c")]),
        ("a [b::3] c", 10, [(3, "a b c"), (10, "a  c")]),
        ("[b:c:25]", 10, [(10, "b")]),  # past the last step: never switches
        ("[b:c:0]", 10, [(10, "c")]),
        ("[[a:b:2]:c:4]", 6, [(2, "a"), (4, "b"), (6, "c")]),
        ("[a:[b:c:6]:3]", 10, [(3, "a"), (6, "b"), (10, "c")]),
        ("[red|blue]", 4, [(1, "red"), (2, "blue"), (3, "red"), (4, "blue")]),
        ("x [a|b|] y", 3, [(1, "x a y"), (2, "x b y"), (3, "x  y")]),
        ("(a [b:c:2]:1.2)", 4, [(2, "(a b:1.2)"), (4, "(a c:1.2)")]),
        ("[a:b]", 5, [(5, "[a:b]")]),
        ("[a:b:c]", 5, [(5, "[a:b:c]")]),
        ("unclosed [a:b:2", 5, [(5, "unclosed [a:b:2")]),
        (r"\[a:b:2\]", 5, [(5, r"\[a:b:2\]")]),
        ("plain [less] (more)", 5, [(5, "plain [less] (more)")]),
    ],
)
def test_prompt_schedule(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_parser_does_not_import_torch():
    import subprocess

    code = "import sys, webui.prompts; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
