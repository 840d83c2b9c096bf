"""Prompt text -> text-encoder embeddings the way A1111 builds them.

- Emphasis weights (``webui.prompts.parse_attention``) multiply the token embeddings, after which the
  mean of the whole embedding is restored to its unweighted value (A1111's emphasis mode "Original"; "No norm"
  skips the restoration; "None" reads brackets and BREAK as plain text).
- ``AND`` (``webui.prompts.split_and``): every part is encoded (and scheduled) on its own, with its weight;
  ``webui.pipelines.composable`` combines their predictions.
- Prompts are cut into 75-token chunks (at the last comma when it is near, or at ``BREAK``), each
  encoded as 77 tokens with start and end tokens, and concatenated: nothing is truncated. The
  negative prompt is padded with empty chunks to the same length.
- Prompt editing and alternation (``webui.prompts.prompt_schedule``): every distinct prompt of the
  schedule is encoded once, and the step callback swaps the embeddings in at the right steps.
- SD 1.x / 2.x: one encoder; clip skip counts layers from the end (1 = last). SDXL: both encoders'
  penultimate layers side by side (clip skip moves further back), the pooled embedding from the
  second encoder's first chunk.
- Textual-inversion embeddings named in the prompt take as many token positions as they have vectors
  (never split across chunks); their vectors replace the token embeddings there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..extra_networks import extract_tags
from ..models.embeddings import word_pattern
from ..prompts import BREAK, parse_attention, prompt_schedule, split_and

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20  # a chunk that would split a phrase breaks after its last comma if within 20 tokens
# A1111's emphasis modes (its "emphasis" option): the first is the default.
EMPHASIS_MODES = ("Original", "No norm", "None")
DEFAULT_EMPHASIS = EMPHASIS_MODES[0]


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    # (position in the chunk, embedding name): the positions an embedding's vectors fill
    embeddings: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class EmbeddingWords:
    """The embeddings a job's prompts use: lower-case name -> number of token positions it fills."""

    sizes: dict[str, int]

    @property
    def pattern(self) -> re.Pattern[str] | None:
        return word_pattern(self.sizes)


def _split_embeddings(fragments: list[tuple[str, float]], words: EmbeddingWords | None) -> list[tuple[str, float, str]]:
    """Fragments cut around embedding names: (text, weight, "") or ("", weight, name) or BREAK."""
    pattern = words.pattern if words else None
    out: list[tuple[str, float, str]] = []
    for fragment, weight in fragments:
        if pattern is None or (fragment, weight) == BREAK:
            out.append((fragment, weight, ""))
            continue
        start = 0
        for match in pattern.finditer(fragment):
            out.append((fragment[start:match.start()], weight, ""))
            out.append(("", weight, match.group(1).lower()))
            start = match.end()
        out.append((fragment[start:], weight, ""))
    return out


