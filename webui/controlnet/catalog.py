"""The preprocessors ("modules") Atelier knows, as sd-webui-controlnet names and lists them.

Each has the extension's name (``canny``), the label its UI and ``/controlnet/module_list?alias_names=true``
show (``invert (from white bg & black line)``), its sliders (resolution, threshold A, threshold B: label,
range, default) and tags. Weight-free ones run here (``preprocess.py``); the others need annotator weights,
which Atelier never downloads: they are listed with the files to put in ``models/ControlNetAnnotators/``.

Pure data, no imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

ANNOTATORS_FOLDER = "ControlNetAnnotators"  # under models/
LLLYASVIEL = "https://huggingface.co/lllyasviel/Annotators"


@dataclass(frozen=True)
class Slider:
    label: str = ""
    minimum: float = 0.0
    maximum: float = 1.0
    value: float = 0.5
    step: float = 0.01
    visible: bool = True


HIDDEN = Slider(visible=False)  # the extension's unused slider: default 0.5 in [0, 1]
RESOLUTION = Slider("Resolution", 64, 2048, 512, 8)


@dataclass(frozen=True)
class AnnotatorFile:
    name: str  # file name to look for anywhere under models/ControlNetAnnotators/
    source: str  # where users get it


@dataclass(frozen=True)
class Preprocessor:
    name: str
    label: str
    priority: int = 0  # the extension's sorting_priority: higher comes first
    tags: tuple[str, ...] = ()
    resolution: Slider = RESOLUTION
    slider_1: Slider = HIDDEN
    slider_2: Slider = HIDDEN
    annotators: tuple[AnnotatorFile, ...] = ()  # empty: weight-free, runs here
    union_type: int | None = None  # ControlNet-Union control type (xinsir's order), None: none fits
    soft_in_hires: bool = False  # the extension forces "soft injection" in the hires pass for these

    @property
    def weight_free(self) -> bool:
        return not self.annotators

    @property
    def sliders(self) -> list[dict[str, float | str]]:
        """The extension's ``module_detail[...]["sliders"]``: the visible ones, resolution first."""
        return [{"name": s.label, "value": s.value, "min": s.minimum, "max": s.maximum, "step": s.step}
                for s in (self.resolution, self.slider_1, self.slider_2) if s.visible]


# Union ControlNet control types (xinsir ControlNet++: 0 openpose, 1 depth, 2 soft edge, 3 hard edge,
# 4 normal, 5 segmentation, 6 tile (promax), 7 inpaint (promax)).
POSE, DEPTH, SOFT_EDGE, HARD_EDGE, NORMAL, SEGMENT, TILE = range(7)


def _lllyasviel(*names: str) -> tuple[AnnotatorFile, ...]:
    return tuple(AnnotatorFile(name, LLLYASVIEL) for name in names)


_OPENPOSE = _lllyasviel("body_pose_model.pth")
_HANDS = _lllyasviel("hand_pose_model.pth")
_FACE = _lllyasviel("facenet.pth")
_MIDAS = _lllyasviel("dpt_hybrid-midas-501f0c75.pt")
_HED = _lllyasviel("ControlNetHED.pth")
_PIDI = _lllyasviel("table5_pidinet.pth")
_NEAR, _BACKGROUND = Slider("Remove Near %", 0, 100, 0, 0.1), Slider("Remove Background %", 0, 100, 0, 0.1)

