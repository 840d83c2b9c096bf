"""File hashes as A1111 computes them, and the cache that keeps them across runs."""

from __future__ import annotations

import hashlib
import logging

import torch
from safetensors.torch import save_file

from webui.models.hashing import HashCache, sha256_file
from webui.models.lora import lora_hash


def test_checkpoint_hash_covers_the_whole_file(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x" * (9 * 2**20 + 5))  # more than one read chunk
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_lora_hash_skips_the_safetensors_header(tmp_path):
    tensors = {"lora_unet_a.lora_down.weight": torch.ones(2, 3)}
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(first), metadata={"ss_output_name": "a"})
    save_file(tensors, str(second), metadata={"ss_output_name": "renamed, with a longer header"})
    data = first.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert lora_hash(first) == hashlib.sha256(data[header:]).hexdigest()
    assert lora_hash(first) == lora_hash(second), "metadata edits do not change a LoRA's hash"
    other = tmp_path / "c.pt"
    other.write_bytes(data)
    assert lora_hash(other) == hashlib.sha256(data).hexdigest(), "other formats: the whole file"


def test_hashes_persist_and_a_changed_file_is_hashed_again(tmp_path):
    path, cache_file = tmp_path / "m.safetensors", tmp_path / "cache" / "hashes.json"
    path.write_bytes(b"one")
    assert HashCache(cache_file).sha256("m", path) == hashlib.sha256(b"one").hexdigest()
    assert HashCache(cache_file).cached("m", path) == hashlib.sha256(b"one").hexdigest(), "read back by a new run"
    path.write_bytes(b"other")
    assert HashCache(cache_file).sha256("m", path) == hashlib.sha256(b"other").hexdigest()
    assert [p.name for p in cache_file.parent.iterdir()] == ["hashes.json"], "no temp file left"


def test_a_cache_that_cannot_be_saved_only_warns(tmp_path, caplog):
    path, cache_file = tmp_path / "m.safetensors", tmp_path / "hashes.json"
    path.write_bytes(b"one")
    cache_file.mkdir()  # a folder where the file should go: replacing it fails
    with caplog.at_level(logging.WARNING, logger="webui.models.hashing"):
        assert HashCache(cache_file).sha256("m", path) == hashlib.sha256(b"one").hexdigest()
    assert "Could not save hash cache" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hashes.json", "m.safetensors"], "no temp file left"


def test_facts_persist_beside_the_hash_and_are_forgotten_when_the_file_changes(tmp_path):
    path, cache_file = tmp_path / "m.safetensors", tmp_path / "hashes.json"
    path.write_bytes(b"one")
    HashCache(cache_file).remember("m", path, "prediction_type", "epsilon")
    assert HashCache(cache_file).cached("m", path) is None, "a fact alone is no hash"
    HashCache(cache_file).sha256("m", path)
    assert HashCache(cache_file).recall("m", path, "prediction_type") == "epsilon", "hashing kept the fact"
    path.write_bytes(b"other")
    assert HashCache(cache_file).recall("m", path, "prediction_type") is None
