"""DWPose (``dw_openpose_full``): people boxed by a YOLOX-L detector (``yolox_l.onnx``), then 133 COCO-WholeBody
keypoints for each box from the DW-LL RTMPose model (``dw-ll_ucoco_384.onnx``), both from yzd-v/DWPose, drawn
as an OpenPose map (18 body points, two hands of 21 and a face of 68 + 2) as sd-webui-controlnet draws it.

The models are ONNX files run by ONNX Runtime, an optional dependency (``pip install onnxruntime`` or the
``dwpose`` extra). An ONNX file is a protobuf graph of standard operators, never a pickle: opening one runs
no Python code; a file ONNX Runtime cannot parse, or whose inputs and outputs are not the model's, is
refused with a message naming it.

What carries over from the extension (numbers, layouts, thresholds):
- detection: the picture letterboxed into 640x640 (scaled to fit, top-left, the rest 114), fed as RGB 0..255;
  the output rows (centre x, y, log width, height per anchor, objectness, 80 class scores) decoded on the
  stride 8, 16 and 32 grids; person score = objectness x class 0; boxes over 0.1 go through NMS (IoU 0.45,
  areas counted in whole pixels) and those over 0.3 are people;
- pose: each box grown 1.25x and to the model's 3:4 (288x384), cut out with an affine warp, normalised with
  ImageNet's mean and std; SimCC decoding: per keypoint the arg-max of its x and y vectors over the split
  ratio 2, its score the smaller of the two maxima;
- to OpenPose: the neck is the mean of the shoulders (found when both score over 0.3), the body re-ordered
  to OpenPose's 18, face 23..90, left hand 91..111, right hand 112..132; points scoring under 0.3 are dropped;
  the face gets the two eyes appended (OpenPose faces have 70 points).

One difference: with no person box the map is empty, where the extension (for some detector outputs) poses
the whole picture as one person.

Pure: numpy and OpenCV; ONNX Runtime is imported only when a file is opened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from .openpose import Face, Hand, Keypoint, Person, draw_bodies

DETECTOR_FILE, POSE_FILE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"
SOURCE = "https://huggingface.co/yzd-v/DWPose"
INSTALL = "pip install onnxruntime (or install Atelier with its \"dwpose\" extra: pip install -e \".[dwpose]\")"

DETECTOR_SIZE, PAD_VALUE, STRIDES = 640, 114, (8, 16, 32)
CANDIDATE_SCORE, NMS_IOU, PERSON_SCORE = 0.1, 0.45, 0.3
POSE_SIZE = (288, 384)  # (width, height) the DW-LL model takes, when its file does not say
BOX_PADDING, SIMCC_SPLIT, KEYPOINT_SCORE = 1.25, 2.0, 0.3
MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB
STD = np.array([58.395, 57.12, 57.375], np.float32)

WHOLEBODY_POINTS = 133
_NECK = -1
# For each OpenPose body slot, the COCO-WholeBody point it comes from (nose, neck, right arm, left arm, right
# leg, left leg, right/left eye, right/left ear); the neck is made from the shoulders (5, 6).
BODY_FROM_COCO = (0, _NECK, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE_POINTS, LEFT_HAND_POINTS, RIGHT_HAND_POINTS = range(23, 91), range(91, 112), range(112, 133)
RIGHT_EYE, LEFT_EYE = 14, 15  # OpenPose body slots


# --- detection ------------------------------------------------------------------------------------------------


def letterbox(rgb: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """The detector's input (1, 3, size, size) float32 of the picture scaled to fit (bilinear) into the
    top-left corner of a ``size`` square filled with 114, and the scale factor."""
    height, width = rgb.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = int(width * ratio), int(height * ratio)
    square = np.full((size, size, 3), PAD_VALUE, np.uint8)
    square[:new_h, :new_w] = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(square.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def anchor_count(size: int = DETECTOR_SIZE) -> int:
    return sum((size // s) ** 2 for s in STRIDES)


def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per anchor its grid cell (x, y) and its stride, level by level, row by row."""
    cells, strides = [], []
    for stride in STRIDES:
        side = size // stride
        ys, xs = np.mgrid[0:side, 0:side]
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        strides.append(np.full((side * side, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Indices of the boxes (x1, y1, x2, y2) kept, best first: each drops the later ones overlapping it by
    more than ``iou`` (sizes counted in whole pixels, +1, as the extension does)."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order = list(np.argsort(scores)[::-1])
    kept: list[int] = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        kept.append(int(best))
        if rest.size == 0:
            break
        w = np.maximum(0.0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1)
        h = np.maximum(0.0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1)
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = list(rest[overlap <= iou])
    return kept


def person_boxes(output: np.ndarray, ratio: float, size: int = DETECTOR_SIZE) -> np.ndarray:
    """The people (K, 4) as (x1, y1, x2, y2) in the picture's pixels, best first, from the detector's output
    (1, anchors, 5 + classes) for a picture letterboxed with ``ratio``."""
    rows = np.asarray(output, np.float32).reshape(-1, output.shape[-1])
    cells, strides = _grids(size)
    centres = (rows[:, :2] + cells) * strides
    sizes = np.exp(rows[:, 2:4]) * strides
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1) / ratio
    scores = rows[:, 4] * rows[:, 5]  # objectness x person
    candidates = np.nonzero(scores > CANDIDATE_SCORE)[0]
    kept = candidates[nms(boxes[candidates], scores[candidates])] if candidates.size else candidates
    return boxes[kept[scores[kept] > PERSON_SCORE]]


# --- pose ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    centre: tuple[float, float]
    scale: tuple[float, float]  # the cut-out's width and height in picture pixels (the model's aspect)


def crop_for(box: Sequence[float], size: tuple[int, int] = POSE_SIZE) -> Crop:
    """The region the pose model sees of ``box``: 1.25x the box, widened or heightened to the model's aspect."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = size[0] / size[1]
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    return Crop(((x1 + x2) / 2, (y1 + y2) / 2), (w, h))


def pose_input(rgb: np.ndarray, crop: Crop, size: tuple[int, int] = POSE_SIZE) -> np.ndarray:
    """The pose model's input (1, 3, height, width) float32: the crop warped to ``size``, normalised."""
    zoom = size[0] / crop.scale[0]
    matrix = np.array([[zoom, 0.0, size[0] / 2 - crop.centre[0] * zoom],
                       [0.0, zoom, size[1] / 2 - crop.centre[1] * zoom]], np.float32)
    warped = cv2.warpAffine(rgb, matrix, size, flags=cv2.INTER_LINEAR).astype(np.float32)
    return np.ascontiguousarray(((warped - MEAN) / STD).transpose(2, 0, 1)[None], dtype=np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, crop: Crop,
                 size: tuple[int, int] = POSE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (K, 2) in picture pixels and their scores (K,) from one person's SimCC vectors (K, 2W) and
    (K, 2H): the arg-max bins over the split ratio, mapped from the crop back to the picture."""
    simcc_x, simcc_y = simcc_x.reshape(-1, simcc_x.shape[-1]), simcc_y.reshape(-1, simcc_y.shape[-1])
    bins = np.stack([simcc_x.argmax(1), simcc_y.argmax(1)], 1).astype(np.float32)
    scores = np.minimum(simcc_x.max(1), simcc_y.max(1))
    bins[scores <= 0] = -1
    scale, centre = np.array(crop.scale, np.float32), np.array(crop.centre, np.float32)
    points = bins / SIMCC_SPLIT / np.array(size, np.float32) * scale + centre - scale / 2
    return points, scores


# --- to OpenPose ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    body: Person  # 18 OpenPose points, None where dropped
    left_hand: list[Keypoint | None] | None  # 21 points, None when none is found
    right_hand: list[Keypoint | None] | None
    face: list[Keypoint | None] | None  # 68 points and the two eyes


def _kept(points: np.ndarray, scores: np.ndarray, indices: Sequence[int]) -> list[Keypoint | None]:
    return [Keypoint(float(points[i, 0]), float(points[i, 1]), float(scores[i])) if scores[i] >= KEYPOINT_SCORE
            else None for i in indices]


def _part(points: list[Keypoint | None]) -> list[Keypoint | None] | None:
    return None if all(p is None for p in points) else points


def to_openpose(points: np.ndarray, scores: np.ndarray) -> Pose:
    """One person's 133 COCO-WholeBody keypoints (pixels) and scores as OpenPose's body, hands and face."""
    points, scores = np.asarray(points, np.float32), np.asarray(scores, np.float32)
    neck_found = scores[5] > KEYPOINT_SCORE and scores[6] > KEYPOINT_SCORE
    points = np.concatenate([points, points[[5, 6]].mean(0, keepdims=True)])
    scores = np.concatenate([scores, [1.0 if neck_found else 0.0]])
    body = _kept(points, scores, [len(points) - 1 if i == _NECK else i for i in BODY_FROM_COCO])
    face = _part(_kept(points, scores, FACE_POINTS))
    if face is not None:
        face += [body[RIGHT_EYE], body[LEFT_EYE]]
    return Pose(body, _part(_kept(points, scores, LEFT_HAND_POINTS)), _part(_kept(points, scores, RIGHT_HAND_POINTS)),
                face)


def _pixels(points: list[Keypoint | None]) -> list[tuple[float, float]]:
    return [(p.x, p.y) if p is not None else (-1.0, -1.0) for p in points]


def draw(poses: list[Pose], height: int, width: int) -> np.ndarray:
    """The map (height, width, 3) uint8: per person the OpenPose body, its left and right hand, its face."""
    hands: list[list[Hand]] = [[_pixels(h) for h in (p.left_hand, p.right_hand) if h is not None] for p in poses]
    faces: list[Face | None] = [_pixels(p.face) if p.face is not None else None for p in poses]
    return draw_bodies(np.zeros((height, width, 3), np.uint8), [p.body for p in poses], hands, faces)


# --- the ONNX models -----------------------------------------------------------------------------------------


class ModelRefused(ValueError):
    """An ONNX file that cannot be used (the message says why; the caller names the file)."""


def _int_dims(shape: Sequence[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


@dataclass
class Models:
    """The two ONNX Runtime sessions and the sizes their files say."""

    detector: Any
    pose: Any
    detector_size: int = DETECTOR_SIZE
    pose_size: tuple[int, int] = POSE_SIZE


def check_detector(session: Any) -> int:
    """The detector's square input size, or ModelRefused when the session is not a YOLOX detector."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) != 1 or len(outputs[0].shape) != 3:
        raise ModelRefused("it is not a YOLOX detector (one image input, one (1, anchors, 85) output)")
    dims = _int_dims(inputs[0].shape)
    size = dims[2] if dims[2] is not None and dims[2] == dims[3] else DETECTOR_SIZE
    anchors, width = _int_dims(outputs[0].shape)[1:]
    if (anchors is not None and anchors != anchor_count(size)) or (width is not None and width < 6):
        raise ModelRefused(f"it is not a YOLOX detector: its output is {list(outputs[0].shape)}, where a "
                           f"{size}x{size} YOLOX gives [1, {anchor_count(size)}, 85]")
    return size


def check_pose(session: Any) -> tuple[int, int]:
    """The pose model's input (width, height), or ModelRefused when it is not a SimCC whole-body model."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) != 2 \
            or any(len(o.shape) != 3 for o in outputs):
        raise ModelRefused("it is not a DWPose whole-body model (one image input, outputs simcc_x and simcc_y)")
    dims = _int_dims(inputs[0].shape)
    size = (dims[3], dims[2]) if dims[2] is not None and dims[3] is not None else POSE_SIZE
    points = {d for d in (_int_dims(o.shape)[1] for o in outputs) if d is not None}
    if points and points != {WHOLEBODY_POINTS}:
        raise ModelRefused(f"it gives {sorted(points)} keypoints, where DWPose gives {WHOLEBODY_POINTS} "
                           "(COCO-WholeBody)")
    return size


def open_session(path: Path, use_cuda: bool = False) -> Any:
    """An ONNX Runtime session of ``path`` (CUDA first when asked and available); ImportError when ONNX
    Runtime is not installed, ModelRefused when it cannot parse the file."""
    import onnxruntime  # optional: the caller turns its absence into a message saying how to install it

    providers = ["CPUExecutionProvider"]
    if use_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the files' own warnings mean nothing to artists
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ONNX Runtime raises its own (pybind) exception types for unreadable files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelRefused(f"it is not a valid ONNX model ({reason[:200]})") from exc


def detect_people(session: Any, rgb: np.ndarray, size: int = DETECTOR_SIZE) -> np.ndarray:
    feed, ratio = letterbox(rgb, size)
    output = session.run(None, {session.get_inputs()[0].name: feed})[0]
    return person_boxes(output, ratio, size)


def estimate(session: Any, rgb: np.ndarray, box: Sequence[float],
             size: tuple[int, int] = POSE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One person's 133 keypoints (pixels) and scores. One crop per run: the file may fix the batch to 1."""
    crop = crop_for(box, size)
    simcc_x, simcc_y = session.run(None, {session.get_inputs()[0].name: pose_input(rgb, crop, size)})[:2]
    return decode_simcc(simcc_x[0], simcc_y[0], crop, size)


def pose_map(models: Models, rgb: np.ndarray) -> np.ndarray:
    """The DWPose map of an RGB uint8 picture, the picture's size."""
    poses = [to_openpose(*estimate(models.pose, rgb, box, models.pose_size))
             for box in detect_people(models.detector, rgb, models.detector_size)]
    return draw(poses, *rgb.shape[:2])


def load(store: Any, files: Mapping[str, Path], field: str = "module") -> Models:
    """The two models from the files found (by catalog name), opened once and kept by ``store`` (an
    AnnotatorStore). AnnotatorMissingError saying how to install ONNX Runtime when it is missing;
    AnnotatorFileError naming a file that is not the model it should be."""
    from ..annotator_store import AnnotatorFileError
    from ..annotators import AnnotatorMissingError

    def opened(name: str, check: Callable[[Any], Any]) -> tuple[Any, Any]:
        def open_file(path: Path) -> tuple[Any, Any]:
            try:
                session = open_session(path, use_cuda=store.device.type == "cuda")
                return session, check(session)
            except ImportError as exc:  # not installed, or a broken install (a missing shared library)
                broken = "" if isinstance(exc, ModuleNotFoundError) else f" (importing it failed: {exc})"
                raise AnnotatorMissingError(
                    f"The dw_openpose_full preprocessor runs its models with ONNX Runtime, which is not installed"
                    f"{broken}: {INSTALL}, then restart Atelier.", field) from exc
            except ModelRefused as exc:
                raise AnnotatorFileError(f"{path.name} ({path}): {exc}. Get the original file again from {SOURCE} "
                                         f"and put it in the annotators folder.", field) from exc

        return cast(tuple[Any, Any], store.keep(files[name], open_file, field))

    detector, detector_size = opened(DETECTOR_FILE, check_detector)
    pose, pose_size = opened(POSE_FILE, check_pose)
    return Models(detector, pose, detector_size, pose_size)
