"""X/Y/Z plot: a script that runs one generation per combination of up to three axes and draws them in a
labelled grid. Each cell is exactly the picture a single generation with those parameters gives: the
seed is fixed once (unless it is an axis) and every cell is one image (batch count and size 1).
The cells are saved like any other outputs, with their own infotext; the grid goes to *-grids/.
"""

from __future__ import annotations

import itertools

from .axes import AXES, AxisError, label_for, parse_values
from .grid import draw_grid, join_grids

AXIS_NAMES = list(AXES)


class XYZPlot:
    title = "X/Y/Z plot"
    modes = ("txt2img", "img2img", "inpaint")

    def __init__(self, api) -> None:
        self.api = api

    def ui(self, mode: str) -> list:
        import gradio as gr

        controls = []
        for axis, default in (("X", "Seed"), ("Y", "Nothing"), ("Z", "Nothing")):
            with gr.Row():
                controls.append(gr.Dropdown(AXIS_NAMES, value=default, label=f"{axis} type",
                                            elem_id=f"{mode}-xyz-{axis.lower()}-type", scale=1))
                controls.append(gr.Textbox(value="", label=f"{axis} values",
                                           placeholder="1, 2, 3  or  1-5  or  0-20 (+5)",
                                           elem_id=f"{mode}-xyz-{axis.lower()}-values", scale=3))
        controls.append(gr.Checkbox(value=True, label="Draw legend", elem_id=f"{mode}-xyz-legend"))
        return controls

    def run(self, job, request, x_type, x_values, y_type, y_values, z_type, z_values, legend=True):
        from webui.extensions.api import RequestError  # the API module is the only thing we import from Atelier

        axes = []
        try:
            for kind, text in ((x_type, x_values), (y_type, y_values), (z_type, z_values)):
                axis = AXES.get(kind or "Nothing")
                if axis is None:
                    raise AxisError(f"unknown axis type {kind!r}")
                values = [None] if axis.label == "Nothing" else parse_values(axis, text or "")
                axes.append((axis, values))
        except AxisError as exc:
            raise RequestError("xyz", str(exc)) from None
        (x_axis, xs), (y_axis, ys), (z_axis, zs) = axes
        seed = request.seed
        if seed == -1:
            import random

            seed = random.randrange(4294967294)
        base = request.replace(seed=seed, batch_count=1, batch_size=1)
        cells: dict[tuple[int, int, int], object] = {}
        images, infotexts, paths, seeds = [], [], [], []
        for (k, z), (j, y), (i, x) in itertools.product(enumerate(zs), enumerate(ys), enumerate(xs)):
            if job.interrupted:
                break
            cell_request = base
            try:
                for axis, value, values in ((x_axis, x, xs), (y_axis, y, ys), (z_axis, z, zs)):
                    if value is not None:
                        cell_request = axis.apply(cell_request, value, values)
            except AxisError as exc:
                raise RequestError("xyz", str(exc)) from None
            result = job.generate(cell_request)
            if not result.images:
                break
            cells[(k, j, i)] = result.images[0]
            images.append(result.images[0])
            infotexts.append(result.infotexts[0])
            paths.extend(result.paths[:1])
            seeds.append(result.seeds[0])
        if len(cells) < len(xs) * len(ys) * len(zs):
            return job.finish(images, infotexts, paths, seeds)  # interrupted: what was made, no grid
        grids = []
        for k in range(len(zs)):
            rows = [[cells[(k, j, i)] for i in range(len(xs))] for j in range(len(ys))]
            column_labels = [label_for(x_axis, x) for x in xs] if legend and xs != [None] else []
            row_labels = [label_for(y_axis, y) for y in ys] if legend and ys != [None] else []
            grids.append(draw_grid(rows, column_labels, row_labels)[0])
        titles = [label_for(z_axis, z) for z in zs] if zs != [None] and legend else ([""] * len(zs) if len(zs) > 1
                                                                                    else [])
        grid, _ = join_grids(grids, titles)
        grid_info = infotexts[0] if infotexts else ""
        if base.save_images:
            paths.insert(0, job.save(grid, grid_info, seed, grid=True))
        return job.finish([grid, *images], [grid_info, *infotexts], paths, [seed, *seeds])


def setup(api) -> None:
    api.add_script(XYZPlot(api))
