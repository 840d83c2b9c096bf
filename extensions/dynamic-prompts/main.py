"""Dynamic prompts: ``{a|b|c}`` in the prompt or negative prompt becomes one of the options, chosen from
the job's seed (so the same seed picks the same words). Nested braces work: ``{a {big|small} dog|a cat}``.

Uses the extension API's ``before_generate`` hook and a section in the generation tabs; the infotext
records the prompt as it was expanded, so sending a picture back reproduces it.
"""

from __future__ import annotations

import random
import re

INNERMOST = re.compile(r"\{([^{}]*)\}")


def expand(text: str, rng: random.Random) -> str:
    """Replace brace groups innermost-first; a group without '|' is left as it is."""
    while True:
        changed = False

        def pick(match: re.Match[str]) -> str:
            nonlocal changed
            options = match.group(1).split("|")
            if len(options) < 2:
                return "\0" + match.group(1) + "\1"  # keep literal braces, protected from the next pass
            changed = True
            return rng.choice(options)

        text = INNERMOST.sub(pick, text)
        if not changed:
            return text.replace("\0", "{").replace("\1", "}")


def setup(api):
    def section(mode: str) -> dict:
        import gradio as gr

        enabled = gr.Checkbox(label="Expand {a|b|c} choices in the prompts", value=False,
                              elem_id=f"{mode}-dynamic-prompts-enabled")
        gr.Markdown("Each job picks one option per group from its seed; the infotext keeps the expanded prompt.")
        return {"enabled": enabled}

    api.add_section("Dynamic prompts", section)

    @api.before_generate
    def expand_prompts(request):
        if not request.extra.get(api.id, {}).get("enabled"):
            return request
        # The choice follows the seed: a random seed is drawn here, so the infotext's seed repeats the choice too.
        seed = random.randrange(4294967294) if request.seed == -1 else request.seed
        rng = random.Random(seed)
        return request.replace(seed=seed, prompt=expand(request.prompt, rng),
                               negative_prompt=expand(request.negative_prompt, rng))
