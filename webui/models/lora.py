"""LoRA files: find them in models/Lora, read the formats model sites distribute, and patch a loaded
model's weights in place with an exact way back.

Formats read:
- kohya / A1111: ``lora_unet_<module>.<weight kind>``, text encoders as ``lora_te_`` (SD 1.x/2.x) or
  ``lora_te1_`` / ``lora_te2_`` (SDXL). UNet module names are diffusers' (SD 1.x) or the original
  layout's (``input_blocks_4_1_...``, SDXL); both are understood. The weight kinds are LoRA's
  (``lora_down.weight`` / ``lora_up.weight`` / ``alpha``) and LyCORIS' (LoCon, LoHa, LoKr, full
  differences, norm layers, DoRA, IA3, GLoRA, OFT / BOFT): ``lycoris.py`` turns each layer's tensors into
  a weight change.
- diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (or ``.lora.down`` / ``.lora.up``),
  ``text_encoder.`` / ``text_encoder_2.`` likewise; PEFT's DoRA adds ``<module>.lora_magnitude_vector``
  (``.weight`` in newer PEFT and in diffusers' conversions): one magnitude per output row. Their scale is
  lora_alpha / r from the PEFT config diffusers writes in the ``lora_adapter_metadata`` entry of a
  safetensors file's metadata (``unet.lora_alpha``, ``unet.alpha_pattern``, ``unet.use_rslora``, ...), a
  ``<module>.alpha`` tensor, or 1.

Patching: each target layer's weight (and, for full and norm layers, its bias) gets the layer's change
times the tag's weight. Before a tensor is first touched its original values are copied aside; removing
LoRAs copies them back, so a model that had LoRAs is bit-identical to one that never had them. The base
checkpoint is never reloaded.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .hashing import HashCache, sha256_file
from .ldm_layout import unet_to_ldm
from .loader import CheckpointLoadError, read_checkpoint_file
from .lycoris import LayerWeights

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".ckpt")
LORA_HASH_LEN = 12
UNET, TE1, TE2 = "unet", "text_encoder", "text_encoder_2"
_KOHYA_PREFIXES = (("lora_unet_", UNET), ("lora_te1_", TE1), ("lora_te2_", TE2), ("lora_te_", TE1))
_PEFT_PREFIXES = (("unet.", UNET), ("text_encoder_2.", TE2), ("text_encoder.", TE1))
# (down suffix, up suffix) pairs of the diffusers / PEFT spellings
_PEFT_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
                  (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"))
# diffusers' old attention-processor names for the projections they wrap
_PROCESSOR_NAMES = {"processor.to_q_lora": "to_q", "processor.to_k_lora": "to_k", "processor.to_v_lora": "to_v",
                    "processor.to_out_lora": "to_out.0"}


def lora_hash(path: Path) -> str:
    """A1111's LoRA hash: SHA-256 of a safetensors file's bytes after its header (metadata edits do not
    change it); of the whole file for other formats."""
    offset = 0
    if path.suffix.lower() == ".safetensors":
        with Path(path).open("rb") as fh:
            prefix = fh.read(8)
        if len(prefix) == 8:
            offset = 8 + struct.unpack("<Q", prefix)[0]
    return sha256_file(path, offset)


def module_key(name: str) -> str:
    """Module paths as LoRA files spell them: dots become underscores; a text encoder's ``text_model``
    wrapper is dropped (transformers versions differ on whether it exists)."""
    key = name.replace(".", "_")
    return key.removeprefix("text_model_")


@dataclass(frozen=True)
class LoraLayer:
    component: str  # unet | text_encoder | text_encoder_2
    key: str  # module_key() of the target layer
    weights: LayerWeights  # the file's tensors for it and what change they make


FileIdentity = tuple[str, int, int, int]  # resolved path, size, mtime (ns), inode


def file_identity(path: Path) -> FileIdentity:
    """Which file version this is: a file saved again (or replaced by a copy) differs in one of these."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino


