"""Axis types and how their values are written, as in A1111's X/Y/Z plot. Pure Python.

Values are comma-separated; numbers also take ranges: ``1-5`` (1, 2, 3, 4, 5), ``0-20 (+5)`` (step 5),
``1-3 [5]`` (five evenly spaced values). Quotes keep commas inside a value: ``"a, b", c``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?)\s*-\s*([+-]?\d+(?:\.\d*)?)\s*(?:\(\s*([+-]?\d+(?:\.\d*)?)\s*\)|"
                   r"\[\s*(\d+)\s*\])?\s*$")


class AxisError(ValueError):
    pass


@dataclass(frozen=True)
class AxisType:
    label: str
    kind: type  # int, float or str
    apply: Callable[[Any, Any, list[Any]], Any]  # (request, value, all values) -> request


def split_values(text: str) -> list[str]:
    row = next(csv.reader([text], skipinitialspace=True), [])
    return [cell.strip() for cell in row if cell.strip()]


def _numbers(cells: list[str], kind: type) -> list[Any]:
    out: list[Any] = []
    for cell in cells:
        match = RANGE.match(cell)
        if match is None:
            try:
                out.append(kind(float(cell)) if kind is int else kind(cell))
            except ValueError:
                raise AxisError(f"{cell!r} is not a number") from None
            continue
        start, end = float(match[1]), float(match[2])
        if match[4]:  # [count]: evenly spaced
            count = int(match[4])
            values = [start + (end - start) * i / max(count - 1, 1) for i in range(count)]
        else:
            step = float(match[3]) if match[3] else (1.0 if end >= start else -1.0)
            if step == 0 or (end - start) * step < 0:
                raise AxisError(f"{cell!r}: the step goes the wrong way")
            values, value = [], start
            while (value <= end + 1e-9) if step > 0 else (value >= end - 1e-9):
                values.append(value)
                value += step
        out.extend(kind(round(v)) if kind is int else round(v, 6) for v in values)
    return out


def parse_values(axis: AxisType, text: str) -> list[Any]:
    cells = split_values(text)
    if not cells:
        raise AxisError(f"{axis.label}: give at least one value")
    values = _numbers(cells, axis.kind) if axis.kind in (int, float) else cells
    if len(values) > 64:
        raise AxisError(f"{axis.label}: at most 64 values per axis")
    return values


def _replace(request: Any, value: str, values: list[Any]) -> Any:
    search = values[0]
    return request.replace(prompt=request.prompt.replace(search, value),
                           negative_prompt=request.negative_prompt.replace(search, value))


def _controlnet(field: str) -> Callable[[Any, Any, list[Any]], Any]:
    """Set ``field`` of every ControlNet unit in use (the extension's axes do the same for its units)."""
    def apply(request: Any, value: Any, values: list[Any]) -> Any:
        units = list(getattr(request, "controlnet_units", []))
        if not any(unit.used for unit in units):
            raise AxisError(f"{field.replace('_', ' ')}: enable a ControlNet unit first")
        return request.replace(controlnet_units=[unit.replace(**{field: value}) if unit.used else unit
                                                 for unit in units])
    return apply


AXES: dict[str, AxisType] = {axis.label: axis for axis in (
    AxisType("Nothing", str, lambda r, v, vs: r),
    AxisType("Seed", int, lambda r, v, vs: r.replace(seed=v)),
    AxisType("Steps", int, lambda r, v, vs: r.replace(steps=v)),
    AxisType("CFG Scale", float, lambda r, v, vs: r.replace(cfg_scale=v)),
    AxisType("Sampler", str, lambda r, v, vs: r.replace(sampler=v)),
    AxisType("Schedule type", str, lambda r, v, vs: r.replace(schedule_type=v)),
    AxisType("Checkpoint name", str, lambda r, v, vs: r.replace(checkpoint=v)),
    AxisType("Prompt S/R", str, _replace),
    AxisType("Denoising", float, lambda r, v, vs: r.replace(denoising_strength=v)),
    AxisType("Var. seed", int, lambda r, v, vs: r.replace(subseed=v)),
    AxisType("Var. strength", float, lambda r, v, vs: r.replace(subseed_strength=v)),
    AxisType("Hires steps", int, lambda r, v, vs: r.replace(hr_second_pass_steps=v)),
    AxisType("Hires upscaler", str, lambda r, v, vs: r.replace(hr_upscaler=v)),
    AxisType("ControlNet weight", float, _controlnet("weight")),
    AxisType("ControlNet start", float, _controlnet("guidance_start")),
    AxisType("ControlNet end", float, _controlnet("guidance_end")),
)}


def label_for(axis: AxisType, value: Any) -> str:
    if axis.label == "Prompt S/R":
        return str(value)
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{axis.label}: {text}"
