"""Derive the CLIP BPE tokenizer files (vocab.json, merges.txt) from OpenCLIP's vocabulary.

The open-clip-torch wheel on PyPI ships ``open_clip/bpe_simple_vocab_16e6.txt.gz``, the same
BPE table OpenAI's CLIP uses. Converting it here lets Atelier ship the tokenizer inside the
package instead of fetching it from the Hugging Face hub at first start.

Usage:
    python scripts/derive_clip_tokenizer.py PATH [--out DIR]

PATH is either the ``.txt.gz`` file or an open-clip-torch ``.whl`` that contains it.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import zipfile
from pathlib import Path

GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges so that bytes + merges + 2 specials = 49408.
N_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "webui" / "models" / "configs" / "tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (insertion order matters for ids)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def read_bpe_text(path: Path) -> str:
    """Return the decompressed BPE text from a .txt.gz file or from a wheel holding one."""
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            names = [n for n in wheel.namelist() if n.endswith("/" + GZ_NAME) or n == GZ_NAME]
            if not names:
                raise FileNotFoundError(f"{GZ_NAME} not found inside {path}")
            raw = wheel.read(names[0])
        return gzip.GzipFile(fileobj=io.BytesIO(raw)).read().decode("utf-8")
    with gzip.open(path, "rb") as f:
        return f.read().decode("utf-8")


def derive(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """Build CLIP's token -> id map and the merge list, in the order CLIP assigns ids."""
    lines = bpe_text.split("\n")
    # Line 0 is a version header; keep exactly N_MERGES merges after it.
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES:
        raise ValueError(f"expected {N_MERGES} merges, found {len(merges)}")
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += list(SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in derived vocabulary")
    return vocab, merges


def write(vocab: dict[str, int], merges: list[str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    # One-line, non-ASCII-escaped JSON with default separators: the hub's CLIP vocab.json layout.
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help=f"{GZ_NAME} or an open-clip-torch wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    vocab, merges = derive(read_bpe_text(args.source))
    write(vocab, merges, args.out)
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