@dataclass(frozen=True)
class LoraNetwork:
    name: str
    path: Path
    layers: list[LoraLayer]
    identity: FileIdentity  # the file version the layers were read from
    ignored_keys: int = 0  # keys of kinds we do not apply (T-LoRA, ...)


def parse_lora(name: str, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
               identity: FileIdentity) -> LoraNetwork:
    layers: dict[tuple[str, str], LoraLayer] = {}
    used: set[str] = set()
    configs = _peft_configs(metadata)
    for (component, module), named in _kohya_groups(tensors).items():
        weights = LayerWeights.from_tensors({kind: tensors[key] for kind, key in named.items()})
        if weights is not None:
            layers[(component, module)] = LoraLayer(component, module, weights)
            used.update(named[kind] for kind in weights.keys)
    for key, tensor in tensors.items():
        found = _peft_layer(key, tensors)
        if found is None:
            continue
        component, path_in_model, up_key, stem = found
        module = module_key(path_in_model)
        peft = {"lora_down.weight": tensor, "lora_up.weight": tensors[up_key]}
        scale = _peft_scale(configs.get(component), path_in_model, tensor.shape[0])
        if scale is not None:
            peft["scale"] = torch.tensor(scale)
        extras = {"alpha": f"{stem}.alpha", "dora_scale": f"{stem}.lora_magnitude_vector.weight"}
        if extras["dora_scale"] not in tensors:
            extras["dora_scale"] = f"{stem}.lora_magnitude_vector"  # PEFT before its DoRA layers had modules
        for kind, extra_key in extras.items():
            if extra_key in tensors:
                peft[kind] = tensors[extra_key]
                used.add(extra_key)
        if "dora_scale" in peft:
            # PEFT keeps one magnitude per output row ((out,), or (1, out, 1, 1) for a conv); as an (out, 1)
            # column it cannot be read per input column, as a flat kohya dora_scale of a square layer would be.
            peft["dora_scale"] = peft["dora_scale"].reshape(-1, 1)
        layers[(component, module)] = LoraLayer(component, module, LayerWeights("lora", peft))
        used.update({key, up_key})
    if not layers:
        raise CheckpointLoadError(f"{path.name}: no LoRA layers found (not a LoRA, or a kind we cannot use "
                                  "such as T-LoRA)")
    return LoraNetwork(name, path, list(layers.values()), identity, len(set(tensors) - used))


def _kohya_groups(tensors: dict[str, torch.Tensor]) -> dict[tuple[str, str], dict[str, str]]:
    """kohya keys by target layer: (component, module key) -> {weight kind: file key}. A kind is what
    follows the layer's stem (``lora_unet_<module>.hada_w1_a`` -> ``hada_w1_a``)."""
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for key in tensors:
        stem, dot, kind = key.partition(".")
        if not dot:
            continue
        for prefix, component in _KOHYA_PREFIXES:
            if stem.startswith(prefix):
                groups.setdefault((component, module_key(stem.removeprefix(prefix))), {})[kind] = key
                break
    return groups


def _peft_layer(key: str, tensors: dict[str, torch.Tensor]) -> tuple[str, str, str, str] | None:
    """(component, module path in it, up key, the file's stem for the layer) when `key` is a PEFT down weight."""
    for down_suffix, up_suffix in _PEFT_SUFFIXES:
        if not key.endswith(down_suffix):
            continue
        stem = key.removesuffix(down_suffix)
        up_key = stem + up_suffix
        if up_key not in tensors:
            return None
        component, module = UNET, stem  # files without a prefix hold UNet layers only
        for prefix, name in _PEFT_PREFIXES:
            if stem.startswith(prefix):
                component, module = name, stem.removeprefix(prefix)
                break
        for old, new in _PROCESSOR_NAMES.items():
            module = module.replace(old, new)
        return component, module, up_key, stem
    return None


