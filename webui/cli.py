"""Command line: arguments -> Settings -> AppContext -> serve | generate | models.

`python -m webui` with no subcommand serves the UI, so the launch script can pass its flags straight through.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .config import OFFLOAD_MODES, PRECISIONS, Settings, load_settings
from .errors import AtelierError
from .models.loader import describe_checkpoint
from .pipelines.request import InpaintArea, MaskedContent, RequestError, ResizeMode

if TYPE_CHECKING:
    from .context import AppContext

COMMANDS = ("serve", "generate", "models")


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("folders and engine")
    g.add_argument("--models-dir", type=Path, help="folder holding Stable-diffusion/, VAE/, Lora/, embeddings/")
    g.add_argument("--ckpt-dir", type=Path, help="checkpoint folder (default: MODELS_DIR/Stable-diffusion)")
    g.add_argument("--lora-dir", type=Path, help="LoRA folder (default: MODELS_DIR/Lora)")
    g.add_argument("--embeddings-dir", type=Path,
                   help="textual-inversion embeddings folder (default: MODELS_DIR/embeddings and embeddings/)")
    g.add_argument("--outputs-dir", type=Path, help="where generated images are saved")
    g.add_argument("--settings-file", type=Path, help="JSON settings file")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="compute device")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="weights precision (auto: fp16 on GPU, bf16 on CPUs with bf16)")
    g.add_argument("--offload", choices=OFFLOAD_MODES, help="CPU offload to save VRAM (auto: decided from free VRAM)")
    g.add_argument("--medvram", action="store_true", help="same as --offload model")
    g.add_argument("--lowvram", action="store_true", help="same as --offload sequential")
    g.add_argument("--ram-cache-gb", type=float, help="RAM budget for cached checkpoints, in GiB")
    g.add_argument("--ckpt", "--model", dest="checkpoint", help="checkpoint to use (title, file name or hash)")
    g.add_argument("-v", "--verbose", action="store_true", help="log more")


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m webui [serve]", description="Serve the Atelier web UI.")
    _common(p)
    p.add_argument("--port", type=int, help="port (default 7860)")
    p.add_argument("--listen", action="store_true", help="listen on all interfaces (0.0.0.0) to share on the LAN")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--no-autolaunch", action="store_true", help="do not open a browser")
    a = p.add_argument_group("sharing")
    a.add_argument("--auth", help="sign-in required: user:password[,user2:password2]")
    a.add_argument("--auth-file", type=Path, help="file of user:password lines (or comma separated)")
    a.add_argument("--no-auth", action="store_true",
                   help="with --listen: serve without sign-in (by default a password is generated)")
    a.add_argument("--enable-insecure-extension-access", action="store_true",
                   help="allow installing/updating extensions from the UI even with --listen or --share")
    a.add_argument("--admin-users", help="comma-separated users who are the host on a signed-in studio: they see "
                                         "everyone's pictures in History and may change model cards")
    a.add_argument("--share", action="store_true",
                   help="also make a public link (needs the internet; sign-in is then always required)")
    w = p.add_argument_group("workers (docs/scaling.md)")
    w.add_argument("--devices", help="one worker per device, e.g. cuda:0,cuda:1 (or cpu,cpu to try it); "
                                     "default: one worker on --device")
    w.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run every generation on Ray actors: auto (the cluster `ray start` made here) or HEAD:6379")
    w.add_argument("--ray-workers", type=int, help="Ray actors to start (default: one per GPU in the cluster)")
    w.add_argument("--worker-threads", type=int, help="torch CPU threads per Ray worker (default: torch's)")
    r = p.add_argument_group("REST API")
    r.add_argument("--api", action="store_true",
                   help="serve AUTOMATIC1111's REST API at /sdapi/v1 on the same port (documented at /docs)")
    r.add_argument("--api-auth", help="API sign-in (HTTP Basic): user:password[,user2:password2]; implies --api. "
                                      "Without it the API asks for the UI's credentials, if any")
    return p


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m webui generate",
                                description="Generate images and print their paths.")
    _common(p)
    # Options left out take their defaults from the settings, as the page and the REST API do.
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt")
    p.add_argument("--sampler", help='A1111 sampler name, e.g. "Euler a", "DPM++ 2M" (default: the settings\')')
    p.add_argument("--schedule-type", help="Automatic, Karras, Exponential, ...")
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg-scale", type=float, help="default 7")
    p.add_argument("--width", type=int, help="default: the settings' size, else the model's native size")
    p.add_argument("--height", type=int, help="default: the settings' size, else the model's native size")
    p.add_argument("--seed", type=int, help="-1 = random (the default)")
    p.add_argument("--batch-count", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--clip-skip", type=int, help="default: the settings' (default_clip_skip)")
    p.add_argument("--vae", help='"Automatic", "None" or a file in MODELS_DIR/VAE/ (default: the settings\')')
    p.add_argument("--init-image", type=Path, help="img2img / inpainting source image (default size: its own)")
    p.add_argument("--mask", type=Path, help="inpainting mask (white = repaint)")
    p.add_argument("--denoising-strength", type=float, help="img2img's (default 0.75) or hires fix's (default 0.7)")
    p.add_argument("--resize-mode", choices=[m.value for m in ResizeMode])
    p.add_argument("--mask-blur", type=int, help="default 4")
    p.add_argument("--masked-content", choices=[m.value for m in MaskedContent])
    p.add_argument("--inpaint-area", choices=[m.value for m in InpaintArea])
    p.add_argument("--inpaint-padding", type=int, help="default 32")
    p.add_argument("--mask-invert", action="store_true", default=None)
    p.add_argument("--no-save", action="store_true", help="do not save (prints nothing)")
    v = p.add_argument_group("variation seed")
    v.add_argument("--subseed", type=int, help="variation seed (-1 = random)")
    v.add_argument("--subseed-strength", type=float, help="0 = the seed's picture, 1 = the variation seed's")
    v.add_argument("--seed-resize-from-w", type=int, help="draw the noise at this width and centre it")
    v.add_argument("--seed-resize-from-h", type=int, help="draw the noise at this height and centre it")
    h = p.add_argument_group("hires fix (txt2img)")
    h.add_argument("--enable-hr", action="store_true", default=None, help="a second pass at a larger size")
    h.add_argument("--hr-scale", type=float, help="upscale by (default 2)")
    h.add_argument("--hr-resize-x", type=int, help="resize width to (instead of the scale)")
    h.add_argument("--hr-resize-y", type=int, help="resize height to (instead of the scale)")
    h.add_argument("--hr-upscaler", help='"Latent" (default), "Lanczos", an upscaler model, ...')
    h.add_argument("--hr-steps", dest="hr_second_pass_steps", type=int, help="hires steps (0 = same)")
    h.add_argument("--hr-sampler", help="the hires pass's sampler (default: the same)")
    h.add_argument("--hr-schedule-type", help="the hires pass's schedule type (default: the same)")
    h.add_argument("--hr-prompt", help="the hires pass's prompt (default: the same)")
    h.add_argument("--hr-negative-prompt", help="the hires pass's negative prompt (default: the same)")
    h.add_argument("--hr-cfg-scale", type=float, help="the hires pass's CFG scale (default: the same)")
    h.add_argument("--hr-checkpoint", help="the hires pass's checkpoint (default: the same)")
    r = p.add_argument_group("refiner")
    r.add_argument("--refiner-checkpoint", help="finish the last pass on this checkpoint")
    r.add_argument("--refiner-switch-at", type=float, help="fraction of the steps before the switch (default 0.8)")
    return p


# generate's options that are GenerationRequest fields of the same name ("checkpoint" comes from --ckpt).
REQUEST_OPTIONS = ("prompt", "negative_prompt", "sampler", "schedule_type", "steps", "cfg_scale", "width", "height",
                   "seed", "batch_count", "batch_size", "clip_skip", "vae", "denoising_strength", "resize_mode",
                   "mask_blur", "masked_content", "inpaint_area", "inpaint_padding", "mask_invert", "checkpoint",
                   "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "enable_hr", "hr_scale",
                   "hr_resize_x", "hr_resize_y", "hr_upscaler", "hr_second_pass_steps", "hr_sampler",
                   "hr_schedule_type", "hr_prompt", "hr_negative_prompt", "hr_cfg_scale", "hr_checkpoint",
                   "refiner_checkpoint", "refiner_switch_at")


def _models_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m webui models", description="List checkpoints with their titles.")
    _common(p)
    p.add_argument("--hash", action="store_true", help="compute missing hashes (slow for big files)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "models_dir": args.models_dir,
        "outputs_dir": args.outputs_dir,
        "settings_file": args.settings_file,
        "device": args.device,
        "precision": args.precision,
        "offload": "sequential" if args.lowvram else "model" if args.medvram else args.offload,
        "default_checkpoint": args.checkpoint,
    }
    if args.ram_cache_gb is not None:
        overrides["ram_cache_bytes"] = int(args.ram_cache_gb * 2**30)
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "listen", False):
        overrides["host"] = "0.0.0.0"
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "enable_insecure_extension_access", False):
        overrides["enable_insecure_extension_access"] = True
    if getattr(args, "no_autolaunch", False):
        overrides["autolaunch"] = False
    for name in ("devices", "ray", "ray_workers", "worker_threads"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if getattr(args, "admin_users", None) is not None:
        overrides["admin_users"] = args.admin_users
    for name in ("ckpt_dir", "lora_dir", "embeddings_dir"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    return load_settings(overrides)


def _context(args: argparse.Namespace) -> AppContext:
    from .context import AppContext

    return AppContext.create(settings_from_args(args))


def cmd_models(args: argparse.Namespace) -> int:
    ctx = _context(args)
    entries = ctx.registry.entries()
    if not entries:
        print(f"No checkpoints in {ctx.registry.checkpoints_dir}", file=sys.stderr)
        return 1
    for entry in entries:
        if args.hash:
            entry.compute_sha256()
        print(f"{entry.title}  ({describe_checkpoint(entry)})")
    return 0


def _open_image(path: Path | None, field: str) -> Image.Image | None:
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, ValueError) as exc:  # missing, unreadable or not a picture
        raise RequestError(field, f"cannot read {path}: {exc}") from exc


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """generate's options as request fields; options not given are None and take the settings' defaults."""
    given = {name: getattr(args, name) for name in REQUEST_OPTIONS}
    given.update(init_image=_open_image(args.init_image, "init_image"), mask=_open_image(args.mask, "mask"),
                 save_images=False if args.no_save else None)
    return given


def cmd_generate(args: argparse.Namespace) -> int:
    ctx = _context(args)
    try:
        result = ctx.run_job(ctx.new_request(request_fields(args)))
    except AtelierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        ctx.close()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in result.paths:
        print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .auth import AuthError, Credentials, parse_auth, resolve_credentials

    settings = settings_from_args(args)
    password_file = settings.settings_file.with_name("lan-password.json")
    exposed = args.listen or args.share or settings.host not in ("127.0.0.1", "localhost", "::1")
    try:
        # A public link is never open to everyone: --no-auth only applies to the LAN.
        credentials = resolve_credentials(args.auth, args.auth_file, exposed, args.no_auth and not args.share,
                                          password_file)
        api_credentials = None
        if args.api_auth is not None:
            pairs = parse_auth(args.api_auth)
            if not pairs:
                raise AuthError("--api-auth holds no user:password")
            api_credentials = Credentials(tuple(pairs))
    except AuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .context import AppContext
    from .ui.app import serve

    try:
        ctx = AppContext.create(settings)
    except AtelierError as exc:  # no Ray cluster to join, say
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        serve(ctx, credentials=credentials, share=args.share, password_file=password_file,
              api=args.api or api_credentials is not None, api_credentials=api_credentials, flags=vars(args))
    finally:
        ctx.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "serve"
    parser = {"serve": _serve_parser, "generate": _generate_parser, "models": _models_parser}[command]()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler = {"serve": cmd_serve, "generate": cmd_generate, "models": cmd_models}[command]
    return handler(args)
