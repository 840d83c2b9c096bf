"""The weight change one LoRA-family layer makes, for every variant model sites distribute.

A layer arrives as the tensors a file holds for it, named as in the file after the layer's stem
(``lora_unet_..._to_q.hada_w1_a`` -> ``hada_w1_a``). Variants, recognised by their keys:

- ``lora``: LoRA and LoCon (``lora_down.weight`` / ``lora_up.weight``, a k×k conv down, or CP/Tucker
  with ``lora_mid.weight``): up @ down.
- ``loha``: ``hada_w1_a/b``, ``hada_w2_a/b`` (Tucker convs add ``hada_t1/t2``): (w1a @ w1b) ⊙ (w2a @ w2b).
- ``lokr``: ``lokr_w1`` or ``lokr_w1_a/b``, ``lokr_w2`` or ``lokr_w2_a/b`` (``lokr_t2`` for Tucker): w1 ⊗ w2.
- ``full``: ``diff`` (and ``diff_b`` for the bias): the difference itself.
- ``norm``: ``w_norm`` / ``b_norm`` for LayerNorm / GroupNorm weights and biases.

Scaling is A1111's (extensions-builtin/Lora): the product is multiplied by ``scale`` when the file has
one, else by alpha / rank for variants that have a rank (LoRA, LoHa, and LoKr with a factorised half);
bias changes are not scaled. DoRA (``dora_scale``) then rescales the merged weight W + ΔW to the stored
magnitudes, per input column (A1111, the DoRA paper) or per output row (LyCORIS' default since 2.x),
whichever the stored magnitudes' shape says, and the change is what that makes of W. The caller
multiplies the result by the ``<lora:name:w>`` weight, so DoRA at weight w moves W a fraction w of the way
to the decomposed weight, as in A1111 (LyCORIS' own module differs there for w != 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["LayerWeights", "VARIANTS"]

VARIANTS = ("lora", "loha", "lokr", "full", "norm")
_LORA = ("lora_up.weight", "lora_down.weight", "lora_mid.weight")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_FACTORS = {"lora": _LORA, "loha": _LOHA, "lokr": _LOKR, "full": ("diff", "diff_b"), "norm": ("w_norm", "b_norm")}
_SHARED = ("alpha", "scale", "dora_scale")
_EPS = torch.finfo(torch.float32).eps  # keeps DoRA finite on an all-zero column


def _variant(w: Mapping[str, torch.Tensor]) -> str | None:
    """Which variant a layer's keys make, in A1111's order of trying them."""
    def has(*keys: str) -> bool:
        return all(k in w for k in keys)

    if has("lora_up.weight", "lora_down.weight"):
        return "lora"
    if has("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
        return "loha"
    if (has("lokr_w1") or has("lokr_w1_a", "lokr_w1_b")) and (has("lokr_w2") or has("lokr_w2_a", "lokr_w2_b")):
        return "lokr"
    if has("diff"):
        return "full"
    if has("w_norm"):
        return "norm"
    return None


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Rebuild a Tucker-decomposed conv weight: core (r, r, k, k), wa (r, out), wb (r, in)."""
    return torch.einsum("i j ..., i p, j r -> p r ...", t, wa, wb)


def _lora(w: Mapping[str, torch.Tensor]) -> torch.Tensor:
    up, down = w["lora_up.weight"].flatten(1), w["lora_down.weight"].flatten(1)
    mid = w.get("lora_mid.weight")
    if mid is not None:  # CP / Tucker LoCon: 1×1 down, k×k core, 1×1 up
        return torch.einsum("n m ..., i n, m j -> i j ...", mid, up, down)
    return up @ down


def _loha(w: Mapping[str, torch.Tensor]) -> torch.Tensor:
    def half(n: int) -> torch.Tensor:
        a, b, t = w[f"hada_w{n}_a"], w[f"hada_w{n}_b"], w.get(f"hada_t{n}")
        return _tucker(t, a, b) if t is not None else a.flatten(1) @ b.flatten(1)

    first = half(1)
    return first * half(2).reshape(first.shape)


def _lokr(w: Mapping[str, torch.Tensor]) -> torch.Tensor:
    w1 = w["lokr_w1"] if "lokr_w1" in w else w["lokr_w1_a"] @ w["lokr_w1_b"]
    if "lokr_w2" in w:
        w2 = w["lokr_w2"]
    elif "lokr_t2" in w:
        w2 = _tucker(w["lokr_t2"], w["lokr_w2_a"], w["lokr_w2_b"])
    else:
        a, b = w["lokr_w2_a"], w["lokr_w2_b"]
        w2 = (a @ b.flatten(1)).reshape(a.shape[0], *b.shape[1:])
    while w1.dim() < w2.dim():  # a conv's kernel lives in w2 only
        w1 = w1.unsqueeze(-1)
    return torch.kron(w1, w2.contiguous())