def _peft_configs(metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The PEFT LoraConfig per component that diffusers saves as JSON in the file's metadata (keys prefixed
    ``unet.`` / ``text_encoder.`` / ``text_encoder_2.``; unprefixed for one model's adapter, the UNet's)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except ValueError:
        log.warning("LoRA metadata: lora_adapter_metadata is not JSON; its alphas are not used")
        return {}
    if not isinstance(packed, dict):
        return {}
    configs: dict[str, dict[str, Any]] = {}
    for key, value in packed.items():
        prefix, dot, field_name = str(key).partition(".")
        if dot and prefix in (UNET, TE1, TE2):
            configs.setdefault(prefix, {})[field_name] = value
        else:
            configs.setdefault("", {})[str(key)] = value
    if "" in configs:
        configs.setdefault(UNET, configs.pop(""))
    return configs


def _peft_scale(config: dict[str, Any] | None, module: str, rank: int) -> float | None:
    """PEFT's lora_alpha / r (or / √r with rsLoRA) for one module; None where the config says nothing."""
    if not config or rank <= 0:
        return None
    alpha = config.get("lora_alpha")
    patterns = config.get("alpha_pattern")
    if isinstance(patterns, dict):
        # PEFT matches these as regular expressions on the module's path; diffusers writes module paths, taken
        # here as literal dotted suffixes (a file's own regex is never compiled).
        for pattern, value in patterns.items():
            if module == pattern or module.endswith(f".{pattern}"):
                alpha = value
                break
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        return None
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") is True else rank)


PatchableLayer = torch.nn.Linear | torch.nn.Conv2d | torch.nn.LayerNorm | torch.nn.GroupNorm
_PATCHABLE = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)


def target_layers(components: dict[str, Any]) -> dict[tuple[str, str], PatchableLayer]:
    """Every layer a LoRA can patch (Linear / Conv2d, and the norm layers LyCORIS' norm files change), under
    each name a LoRA file may use for it."""
    found: dict[tuple[str, str], PatchableLayer] = {}
    for component in (UNET, TE1, TE2):
        model = components.get(component)
        if model is None:
            continue
        for name, module in model.named_modules():
            if isinstance(module, _PATCHABLE) and module.weight is not None:
                found[(component, module_key(name))] = module
    unet = components.get(UNET)
    if unet is not None:
        # kohya names SDXL's UNet layers after the original layout (input_blocks_4_1_...).
        keys = {key: key for key in unet.state_dict()}
        for original, diffusers_key in unet_to_ldm(keys).items():
            module = found.get((UNET, module_key(str(diffusers_key).rpartition(".")[0])))
            if module is not None:
                found.setdefault((UNET, module_key(original.rpartition(".")[0])), module)
    return found


@dataclass(frozen=True)
class LoraUse:
    """One LoRA as a job uses it."""

    network: LoraNetwork
    te_weight: float
    unet_weight: float


