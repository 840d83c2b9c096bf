"""Body pose: the CMU OpenPose body network (``body_pose_model.pth``), finding people in its maps, and drawing
them as sd-webui-controlnet draws an OpenPose map (18 COCO keypoints, its limb order and colours).

The network is VGG-19's first ten layers and six stages, each refining 38 part-affinity fields (L1: x, y
of 19 limbs) and 19 heat maps (L2: 18 parts and the background). The file's tensors are named after the
Caffe layers (``conv1_1.weight``, ``Mconv7_stage6_L2.bias``); so are this network's. Input: BGR scaled to
-0.5..0.5, output at 1/8 of the input size.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn
from torch.nn import functional as F

FILE, HAND_FILE, FACE_FILE = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"
STRIDE, BOX_SIZE, SCALE, PAD_VALUE = 8, 368, 0.5, 128
PEAK_THRESHOLD, PAF_THRESHOLD, PAF_SAMPLES = 0.1, 0.05, 10

_Layer = tuple[str, int, int, int]  # (name, in, out, kernel); "pool" halves the size
_POOL: _Layer = ("pool", 0, 0, 0)
# The trunk; then each stage's layers, from _stage_layers.
_TRUNK: list[_Layer] = [("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), _POOL, ("conv2_1", 64, 128, 3),
          ("conv2_2", 128, 128, 3), _POOL, ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3),
          ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3), _POOL, ("conv4_1", 256, 512, 3),
          ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3)]
_FIELDS, _HEATMAPS = 38, 19


def _stage_layers(stage: int, branch: int) -> list[_Layer]:
    out = _FIELDS if branch == 1 else _HEATMAPS
    if stage == 1:
        return [(f"conv5_1_CPM_L{branch}", 128, 128, 3), (f"conv5_2_CPM_L{branch}", 128, 128, 3),
                (f"conv5_3_CPM_L{branch}", 128, 128, 3), (f"conv5_4_CPM_L{branch}", 128, 512, 1),
                (f"conv5_5_CPM_L{branch}", 512, out, 1)]
    width_in = 128 + _FIELDS + _HEATMAPS
    return [(f"Mconv1_stage{stage}_L{branch}", width_in, 128, 7),
            *[(f"Mconv{i}_stage{stage}_L{branch}", 128, 128, 7) for i in range(2, 6)],
            (f"Mconv6_stage{stage}_L{branch}", 128, 128, 1), (f"Mconv7_stage{stage}_L{branch}", 128, out, 1)]


# Each stage's last layer is linear, except the last stage's heat maps: the original leaves a ReLU there
# (its list of linear layers names Mconv7_stage6_L1 twice), and the weights were used so.
_LINEAR = {f"conv5_5_CPM_L{b}" for b in (1, 2)} | {f"Mconv7_stage{s}_L{b}" for s in range(2, 6) for b in (1, 2)} \
    | {"Mconv7_stage6_L1"}


class _ConvChain(nn.Module):
    """Convolutions named as in the original files, run in list order: ReLU after each but the linear ones,
    "pool" entries a 2x2 max pool."""

    def __init__(self, layers: list[_Layer], linear: set[str]) -> None:
        super().__init__()
        self.linear = linear
        for name, width_in, width_out, kernel in layers:
            if name != "pool":
                self.add_module(name, nn.Conv2d(width_in, width_out, kernel, padding=kernel // 2))

    def _run(self, x: torch.Tensor, layers: list[_Layer]) -> torch.Tensor:
        for name, *_ in layers:
            if name == "pool":
                x = F.max_pool2d(x, 2, 2)
            else:
                x = getattr(self, name)(x)
                if name not in self.linear:
                    x = F.relu(x)
        return x


class BodyPoseNet(_ConvChain):
    def __init__(self) -> None:
        super().__init__([*_TRUNK] + [entry for stage in range(1, 7) for branch in (1, 2)
                                      for entry in _stage_layers(stage, branch)], set(_LINEAR))

    def forward(self, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 3, H, W) BGR in -0.5..0.5 -> part-affinity fields (1, 38, H/8, W/8), heat maps (1, 19, ...)."""
        features = self._run(bgr, _TRUNK)
        x = features
        for stage in range(1, 7):
            fields, heatmaps = self._run(x, _stage_layers(stage, 1)), self._run(x, _stage_layers(stage, 2))
            x = torch.cat([fields, heatmaps, features], 1)
        return fields, heatmaps


