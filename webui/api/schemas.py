"""Request and response bodies of AUTOMATIC1111's /sdapi/v1, with A1111's field names, types and defaults.

Clients (Krita and Photoshop plugins, bots, scripts) send these exact fields and parse these exact
shapes, so they stay A1111's even where Atelier would name things differently. Fields A1111 accepts
that Atelier has no feature for are accepted too (listed here so they show in /docs); what the
request turns into is decided in ``convert``. Unknown extra fields are ignored, as A1111 does.
Where A1111's API has a fixed default that Atelier keeps as a setting (steps, sampler, size, and through
override_settings clip skip and VAE) the field defaults to None and the setting applies, as on the page.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Txt2ImgRequest(_Lenient):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = Field(None, description="names from styles.csv, applied to both prompts")
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = Field(None, description='e.g. "Euler a", "DPM++ 2M"; legacy "DPM++ 2M Karras" works')
    sampler_index: str | None = Field(None, description="used when sampler_name is empty (A1111's older field); "
                                      "neither given: the server's default sampler setting")
    scheduler: str | None = Field(None, description='schedule type: "Automatic", "Karras", "karras", ...')
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = Field(None, description="default: the server's default steps setting")
    cfg_scale: float = 7.0
    width: int | None = Field(None, description="default: the server's default size setting, else the model's")
    height: int | None = Field(None, description="default: the server's default size setting, else the model's")
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = Field(None, description="img2img: default 0.75")
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        None, description="options for this request only, e.g. sd_model_checkpoint, CLIP_stop_at_last_layers, sd_vae")
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float | None = Field(None, description="the hires pass's CFG scale (default: cfg_scale)")
    force_task_id: str | None = Field(None, description="your id for this job; /interrupt and /skip accept it")
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] | None = Field(None, description="base64 images (a data: URL prefix is accepted)")
    resize_mode: int = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill, 3 = 0")
    denoising_strength: float | None = Field(None, description="img2img: default 0.75")
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="base64 mask, white = repaint")
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description='"only masked": repaint a crop around the mask at full size')
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNGs with their parameters text chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text: all_prompts, all_seeds, seed, infotexts, width, height, ...")


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 over the caller's current job")
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class InterruptRequest(_Lenient):
    """Optional body of /interrupt and /skip: A1111 clients may name their job."""

    id_task: str | None = None
    task_id: str | None = None


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int | None = Field(None, description="vector width (768 for SD 1.x); null where not read")
    vectors: int | None = Field(None, description="tokens the embedding takes in a prompt")


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class PngInfoRequest(_Lenient):
    image: str = Field(description="base64 image (a data: URL prefix is accepted)")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ExtrasBaseRequest(_Lenient):
    resize_mode: int = Field(0, description="0: enlarge by upscaling_resize; 1: to upscaling_resize_w x "
                             "upscaling_resize_h")
    show_extras_results: bool = Field(True, description="accepted; the pictures are always sent, as A1111's API does")
    gfpgan_visibility: float = Field(0, description="face restoration is not available: ignored, with a note")
    codeformer_visibility: float = Field(0, description="face restoration is not available: ignored, with a note")
    codeformer_weight: float = 0
    upscaling_resize: float = Field(2, description="scale factor, more than 0 and at most 8 (resize_mode 0)")
    upscaling_resize_w: int = Field(512, description="target width, 1 to 4096 (resize_mode 1)")
    upscaling_resize_h: int = Field(512, description="target height, 1 to 4096 (resize_mode 1)")
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop to exactly w x h (else keep the shape)")
    upscaler_1: str | None = Field("None", description="a name from /sdapi/v1/upscalers; None leaves the picture as "
                                   "it is")
    upscaler_2: str | None = Field("None", description="a second upscaler blended over the first")
    extras_upscaler_2_visibility: float = Field(0, description="how much of upscaler_2 shows, 0 to 1")
    upscale_first: bool = False
    save_images: bool = Field(False, description="Atelier's: also save the results in outputs/extras-images "
                              "(A1111's API does not save them)")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image (a data: URL prefix is accepted)")


class FileData(_Lenient):
    data: str = Field(description="base64 image")
    name: str = Field("", description="its file name; a saved result is named after it")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(description="the pictures to work on")  # noqa: N815 (A1111's name)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = Field(description="what was done, as HTML (A1111's postprocessing text), and any notes")
    image: str | None = Field(None, description="base64 PNG with its parameters text chunk")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]
