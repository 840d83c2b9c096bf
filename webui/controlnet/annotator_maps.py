"""The maps of the preprocessors that run an annotator network, as sd-webui-controlnet makes them.

Every map is made at the preprocessor resolution: the picture is scaled so its short side is the
resolution, padded on the right and bottom to multiples of 64 by repeating its edge pixels (the networks
halve it up to 6 times), run, and the padding cut off again. Soft edges (HED, PiDiNet) may be "safe":
quantised to three levels, so the ControlNet cannot read hidden detail in faint strokes; the scribble
variants thin them to one-pixel ridges (non-maximum suppression), blur and threshold them into strokes.
Line art comes out white on black (the networks draw dark lines on white). Surface normals (normal_bae) come
out in colour: x, y, z of each unit normal as red, green, blue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .annotator_store import AnnotatorStore
from .nets import depth_anything, dwpose, hed, lineart, mlsd, normal_bae, openpose, pidinet


@dataclass(frozen=True)
class Job:
    """What one preprocessor run needs: the store, the files found (by catalog name), and the field to blame."""

    store: AnnotatorStore
    files: dict[str, Path]
    field: str


def _plain(cls: Callable[[], torch.nn.Module]) -> Callable[[dict[str, torch.Tensor]], torch.nn.Module]:
    """A builder for a network whose shape does not depend on the file."""
    return lambda tensors: cls()


def pad64(size: int) -> int:
    return int(np.ceil(size / 64.0) * 64 - size)


def resize_with_pad(img: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Short side scaled to ``resolution`` (cubic up, area down), then edge-padded to multiples of 64;
    returns the padded picture and the (height, width) to crop the result back to."""
    height, width = img.shape[:2]
    k = float(resolution) / float(min(height, width))
    target_h, target_w = int(np.round(height * k)), int(np.round(width * k))
    if (target_h, target_w) != (height, width):
        img = cv2.resize(img, (target_w, target_h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(img, [[0, pad64(target_h)], [0, pad64(target_w)], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), (target_h, target_w)


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """Values in 0..1 quantised to ``step + 1`` levels (0, 1/step, ..., 1): the extension's "safe" edges."""
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


# Horizontal, vertical and the two diagonal neighbourhoods.
_DIRECTIONS = [np.array(k, dtype=np.uint8) for k in (
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]


def nms(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Blurred, kept only where a pixel is a maximum along some direction, then thresholded to 0 / 255."""
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    ridges = np.zeros_like(x)
    for kernel in _DIRECTIONS:
        np.putmask(ridges, cv2.dilate(x, kernel=kernel) == x, x)
    out = np.zeros_like(ridges, dtype=np.uint8)
    out[ridges > threshold] = 255
    return out


def scribble(edges: np.ndarray) -> np.ndarray:
    """Soft edges (uint8) -> white strokes of a few pixels on black, as the scribble preprocessors draw them."""
    strokes = cv2.GaussianBlur(nms(edges, 127, 3.0), (0, 0), 3.0)
    return np.where(strokes > 4, 255, 0).astype(np.uint8)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return (x * 255.0).clip(0, 255).astype(np.uint8)


def _tensor(img: np.ndarray, device: torch.device, scale: float, offset: float = 0.0) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(img)).to(device=device, dtype=torch.float32)
    return (x * scale + offset).permute(2, 0, 1).unsqueeze(0)


def _hed_edges(img: np.ndarray, res: int, job: Job) -> np.ndarray:
    net = job.store.load(job.files[hed.FILE], "HED soft edge (ControlNetHED.pth)", _plain(hed.HEDNet), field=job.field)
    padded, (h, w) = resize_with_pad(img, res)
    with job.store.running(net) as device:
        edges = net(_tensor(padded, device, 1.0)).float().cpu().numpy()
    return edges[:h, :w]


def _pidinet_edges(img: np.ndarray, res: int, job: Job) -> np.ndarray:
    net = job.store.load(job.files[pidinet.FILE], "PiDiNet soft edge (table5_pidinet.pth)", _plain(pidinet.PiDiNet),
                         pidinet.file_keys, job.field)
    padded, (h, w) = resize_with_pad(img, res)
    with job.store.running(net) as device:
        edges = net(_tensor(padded[:, :, ::-1], device, 1 / 255.0)).float().cpu().numpy()  # the net wants BGR
    return edges[:h, :w]


def _sketch(img: np.ndarray, res: int, job: Job, name: str) -> np.ndarray:
    net = job.store.load(job.files[name], f"line art ({name})", _plain(lineart.SketchGenerator), lineart.file_keys,
                         job.field)
    padded, (h, w) = resize_with_pad(img, res)
    with job.store.running(net) as device:
        lines = net(_tensor(padded, device, 1 / 255.0)).float().cpu().numpy()
    return 255 - to_uint8(lines[:h, :w])


def _anime(img: np.ndarray, res: int, job: Job) -> np.ndarray:
    net = job.store.load(job.files[lineart.ANIME_FILE], "anime line art (netG.pth)", _plain(lineart.AnimeUNet),
                         lineart.file_keys, job.field)
    padded, (h, w) = resize_with_pad(img, res)
    ph, pw = padded.shape[:2]
    size = (256 * int(np.ceil(pw / 256.0)), 256 * int(np.ceil(ph / 256.0)))  # the U-Net halves 8 times
    feed = cv2.resize(padded, size, interpolation=cv2.INTER_CUBIC)
    with job.store.running(net) as device:
        lines = net(_tensor(feed, device, 1 / 127.5, -1.0)).float().cpu().numpy() * 127.5 + 127.5
    lines = cv2.resize(lines, (pw, ph), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    return 255 - lines[:h, :w]


def _mlsd(img: np.ndarray, res: int, score_threshold: float, distance_threshold: float, job: Job) -> np.ndarray:
    net = job.store.load(job.files[mlsd.FILE], "M-LSD (mlsd_large_512_fp32.pth)", _plain(mlsd.MLSDNet), field=job.field)
    padded, (h, w) = resize_with_pad(img, res)
    with job.store.running(net) as device:
        output = net(mlsd.to_input(padded).to(device))
        lines = mlsd.segments(output, score_threshold, distance_threshold)
    drawn = np.zeros(padded.shape[:2], np.uint8)
    for x0, y0, x1, y1 in lines.astype(int):  # truncated to whole pixels, one pixel wide, as the extension
        cv2.line(drawn, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    return drawn[:h, :w]


def _openpose(img: np.ndarray, res: int, job: Job, body: bool = True, hands: bool = False,
              face: bool = False) -> np.ndarray:
    """People found by the body net; their hands and faces looked for where the body says they are."""
    nets = {"body": job.store.load(job.files[openpose.FILE], "OpenPose body (body_pose_model.pth)",
                                   _plain(openpose.BodyPoseNet), field=job.field)}
    if hands:
        nets["hand"] = job.store.load(job.files[openpose.HAND_FILE], "OpenPose hand (hand_pose_model.pth)",
                                      _plain(openpose.HandPoseNet), field=job.field)
    if face:
        nets["face"] = job.store.load(job.files[openpose.FACE_FILE], "OpenPose face (facenet.pth)",
                                      _plain(openpose.FaceNet), field=job.field)
    padded, (h, w) = resize_with_pad(img, res)
    bgr = np.ascontiguousarray(padded[:, :, ::-1])  # the CMU nets were trained on BGR
    found_hands: list[list[openpose.Hand]] = []
    found_faces: list[openpose.Face | None] = []
    with job.store.running(*nets.values()) as device:
        people = openpose.find_people(*openpose.network_maps(nets["body"], bgr, device))
        for person in people:
            if "hand" in nets:
                found_hands.append([
                    openpose.place_hand(openpose.hand_joints(nets["hand"], bgr[y:y + side, x:x + side], device),
                                        (x, y, side)) for x, y, side in openpose.hand_boxes(person, *bgr.shape[:2])])
            box = openpose.face_box(person, *bgr.shape[:2]) if "face" in nets else None
            if box is None:
                found_faces.append(None)
                continue
            x, y, side = box
            points = openpose.face_landmarks(nets["face"], bgr[y:y + side, x:x + side], device)
            found_faces.append(openpose.place_hand(points, box))
    canvas = openpose.draw_bodies(np.zeros_like(padded), people, found_hands, found_faces, body=body)
    return canvas[:h, :w]


def _depth_anything(img: np.ndarray, res: int, a: float, b: float, job: Job) -> np.ndarray:
    net = job.store.load(job.files[depth_anything.FILE], "Depth Anything (depth_anything_vitl14.pth)",
                         depth_anything.build, depth_anything.to_transformers, job.field)
    padded, (h, w) = resize_with_pad(img, res)
    with job.store.running(net) as device:
        depth = depth_anything.predict(net, padded, device)
    return depth[:h, :w]


def _normal_bae(img: np.ndarray, res: int, a: float, b: float, job: Job) -> np.ndarray:
    net = job.store.load(job.files[normal_bae.FILE], "normal_bae surface normal (scannet.pt)",
                         _plain(normal_bae.NormalBaeNet), normal_bae.file_keys, job.field)
    padded, (h, w) = resize_with_pad(img, res)
    with job.store.running(net) as device:
        normals = normal_bae.predict(net, padded, device)
    return normals[:h, :w]


def _dw_openpose(img: np.ndarray, res: int, job: Job) -> np.ndarray:
    models = dwpose.load(job.store, job.files, job.field)  # ONNX Runtime sessions, not torch networks
    padded, (h, w) = resize_with_pad(img, res)
    with job.store.running():
        return dwpose.pose_map(models, padded)[:h, :w]


Runner = Callable[[np.ndarray, int, float, float, Job], np.ndarray]

RUNNERS: dict[str, Runner] = {
    "hed": lambda img, res, a, b, job: to_uint8(_hed_edges(img, res, job)),
    "hed_safe": lambda img, res, a, b, job: to_uint8(safe_step(_hed_edges(img, res, job))),
    "scribble_hed": lambda img, res, a, b, job: scribble(to_uint8(_hed_edges(img, res, job))),
    "pidinet": lambda img, res, a, b, job: to_uint8(_pidinet_edges(img, res, job)),
    "pidinet_safe": lambda img, res, a, b, job: to_uint8(safe_step(_pidinet_edges(img, res, job))),
    "pidinet_scribble": lambda img, res, a, b, job: scribble(to_uint8(_pidinet_edges(img, res, job))),
    "lineart": lambda img, res, a, b, job: _sketch(img, res, job, lineart.REALISTIC_FILE),
    "lineart_coarse": lambda img, res, a, b, job: _sketch(img, res, job, lineart.COARSE_FILE),
    "lineart_anime": lambda img, res, a, b, job: _anime(img, res, job),
    "mlsd": _mlsd,
    "openpose": lambda img, res, a, b, job: _openpose(img, res, job),
    "openpose_hand": lambda img, res, a, b, job: _openpose(img, res, job, hands=True),
    "openpose_face": lambda img, res, a, b, job: _openpose(img, res, job, face=True),
    "openpose_faceonly": lambda img, res, a, b, job: _openpose(img, res, job, body=False, face=True),
    "openpose_full": lambda img, res, a, b, job: _openpose(img, res, job, hands=True, face=True),
    "depth_anything": _depth_anything,
    "normal_bae": _normal_bae,
    "dw_openpose_full": lambda img, res, a, b, job: _dw_openpose(img, res, job),
}


def run(name: str, img: np.ndarray, res: int, a: float, b: float, job: Job) -> np.ndarray:
    """The RGB uint8 map preprocessor ``name`` makes of ``img`` (RGB uint8)."""
    out = RUNNERS[name](img, res, a, b, job)
    return out if out.ndim == 3 else cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)