# The hand and face networks (``hand_pose_model.pth``, ``facenet.pth``): a deeper trunk, then six stages of
# heat maps (hands: 21 joints and the background; face: 70 landmarks and the background), each stage's last
# layer linear.
_CPM_TRUNK: list[_Layer] = [
    *_TRUNK[:11], ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3),
    ("conv4_4", 512, 512, 3), ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 512, 128, 3)]
HAND_MAPS, FACE_MAPS = 22, 71


def _cpm_stage(stage: int, maps: int) -> list[_Layer]:
    if stage == 1:
        return [("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, maps, 1)]
    return [(f"Mconv1_stage{stage}", 128 + maps, 128, 7), *[(f"Mconv{i}_stage{stage}", 128, 128, 7)
                                                            for i in range(2, 6)],
            (f"Mconv6_stage{stage}", 128, 128, 1), (f"Mconv7_stage{stage}", 128, maps, 1)]


class _CPMNet(_ConvChain):
    def __init__(self, maps: int) -> None:
        super().__init__([*_CPM_TRUNK, *(e for s in range(1, 7) for e in _cpm_stage(s, maps))],
                         {"conv6_2_CPM", *(f"Mconv7_stage{s}" for s in range(2, 7))})
        self.maps = maps

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) BGR in -0.5..0.5 -> the last stage's heat maps at 1/8 of the size."""
        features = self._run(bgr, _CPM_TRUNK)
        maps = self._run(features, _cpm_stage(1, self.maps))
        for stage in range(2, 7):
            maps = self._run(torch.cat([maps, features], 1), _cpm_stage(stage, self.maps))
        return maps


class HandPoseNet(_CPMNet):
    def __init__(self) -> None:
        super().__init__(HAND_MAPS)


class FaceNet(_CPMNet):
    def __init__(self) -> None:
        super().__init__(FACE_MAPS)


# Limbs as (part, part), 1-based COCO-18 order: 1 nose, 2 neck, 3-5 right arm, 6-8 left arm, 9-11 right leg,
# 12-14 left leg, 15/16 eyes, 17/18 ears; the last two (ear to shoulder) are used to group, never drawn.
LIMBS = [(2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18)]
# The two part-affinity channels (x, y) of each limb, in the order above.
_LIMB_FIELDS = [(12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
                (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27)]
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]


@dataclass(frozen=True)
class Keypoint:
    x: float  # pixels
    y: float
    score: float


Person = list[Keypoint | None]  # 18 keypoints, None where the part was not found
Hand = list[tuple[float, float]]  # 21 joints in pixels; -1 where a joint was not found
Face = list[tuple[float, float]]  # the landmarks found, in pixels (-1 where a coordinate was 0)


def _resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """As the extension resizes maps: area when shrinking, Lanczos when enlarging, channel by channel."""
    shrinking = (width + height) < (x.shape[1] + x.shape[0])
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    if x.ndim == 2:
        return cv2.resize(x, (width, height), interpolation=interpolation)
    return np.stack([cv2.resize(x[:, :, c], (width, height), interpolation=interpolation)
                     for c in range(x.shape[2])], axis=2)


def network_maps(net: nn.Module, bgr: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (H, W, 19) and part-affinity fields (H, W, 38) at the picture's size (one scale, 0.5 of the
    368-pixel box, as the extension runs it)."""
    height, width = bgr.shape[:2]
    scale = SCALE * BOX_SIZE / height
    small = _resize(bgr, int(width * scale), int(height * scale))
    pad_h, pad_w = -small.shape[0] % STRIDE, -small.shape[1] % STRIDE
    padded = np.pad(small, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=PAD_VALUE)
    x = torch.from_numpy(padded.astype(np.float32) / 256.0 - 0.5).permute(2, 0, 1)[None].to(device)
    fields, heatmaps = net(x)
    maps = []
    for out in (heatmaps, fields):
        m = out[0].permute(1, 2, 0).float().cpu().numpy()
        m = _resize(m, m.shape[1] * STRIDE, m.shape[0] * STRIDE)[:padded.shape[0] - pad_h, :padded.shape[1] - pad_w]
        maps.append(_resize(m, width, height))
    return maps[0], maps[1]


def find_peaks(heatmaps: np.ndarray) -> list[list[tuple[float, float, float, int]]]:
    """Per part, its candidates (x, y, score, id): smoothed local maxima over the threshold."""
    peaks, counter = [], 0
    for part in range(18):
        raw = heatmaps[:, :, part]
        smooth = gaussian_filter(raw, sigma=3)
        padded = np.pad(smooth, 1)
        centre = padded[1:-1, 1:-1]
        is_peak = (centre >= padded[:-2, 1:-1]) & (centre >= padded[2:, 1:-1]) & (centre >= padded[1:-1, :-2]) \
            & (centre >= padded[1:-1, 2:]) & (centre > PEAK_THRESHOLD)
        ys, xs = np.nonzero(is_peak)  # row by row, which fixes the ids
        found = [(float(x), float(y), float(raw[y, x]), counter + n)
                 for n, (y, x) in enumerate(zip(ys, xs, strict=True))]
        peaks.append(found)
        counter += len(found)
    return peaks


def _connections(peaks: list[list[tuple[float, float, float, int]]], fields: np.ndarray,
                 height: int) -> list[np.ndarray | None]:
    """Per limb, the chosen (id A, id B, score, index A, index B) pairs, scored along the part-affinity field."""
    out: list[np.ndarray | None] = []
    for (part_a, part_b), (fx, fy) in zip(LIMBS, _LIMB_FIELDS, strict=True):
        cand_a, cand_b = peaks[part_a - 1], peaks[part_b - 1]
        if not cand_a or not cand_b:
            out.append(None)
            continue
        scored = []
        for i, a in enumerate(cand_a):
            for j, b in enumerate(cand_b):
                vx, vy = b[0] - a[0], b[1] - a[1]
                norm = max(0.001, math.hypot(vx, vy))
                xs = np.rint(np.linspace(a[0], b[0], PAF_SAMPLES)).astype(int)
                ys = np.rint(np.linspace(a[1], b[1], PAF_SAMPLES)).astype(int)
                along = fields[ys, xs, fx] * (vx / norm) + fields[ys, xs, fy] * (vy / norm)
                score = float(along.mean()) + min(0.5 * height / norm - 1, 0)
                if np.count_nonzero(along > PAF_THRESHOLD) > 0.8 * len(along) and score > 0:
                    scored.append((i, j, score))
        scored.sort(key=lambda c: c[2], reverse=True)
        chosen = np.zeros((0, 5))
        for i, j, score in scored:
            if i not in chosen[:, 3] and j not in chosen[:, 4]:
                chosen = np.vstack([chosen, [cand_a[i][3], cand_b[j][3], score, i, j]])
                if len(chosen) >= min(len(cand_a), len(cand_b)):
                    break
        out.append(chosen)
    return out


def find_people(heatmaps: np.ndarray, fields: np.ndarray) -> list[Person]:
    """People: candidates joined limb by limb; each row holds 18 candidate ids, the total score and the
    number of parts; people with under 4 parts or a mean score under 0.4 are dropped."""
    peaks = find_peaks(heatmaps)
    candidates = np.array([c for part in peaks for c in part]).reshape(-1, 4)
    rows = -1 * np.ones((0, 20))
    for k, chosen in enumerate(_connections(peaks, fields, heatmaps.shape[0])):
        if chosen is None:
            continue
        index_a, index_b = LIMBS[k][0] - 1, LIMBS[k][1] - 1
        for id_a, id_b, score, _, _ in chosen:
            owners = [r for r in range(len(rows)) if rows[r][index_a] == id_a or rows[r][index_b] == id_b][:2]
            if len(owners) == 1:
                row = rows[owners[0]]
                if row[index_b] != id_b:
                    row[index_b] = id_b
                    row[-1] += 1
                    row[-2] += candidates[int(id_b), 2] + score
            elif len(owners) == 2:
                r1, r2 = owners
                both = ((rows[r1] >= 0).astype(int) + (rows[r2] >= 0).astype(int))[:-2]
                if not np.any(both == 2):  # disjoint: merge the two
                    rows[r1][:-2] += rows[r2][:-2] + 1
                    rows[r1][-2:] += rows[r2][-2:]
                    rows[r1][-2] += score
                    rows = np.delete(rows, r2, 0)
                else:
                    rows[r1][index_b] = id_b
                    rows[r1][-1] += 1
                    rows[r1][-2] += candidates[int(id_b), 2] + score
            elif k < 17:
                row = -1 * np.ones(20)
                row[index_a], row[index_b] = id_a, id_b
                row[-1] = 2
                row[-2] = candidates[int(id_a), 2] + candidates[int(id_b), 2] + score
                rows = np.vstack([rows, row])
    keep = [r for r in rows if r[-1] >= 4 and r[-2] / r[-1] >= 0.4]
    return [[Keypoint(*candidates[int(i), :3]) if i >= 0 else None for i in r[:18]] for r in keep]


def hand_boxes(person: Person, height: int, width: int) -> list[tuple[int, int, int]]:
    """Square boxes (x, y, side) around the left, then the right hand: past the wrist by a third of the
    forearm, 1.5x the longer of forearm and 0.9x upper arm, cut to the picture; under 20 pixels is dropped."""
    boxes = []
    for shoulder, elbow, wrist in ((5, 6, 7), (2, 3, 4)):
        s, e, w = person[shoulder], person[elbow], person[wrist]
        if s is None or e is None or w is None:
            continue
        x, y = w.x + 0.33 * (w.x - e.x), w.y + 0.33 * (w.y - e.y)
        side = 1.5 * max(math.hypot(w.x - e.x, w.y - e.y), 0.9 * math.hypot(e.x - s.x, e.y - s.y))
        x, y = max(x - side / 2, 0.0), max(y - side / 2, 0.0)
        side = min(side if x + side <= width else width - x, side if y + side <= height else height - y)
        if side >= 20:
            boxes.append((int(x), int(y), int(side)))
    return boxes


HAND_SIZE, HAND_SCALES, HAND_THRESHOLD = 128, (0.5, 1.0, 1.5, 2.0), 0.05


def hand_joints(net: nn.Module, crop_bgr: np.ndarray, device: torch.device) -> list[tuple[float, float]]:
    """21 joints (x, y) in the crop's pixels, (0, 0) where none was found: heat maps averaged over four
    square sizes of the crop, and per joint the peak of its strongest connected blob."""
    from scipy.ndimage import label

    crop_h, crop_w = crop_bgr.shape[:2]
    blurred = cv2.GaussianBlur(crop_bgr, (0, 0), 0.8)
    average = np.zeros((HAND_SIZE, HAND_SIZE, HAND_MAPS))
    for factor in HAND_SCALES:
        side = int(factor * BOX_SIZE)
        square = _resize(blurred, side, side)  # sides are multiples of 8: no padding
        x = torch.from_numpy(square.astype(np.float32) / 256.0 - 0.5).permute(2, 0, 1)[None].to(device)
        maps = net(x)[0].permute(1, 2, 0).float().cpu().numpy()
        maps = _resize(maps, maps.shape[1] * STRIDE, maps.shape[0] * STRIDE)
        average += _resize(maps, HAND_SIZE, HAND_SIZE) / len(HAND_SCALES)
    joints = []
    for part in range(21):
        raw = average[:, :, part].copy()
        blobs, count = label(gaussian_filter(raw, sigma=3) > HAND_THRESHOLD, structure=np.ones((3, 3)))
        if count == 0:
            joints.append((0.0, 0.0))
            continue
        strongest = 1 + int(np.argmax([raw[blobs == i].sum() for i in range(1, count + 1)]))
        raw[blobs != strongest] = 0
        row, col = np.unravel_index(int(np.argmax(raw)), raw.shape)
        joints.append((float(int(col * crop_w / HAND_SIZE)), float(int(row * crop_h / HAND_SIZE))))
    return joints


def place_hand(joints: list[tuple[float, float]], box: tuple[int, int, int]) -> Hand:
    """Crop joints -> picture pixels; a coordinate that was 0 (not found) becomes -1."""
    x0, y0, _ = box
    return [(x + x0 if x >= 1e-6 else -1.0, y + y0 if y >= 1e-6 else -1.0) for x, y in joints]


def face_box(person: Person, height: int, width: int) -> tuple[int, int, int] | None:
    """The square (x, y, side) around the face: from the nose, 3x its distance to an eye or 1.5x to an ear
    (the largest) each way, cut to the picture as the extension does; None without nose and eyes or ears,
    or under 20 pixels."""
    nose, eyes_ears = person[0], ((person[14], 3.0), (person[15], 3.0), (person[16], 1.5), (person[17], 1.5))
    if nose is None or all(k is None for k, _ in eyes_ears):
        return None
    reach = 0.0
    for keypoint, factor in eyes_ears:
        if keypoint is not None:
            reach = max(reach, max(abs(nose.x - keypoint.x), abs(nose.y - keypoint.y)) * factor)
    x, y = max(nose.x - reach, 0.0), max(nose.y - reach, 0.0)
    side_w = width - x if x + reach > width else reach * 2
    side_h = height - y if y + reach > height else reach * 2
    side = min(side_w, side_h)
    return (int(x), int(y), int(side)) if side >= 20 else None


FACE_INPUT, FACE_THRESHOLD = 384, 0.05


def face_landmarks(net: nn.Module, crop_bgr: np.ndarray, device: torch.device) -> list[tuple[float, float]]:
    """The strongest point (x, y) of each heat map over the threshold (maps with none are left out), the
    crop run at 384x384 and its maps enlarged back to the crop's size."""
    crop_h, crop_w = crop_bgr.shape[:2]
    square = _resize(crop_bgr, FACE_INPUT, FACE_INPUT)
    x = torch.from_numpy(square.astype(np.float32) / 256.0 - 0.5).permute(2, 0, 1)[None].to(device)
    maps = F.interpolate(net(x), (crop_h, crop_w), mode="bilinear", align_corners=True)[0].float().cpu().numpy()
    points = []
    for heat in maps:
        if not (heat > FACE_THRESHOLD).any():
            continue
        row, col = np.unravel_index(int(np.argmax(np.where(heat > FACE_THRESHOLD, heat, -np.inf))), heat.shape)
        points.append((float(col), float(row)))
    return points


# Hand bones: wrist to each finger's four joints.
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]


