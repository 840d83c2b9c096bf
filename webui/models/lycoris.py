"""The weight change one LoRA-family layer makes, for every variant model sites distribute.

A layer arrives as the tensors a file holds for it, named as in the file after the layer's stem
(``lora_unet_..._to_q.hada_w1_a`` -> ``hada_w1_a``). Variants, recognised by their keys:

- ``lora``: LoRA and LoCon (``lora_down.weight`` / ``lora_up.weight``, a k×k conv down, or CP/Tucker
  with ``lora_mid.weight``): up @ down.
- ``loha``: ``hada_w1_a/b``, ``hada_w2_a/b`` (Tucker convs add ``hada_t1/t2``): (w1a @ w1b) ⊙ (w2a @ w2b).
- ``lokr``: ``lokr_w1`` or ``lokr_w1_a/b``, ``lokr_w2`` or ``lokr_w2_a/b`` (``lokr_t2`` for Tucker): w1 ⊗ w2.
- ``full``: ``diff`` (and ``diff_b`` for the bias): the difference itself.
- ``norm``: ``w_norm`` / ``b_norm`` for LayerNorm / GroupNorm weights and biases.
- ``ia3``: ``weight`` (one factor per output row, or per input column when ``on_input`` is 1): W ⊙ w.
- ``glora``: ``a1/a2/b1/b2.weight`` (``bm.weight`` for Tucker convs): W·A_up·A_down + B_up·B_down.
- ``oft``: ``oft_blocks`` (kohya's OFT, LyCORIS' Diag-OFT; 4-D: LyCORIS' BOFT) or ``oft_diag`` (older
  LyCORIS exports, which hold the rotations themselves), with ``rescale`` optionally: R·W − W.

Scaling is A1111's (extensions-builtin/Lora): the product is multiplied by ``scale`` when the file has
one, else by alpha / rank for variants that have a rank (LoRA, LoHa, and LoKr with a factorised half);
bias changes are not scaled. IA3 and OFT are never scaled (OFT's alpha is a constraint on its rotations:
their norm is capped at alpha × output rows, as kohya and LyCORIS train them; a zero alpha means no cap,
as in LyCORIS, where A1111 would cap them at zero and so apply nothing). GLoRA comes in two layouts:
A1111 reads the first LyCORIS one (a1 / b1 the down halves) and scales it by 1; current LyCORIS writes
a1 / b1 as the up halves, which A1111 cannot load, and scales by alpha / rank as LyCORIS does.

DoRA (``dora_scale``, on any variant as in A1111) then rescales the merged weight W + ΔW to the stored
magnitudes, per input column (A1111, the DoRA paper) or per output row (LyCORIS' default since 2.x; PEFT),
whichever the stored magnitudes' shape says, and the change is what that makes of W. The caller
multiplies the result by the ``<lora:name:w>`` weight, so a change that depends on W (DoRA, IA3, OFT,
GLoRA) at weight w moves W a fraction w of the way to what it makes of W at weight 1, as in A1111
(LyCORIS' own modules differ there for w != 1 with DoRA, BOFT, and OFT's rescale).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["LayerWeights", "VARIANTS"]

VARIANTS = ("lora", "loha", "ia3", "lokr", "full", "norm", "glora", "oft")
_LORA = ("lora_up.weight", "lora_down.weight", "lora_mid.weight")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_GLORA = ("a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight")
_FACTORS = {"lora": _LORA, "loha": _LOHA, "ia3": ("weight", "on_input"), "lokr": _LOKR, "full": ("diff", "diff_b"),
            "norm": ("w_norm", "b_norm"), "glora": _GLORA, "oft": ("oft_blocks", "oft_diag", "rescale")}
_SHARED = ("alpha", "scale", "dora_scale")
_SCALARS = ("alpha", "scale", "on_input")
_USES_WEIGHT = ("ia3", "glora", "oft")  # variants whose change is made of the weight itself
_EPS = torch.finfo(torch.float32).eps  # keeps DoRA finite on an all-zero column


def _variant(w: Mapping[str, torch.Tensor]) -> str | None:
    """Which variant a layer's keys make, in A1111's order of trying them."""
    def has(*keys: str) -> bool:
        return all(k in w for k in keys)

    if has("lora_up.weight", "lora_down.weight"):
        return "lora"
    if has("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
        return "loha"
    if has("weight"):
        return "ia3"
    if (has("lokr_w1") or has("lokr_w1_a", "lokr_w1_b")) and (has("lokr_w2") or has("lokr_w2_a", "lokr_w2_b")):
        return "lokr"
    if has("diff"):
        return "full"
    if has("w_norm"):
        return "norm"
    if has("a1.weight", "a2.weight", "b1.weight", "b2.weight"):
        return "glora"
    if has("oft_blocks") or has("oft_diag"):
        return "oft"
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


def _ia3(w: Mapping[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    factors = w["weight"].flatten()
    axis = 1 if "on_input" in w and bool(w["on_input"].item()) else 0
    if weight.dim() < 2 or factors.numel() != weight.shape[axis]:
        raise ValueError("IA3 factors do not fit the layer")
    view = [1] * weight.dim()
    view[axis] = -1
    return weight * factors.reshape(view)


def _glora_halves(w: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(A's up half, A's down half, whether the layout is current LyCORIS'). Current LyCORIS writes
    a1 = up (in × r), a2 = down (r × in); the first layout, the one A1111 reads, has them the other way."""
    a1, a2 = w["a1.weight"].flatten(1), w["a2.weight"].flatten(1)
    current = a1.shape[0] >= a1.shape[1]
    return (a1, a2, True) if current else (a2, a1, False)


