"""A job that uses a second checkpoint: the refiner (the last steps of a pass on another model's UNet, A1111 1.6)
and the hires checkpoint (the hires pass on another model).

Both hand latents from one model to the other, so the two must share a latent space; a refiner also replaces
the UNet inside a running pipeline, so it must take the same input channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..models.loader import LoadedModel
from .composable import swap_unet
from .conditioning import PromptEncoder, ScheduledConditioning
from .networks import JobNetworks
from .request import RequestError


def _family(model: LoadedModel) -> str:
    return "SDXL" if model.is_sdxl else "SD 1.x/2.x"


def check_same_latent_space(main: LoadedModel, other: LoadedModel, field: str) -> None:
    """Refuse a pair whose latents mean different pictures (SD 1.x with SDXL, or a VAE of another shape)."""
    vae_a, vae_b = main.components["vae"].config, other.components["vae"].config
    same = (main.is_sdxl == other.is_sdxl and int(vae_a.latent_channels) == int(vae_b.latent_channels)
            and float(vae_a.scaling_factor) == float(vae_b.scaling_factor)
            and len(vae_a.block_out_channels) == len(vae_b.block_out_channels))
    if not same:
        raise RequestError(field, f"{other.display_name} ({_family(other)}) and {main.display_name} "
                                  f"({_family(main)}) draw in different latent spaces: choose a checkpoint of "
                                  "the same family")


def check_refiner(main: LoadedModel, refiner: LoadedModel) -> None:
    check_same_latent_space(main, refiner, "refiner_checkpoint")
    channels_a = int(main.components["unet"].config.in_channels)
    channels_b = int(refiner.components["unet"].config.in_channels)
    if channels_a != channels_b:
        kind = "an inpainting" if max(channels_a, channels_b) == channels_a else "a normal"
        raise RequestError("refiner_checkpoint", f"{refiner.display_name} takes {channels_b} latent channels and "
                                                 f"{main.display_name}, {kind} model, {channels_a}: choose a "
                                                 "refiner of the same kind")


def switch_step(switch_at: float, total: int) -> int | None:
    """Steps the main model runs before the refiner takes over: the first step whose completed fraction reaches
    ``switch_at`` (A1111 1.6 counts by sampling steps). None: the pass ends before that."""
    step = math.ceil(switch_at * total - 1e-9)
    return step if step < total else None


@dataclass
class Refiner:
    """The refiner of one job, ready to take over a pass: its model, and its own prompt encoder and networks
    (the prompt is encoded again by the refiner's text encoders; its LoRAs are applied to it)."""

    model: LoadedModel
    switch_at: float
    encoder: PromptEncoder
    networks: JobNetworks
    title: str  # "name [hash]", as A1111's infotext names it
    device: torch.device

    def infotext_params(self) -> dict[str, Any]:
        return {"Refiner": self.title, "Refiner switch at": self.switch_at}


@dataclass
class RefinerTurn:
    """One pipeline call's refiner: the prompts it sees (encoded by its text encoders), and the UNet to give back."""

    refiner: Refiner
    conditioning: ScheduledConditioning
    main_unet: Any
    switched: bool = False

    def take_over(self, pipe: Any) -> None:
        unet, device = self.refiner.model.components["unet"], self.refiner.device
        if device.type != "cpu":
            unet.to(device)
            if next(self.main_unet.parameters()).device.type != "meta":  # sequential offload keeps no weights there
                self.main_unet.to("cpu")  # an offload hook brings it back when the main model next runs
        swap_unet(pipe, unet, self.conditioning)  # behind the AND proxy when one is installed
        self.switched = True

    def give_back(self, pipe: Any) -> None:
        if not self.switched:
            return
        swap_unet(pipe, self.main_unet)
        if self.refiner.device.type != "cpu":
            self.refiner.model.components["unet"].to("cpu")