def _draw_hand(canvas: np.ndarray, hand: Hand) -> None:
    """Bones 2 pixels wide in hues going round the colour wheel, joints as blue discs of radius 4."""
    points = [(int(x), int(y)) for x, y in hand]
    for index, (a, b) in enumerate(HAND_EDGES):
        (x1, y1), (x2, y2) = points[a], points[b]
        if min(x1, y1, x2, y2) > 0:
            rgb = colorsys.hsv_to_rgb(index / len(HAND_EDGES), 1.0, 1.0)
            cv2.line(canvas, (x1, y1), (x2, y2), tuple(round(c * 255) for c in rgb), thickness=2)
    for x, y in points:
        if x > 0 and y > 0:
            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)


def _draw_face(canvas: np.ndarray, face: Face) -> None:
    for x, y in face:
        if int(x) > 0 and int(y) > 0:
            cv2.circle(canvas, (int(x), int(y)), 3, (255, 255, 255), thickness=-1)


def draw_bodies(canvas: np.ndarray, people: list[Person], hands: list[list[Hand]] | None = None,
                faces: list[Face | None] | None = None, body: bool = True) -> np.ndarray:
    """The extension's OpenPose drawing on an RGB canvas, person by person: each limb an ellipse 4 pixels
    thick in its colour, the canvas dimmed to 60%, each keypoint a disc of radius 4 in its colour (unless
    ``body`` is False), then the person's hands (left first) and face landmarks (white discs of radius 3)."""
    for index, person in enumerate(people):
        if body:
            for (a, b), colour in zip(LIMBS[:17], COLOURS, strict=False):
                ka, kb = person[a - 1], person[b - 1]
                if ka is None or kb is None:
                    continue
                mid_x, mid_y = (ka.x + kb.x) / 2, (ka.y + kb.y) / 2
                length = math.hypot(ka.x - kb.x, ka.y - kb.y)
                angle = math.degrees(math.atan2(ka.y - kb.y, ka.x - kb.x))
                polygon = cv2.ellipse2Poly((int(mid_x), int(mid_y)), (int(length / 2), 4), int(angle), 0, 360, 1)
                cv2.fillConvexPoly(canvas, np.asarray(polygon, np.int32), colour)
            canvas = (canvas * 0.6).astype(np.uint8)
            for keypoint, colour in zip(person, COLOURS, strict=True):
                if keypoint is not None:
                    cv2.circle(canvas, (int(keypoint.x), int(keypoint.y)), 4, colour, thickness=-1)
        for hand in (hands[index] if hands else []):
            _draw_hand(canvas, hand)
        face = faces[index] if faces else None
        if face:
            _draw_face(canvas, face)
    return canvas