_PRODUCTS = {"lora": _lora, "loha": _loha, "lokr": _lokr, "full": lambda w: w["diff"], "norm": lambda w: w["w_norm"]}


def _rank(variant: str, w: Mapping[str, torch.Tensor]) -> int | None:
    if variant == "lora":
        return w["lora_down.weight"].shape[0]
    if variant == "loha":
        return w["hada_w1_b"].shape[0]
    if variant == "lokr":  # only a factorised half has a rank; A1111 takes w2's when both have one
        for key in ("lokr_w2_b", "lokr_w1_b"):
            if key in w:
                return w[key].shape[0]
    return None


def _dora_axis(magnitude: torch.Tensor, shape: torch.Size) -> int | None:
    """0: one magnitude per output row (LyCORIS 2+); 1: per input column (A1111, the DoRA paper)."""
    out, inputs = shape[0], shape[1] if len(shape) > 1 else 1
    if magnitude.dim() >= 2:
        if magnitude.numel() == out and magnitude.shape[0] == out:
            return 0
        if magnitude.numel() == inputs and magnitude.shape[0] == 1 and magnitude.shape[1] == inputs:
            return 1
        return None
    # A flat vector: A1111 reads it per input column; only a length that fits rows alone says otherwise.
    if magnitude.numel() == inputs:
        return 1
    return 0 if magnitude.numel() == out else None


def _decompose(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: int) -> torch.Tensor:
    merged = weight + delta
    if axis == 0:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1)
        view = (merged.shape[0],) + (1,) * (merged.dim() - 1)
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        view = (1, merged.shape[1]) + (1,) * (merged.dim() - 2)
    return merged * (magnitude.reshape(view) / (norm.reshape(view) + _EPS)) - weight


@dataclass(frozen=True)
class LayerWeights:
    """One target layer's tensors from a LoRA-family file and the variant they make."""

    variant: str
    tensors: dict[str, torch.Tensor]

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> LayerWeights | None:
        """The layer these tensors make (None: not a variant we know). Unknown names are left out."""
        variant = _variant(tensors)
        if variant is None:
            return None
        known = _FACTORS[variant] + _SHARED
        return cls(variant, {k: v for k, v in tensors.items() if k in known})

    @property
    def scale(self) -> float:
        if "scale" in self.tensors:
            return float(self.tensors["scale"].item())
        rank = _rank(self.variant, self.tensors)
        alpha = float(self.tensors["alpha"].item()) if "alpha" in self.tensors else None
        # A zero alpha means "no scaling" to kohya and LyCORIS trainers.
        return alpha / rank if alpha and rank else 1.0

    def _product(self, device: torch.device) -> torch.Tensor:
        return _PRODUCTS[self.variant]({k: v.to(device, torch.float32) for k, v in self.tensors.items()})

    def fits(self, shape: torch.Size) -> bool:
        """Whether the change can take this weight's shape (worked out on shapes alone, nothing computed)."""
        try:
            product = self._product(torch.device("meta"))
        except (RuntimeError, ValueError, IndexError):  # factors that do not multiply: a damaged file
            return False
        if product.numel() != math.prod(shape):
            return False
        magnitude = self.tensors.get("dora_scale")
        return magnitude is None or len(shape) < 2 or _dora_axis(magnitude, shape) is not None

    def weight_delta(self, weight: torch.Tensor) -> torch.Tensor:
        """The change to `weight` at multiplier 1: float32, on the weight's device, in its shape.
        Needs the weight's current values only for DoRA; call `fits` first."""
        delta = self._product(weight.device).reshape(weight.shape) * self.scale
        magnitude = self.tensors.get("dora_scale")
        if magnitude is not None and weight.dim() >= 2:
            axis = _dora_axis(magnitude, weight.shape)
            assert axis is not None  # fits() said so
            delta = _decompose(weight.detach().to(torch.float32), delta, magnitude.to(weight.device, torch.float32),
                               axis)
        return delta

    def bias_delta(self, bias: torch.Tensor) -> torch.Tensor | None:
        """The change to the layer's bias at multiplier 1 (full and norm layers carry one), if it fits."""
        key = {"full": "diff_b", "norm": "b_norm"}.get(self.variant)
        change = self.tensors.get(key) if key else None
        if change is None or change.numel() != bias.numel():
            return None
        return change.to(bias.device, torch.float32).reshape(bias.shape)

    @property
    def keys(self) -> frozenset[str]:
        """The file's names this layer uses."""
        return frozenset(self.tensors)
