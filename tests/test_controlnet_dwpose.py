"""DWPose (``dw_openpose_full``): the pure steps on known numbers (letterbox, YOLOX box decoding and NMS, SimCC
decoding, the 133 -> OpenPose mapping, the drawing), and the whole preprocessor through the preview / detect
entry with tiny ONNX models that have the real files' input and output names and shapes.

The tiny models are written here as ONNX protobuf bytes (the ``onnx`` package is not a dependency): each
returns constant outputs (plus 0 x the mean of its input, so the graph reads the picture), chosen so that
the pose lands where the test says."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.controlnet import preprocess
from webui.controlnet.annotator_store import AnnotatorFileError, AnnotatorStore
from webui.controlnet.annotators import AnnotatorMissingError
from webui.controlnet.nets import dwpose
from webui.controlnet.nets.openpose import COLOURS

# --- ONNX protobuf, by hand (field numbers from onnx.proto) ---------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _len(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


FLOAT = 1


def _value_info(name: str, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_len(1, _int(1, d)) for d in shape)  # TensorShapeProto.dim { dim_value }
    return _len(1, name) + _len(2, _len(1, _int(1, FLOAT) + _len(2, dims)))  # TypeProto.tensor_type


def _initializer(name: str, array: np.ndarray) -> bytes:
    data = np.ascontiguousarray(array, "<f4")
    return b"".join(_int(1, d) for d in data.shape) + _int(2, FLOAT) + _len(8, name) + _len(9, data.tobytes())


def _node(op: str, inputs: list[str], outputs: list[str], **ints: int) -> bytes:
    body = b"".join(_len(1, i) for i in inputs) + b"".join(_len(2, o) for o in outputs) + _len(4, op)
    for name, value in ints.items():  # AttributeProto: name, i, type INT (2)
        body += _len(5, _len(1, name) + _int(3, value) + _int(20, 2))
    return body


def constant_model(input_name: str, input_shape: tuple[int, ...], outputs: dict[str, np.ndarray]) -> bytes:
    """An ONNX model (opset 13) whose outputs are ``outputs`` + 0 x mean(input)."""
    nodes = [_node("ReduceMean", [input_name], ["mean"], keepdims=0), _node("Mul", ["mean", "zero"], ["nothing"])]
    nodes += [_node("Add", [f"{name}_value", "nothing"], [name]) for name in outputs]
    constants = {"zero": np.zeros((), np.float32), **{f"{name}_value": value for name, value in outputs.items()}}
    graph = b"".join(_len(1, n) for n in nodes) + _len(2, "tiny") \
        + b"".join(_len(5, _initializer(k, v)) for k, v in constants.items()) \
        + _len(11, _value_info(input_name, input_shape)) \
        + b"".join(_len(12, _value_info(k, v.shape)) for k, v in outputs.items())
    return _int(1, 8) + _len(2, "atelier-tests") + _len(7, graph) + _len(8, _len(1, "") + _int(2, 13))


# --- what the real files would output ---------------------------------------------------------------------------

ANCHORS = 80 * 80 + 40 * 40 + 20 * 20  # strides 8, 16 and 32 over 640x640
LEVEL_START = {8: 0, 16: 6400, 32: 8000}


Box = tuple[float, float, float, float]


def yolox_rows(boxes: list[tuple[Box, float, int, float]], stride: int = 32) -> np.ndarray:
    """YOLOX output (1, 8400, 85): each (x1, y1, x2, y2 in 640-space, objectness, class, class score) written at
    the ``stride`` anchor under its centre, as offsets from the cell and log sizes in strides."""
    rows = np.zeros((1, ANCHORS, 85), np.float32)
    side = 640 // stride
    for (x1, y1, x2, y2), objectness, cls, cls_score in boxes:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        gx, gy = int(cx // stride), int(cy // stride)
        index = LEVEL_START[stride] + gy * side + gx
        assert not rows[0, index].any(), "one box per anchor"
        rows[0, index, :4] = [cx / stride - gx, cy / stride - gy, math.log((x2 - x1) / stride),
                              math.log((y2 - y1) / stride)]
        rows[0, index, 4], rows[0, index, 5 + cls] = objectness, cls_score
    return rows


def test_letterbox_scales_into_the_top_left_corner_on_114():
    picture = np.zeros((200, 300, 3), np.uint8) + np.array([10, 20, 30], np.uint8)
    feed, ratio = dwpose.letterbox(picture)
    assert feed.shape == (1, 3, 640, 640) and feed.dtype == np.float32
    assert ratio == pytest.approx(640 / 300)
    assert list(feed[0, :, 0, 0]) == [10, 20, 30] and list(feed[0, :, 425, 639]) == [10, 20, 30], "RGB as given"
    assert list(feed[0, :, 426, 0]) == [114, 114, 114], "below the 426 scaled rows: padding"


def test_person_boxes_decode_the_grid_keep_people_over_0_3_and_suppress_overlaps():
    ratio = 640 / 300  # a 300x200 picture
    first, second = (60, 40, 150, 190), (180, 30, 280, 170)

    def scaled(box):
        return tuple(v * ratio for v in box)

    rows = yolox_rows([(scaled(first), 0.9, 0, 0.8),  # 0.72: a person
                       (scaled((200, 100, 260, 160)), 0.9, 0, 0.3),  # 0.27: a candidate, but not a person
                       (scaled((10, 10, 50, 60)), 0.9, 2, 0.9)])  # a car
    rows += yolox_rows([(scaled(second), 0.9, 0, 0.5)], stride=16)  # 0.45: the second person
    rows += yolox_rows([(scaled((62, 42, 152, 192)), 0.9, 0, 0.6)], stride=8)  # 0.54, overlaps the first
    boxes = dwpose.person_boxes(rows, ratio)
    np.testing.assert_allclose(boxes, [first, second], atol=1e-3)
    assert dwpose.person_boxes(np.zeros((1, ANCHORS, 85), np.float32), ratio).shape == (0, 4), "nobody"


def test_nms_counts_whole_pixels():
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 29, 29]], np.float32)
    # 10x10 boxes (the +1) overlapping by 5x10: IoU 50 / 150 = 1/3
    assert dwpose.nms(boxes, np.array([0.9, 0.8, 0.7]), iou=0.34) == [0, 1, 2]
    assert dwpose.nms(boxes, np.array([0.9, 0.8, 0.7]), iou=0.33) == [0, 2]


def test_crop_grows_the_box_to_the_model_aspect_and_simcc_decodes_back_to_the_picture():
    crop = dwpose.crop_for((100, 50, 172, 146))
    assert crop.centre == (136, 98) and crop.scale == pytest.approx((90, 120)), "1.25x, then 3:4"
    assert dwpose.crop_for((0, 0, 40, 40)).scale == pytest.approx((50, 50 / 0.75)), "wide: height grows"
    simcc_x, simcc_y = np.zeros((3, 576), np.float32), np.zeros((3, 768), np.float32)
    simcc_x[0, 288], simcc_y[0, 384] = 0.9, 0.7  # the crop's centre
    simcc_x[1, 0], simcc_y[1, 0] = 0.5, 0.6  # its top-left corner
    simcc_x[2], simcc_y[2] = -1.0, -1.0  # nothing
    points, scores = dwpose.decode_simcc(simcc_x, simcc_y, crop)
    np.testing.assert_allclose(points[:2], [[136, 98], [136 - 45, 98 - 60]], atol=1e-4)
    np.testing.assert_allclose(scores, [0.7, 0.5, -1.0])  # the smaller maximum of x and y


def test_pose_input_is_the_normalised_crop():
    picture = np.zeros((200, 300, 3), np.uint8)
    picture[:, 150:] = 255  # right half white
    feed = dwpose.pose_input(picture, dwpose.Crop((150.0, 100.0), (90.0, 120.0)))
    assert feed.shape == (1, 3, 384, 288)
    black, white = (0 - dwpose.MEAN) / dwpose.STD, (255 - dwpose.MEAN) / dwpose.STD
    np.testing.assert_allclose(feed[0, :, 192, 10], black, rtol=1e-5)
    np.testing.assert_allclose(feed[0, :, 192, 280], white, rtol=1e-5)


def wholebody(score: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """133 points: point i at (i, 1000 + i), all scoring ``score``."""
    index = np.arange(133, dtype=np.float32)
    return np.stack([index, 1000 + index], 1), np.full(133, score, np.float32)


def test_the_133_points_map_to_openpose_with_the_neck_between_the_shoulders():
    points, scores = wholebody()
    pose = dwpose.to_openpose(points, scores)
    assert [k.x if k else None for k in pose.body] == [0, 5.5, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    assert pose.body[1] is not None and pose.body[1].y == 1005.5
    assert pose.left_hand is not None and [k.x for k in pose.left_hand if k] == list(range(91, 112))
    assert pose.right_hand is not None and [k.x for k in pose.right_hand if k] == list(range(112, 133))
    assert pose.face is not None and len(pose.face) == 70
    assert [k.x for k in pose.face if k] == [*range(23, 91), 2, 1], "68 face points, then the right and left eye"


def test_points_under_0_3_are_dropped_and_the_neck_needs_both_shoulders_over_it():
    points, scores = wholebody()
    scores[5] = scores[6] = 0.3  # shoulders kept (>= 0.3) but the neck needs both > 0.3
    scores[3] = 0.29  # left ear
    scores[91:112] = 0.1  # the whole left hand
    scores[23:91] = 0.0  # the face
    pose = dwpose.to_openpose(points, scores)
    assert pose.body[2] is not None and pose.body[5] is not None
    assert pose.body[1] is None and pose.body[17] is None
    assert pose.left_hand is None and pose.right_hand is not None, "a hand with no point left is no hand"
    assert pose.face is None
    scores[:] = 0.1
    assert dwpose.to_openpose(points, scores).body == [None] * 18


def test_drawing_has_the_openpose_body_blue_hand_joints_and_white_face_points():
    points, scores = np.zeros((133, 2), np.float32), np.zeros(133, np.float32)
    points[5], points[6], scores[5], scores[6] = (70, 40), (30, 40), 0.9, 0.9  # shoulders: the neck at (50, 40)
    points[91], scores[91] = (20, 80), 0.9  # one left-hand joint
    points[30], scores[30] = (80, 10), 0.9  # one face point
    canvas = dwpose.draw([dwpose.to_openpose(points, scores)], 100, 100)
    assert canvas.shape == (100, 100, 3) and canvas.dtype == np.uint8
    assert tuple(canvas[40, 50]) == COLOURS[1], "the neck's disc, in OpenPose's neck colour"
    assert tuple(canvas[40, 30]) == COLOURS[2] and tuple(canvas[40, 70]) == COLOURS[5]
    assert tuple(canvas[40, 40]) == tuple(int(c * 0.6) for c in COLOURS[0]), "the neck-shoulder limb, dimmed"
    assert tuple(canvas[80, 20]) == (0, 0, 255) and tuple(canvas[10, 80]) == (255, 255, 255)
    assert not canvas[90:, 60:].any() and not dwpose.draw([], 100, 100).any()


# --- the whole preprocessor ---------------------------------------------------------------------------------------


def picture() -> Image.Image:
    """150x100 (made 192x128 at resolution 128): a grey figure on white."""
    image = Image.new("RGB", (150, 100), "white")
    ImageDraw.Draw(image).rectangle((50, 15, 100, 85), fill="grey")
    return image


MAP_SIZE, BOX = (192, 128), (60.0, 16.0, 132.0, 112.0)  # the person box in the 192x128 map
# Body points in the map (COCO order): nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles.
BODY = [(96, 30), (100, 26), (92, 26), (120, 20), (88, 28), (110, 50), (82, 50), (116, 66), (76, 66), (118, 80),
        (74, 80), (104, 80), (88, 80), (106, 96), (86, 96), (106, 108), (86, 108)]
LEFT_EAR = 3  # scored 0.1: dropped


def pose_logits() -> tuple[np.ndarray, np.ndarray]:
    """SimCC outputs (1, 133, 576) and (1, 133, 768) that put BODY at its places for the box BOX."""
    crop = dwpose.crop_for(BOX)
    left, top = crop.centre[0] - crop.scale[0] / 2, crop.centre[1] - crop.scale[1] / 2
    zoom = 288 / crop.scale[0]
    simcc_x, simcc_y = np.zeros((1, 133, 576), np.float32), np.zeros((1, 133, 768), np.float32)
    for i, (x, y) in enumerate(BODY):
        score = 0.1 if i == LEFT_EAR else 0.9
        simcc_x[0, i, round((x - left) * zoom * 2)] = score
        simcc_y[0, i, round((y - top) * zoom * 2)] = score
    return simcc_x, simcc_y


def write_models(folder: Path, boxes: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / dwpose.DETECTOR_FILE).write_bytes(constant_model("input", (1, 3, 640, 640), {"output": boxes}))
    simcc_x, simcc_y = pose_logits()
    (folder / dwpose.POSE_FILE).write_bytes(constant_model("input", (1, 3, 384, 288),
                                                           {"simcc_x": simcc_x, "simcc_y": simcc_y}))
    return folder


def one_person() -> np.ndarray:
    ratio = 640 / 192
    return yolox_rows([(tuple(v * ratio for v in BOX), 0.95, 0, 0.95)])


@pytest.fixture(scope="module")
def onnxruntime():
    return pytest.importorskip("onnxruntime", reason="ONNX Runtime is optional (pip install onnxruntime); "
                               "the test extra installs it")


def test_the_preprocessor_draws_the_pose_the_models_find(onnxruntime, tmp_path):
    store = AnnotatorStore(write_models(tmp_path / "ControlNetAnnotators", one_person()))
    map_ = preprocess.detect_map("dw_openpose_full", picture(), 128, annotators_dir=store)
    assert map_.mode == "RGB" and map_.size == MAP_SIZE
    pixels = np.asarray(map_)
    assert tuple(pixels[30, 96]) == COLOURS[0], "the nose"
    assert tuple(pixels[50, 96]) == COLOURS[1], "the neck, between the shoulders"
    assert tuple(pixels[108, 86]) == COLOURS[10], "the right ankle (OpenPose's 11th point)"
    assert not pixels[20, 120].any(), "the left ear scored under 0.3: not drawn"
    assert not pixels[:, :50].any(), "nothing outside the person"
    models = dwpose.load(store, {name: store.folder / name for name in (dwpose.DETECTOR_FILE, dwpose.POSE_FILE)})
    assert models.detector is dwpose.load(store, {n: store.folder / n for n in (dwpose.DETECTOR_FILE,
                                                                                    dwpose.POSE_FILE)}).detector
    assert (models.detector_size, models.pose_size) == (640, (288, 384)), "the sizes the files say"


def test_no_person_gives_an_empty_map(onnxruntime, tmp_path):
    folder = write_models(tmp_path / "ControlNetAnnotators", np.zeros((1, ANCHORS, 85), np.float32))
    map_ = preprocess.detect_map("dw_openpose_full", picture(), 128, annotators_dir=folder)
    assert map_.size == MAP_SIZE and not np.asarray(map_).any()


def test_files_that_are_not_the_models_are_refused_by_name(onnxruntime, tmp_path):
    folder = write_models(tmp_path / "ControlNetAnnotators", one_person())
    (folder / dwpose.DETECTOR_FILE).write_bytes(b"this is not an ONNX model")
    with pytest.raises(AnnotatorFileError, match=r"yolox_l\.onnx .*not a valid ONNX model") as info:
        preprocess.detect_map("dw_openpose_full", picture(), 128, annotators_dir=folder)
    assert "yzd-v/DWPose" in str(info.value) and info.value.field == "module"
    (folder / dwpose.DETECTOR_FILE).write_bytes((folder / dwpose.POSE_FILE).read_bytes())  # the files mixed up
    with pytest.raises(AnnotatorFileError, match=r"yolox_l\.onnx .*not a YOLOX detector"):
        preprocess.detect_map("dw_openpose_full", picture(), 128, annotators_dir=folder)
    write_models(folder, one_person())
    torch.save({"weight": torch.zeros(3)}, folder / dwpose.POSE_FILE)  # a pickle, named .onnx
    with pytest.raises(AnnotatorFileError, match=r"dw-ll_ucoco_384\.onnx .*not a valid ONNX model"):
        preprocess.detect_map("dw_openpose_full", picture(), 128, annotators_dir=folder)


def test_without_onnxruntime_the_message_says_how_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "ControlNetAnnotators"
    folder.mkdir()
    for name in (dwpose.DETECTOR_FILE, dwpose.POSE_FILE):
        (folder / name).write_bytes(b"never read")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(AnnotatorMissingError, match=r"ONNX Runtime, which is not installed: pip install onnxruntime"):
        preprocess.detect_map("dw_openpose_full", picture(), 128, annotators_dir=folder)


def test_missing_files_are_named_with_their_source(tmp_path):
    with pytest.raises(AnnotatorMissingError, match=r"yolox_l\.onnx \(from https://huggingface\.co/yzd-v/DWPose\)"):
        preprocess.detect_map("dw_openpose_full", picture(), 128, annotators_dir=tmp_path)
