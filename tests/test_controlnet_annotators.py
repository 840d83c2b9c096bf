"""The preprocessors that run an annotator network (HED, PiDiNet, line art), with random weights saved in the
original files' layouts (.pth as lllyasviel/Annotators ships them, and .safetensors), through the entry the
preview button and ``POST /controlnet/detect`` use (``preprocess.detect_map``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from webui.controlnet import annotator_maps, annotators, catalog, preprocess
from webui.controlnet.annotator_store import AnnotatorFileError, AnnotatorStore
from webui.controlnet.nets import depth_anything, hed, lineart, mlsd, openpose, pidinet


def picture() -> Image.Image:
    """150x100: a black box on white, so the maps have an edge to find and a known aspect ratio."""
    image = Image.new("RGB", (150, 100), "white")
    ImageDraw.Draw(image).rectangle((30, 20, 90, 70), fill="black")
    return image


def _state(net: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.contiguous() for k, v in net.state_dict().items()}


def _depth_anything_original(hidden: int = 64, blocks: int = 4, neck=(16, 32, 64, 64), fusion: int = 16) -> dict:
    """A tiny Depth Anything v1 checkpoint under the original repository's names and shapes (DINOv2 trunk with
    a fused qkv, DPT head with refinenet1..4), written out independently of the conversion under test."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    state = {"pretrained.cls_token": rand(1, 1, hidden), "pretrained.mask_token": rand(1, hidden),
             "pretrained.pos_embed": rand(1, 37 * 37 + 1, hidden),
             "pretrained.patch_embed.proj.weight": rand(hidden, 3, 14, 14),
             "pretrained.patch_embed.proj.bias": rand(hidden),
             "pretrained.norm.weight": torch.ones(hidden), "pretrained.norm.bias": rand(hidden)}
    for i in range(blocks):
        b = f"pretrained.blocks.{i}."
        state.update({b + "norm1.weight": torch.ones(hidden), b + "norm1.bias": rand(hidden),
                      b + "attn.qkv.weight": rand(3 * hidden, hidden), b + "attn.qkv.bias": rand(3 * hidden),
                      b + "attn.proj.weight": rand(hidden, hidden), b + "attn.proj.bias": rand(hidden),
                      b + "ls1.gamma": torch.ones(hidden), b + "norm2.weight": torch.ones(hidden),
                      b + "norm2.bias": rand(hidden), b + "mlp.fc1.weight": rand(4 * hidden, hidden),
                      b + "mlp.fc1.bias": rand(4 * hidden), b + "mlp.fc2.weight": rand(hidden, 4 * hidden),
                      b + "mlp.fc2.bias": rand(hidden), b + "ls2.gamma": torch.ones(hidden)})
    h = "depth_head."
    for i, width in enumerate(neck):
        state[f"{h}projects.{i}.weight"], state[f"{h}projects.{i}.bias"] = rand(width, hidden, 1, 1), rand(width)
        state[f"{h}scratch.layer{i + 1}_rn.weight"] = rand(fusion, width, 3, 3)
        r = f"{h}scratch.refinenet{i + 1}."
        state[r + "out_conv.weight"], state[r + "out_conv.bias"] = rand(fusion, fusion, 1, 1), rand(fusion)
        for unit in (1, 2):
            for conv in (1, 2):
                state[f"{r}resConfUnit{unit}.conv{conv}.weight"] = rand(fusion, fusion, 3, 3)
                state[f"{r}resConfUnit{unit}.conv{conv}.bias"] = rand(fusion)
    for i, kernel in ((0, 4), (1, 2)):  # transposed convolutions: enlarge 4x and 2x
        state[f"{h}resize_layers.{i}.weight"] = rand(neck[i], neck[i], kernel, kernel)
        state[f"{h}resize_layers.{i}.bias"] = rand(neck[i])
    state[f"{h}resize_layers.3.weight"], state[f"{h}resize_layers.3.bias"] = rand(neck[3], neck[3], 3, 3), rand(neck[3])
    state[f"{h}scratch.output_conv1.weight"] = rand(fusion // 2, fusion, 3, 3)
    state[f"{h}scratch.output_conv1.bias"] = rand(fusion // 2)
    state[f"{h}scratch.output_conv2.0.weight"] = rand(32, fusion // 2, 3, 3)
    state[f"{h}scratch.output_conv2.0.bias"] = rand(32)
    state[f"{h}scratch.output_conv2.2.weight"], state[f"{h}scratch.output_conv2.2.bias"] = rand(1, 32, 1, 1), rand(1)
    state[f"{h}scratch.output_conv2.2.bias"] += 1.0  # above the final ReLU, so the depth varies
    return state


# name -> (random tensors in the original file's names, how the original file wraps them)
NETS = {
    hed.FILE: (lambda: _state(hed.HEDNet()), lambda s: s),
    pidinet.FILE: (lambda: _state(pidinet.PiDiNet()),
                   lambda s: {"epoch": 100, "state_dict": {"module." + k: v for k, v in s.items()}}),
    lineart.REALISTIC_FILE: (lambda: _state(lineart.SketchGenerator()), lambda s: s),
    lineart.COARSE_FILE: (lambda: _state(lineart.SketchGenerator()), lambda s: s),
    lineart.ANIME_FILE: (lambda: _state(lineart.AnimeUNet()), lambda s: s),
    openpose.FILE: (lambda: _state(openpose.BodyPoseNet()), lambda s: s),
    openpose.HAND_FILE: (lambda: _state(openpose.HandPoseNet()), lambda s: s),
    openpose.FACE_FILE: (lambda: _state(openpose.FaceNet()), lambda s: s),
    depth_anything.FILE: (_depth_anything_original, lambda s: s),
    mlsd.FILE: (lambda: _state(mlsd.MLSDNet()),
                lambda s: {k: v for k, v in s.items() if not k.endswith("num_batches_tracked")}),  # older torch
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The same random nets in two folders: as the original .pth files, and as .safetensors in a sub-folder."""
    root = tmp_path_factory.mktemp("annotators")
    pth, st = root / "pth" / "ControlNetAnnotators", root / "st" / "ControlNetAnnotators" / "downloads"
    pth.mkdir(parents=True)
    st.mkdir(parents=True)
    torch.manual_seed(0)
    for name, (make, wrap) in NETS.items():
        state = make()
        torch.save(wrap(state), pth / name)
        save_file(state, st / Path(name).with_suffix(".safetensors").name)
    return {"pth": pth, "safetensors": st.parent}


# normal_bae (a 73M-parameter net that draws colours, not grey) has its own file: test_controlnet_normal_bae.py;
# dw_openpose_full (ONNX models) too: test_controlnet_dwpose.py
RUNNING = sorted(annotators.RUNNABLE - {"normal_bae", "dw_openpose_full"})


def test_every_runnable_preprocessor_has_a_runner_and_the_catalog_names_its_files():
    assert set(annotator_maps.RUNNERS) == annotators.RUNNABLE
    for name in RUNNING:
        pre = catalog.find(name)
        assert pre is not None and not pre.weight_free and all(a.name in NETS for a in pre.annotators)


@pytest.mark.parametrize("layout", ["pth", "safetensors"])
def test_each_preprocessor_makes_a_map_of_the_resolution_from_the_original_files(folders, layout):
    store = AnnotatorStore(folders[layout])
    for name in RUNNING:
        map_ = preprocess.detect_map(name, picture(), 128, annotators_dir=store)
        assert map_.mode == "RGB" and map_.size == (192, 128), name  # short side 100 -> 128, aspect kept
        pixels = np.asarray(map_)
        assert (pixels[..., 0] == pixels[..., 1]).all(), f"{name}: a grey map"
    assert len(store.loaded()) == 3, "a small LRU: the last three networks stay loaded"


def test_both_layouts_give_the_same_map_and_a_loaded_net_is_reused(folders):
    from_pth, from_st = AnnotatorStore(folders["pth"]), AnnotatorStore(folders["safetensors"])
    one = np.asarray(preprocess.detect_map("pidinet", picture(), 64, annotators_dir=from_pth))
    assert np.array_equal(one, np.asarray(preprocess.detect_map("pidinet", picture(), 64, annotators_dir=from_st)))
    net = from_pth.load(folders["pth"] / pidinet.FILE, "PiDiNet", lambda t: pidinet.PiDiNet(), pidinet.file_keys)
    preprocess.detect_map("pidinet_safe", picture(), 64, annotators_dir=from_pth)
    again = from_pth.load(folders["pth"] / pidinet.FILE, "PiDiNet", lambda t: pidinet.PiDiNet(), pidinet.file_keys)
    assert again is net


def test_safe_edges_have_three_levels_and_scribbles_are_binary(folders):
    store = AnnotatorStore(folders["pth"])
    for safe, scribble in (("hed_safe", "scribble_hed"), ("pidinet_safe", "pidinet_scribble")):
        levels = set(np.unique(np.asarray(preprocess.detect_map(safe, picture(), 64, annotators_dir=store))))
        assert levels <= {0, 127, 255}, safe
        assert set(np.unique(np.asarray(preprocess.detect_map(scribble, picture(), 64, annotators_dir=store)))) \
            <= {0, 255}, scribble
    edges = np.linspace(0, 1, 101, dtype=np.float32)
    quantised = annotator_maps.to_uint8(annotator_maps.safe_step(edges))
    assert list(quantised[[0, 32, 34, 65, 67, 100]]) == [0, 0, 127, 127, 255, 255], "thirds: 0, 1/2, 1 (and over)"


def test_scribble_turns_a_soft_edge_into_a_stroke_along_it():
    edges = np.zeros((64, 64), np.uint8)
    edges[28:37, 8:56] = 255  # a wide soft horizontal edge, centred on row 32
    edges[10, 10] = 90  # a faint speck
    strokes = annotator_maps.scribble(edges)
    assert strokes[32, 12:52].all() and not strokes[:16].any() and not strokes[48:].any(), "the speck is gone"


def test_pixel_difference_convolutions_see_nothing_in_a_flat_picture():
    flat = torch.full((1, 2, 9, 9), 0.7)
    weight = torch.randn(2, 1, 3, 3)
    for kind in ("cd", "ad", "rd"):
        out = pidinet.pixel_difference_conv(kind, flat, weight, groups=2)
        assert out.shape == (1, 2, 9, 9) and out[..., 2:-2, 2:-2].abs().max() < 1e-5, kind
    assert pidinet.pixel_difference_conv("cv", flat, weight, 2)[..., 4, 4].abs().max() > 1e-3


def test_line_art_is_white_lines_on_black(folders, tmp_path):
    """A sketch net that answers 0 (a line) everywhere must give a white map (the extension inverts it)."""
    net = lineart.SketchGenerator()
    state = _state(net)
    state["model4.1.weight"] = torch.zeros_like(state["model4.1.weight"])
    state["model4.1.bias"] = torch.full_like(state["model4.1.bias"], -20.0)  # sigmoid(-20) ~ 0
    folder = tmp_path / "ControlNetAnnotators"
    folder.mkdir()
    torch.save(state, folder / lineart.REALISTIC_FILE)
    map_ = np.asarray(preprocess.detect_map("lineart", picture(), 64, annotators_dir=folder))
    assert map_.min() == 255


def test_a_file_with_other_tensors_is_named_in_the_message(tmp_path):
    folder = tmp_path / "ControlNetAnnotators"
    folder.mkdir()
    state = _state(hed.HEDNet())
    state["block9.extra"] = state.pop("block5.projection.weight")
    torch.save(state, folder / hed.FILE)
    with pytest.raises(AnnotatorFileError) as raised:
        preprocess.detect_map("hed", picture(), 64, annotators_dir=folder, field="controlnet_module")
    message = str(raised.value)
    assert hed.FILE in message and "block5.projection.weight" in message and "block9.extra" in message
    assert raised.value.field == "controlnet_module"
    save_file(_state(lineart.SketchGenerator()), folder / "ControlNetHED.safetensors")  # the wrong net
    (folder / hed.FILE).unlink()
    with pytest.raises(AnnotatorFileError, match="ControlNetHED.safetensors.*not the HED"):
        preprocess.detect_map("softedge_hed", picture(), 64, annotators_dir=folder)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_asks_to_run_code_is_refused_without_running_it(tmp_path):
    folder = tmp_path / "ControlNetAnnotators"
    folder.mkdir()
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"init_block.weight": torch.zeros(1)}, "payload": _Exploit(marker)},
               folder / pidinet.FILE)
    with pytest.raises(AnnotatorFileError, match=f"{pidinet.FILE}.*refused") as raised:
        preprocess.detect_map("pidinet", picture(), 64, annotators_dir=folder, field="controlnet_units[0].module")
    assert raised.value.field == "controlnet_units[0].module" and not marker.exists()
    marker.unlink(missing_ok=True)


def test_a_missing_file_still_names_itself_and_unimplemented_ones_say_so(tmp_path):
    folder = tmp_path / "ControlNetAnnotators"
    with pytest.raises(annotators.AnnotatorMissingError, match="netG.pth"):
        preprocess.detect_map("lineart_anime", picture(), annotators_dir=folder)
    folder.mkdir()
    (folder / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"weights")
    with pytest.raises(annotators.AnnotatorMissingError, match="cannot run this annotator yet"):
        preprocess.detect_map("normal_midas", picture(), annotators_dir=folder)


def test_mlsd_reads_a_line_from_its_centre_and_end_displacements():
    output = torch.full((1, 9, 16, 16), -10.0)
    output[0, 0, 5, 10] = 5.0  # one confident line centre at x=10, y=5 (half resolution)
    output[0, 1:5, 5, 10] = torch.tensor([-4.0, 0.0, 4.0, 0.0])  # ends 4 pixels to its left and right
    lines = mlsd.segments(output, 0.1, 0.1)
    assert lines.tolist() == [[12.0, 10.0, 28.0, 10.0]], "full-resolution end points"
    assert mlsd.segments(output, 0.1, 10.0).shape == (0, 4), "shorter than the distance threshold"
    assert mlsd.segments(output, 0.999, 0.1).shape == (0, 4), "below the value threshold"


# A person's parts (1-based COCO-18: 2 neck, 3/4 right shoulder/elbow, 6/7 left shoulder/elbow), in pixels.
POSE = {2: (50, 30), 3: (35, 32), 4: (30, 52), 6: (65, 32), 7: (70, 52)}


def _maps_of(pose: dict[int, tuple[int, int]], size: tuple[int, int] = (100, 100)) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps with a blob at each part and part-affinity fields pointing along each limb between them."""
    import cv2

    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    heatmaps = np.zeros((*size, 19), np.float32)
    for part, (x, y) in pose.items():
        heatmaps[:, :, part - 1] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0 ** 2))
    fields = np.zeros((*size, 38), np.float32)
    for (a, b), (fx, fy) in zip(openpose.LIMBS, openpose._LIMB_FIELDS, strict=True):
        if a in pose and b in pose:
            (x0, y0), (x1, y1) = pose[a], pose[b]
            norm = float(np.hypot(x1 - x0, y1 - y0))
            for channel, value in ((fx, (x1 - x0) / norm), (fy, (y1 - y0) / norm)):
                layer = np.ascontiguousarray(fields[:, :, channel])
                cv2.line(layer, (x0, y0), (x1, y1), float(value), 5)
                fields[:, :, channel] = layer
    return heatmaps, fields


def test_openpose_joins_the_parts_along_their_fields_into_one_person():
    people = openpose.find_people(*_maps_of(POSE))
    assert len(people) == 1
    found = {i + 1: (k.x, k.y) for i, k in enumerate(people[0]) if k is not None}
    assert found == {part: (float(x), float(y)) for part, (x, y) in POSE.items()}
    assert openpose.find_people(*_maps_of({2: (50, 30), 3: (35, 32)})) == [], "under 4 parts is no person"


def test_openpose_draws_limbs_dimmed_and_joints_in_the_extensions_colours():
    person: list = [None] * 18
    person[1], person[2] = openpose.Keypoint(50, 30, 1.0), openpose.Keypoint(20, 30, 1.0)  # neck, right shoulder
    canvas = openpose.draw_bodies(np.zeros((64, 80, 3), np.uint8), [person])
    assert tuple(canvas[30, 35]) == (153, 0, 0), "neck to right shoulder: red, dimmed to 60%"
    assert tuple(canvas[30, 50]) == (255, 85, 0) and tuple(canvas[30, 20]) == (255, 170, 0), "joints undimmed"
    assert not canvas[40:].any() and not canvas[:20].any()


def test_depth_anything_sizes_its_input_as_the_original_and_names_a_foreign_file(tmp_path):
    assert depth_anything.input_size(512, 768) == (518, 784), "short side 518, long side rounded to 14s"
    assert depth_anything.input_size(700, 700) == (518, 518)
    folder = tmp_path / "ControlNetAnnotators"
    folder.mkdir()
    state = _depth_anything_original()
    torch.save(state, folder / depth_anything.FILE)
    depth = np.asarray(preprocess.detect_map("depth_anything", picture(), 64, annotators_dir=folder))
    # min-max scaled over the padded picture (as the extension), so the cropped map spans most of 0..255
    assert depth.shape == (64, 96, 3) and int(depth.max()) - int(depth.min()) > 127
    del state["pretrained.pos_embed"]
    save_file(state, folder / "depth_anything_vitl14.safetensors")
    (folder / depth_anything.FILE).unlink()
    with pytest.raises(AnnotatorFileError, match="depth_anything_vitl14.safetensors .*pretrained.pos_embed"):
        preprocess.detect_map("depth_anything", picture(), 64, annotators_dir=folder)


ARM = {2: (50, 30), 3: (35, 32), 4: (30, 52), 5: (28, 72), 6: (65, 32)}  # neck, right arm to the wrist


def test_openpose_hand_looks_for_the_hand_past_the_wrist_and_draws_it(folders, monkeypatch):
    person: list = [None] * 18
    for part, (x, y) in ARM.items():
        person[part - 1] = openpose.Keypoint(x, y, 1.0)
    assert openpose.hand_boxes(person, 128, 192) == [(12, 63, 30)], "a third of the forearm past the wrist"
    assert openpose.hand_boxes(person[:4] + [None] * 14, 128, 192) == [], "no wrist, no hand"

    crops = []
    real_joints = openpose.hand_joints

    def joints(net, crop, device):
        crops.append(crop.shape)
        return real_joints(net, crop, device)

    # The body net's maps stand in for a photo of this person (random weights find nobody).
    monkeypatch.setattr(openpose, "network_maps", lambda net, bgr, device: _maps_of(ARM, bgr.shape[:2]))
    monkeypatch.setattr(openpose, "hand_joints", joints)
    map_ = np.asarray(preprocess.detect_map("openpose_hand", picture(), 128, annotators_dir=folders["pth"]))
    assert crops == [(30, 30, 3)], "the hand net ran on the box's crop"
    assert tuple(map_[ARM[2][1], ARM[2][0]]) == openpose.COLOURS[1], "the neck's joint colour"

    hand = [(-1.0, -1.0)] * 21
    hand[0], hand[1] = (20.0, 20.0), (30.0, 20.0)  # wrist and the thumb's first joint
    canvas = openpose.draw_bodies(np.zeros((40, 40, 3), np.uint8), [[None] * 18], [[hand]])
    assert tuple(canvas[20, 25]) == (255, 0, 0) and tuple(canvas[20, 20]) == (0, 0, 255), "red bone, blue joints"
    assert canvas[:14].sum() == 0, "joints not found are not drawn"


HEAD = {1: (60, 40), 2: (60, 70), 3: (45, 72), 6: (75, 72), 15: (55, 35), 16: (65, 35), 17: (50, 38), 18: (70, 38)}


def test_openpose_face_boxes_the_head_and_full_runs_every_net(folders, monkeypatch):
    person: list = [None] * 18
    for part, (x, y) in HEAD.items():
        person[part - 1] = openpose.Keypoint(x, y, 1.0)
    assert openpose.face_box(person, 128, 192) == (45, 25, 30), "3x the nose-eye distance each way"
    no_eyes = [k if i not in (14, 15, 16, 17) else None for i, k in enumerate(person)]
    assert openpose.face_box(no_eyes, 128, 192) is None

    monkeypatch.setattr(openpose, "network_maps", lambda net, bgr, device: _maps_of(HEAD, bgr.shape[:2]))
    seen = []
    real = openpose.face_landmarks
    monkeypatch.setattr(openpose, "face_landmarks", lambda net, crop, device: seen.append(crop.shape) or
                        [(5.0, 6.0), (0.0, 9.0)])
    full = np.asarray(preprocess.detect_map("openpose_full", picture(), 128, annotators_dir=folders["pth"]))
    assert seen == [(30, 30, 3)]
    assert tuple(full[25 + 6, 45 + 5]) == (255, 255, 255), "a landmark: a white disc, placed in the picture"
    only = np.asarray(preprocess.detect_map("openpose_faceonly", picture(), 128, annotators_dir=folders["pth"]))
    assert tuple(only[31, 50]) == (255, 255, 255) and tuple(only[70, 60]) == (0, 0, 0), "no body drawn"

    with torch.inference_mode():
        points = real(openpose.FaceNet().eval(), np.zeros((30, 30, 3), np.uint8), torch.device("cpu"))
    assert all(0 <= x < 30 and 0 <= y < 30 for x, y in points) and len(points) <= openpose.FACE_MAPS


def test_the_library_owns_one_store_that_keeps_a_loaded_net_for_the_next_job(folders):
    from webui.controlnet.library import ControlNetLibrary
    from webui.models.cache import ModelCache

    library = ControlNetLibrary([], None, ModelCache(1 << 20), folders["pth"])
    assert library.annotators.folder == folders["pth"] and library.annotators.device.type == "cpu"
    for module in ("lineart", "lineart_coarse", "lineart"):
        preprocess.detect_map(module, picture(), 64, annotators_dir=library.annotators)
    assert [Path(p).name for p in library.annotators.loaded()] == [lineart.COARSE_FILE, lineart.REALISTIC_FILE]