def tokenize_chunks(tokenizer: Any, text: str, words: EmbeddingWords | None = None,
                    emphasis: str = DEFAULT_EMPHASIS) -> list[Chunk]:
    """``text`` as chunks of at most 75 (token, weight) pairs, without start/end tokens. Emphasis "None" takes
    the text as written (brackets and BREAK are words, as in A1111)."""
    fragments = [(text, 1.0)] if emphasis == "None" else parse_attention(text)
    pieces = _split_embeddings(fragments, words)
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal chunk, last_comma
        chunks.append(chunk)
        chunk = Chunk()
        last_comma = -1

    texts = [piece for piece, weight, name in pieces if not name and (piece, weight) != BREAK]
    encoded = iter(tokenizer(texts, add_special_tokens=False, truncation=False).input_ids if texts else [])
    for fragment, weight, name in pieces:
        if (fragment, weight) == BREAK:
            close()
            continue
        if name:
            size = min(words.sizes[name], CHUNK_TOKENS) if words else 0
            if len(chunk.tokens) + size > CHUNK_TOKENS:
                close()  # an embedding is never split across chunks
            chunk.embeddings.append((len(chunk.tokens), name))
            # Placeholders (start tokens: never mistaken for the end token that pools) whose embeddings are replaced.
            chunk.tokens.extend([tokenizer.bos_token_id] * size)
            chunk.weights.extend([weight] * size)
            continue
        for token in next(encoded):
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (len(chunk.tokens) == CHUNK_TOKENS and last_comma != -1
                  and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                cut = last_comma + 1
                moved = Chunk(chunk.tokens[cut:], chunk.weights[cut:],
                              [(at - cut, name) for at, name in chunk.embeddings if at >= cut])
                chunk.embeddings = [(at, name) for at, name in chunk.embeddings if at < cut]
                del chunk.tokens[cut:], chunk.weights[cut:]
                close()
                chunk = moved
            if len(chunk.tokens) == CHUNK_TOKENS:
                close()
            chunk.tokens.append(token)
            chunk.weights.append(weight)
    if chunk.tokens or not chunks:
        close()
    return chunks


def chunk_ids(tokenizer: Any, chunk: Chunk) -> tuple[list[int], list[float]]:
    """77 ids: start, the chunk, end, then padding (as the tokenizer itself pads); weights 1 outside the chunk."""
    ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
    weights = [1.0, *chunk.weights, 1.0]
    pad = CHUNK_TOKENS + 2 - len(ids)
    return ids + [tokenizer.pad_token_id] * pad, weights + [1.0] * pad


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens a prompt uses (the first prompt of its schedule, without emphasis syntax or LoRA tags), as the UI
    counts them."""
    first = prompt_schedule(extract_tags(text)[0], 1)[0][1]  # <lora:...> tags are never encoded
    return sum(len(chunk.tokens) for chunk in tokenize_chunks(tokenizer, first))


def count_part_tokens(tokenizer: Any, text: str) -> list[int]:
    """Tokens each ``AND`` part of a prompt uses (one number for a prompt without ``AND``)."""
    return [count_tokens(tokenizer, part) for part, _ in split_and(extract_tags(text)[0])]


def _final_norm(encoder: Any) -> Any:
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (1, 77 * chunks, dim)
    pooled: torch.Tensor | None = None  # SDXL: (1, dim2)


class PromptEncoder:
    """Encodes prompts for one model and one job; caches by text so each distinct prompt is encoded once."""

    def __init__(self, components: dict[str, Any], is_sdxl: bool, clip_skip: int, device: torch.device,
                 embeddings: dict[str, list[torch.Tensor]] | None = None, emphasis: str = DEFAULT_EMPHASIS) -> None:
        """`embeddings`: lower-case name -> its vectors for each text encoder, in encoder order; `emphasis`: one of
        EMPHASIS_MODES."""
        self.components = components
        self.emphasis = emphasis
        self.is_sdxl = is_sdxl
        self.clip_skip = max(1, int(clip_skip))
        self.device = device
        self.embeddings = embeddings or {}
        self.words = EmbeddingWords({name: v[0].shape[0] for name, v in self.embeddings.items()})
        self._cache: dict[tuple[str, int], Conditioning] = {}

    def encoders(self) -> list[tuple[Any, Any]]:
        pairs = [(self.components["tokenizer"], self.components["text_encoder"])]
        if self.is_sdxl:
            pairs.append((self.components["tokenizer_2"], self.components["text_encoder_2"]))
        return pairs

    def chunk_count(self, text: str) -> int:
        return len(tokenize_chunks(self.components["tokenizer"], text, self.words, self.emphasis))

    @torch.no_grad()
    def encode(self, text: str, min_chunks: int = 1) -> Conditioning:
        key = (text, min_chunks)
        if key not in self._cache:
            self._cache[key] = self._encode(text, min_chunks)
        return self._cache[key]

    def _encode(self, text: str, min_chunks: int) -> Conditioning:
        per_encoder: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        pooled = None
        for index, (tokenizer, encoder) in enumerate(self.encoders()):
            chunks = tokenize_chunks(tokenizer, text, self.words, self.emphasis)
            chunks += [Chunk() for _ in range(min_chunks - len(chunks))]
            rows = [chunk_ids(tokenizer, chunk) for chunk in chunks]
            # (chunk, position, vectors): 1 + position because the start token comes first
            vectors = [(number, 1 + at, self.embeddings[name][index])
                       for number, chunk in enumerate(chunks) for at, name in chunk.embeddings]
            hidden, chunk_pooled = self._run(encoder, [ids for ids, _ in rows], vectors)  # all chunks in one call
            per_encoder.append([
                (hidden[number:number + 1], torch.tensor(weights, dtype=hidden.dtype, device=hidden.device))
                for number, (_, weights) in enumerate(rows)])
            if index == 1 and chunk_pooled is not None:
                pooled = chunk_pooled[:1]  # SDXL's pooled embedding comes from the first chunk
        # Weights and mean restoration per chunk over all encoders' features together (as A1111 does).
        chunks_out = []
        for number in range(len(per_encoder[0])):
            z = torch.cat([parts[number][0] for parts in per_encoder], dim=-1)
            weights = per_encoder[0][number][1]
            before = z.float().mean()
            z = z * weights.reshape(1, -1, 1)
            after = z.float().mean()
            if self.emphasis == DEFAULT_EMPHASIS and after.abs() > 0:  # "No norm" keeps the weighted scale
                z = z * (before / after).to(z.dtype)
            chunks_out.append(z)
        return Conditioning(torch.cat(chunks_out, dim=1), pooled)

    def _run(self, encoder: Any, ids: list[list[int]], vectors: list[tuple[int, int, torch.Tensor]],
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = next(encoder.parameters()).device
        if device.type == "meta":  # sequential offload: the weights arrive with each layer's call
            device = self.device
        hook = None
        if vectors:
            def replace(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
                output = output.clone()
                for row, at, values in vectors:
                    values = values[: output.shape[1] - at]
                    output[row, at:at + values.shape[0]] = values.to(output.device, output.dtype)
                return output

            hook = encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            out = encoder(torch.tensor(ids, device=device), output_hidden_states=True)
        finally:
            if hook is not None:
                hook.remove()
        if self.is_sdxl:
            # SDXL conditions on the penultimate layer, without the final norm; clip skip steps further back.
            hidden = out.hidden_states[-(self.clip_skip + 1)]
            pooled = out[0] if getattr(out, "text_embeds", None) is not None else None
            return hidden.to(self.device), None if pooled is None else pooled.to(self.device)
        if self.clip_skip == 1:
            return out.last_hidden_state.to(self.device), None
        hidden = _final_norm(encoder)(out.hidden_states[-self.clip_skip])
        return hidden.to(self.device), None


Schedule = list[tuple[int, Conditioning]]


@dataclass
class ScheduledConditioning:
    """Positive and negative embeddings per step range, for one job. ``parts``: the positive prompt's ``AND``
    parts, (weight, schedule) each; ``positive`` is the first part's schedule."""

    positive: Schedule
    negative: Schedule
    parts: list[tuple[float, Schedule]] = field(default_factory=list)

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        """The (positive, negative) conditioning in force at 1-based ``step``."""
        return _pick(self.positive, step), _pick(self.negative, step)

    def parts_at(self, step: int) -> list[tuple[float, Conditioning]]:
        """Each ``AND`` part's (weight, conditioning) at 1-based ``step``."""
        return [(weight, _pick(schedule, step)) for weight, schedule in self.parts]

    @property
    def composed(self) -> bool:
        """Whether predictions must be combined: several parts, or one part with a weight other than 1."""
        return len(self.parts) > 1 or any(weight != 1.0 for weight, _ in self.parts)

    @property
    def changes(self) -> bool:
        return len(self.positive) > 1 or len(self.negative) > 1 or any(len(s) > 1 for _, s in self.parts)


def _pick(schedule: list[tuple[int, Conditioning]], step: int) -> Conditioning:
    for until, conditioning in schedule:
        if step <= until:
            return conditioning
    return schedule[-1][1]


def build_conditioning(encoder: PromptEncoder, prompt: str, negative: str, steps: int,
                       zero_empty_negative: bool = False) -> ScheduledConditioning:
    """Encode the schedules of both prompts (each ``AND`` part of the positive one on its own, as A1111 does: the
    negative prompt is never split); all get as many chunks as the longest."""
    part_schedules = [(weight, prompt_schedule(text, steps)) for text, weight in split_and(prompt)]
    negative_schedule = prompt_schedule(negative, steps)
    every = [text for _, schedule in part_schedules for _, text in schedule] + [t for _, t in negative_schedule]
    chunks = max(encoder.chunk_count(text) for text in every)
    parts = [(weight, [(until, encoder.encode(text, chunks)) for until, text in schedule])
             for weight, schedule in part_schedules]
    positive = parts[0][1]
    negatives: list[tuple[int, Conditioning]] = []
    for until, text in negative_schedule:
        conditioning = encoder.encode(text, chunks)
        if zero_empty_negative and not text.strip():
            # SDXL base models are trained to see zeros, not an encoded empty string, for "no negative prompt".
            pooled = None if conditioning.pooled is None else torch.zeros_like(conditioning.pooled)
            conditioning = Conditioning(torch.zeros_like(conditioning.embeds), pooled)
        negatives.append((until, conditioning))
    return ScheduledConditioning(positive, negatives, parts)
