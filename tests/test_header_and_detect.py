"""Header reading and architecture detection work from names and shapes alone, and reject bad files clearly."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from webui.models.detect import UnknownArchitectureError, detect_architecture
from webui.models.header import CorruptCheckpointError, read_header

U = "model.diffusion_model."


def write_raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_header_reads_shapes_and_metadata(tmp_path):
    header = {"a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]}, "__metadata__": {"k": "v"}}
    parsed = read_header(write_raw_safetensors(tmp_path / "m.safetensors", header, b"\0" * 12))
    assert parsed.shape("a") == (2, 3)
    assert parsed.metadata == {"k": "v"}
    assert parsed.nbytes() == 12 and parsed.nbytes(dtype_size=4) == 24


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"\x01\x02"), "too short"),
        (lambda p: p.write_bytes(struct.pack("<Q", 2**63) + b"{}"), "header length"),
        (lambda p: p.write_bytes(struct.pack("<Q", 5) + b"nope!"), "not valid JSON"),
        (
            lambda p: write_raw_safetensors(p, {"a": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}, b"x"),
            "outside the file",
        ),
    ],
)
def test_corrupt_headers_are_named_and_explained(tmp_path, make, reason):
    path = tmp_path / "broken.safetensors"
    make(path)
    with pytest.raises(CorruptCheckpointError) as err:
        read_header(path)
    assert "broken.safetensors" in str(err.value) and reason in str(err.value)


def sd_shapes(context: int, in_ch: int = 4, **extra) -> dict:
    shapes = {
        U + "input_blocks.0.0.weight": (320, in_ch, 3, 3),
        U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, context),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
    }
    shapes.update(extra)
    return shapes


def test_detects_each_family():
    assert detect_architecture(sd_shapes(768, cond_stage_model_x=(1,))).arch == "sd1"
    assert detect_architecture(sd_shapes(768, 9)).arch == "sd1-inpaint"
    assert detect_architecture(sd_shapes(1024), path=Path("sd21-base-512.safetensors")).arch == "sd2"
    assert detect_architecture(sd_shapes(1024), path=Path("sd21-768-v.safetensors")).arch == "sd2-v"
    assert detect_architecture(sd_shapes(1024, 9)).arch == "sd2-inpaint"
    xl = sd_shapes(2048, **{U + "label_emb.0.0.weight": (1280, 2816),
                            "conditioner.embedders.0.transformer.text_model.x": (1,),
                            "conditioner.embedders.1.model.ln_final.weight": (1280,)})
    assert detect_architecture(xl).arch == "sdxl"
    xl[U + "input_blocks.0.0.weight"] = (320, 9, 3, 3)
    assert detect_architecture(xl).arch == "sdxl-inpaint"


def test_v_prediction_hints():
    assert detect_architecture(sd_shapes(1024, v_pred=())).arch == "sd2-v"
    assert detect_architecture(sd_shapes(1024), {"modelspec.prediction_type": "epsilon"}).arch == "sd2"


def test_sd2_without_hints_is_left_to_the_weights(tmp_path):
    """No marker, metadata, sidecar or telling name: undecided (768-v until the loader has run the UNet)."""
    detection = detect_architecture(sd_shapes(1024), path=tmp_path / "dreamy.safetensors")
    assert detection.prediction_undecided and detection.arch == "sd2-v"
    assert "decided from the weights when first loaded" in detection.describe()
    decided = detection.decided(False, "the weights")
    assert (decided.arch, decided.native_size, decided.describe()) == (
        "sd2", 512, "SD 2.x, epsilon (512), decided from the weights")
    named = detect_architecture(sd_shapes(1024), path=tmp_path / "dreamy-768-v.safetensors")
    assert named.arch == "sd2-v" and named.prediction_from == "the file name"
    assert detect_architecture(sd_shapes(768)).prediction_from is None  # SD 1.x: nothing to decide
    assert detect_architecture(sd_shapes(1024, 9)).describe() == "SD 2.x, inpainting"


def test_sidecar_yaml_decides_parameterization(tmp_path):
    ckpt = tmp_path / "custom.safetensors"
    ckpt.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert detect_architecture(sd_shapes(1024), path=ckpt).arch == "sd2-v"


def test_embedded_config_wins():
    config = {"arch": "sd1", "unet": {"sample_size": 8}, "vae": {"block_out_channels": [1, 1, 1, 1]}}
    meta = {"atelier.config": json.dumps(config)}
    detection = detect_architecture({}, meta)
    assert detection.arch == "sd1" and detection.native_size == 64


@pytest.mark.parametrize(
    "shapes, hint",
    [
        ({"lora_unet_down_blocks_0.lora_down.weight": (4, 320)}, "LoRA"),
        ({"encoder.down.0.block.0.conv1.weight": (1,), "decoder.up.0.x": (1,)}, "VAE"),
        ({"string_to_param": (1,)}, "embedding"),
        ({"foo": (1,)}, "no model.diffusion_model"),
    ],
)
def test_non_checkpoints_get_a_helpful_message(shapes, hint):
    with pytest.raises(UnknownArchitectureError, match=hint):
        detect_architecture(shapes, path=Path("thing.safetensors"))


def test_pure_modules_do_not_import_torch():
    code = (
        "import sys; import webui.config, webui.models.detect, webui.models.header, webui.models.offload, "
        "webui.models.registry, webui.models.open_clip_keys, webui.pipelines.request; "
        "bad = [m for m in ('torch', 'gradio', 'diffusers') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