PREPROCESSORS: tuple[Preprocessor, ...] = (
    Preprocessor("none", "none", 10, union_type=HARD_EDGE),
    Preprocessor("invert", "invert (from white bg & black line)", 20, ("Canny", "Lineart", "Scribble", "Sketch",
                 "MLSD"), resolution=Slider("Resolution", 64, 2048, 512, 8, visible=False), union_type=HARD_EDGE),
    Preprocessor("canny", "canny", 100, ("Canny",), slider_1=Slider("Low Threshold", 0, 256, 100, 1),
                 slider_2=Slider("High Threshold", 0, 256, 200, 1), union_type=HARD_EDGE, soft_in_hires=True),
    Preprocessor("lineart_standard", "lineart_standard (from white bg & black line)", 100, ("Lineart",),
                 union_type=HARD_EDGE),
    Preprocessor("scribble_xdog", "scribble_xdog", 0, ("Scribble", "Sketch"),
                 slider_1=Slider("XDoG Threshold", 1, 64, 32, 1), union_type=SOFT_EDGE),
    Preprocessor("threshold", "threshold", 0, (), slider_1=Slider("Binarization Threshold", 0, 255, 127, 1),
                 union_type=HARD_EDGE),
    Preprocessor("tile_resample", "tile_resample", 100, ("Tile", "Blur"),
                 slider_1=Slider("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01), union_type=TILE),
    Preprocessor("blur_gaussian", "blur_gaussian", 0, ("Tile", "Blur"), slider_1=Slider("Sigma", 0.01, 64.0, 9.0),
                 union_type=TILE),
    Preprocessor("shuffle", "shuffle", 100, ("Shuffle",)),
    # Annotators with weights: listed so clients see the extension's names; they run only once their files
    # are in models/ControlNetAnnotators/ (and an implementation exists, see annotators.py).
    Preprocessor("openpose", "openpose", 0, ("OpenPose",), annotators=_OPENPOSE, union_type=POSE),
    Preprocessor("openpose_face", "openpose_face", 0, ("OpenPose",), annotators=_OPENPOSE + _FACE, union_type=POSE),
    # Face only still finds the people with the body net (it draws only their faces).
    Preprocessor("openpose_faceonly", "openpose_faceonly", 0, ("OpenPose",), annotators=_OPENPOSE + _FACE,
                 union_type=POSE),
    Preprocessor("openpose_full", "openpose_full", 100, ("OpenPose",), annotators=_OPENPOSE + _HANDS + _FACE,
                 union_type=POSE),
    Preprocessor("openpose_hand", "openpose_hand", 0, ("OpenPose",), annotators=_OPENPOSE + _HANDS,
                 union_type=POSE),
    Preprocessor("dw_openpose_full", "dw_openpose_full", 0, ("OpenPose",),
                 annotators=(AnnotatorFile("yolox_l.onnx", "https://huggingface.co/yzd-v/DWPose"),
                             AnnotatorFile("dw-ll_ucoco_384.onnx", "https://huggingface.co/yzd-v/DWPose")),
                 union_type=POSE),
    Preprocessor("depth", "depth_midas", 100, ("Depth",), annotators=_MIDAS, union_type=DEPTH),
    Preprocessor("depth_leres", "depth_leres", 0, ("Depth",), annotators=_lllyasviel("res101.pth"),
                 slider_1=_NEAR, slider_2=_BACKGROUND,
                 union_type=DEPTH),
    Preprocessor("depth_leres++", "depth_leres++", 0, ("Depth",),
                 annotators=_lllyasviel("res101.pth", "latest_net_G.pth"),
                 slider_1=_NEAR, slider_2=_BACKGROUND,
                 union_type=DEPTH),
    Preprocessor("depth_zoe", "depth_zoe", 0, ("Depth",), annotators=_lllyasviel("ZoeD_M12_N.pt"), union_type=DEPTH),
    Preprocessor("depth_anything", "depth_anything", 0, ("Depth",),
                 annotators=(AnnotatorFile("depth_anything_vitl14.pth",
                                           "https://huggingface.co/LiheYoung/Depth-Anything (checkpoints/)"),),
                 union_type=DEPTH),
    Preprocessor("lineart", "lineart_realistic", 0, ("Lineart",), annotators=_lllyasviel("sk_model.pth"),
                 union_type=HARD_EDGE),
    Preprocessor("lineart_coarse", "lineart_coarse", 0, ("Lineart",), annotators=_lllyasviel("sk_model2.pth"),
                 union_type=HARD_EDGE),
    Preprocessor("lineart_anime", "lineart_anime", 0, ("Lineart",), annotators=_lllyasviel("netG.pth"),
                 union_type=HARD_EDGE),
    Preprocessor("lineart_anime_denoise", "lineart_anime_denoise", 0, ("Lineart",),
                 annotators=_lllyasviel("erika.pth"), union_type=HARD_EDGE),
    Preprocessor("hed", "softedge_hed", 0, ("SoftEdge",), annotators=_HED, union_type=SOFT_EDGE),
    Preprocessor("hed_safe", "softedge_hedsafe", 0, ("SoftEdge",), annotators=_HED, union_type=SOFT_EDGE),
    Preprocessor("pidinet", "softedge_pidinet", 100, ("SoftEdge",), annotators=_PIDI, union_type=SOFT_EDGE),
    Preprocessor("pidinet_safe", "softedge_pidisafe", 0, ("SoftEdge",), annotators=_PIDI, union_type=SOFT_EDGE),
    Preprocessor("scribble_hed", "scribble_hed", 0, ("Scribble", "Sketch"), annotators=_HED, union_type=SOFT_EDGE),
    Preprocessor("pidinet_scribble", "scribble_pidinet", 100, ("Scribble", "Sketch"), annotators=_PIDI,
                 union_type=SOFT_EDGE),
    Preprocessor("normal_map", "normal_midas", 0, ("NormalMap",), annotators=_MIDAS,
                 slider_1=Slider("Normal Background Threshold", 0.0, 1.0, 0.4, 0.01), union_type=NORMAL),
    Preprocessor("normal_bae", "normal_bae", 100, ("NormalMap",), annotators=_lllyasviel("scannet.pt"),
                 union_type=NORMAL),
    Preprocessor("mlsd", "mlsd", 100, ("MLSD",), annotators=_lllyasviel("mlsd_large_512_fp32.pth"),
                 slider_1=Slider("MLSD Value Threshold", 0.01, 2.0, 0.1, 0.01),
                 slider_2=Slider("MLSD Distance Threshold", 0.01, 20.0, 0.1, 0.01), union_type=HARD_EDGE,
                 soft_in_hires=True),
    # Weight-free, with the unit's (or the Inpaint tab's) mask: see inpaint.py.
    Preprocessor("inpaint", "inpaint_global_harmonious", 0, ("Inpaint",),
                 resolution=Slider("Resolution", 64, 2048, 512, 8, visible=False)),
    Preprocessor("inpaint_only", "inpaint_only", 100, ("Inpaint",),
                 resolution=Slider("Resolution", 64, 2048, 512, 8, visible=False)),
)

_BY_NAME = {p.name: p for p in PREPROCESSORS}
_BY_LABEL = {p.label: p for p in PREPROCESSORS}


def find(module: str | None) -> Preprocessor | None:
    """A preprocessor by its name or its label ("none" when ``module`` is None or empty, as the extension)."""
    if module is None or (isinstance(module, str) and not module.strip()):
        return _BY_NAME["none"]
    if not isinstance(module, str):
        return None
    key = module.strip()
    return _BY_LABEL.get(key) or _BY_NAME.get(key) or _BY_NAME.get(key.lower()) or _BY_LABEL.get(key.lower())


def sorted_preprocessors() -> list[Preprocessor]:
    """The extension's list order: "none", then by priority (highest first), then by label, descending."""
    rest = [p for p in PREPROCESSORS if p.name != "none"]
    rest.sort(key=lambda p: str(p.priority).zfill(8) + p.label, reverse=True)
    return [_BY_NAME["none"], *rest]


def module_list(alias_names: bool = False) -> list[str]:
    """``GET /controlnet/module_list``'s ``module_list``: names, or labels with ``alias_names``."""
    return [p.label if alias_names else p.name for p in sorted_preprocessors()]


def module_detail(alias_names: bool = False) -> dict[str, dict[str, object]]:
    """``module_detail``: per module, whether it needs no model file and its visible sliders."""
    return {(p.label if alias_names else p.name): {"model_free": False, "sliders": p.sliders}
            for p in sorted_preprocessors()}
