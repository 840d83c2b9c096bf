"""Diffusers component configs and the CLIP tokenizer, shipped inside the package.

The offline checkpoint loader builds UNet, VAE, text encoders and scheduler from the JSON in
``<arch>/`` (values of the official releases) and never asks the Hugging Face hub for them.
All architectures share one CLIP BPE vocabulary in ``tokenizer/``; each ``<arch>/tokenizer*/``
folder only records which pad token that encoder uses.

torch and transformers are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

__all__ = [
    "ARCHITECTURES",
    "COMPONENTS",
    "CONFIG_ROOT",
    "TOKENIZER_DIR",
    "config_dir",
    "load_clip_tokenizer",
    "load_component_config",
    "pipeline_class_name",
    "tokenizer_pad_tokens",
]

CONFIG_ROOT = Path(__file__).resolve().parent
TOKENIZER_DIR = CONFIG_ROOT / "tokenizer"

ARCHITECTURES: tuple[str, ...] = (
    "sd1",
    "sd1-inpaint",
    "sd2",
    "sd2-v",
    "sd2-inpaint",
    "sdxl",
    "sdxl-inpaint",
)
COMPONENTS: tuple[str, ...] = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")

# File holding each component's config inside its folder (diffusers/transformers naming).
_CONFIG_FILES = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "text_encoder_2": "config.json",
    "scheduler": "scheduler_config.json",
}
_TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
_TOKENIZER_MARKER = "shared_tokenizer.json"

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|startoftext|>"
MODEL_MAX_LENGTH = 77


def config_dir(arch: str) -> Path:
    """Folder holding the configs of architecture ``arch`` (one of ``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return CONFIG_ROOT / arch


@functools.cache
def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def load_component_config(arch: str, component: str) -> dict[str, Any]:
    """Config dict of one component; a fresh copy the caller may change freely."""
    if component not in _CONFIG_FILES:
        raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    path = config_dir(arch) / component / _CONFIG_FILES[component]
    if not path.is_file():
        raise ValueError(f"architecture {arch!r} has no {component}")
    return copy.deepcopy(_read_json(path))


def pipeline_class_name(arch: str) -> str:
    """Name of the diffusers pipeline class for ``arch`` (from its model_index.json)."""
    return _read_json(config_dir(arch) / "model_index.json")["_class_name"]


def tokenizer_pad_tokens(arch: str) -> list[str]:
    """Pad token of each text encoder's tokenizer, in encoder order."""
    folder = config_dir(arch)
    return [
        _read_json(folder / name / _TOKENIZER_MARKER)["pad_token"]
        for name in _TOKENIZER_FOLDERS
        if (folder / name / _TOKENIZER_MARKER).is_file()
    ]


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Parse the shared BPE files once per process (≈70 ms); later tokenizers reuse the result."""
    vocab = _read_json(TOKENIZER_DIR / "vocab.json")
    lines = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    pairs = (line.split(" ") for line in lines if line and not line.startswith("#version"))
    return vocab, tuple((first, second) for first, second in pairs)


def load_clip_tokenizer(pad_token: str = EOS_TOKEN, *, exclamation_as_pad: bool = False) -> CLIPTokenizer:
    """A new CLIP tokenizer (max length 77) built from the shipped vocabulary, without the hub.

    SD 1.x and SDXL's first encoder pad with ``<|endoftext|>`` (id 49407); SD 2.x and SDXL's
    second encoder pad with ``!`` (id 0). Each call returns its own instance (≈60 ms), so
    callers may add textual-inversion tokens without affecting anyone else.

    By default a ``!`` typed in the prompt is tokenized as ordinary text, as OpenCLIP did when
    SD 2.x/SDXL were trained. The hub's ``!``-padded tokenizers instead register ``!`` as a
    special token, which splits ``!!`` into pad ids (diffusers issue #4153); pass
    ``exclamation_as_pad=True`` to reproduce that exactly.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the CLIP vocabulary")
    special_pad = exclamation_as_pad or pad_token == EOS_TOKEN
    tokenizer = CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # type: ignore[arg-type]  # the tokenizers backend takes (a, b) pairs, not "a b"
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=pad_token if special_pad else EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
    if not special_pad:
        # Setting the id afterwards pads with it without adding it to the split-on tokens.
        tokenizer.pad_token_id = vocab[pad_token]
    return tokenizer
