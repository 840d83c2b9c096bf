"""Tiled vs whole-picture upscaling with a spandrel model, measured in the same run:

- the largest difference from the whole-picture result along the tile borders (and anywhere), in [0, 1]
  and in 8-bit levels, with the blended overlap and, for comparison, with no overlap (plain cut tiles);
- megapixels of output per second for each, and their ratio.

The model is a Real-ESRGAN Compact network the size of realesr-general-x4v3 (64 features, 32 convolutions,
4x) with spandrel's random initialisation, or with ``--arch esrgan`` an RRDB ESRGAN (``--blocks`` RRDBs).

    .venv/bin/python -m benchmarks.upscaler_tiling [--size 256 --tile 192 --overlap 16 --device cuda --threads 1]

On a small CPU the tiles' smaller convolutions use several threads less well than one big picture does, so
compare with ``--threads 1`` too; on a GPU, tiles bound the memory a large picture needs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from webui.upscalers.spandrel_import import import_spandrel
from webui.upscalers.tiling import tile_layout, upscale_tiled


def build_model(arch: str, blocks: int, scale: int, device: torch.device, dtype: torch.dtype):
    spandrel = import_spandrel()
    torch.manual_seed(0)
    if arch == "esrgan":
        from spandrel.architectures.ESRGAN import ESRGAN

        module = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=blocks, scale=scale)
    else:
        from spandrel.architectures.Compact import Compact

        module = Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=scale)
    descriptor = spandrel.ModelLoader().load_from_state_dict(module.state_dict())
    return descriptor.to(device).to(dtype)


def test_picture(size: int) -> torch.Tensor:
    """Colour waves and edges: smooth areas and sharp ones."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    picture = torch.stack([torch.sin(17 * x) * 0.5 + 0.5, torch.cos(13 * y) * 0.5 + 0.5, ((x * 8).floor() % 2) * y])
    return picture.unsqueeze(0)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    assert out is not None
    return statistics.median(times), out


def border_difference(a: torch.Tensor, b: torch.Tensor, size: int, tile: int, overlap: int, scale: int) -> float:
    """The largest |a - b| within 4 output pixels of any place where a tile begins or ends."""
    worst = 0.0
    diff = (a - b).abs()
    length, starts = tile_layout(size, tile, overlap)
    edges = sorted({e * scale for s in starts for e in (s, s + length) if 0 < e < size})
    for edge in edges:
        rows = diff[:, :, max(0, edge - 4):edge + 4, :]
        cols = diff[:, :, :, max(0, edge - 4):edge + 4]
        worst = max(worst, float(rows.max()), float(cols.max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="compact", choices=("compact", "esrgan"))
    parser.add_argument("--blocks", type=int, default=6, help="RRDB blocks for --arch esrgan (real models: 23)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    model = build_model(args.arch, args.blocks, args.scale, device, dtype)
    picture = test_picture(args.size)

    def run(piece: torch.Tensor) -> torch.Tensor:
        return model(piece.to(device, dtype))

    with torch.inference_mode():
        run(picture[:, :, :32, :32])  # warm-up (kernel selection, allocator)
        whole_s, whole = timed(lambda: upscale_tiled(run, picture, args.scale, 0, 0), args.repeats, device)
        tiled_s, tiled = timed(lambda: upscale_tiled(run, picture, args.scale, args.tile, args.overlap), args.repeats,
                               device)
        cut_s, cut = timed(lambda: upscale_tiled(run, picture, args.scale, args.tile, 0), args.repeats, device)
    megapixels = whole.shape[2] * whole.shape[3] / 1e6
    length, starts = tile_layout(args.size, args.tile, args.overlap)
    tiles = f"{len(starts) ** 2} tiles of {length}x{length}"
    print(f"{args.arch} {args.scale}x on {args.device} ({args.precision}, {torch.get_num_threads()} CPU threads), "
          f"{args.size}x{args.size} -> "
          f"{whole.shape[3]}x{whole.shape[2]}; tile size {args.tile}, overlap {args.overlap} ({tiles})")
    print(f"whole picture:      {whole_s:7.3f} s  {megapixels / whole_s:7.3f} MP/s")
    for label, seconds, out, overlap in (("tiled, blended", tiled_s, tiled, args.overlap),
                                         ("tiled, no overlap", cut_s, cut, 0)):
        border = border_difference(out, whole, args.size, args.tile, overlap, args.scale)
        anywhere = float((out - whole).abs().max())
        print(f"{label + ':':19s} {seconds:7.3f} s  {megapixels / seconds:7.3f} MP/s  "
              f"(speed x{whole_s / seconds:.2f} of whole)  max |diff| at tile borders {border:.2e} "
              f"({border * 255:.2f} levels), anywhere {anywhere:.2e}")


if __name__ == "__main__":
    main()