def _glora(w: Mapping[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    a_up, a_down, current = _glora_halves(w)
    b_up, b_down = (w["b1.weight"], w["b2.weight"]) if current else (w["b2.weight"], w["b1.weight"])
    mid = w.get("bm.weight")
    if mid is not None:  # Tucker conv: 1×1 down, k×k core, 1×1 up
        b = torch.einsum("n m ..., i n, m j -> i j ...", mid, b_up.flatten(1), b_down.flatten(1))
    else:
        b = b_up.flatten(1) @ b_down.flatten(1)
    # W·A acts on the input channels, and on a conv's kernel positions each alike.
    a = torch.einsum("o i ..., i j -> o j ...", weight, a_up @ a_down)
    return a + b.reshape(weight.shape)


def _rotations(blocks: torch.Tensor, cap: float) -> torch.Tensor:
    """Cayley rotations R = (I + Q)(I − Q)⁻¹ of the skew-symmetric Q = B − Bᵀ, whose norm (over all
    blocks together) is capped at `cap` when that is positive (kohya's rule, A1111's reading)."""
    q = blocks - blocks.transpose(-1, -2)
    if cap > 0:
        norm = q.norm()
        q = q * ((norm.clamp(max=cap) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype)
    return torch.linalg.solve(eye - q, eye + q)  # (I − Q)⁻¹ and I + Q commute


def _butterfly(rotations: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BOFT: stage i rotates blocks of rows gathered at stride 2^i × (block / 2), as LyCORIS lays them out."""
    size = rotations.shape[-1]
    x = weight
    for i, stage in enumerate(rotations):
        span = 2 ** i * (size // 2)
        x = x.unflatten(0, (-1, 2, span)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, size))
        x = torch.einsum("d i j, d j ... -> d i ...", stage, x)
        x = x.flatten(0, 1).unflatten(0, (-1, span, 2)).transpose(1, 2).flatten(0, 2)
    return x


def _oft(w: Mapping[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    rows = weight.shape[0]
    if "oft_blocks" in w:
        alpha = float(w["alpha"].item()) if "alpha" in w else 0.0
        rotations = _rotations(w["oft_blocks"], alpha * rows)
    else:  # oft_diag: the rotations themselves
        rotations = w["oft_diag"]
    if rotations.dim() == 4:
        merged = _butterfly(rotations, weight)
    else:  # one rotation per block of rows, applied as Rᵀ (kohya's x·R on the layer's output)
        blocks, size = rotations.shape[:2]
        merged = torch.einsum("k n m, k n ... -> k m ...", rotations,
                              weight.reshape(blocks, size, *weight.shape[1:])).reshape(weight.shape)
    rescale = w.get("rescale")
    if rescale is not None:
        merged = merged * rescale.reshape(rows, *(1,) * (weight.dim() - 1))
    return merged - weight


_Product = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]
_PRODUCTS: dict[str, _Product] = {
    "lora": lambda w, _: _lora(w), "loha": lambda w, _: _loha(w), "ia3": _ia3, "lokr": lambda w, _: _lokr(w),
    "full": lambda w, _: w["diff"], "norm": lambda w, _: w["w_norm"], "glora": _glora, "oft": _oft,
}


def _rank(variant: str, w: Mapping[str, torch.Tensor]) -> int | None:
    if variant == "lora":
        return w["lora_down.weight"].shape[0]
    if variant == "loha":
        return w["hada_w1_b"].shape[0]
    if variant == "lokr":  # only a factorised half has a rank; A1111 takes w2's when both have one
        for key in ("lokr_w2_b", "lokr_w1_b"):
            if key in w:
                return w[key].shape[0]
    if variant == "glora":  # only current LyCORIS' layout is scaled (A1111 scales the first one by 1)
        _, down, current = _glora_halves(w)
        return down.shape[0] if current else None
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
        if self.variant == "oft":  # A1111 scales OFT by 1 whatever the file says
            return 1.0
        if "scale" in self.tensors:
            return float(self.tensors["scale"].item())
        rank = _rank(self.variant, self.tensors)
        alpha = float(self.tensors["alpha"].item()) if "alpha" in self.tensors else None
        # A zero alpha means "no scaling" to kohya and LyCORIS trainers.
        return alpha / rank if alpha and rank else 1.0

    def _product(self, weight: torch.Tensor) -> torch.Tensor:
        # Flags and scalars stay where they are: read as numbers, also while shapes are checked on "meta".
        tensors = {k: v if k in _SCALARS else v.to(weight.device, torch.float32) for k, v in self.tensors.items()}
        return _PRODUCTS[self.variant](tensors, weight)

    def fits(self, shape: torch.Size) -> bool:
        """Whether the change can take this weight's shape (worked out on shapes alone, nothing computed)."""
        try:
            product = self._product(torch.empty(shape, device="meta"))
        except (RuntimeError, ValueError, IndexError):  # factors that do not multiply: a damaged file
            return False
        if product.numel() != math.prod(shape):
            return False
        magnitude = self.tensors.get("dora_scale")
        return magnitude is None or len(shape) < 2 or _dora_axis(magnitude, shape) is not None

    def weight_delta(self, weight: torch.Tensor) -> torch.Tensor:
        """The change to `weight` at multiplier 1: float32, on the weight's device, in its shape.
        Needs the weight's current values for DoRA, IA3, GLoRA and OFT; call `fits` first."""
        magnitude = self.tensors.get("dora_scale")
        # A float32 copy of the weight only where the change depends on it (on a GPU in fp16, a copy per layer).
        needs_weight = self.variant in _USES_WEIGHT or magnitude is not None
        current = weight.detach().to(torch.float32) if needs_weight else weight.detach()
        delta = self._product(current).reshape(weight.shape) * self.scale
        if magnitude is not None and weight.dim() >= 2:
            axis = _dora_axis(magnitude, weight.shape)
            assert axis is not None  # fits() said so
            delta = _decompose(current, delta, magnitude.to(weight.device, torch.float32), axis)
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