@dataclass
class LoraPatcher:
    """The LoRA state of one loaded model: which set is applied and the original values it replaced."""

    targets: dict[tuple[str, str], PatchableLayer]
    # (file version, te weight, unet weight) per LoRA carried. By file, not by object: a parsed network the
    # library has dropped can have its address reused by another one.
    applied: tuple[tuple[FileIdentity, float, float], ...] = ()
    _originals: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def apply(self, uses: list[LoraUse]) -> list[str]:
        """Make the model carry exactly `uses` (an empty list: the base weights). Returns warnings."""
        wanted = tuple((u.network.identity, u.te_weight, u.unet_weight) for u in uses)
        if wanted == self.applied:
            return []
        self.restore()
        warnings: list[str] = []
        with torch.no_grad():
            for use in uses:
                warning = self._apply_one(use)
                if warning:
                    warnings.append(warning)
        self.applied = wanted
        return warnings

    def _apply_one(self, use: LoraUse) -> str | None:
        layers = use.network.layers
        # Shapes are checked before anything is computed, so only one layer's change is in memory at a time.
        matches = [(module, layer) for layer in layers
                   if (module := self.targets.get((layer.component, layer.key))) is not None
                   and layer.weights.fits(module.weight.shape)]
        # A LoRA for another architecture can share a few layer names and shapes by chance.
        if len(matches) * 2 < len(layers):
            return (f"LoRA {use.network.name} does not fit this model (made for another architecture?: "
                    f"{len(matches)} of {len(layers)} layers match); it was not applied")
        if len(matches) < len(layers):
            log.info("LoRA %s: %d of %d layers match this model", use.network.name, len(matches), len(layers))
        for module, layer in matches:
            multiplier = use.unet_weight if layer.component == UNET else use.te_weight
            if multiplier == 0:
                continue
            # Computed from the weight as it is now: DoRA rescales what earlier LoRAs made of it (as A1111).
            self._add(module.weight, layer.weights.weight_delta(module.weight) * multiplier)
            bias = module.bias
            change = layer.weights.bias_delta(bias) if bias is not None else None
            if bias is not None and change is not None:
                self._add(bias, change * multiplier)
        return None

    def _add(self, weight: torch.Tensor, delta: torch.Tensor) -> None:
        if id(weight) not in self._originals:
            # Originals wait in RAM, not VRAM; pinned pages let the copies run asynchronously on a GPU
            # (stream order keeps them ahead of the patch below).
            pinned = weight.device.type == "cuda"
            original = torch.empty(weight.shape, dtype=weight.dtype, device="cpu", pin_memory=pinned)
            original.copy_(weight.detach(), non_blocking=pinned)
            self._originals[id(weight)] = (weight, original)
        weight.add_(delta.to(weight.dtype))

    def restore(self) -> None:
        """Put back every original value (exact copies)."""
        with torch.no_grad():
            for weight, original in self._originals.values():
                weight.copy_(original, non_blocking=original.is_pinned())
        self._originals.clear()
        self.applied = ()


class LoraLibrary:
    """The LoRA files in one folder (subfolders too), parsed on first use; the last few stay in memory."""

    def __init__(self, folder: Path, hashes: HashCache, keep: int = 4) -> None:
        self.folder = folder
        self.hashes = hashes
        self.keep = keep
        self._lock = threading.Lock()
        self._parsed: OrderedDict[FileIdentity, LoraNetwork] = OrderedDict()

    def files(self) -> dict[str, Path]:
        """name -> file; the name is the path inside the folder without extension (A1111's LoRA name)."""
        found: dict[str, Path] = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.rglob("*")):
                if path.is_file() and path.suffix.lower() in SUFFIXES and not path.name.startswith("."):
                    found.setdefault(path.relative_to(self.folder).with_suffix("").as_posix(), path)
        return found

    def find(self, name: str) -> tuple[str, Path] | None:
        """A file by name, case-insensitively; a bare file name finds a file in a subfolder too."""
        files = self.files()
        wanted = name.strip().lower()
        for candidates in (files.items(), ((n.rsplit("/", 1)[-1], p) for n, p in files.items())):
            for known, path in candidates:
                if known.lower() == wanted:
                    return known, path
        return None

    def load(self, name: str, path: Path) -> LoraNetwork:
        # Taken before reading: a file changing meanwhile gets a new identity at its next use.
        key = file_identity(path)
        with self._lock:
            network = self._parsed.get(key)
            if network is None:
                tensors, metadata = read_checkpoint_file(path, torch.float32, skip=())
                network = parse_lora(name, path, tensors, metadata, key)
                self._parsed[key] = network
                while len(self._parsed) > self.keep:
                    self._parsed.popitem(last=False)
            self._parsed.move_to_end(key)
            return network

    def short_hash(self, name: str, path: Path) -> str:
        return self.hashes.sha256(f"Lora/{name}", path, compute=lora_hash)[:LORA_HASH_LEN]
