"""One kind of error for what the user asked for or the machine's state, shown the same by every front end."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_models_dir
from webui.api.convert import engine_error
from webui.errors import AtelierError
from webui.extensions.hooks import ExtensionFailure
from webui.models.loader import CheckpointLoadError
from webui.models.vae import VaeNotFoundError
from webui.pipelines.generate import SaveError
from webui.pipelines.manager import NoCheckpointError
from webui.pipelines.request import RequestError
from webui.samplers import UnknownSamplerError

BROKEN_EXTENSION = {
    "extension.toml": 'id = "breaks"\nname = "Breaks"\nversion = "1.0.0"\napi = ">=1,<2"\nentry = "main:setup"\n',
    "main.py": "def setup(api):\n    api.before_generate(lambda request: 1 / 0)\n",
}


@pytest.mark.parametrize(("error", "status", "field"), [
    (RequestError("steps", "must be a whole number between 1 and 150"), 422, "steps"),
    (RequestError("batch_count", "too many"), 422, "n_iter"),
    (UnknownSamplerError("no such schedule", "schedule_type"), 422, "scheduler"),
    (NoCheckpointError("Checkpoint not found: 'x'"), 422, "sd_model_checkpoint"),
    (CheckpointLoadError("x.safetensors: truncated"), 422, "sd_model_checkpoint"),
    (VaeNotFoundError("VAE 'v' not found"), 422, "sd_vae"),
    (SaveError("Could not save the picture: disk full"), 507, None),
    (ExtensionFailure("breaks", "Extension breaks failed"), 500, None),
])
def test_every_user_facing_error_is_an_atelier_error_the_api_maps_by_its_cause(error, status, field):
    assert isinstance(error, AtelierError)
    reply = engine_error(error)
    assert (reply.status, reply.field) == (status, field)
    assert reply.message.split(": ")[-1] in str(error)


def test_the_cli_prints_an_extension_failure_and_exits_2(tmp_path, tiny_files, capsys):
    from webui.cli import main

    folder = tmp_path / "extensions" / "breaks"
    folder.mkdir(parents=True)
    for name, text in BROKEN_EXTENSION.items():
        (folder / name).write_text(text)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"extensions_dir": str(tmp_path / "extensions"), "include_builtin": False}))
    models = make_models_dir(tmp_path, tiny_files, ["sd1"])
    code = main(["generate", "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64", "--models-dir",
                 str(models), "--settings-file", str(settings), "--outputs-dir", str(tmp_path / "out"),
                 "--device", "cpu", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 2 and "Extension breaks failed" in err and "switched off" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))
