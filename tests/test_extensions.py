"""Extensions: discovery, the versioned API's hooks and registrations, isolation of failures, admin actions,
and the two bundled extensions, all with real folders, real imports and tiny real models."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.probe_extension import write_extension
from webui.extensions import admin
from webui.extensions.hooks import ExtensionFailure
from webui.extensions.loader import DISABLED, FAILED, INCOMPATIBLE, LOADED, NEEDS, SWITCHED_OFF
from webui.extensions.manifest import ManifestError, parse_manifest
from webui.infotext import parse_infotext
from webui.jobs import JobControl
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest

ROOT = Path(__file__).resolve().parent.parent


def request(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 5, "save_images": False,
            "checkpoint": "sd1.safetensors"}
    return GenerationRequest(**{**base, **kw})


def probe(ctx):
    return sys.modules["atelier_ext_probe.main"]


@pytest.fixture
def with_probe(make_context, tmp_path):
    write_extension(tmp_path / "extensions" / "probe")
    ctx = make_context(["sd1"])
    assert ctx.extensions.records["probe"].status == LOADED, ctx.extensions.records["probe"].error
    return ctx


# --------------------------------------------------------------------------- manifest (pure)

MANIFEST_LINES = {"id": 'id = "a-b"', "name": 'name = "A"', "version": 'version = "1"', "api": 'api = ">=1,<2"',
                  "entry": 'entry = "main:setup"'}


def test_manifest_is_checked():
    good = parse_manifest("\n".join(MANIFEST_LINES.values()))
    assert good.supports("1.0") and not good.supports("2.0")
    for key, bad in [("id", 'id = "A B"'), ("id", 'id = "../x"'), ("api", 'api = "one"'), ("entry", 'entry = "main"'),
                     ("name", "")]:
        lines = {**MANIFEST_LINES, key: bad}
        with pytest.raises(ManifestError, match=key if bad else "missing"):
            parse_manifest("\n".join(lines.values()))


# --------------------------------------------------------------------------- hooks and registrations

def test_every_hook_fires_with_the_right_data(with_probe):
    ctx = with_probe
    calls = probe(ctx).CALLS
    req = request(save_images=True)
    req.extra["probe"] = {"strength": 0.25}
    result = generate(ctx.manager, req, ctx.outputs, hooks=ctx.hooks)
    assert calls["before_generate"] == [{"strength": 0.25}], "section values reach the hook"
    assert parse_infotext(result.infotexts[0])["Prompt"] == "a red circle, probed", "before_generate changed it"
    assert [c[0] for c in calls["on_step"]] == [1, 2, 3] and calls["on_step"][0][1] == 3
    assert calls["on_step"][0][2] == (1, 4, 8, 8), "latents of the batch being denoised"
    assert calls["after_image"] == [((64, 64), 5, 0)]
    assert calls["before_save"] == [5]
    saved = Image.open(result.paths[0])
    assert saved.info["parameters"].endswith("Probe: saved"), "before_save's infotext is what the PNG stores"


def test_registrations_reach_the_app(with_probe):
    ctx = with_probe
    registry = ctx.hooks
    assert [s.title for _, s in registry.active_scripts("txt2img")] == ["Probe script"]
    assert [s.title for s in registry.sections] == ["Probe section"]
    assert [t.title for t in registry.tabs] == ["Probe"]
    assert [(r.owner, r.path) for r in registry.routes] == [("probe", "/ping")]
    assert registry.setting_value("probe", "greeting") == "hello"
    ctx.extensions.store.set_values("probe", {"greeting": "hi"})
    assert registry.routes[0].endpoint() == {"pong": "hi"}, "settings persist and reach the extension"

    from webui.ui.app import build

    demo = build(ctx)
    config = str(demo.get_config_file())
    for elem_id in ("tab-ext-probe", "probe-tab-content", "txt2img-probe-strength", "txt2img-script",
                    "txt2img-probe-runs", "settings-ext-probe", "tab-extensions"):
        assert elem_id in config, elem_id
    assert probe(ctx).CALLS["section"] == ["txt2img", "img2img", "inpaint"]


@pytest.mark.slow
def test_a_script_takes_over_the_job(with_probe):
    from webui.extensions.scripts import run_script

    ctx = with_probe
    owner, script = ctx.hooks.active_scripts("txt2img")[0]
    result = run_script(ctx, owner, script, JobControl(), request(), [3])
    assert len(result.images) == 3 and result.seeds == [5, 6, 7]
    single = generate(ctx.manager, request(seed=6), hooks=ctx.hooks)
    assert np.array_equal(np.asarray(result.images[1]), np.asarray(single.images[0]))


# --------------------------------------------------------------------------- isolation

@pytest.mark.parametrize("hook", ["before_generate", *(pytest.param(h, marks=pytest.mark.slow)
                                                      for h in ("on_step", "after_image", "before_save"))])
def test_a_hook_that_raises_breaks_only_its_job_and_is_switched_off(with_probe, hook):
    ctx = with_probe
    module = probe(ctx)
    module.MODE["fail"] = hook
    with pytest.raises(ExtensionFailure, match=f"probe.*{hook}.*switched off"):
        generate(ctx.manager, request(save_images=True), ctx.outputs, hooks=ctx.hooks)
    assert ctx.extensions.records["probe"].status == SWITCHED_OFF
    before = {k: len(v) for k, v in module.CALLS.items() if isinstance(v, list)}
    result = generate(ctx.manager, request(), hooks=ctx.hooks)
    assert result.images and "probed" not in result.infotexts[0], "the next job runs without the extension"
    assert {k: len(v) for k, v in module.CALLS.items() if isinstance(v, list)} == before
    assert not ctx.hooks.active_scripts("txt2img"), "everything it registered is off"


@pytest.mark.slow
def test_a_hook_that_hangs_times_out(with_probe):
    ctx = with_probe
    ctx.hooks.hook_seconds = 0.5
    probe(ctx).MODE["hang"] = "after_image"
    try:
        with pytest.raises(ExtensionFailure, match="did not return within 0.5 s"):
            generate(ctx.manager, request(), hooks=ctx.hooks)
        assert not tracemalloc.is_tracing(), "memory tracing (it slows every allocation) ends with the abandoned call"
        assert generate(ctx.manager, request(), hooks=ctx.hooks).images
    finally:
        probe(ctx).RELEASE.set()  # the abandoned worker thread may end


def _eventually(check, seconds: float = 120.0) -> bool:
    """Polls ``check`` (generous: the CPU is shared); never an assertion on how long it took."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("how", ["hang", "spin"])
def test_a_step_hook_that_does_not_return_is_switched_off_and_its_job_interrupted(with_probe, how):
    """Blocked (hang) or busy in pure Python (spin): nothing is raised into the job's thread, but at the deadline
    the extension is switched off and the job interrupted; when the hook returns, the job says why it ended."""
    ctx = with_probe
    ctx.hooks.step_hook_seconds = 0.3
    module = probe(ctx)
    module.MODE[how] = "on_step"
    control = JobControl()
    outcome: dict = {}

    def job() -> None:
        try:
            outcome["result"] = generate(ctx.manager, request(), control=control, hooks=ctx.hooks)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    try:
        assert _eventually(lambda: ctx.extensions.records["probe"].status == SWITCHED_OFF)
        assert "on_step hook did not return within 0.3 s" in ctx.extensions.records["probe"].error
        assert _eventually(lambda: control.interrupted), "the job was told to stop"
        assert not outcome, "the job's thread is still inside the hook: nothing can free it"
    finally:
        module.RELEASE.set()  # the hook returns, as a hung one may one day
        thread.join(120)
    error = outcome.get("error")
    assert isinstance(error, ExtensionFailure), outcome
    assert re.search(r"probe.*on_step hook did not return within 0\.3 s.*switched off", str(error))
    calls = len(module.CALLS["on_step"])
    assert generate(ctx.manager, request(), hooks=ctx.hooks).images, "later jobs run without it"
    assert len(module.CALLS["on_step"]) == calls


@pytest.mark.slow
def test_a_hook_that_keeps_memory_is_switched_off(with_probe):
    ctx = with_probe
    ctx.hooks.leak_limit_bytes = 150 * 2**20
    probe(ctx).MODE["leak"] = "after_image"
    jobs = 0
    while ctx.extensions.records["probe"].status != SWITCHED_OFF:
        result = generate(ctx.manager, request(), hooks=ctx.hooks)
        assert result.images, "the jobs themselves complete"
        jobs += 1
        assert jobs <= 5, "switched off once it kept more than the limit"
    assert "kept" in ctx.extensions.records["probe"].error
    calls = len(probe(ctx).CALLS["after_image"])
    generate(ctx.manager, request(), hooks=ctx.hooks)
    assert len(probe(ctx).CALLS["after_image"]) == calls, "later jobs run without it"
    probe(ctx).KEPT.clear()


@pytest.mark.slow
def test_memory_another_thread_takes_during_a_hook_is_only_a_note(with_probe):
    """An upload decoded (or a file hashed) at the same moment grows the process, not the hook."""
    from webui.ui.extensions_tab import records_html

    ctx = with_probe
    ctx.hooks.leak_limit_bytes = 2**30
    module = probe(ctx)
    module.MODE["pause"] = "after_image"
    held = []

    def upload() -> None:
        if module.ENTERED.wait(120):
            held.append(bytearray(3 * 2**29))  # 1.5 GiB, zero-filled so every page is resident
        module.RELEASE.set()

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    try:
        result = generate(ctx.manager, request(), hooks=ctx.hooks)
    finally:
        module.RELEASE.set()
        thread.join(120)
    assert held, "the other thread allocated while the hook ran"
    held.clear()
    assert result.images
    assert ctx.extensions.records["probe"].status == LOADED, ctx.extensions.records["probe"].error
    table = records_html(ctx)
    assert "stays on" in table and "other work" in table, "the growth is shown as a note"
    module.MODE["pause"] = None
    before = len(module.CALLS["after_image"])
    generate(ctx.manager, request(), hooks=ctx.hooks)
    assert len(module.CALLS["after_image"]) == before + 1, "its hooks still run"


def test_import_and_setup_failures_are_reported_and_others_load(make_context, tmp_path):
    folder = tmp_path / "extensions"
    write_extension(folder / "good", "good")
    write_extension(folder / "bad-import", "bad-import", source="import no_such_module_anywhere\n")
    write_extension(folder / "bad-setup", "bad-setup", source="def setup(api):\n    api.before_generate(print)\n"
                                                              "    raise ValueError('nope')\n")
    write_extension(folder / "exits", "exits", source="import sys\nsys.exit(3)\n")
    write_extension(folder / "off.disabled", "off")
    write_extension(folder / "future", "future", api=">=2,<3")
    write_extension(folder / "needy", "needy", requirements=["surely-not-installed-package>=1"])
    write_extension(folder / "takes-core-tab", "takes-core-tab",
                    source="def setup(api):\n    api.add_tab('txt2img', lambda: None)\n")
    (folder / "broken-manifest").mkdir()
    (folder / "broken-manifest" / "extension.toml").write_text("id = [")
    ctx = make_context(["sd1"])
    records = ctx.extensions.records
    assert records["good"].status == LOADED
    assert records["bad-import"].status == FAILED and "No module named" in records["bad-import"].error
    assert records["bad-setup"].status == FAILED and "nope" in records["bad-setup"].error
    assert records["exits"].status == FAILED, "sys.exit in an extension never stops the app"
    assert records["off"].status == DISABLED
    assert records["future"].status == INCOMPATIBLE and ">=2,<3" in records["future"].error
    assert records["needy"].status == NEEDS and "surely-not-installed-package" in records["needy"].error
    assert records["takes-core-tab"].status == FAILED and "core tab" in records["takes-core-tab"].error
    assert records["broken-manifest"].status == FAILED
    assert [owner for owner, _ in ctx.hooks.hooks["before_generate"]] == ["good"], "bad-setup's hook was dropped"
    table = ctx.extensions.table()
    assert "bad-import" in table and "ms" in table
    assert generate(ctx.manager, request(), hooks=ctx.hooks).images


def test_disabled_in_the_tab_is_skipped_at_next_start(make_context, tmp_path):
    write_extension(tmp_path / "extensions" / "probe")
    ctx = make_context(["sd1"])
    ctx.extensions.store.set_enabled("probe", False)
    again = make_context(["sd1"])
    assert again.extensions.records["probe"].status == DISABLED


# --------------------------------------------------------------------------- admin actions

def _git_repo(path: Path, ext_id: str) -> Path:
    write_extension(path, ext_id)
    for args in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


def test_install_update_uninstall_from_a_local_git_url(make_context, tmp_path):
    from webui.ui.extensions_tab import AdminActions

    repo = _git_repo(tmp_path / "remote" / "my-ext", "my-ext")
    ctx = make_context(["sd1"])
    message = AdminActions(ctx).install(repo.as_uri())
    assert message.startswith("✅"), message
    installed = ctx.extensions.folder / "my-ext"
    assert (installed / "extension.toml").exists()
    assert AdminActions(ctx).install(repo.as_uri()).startswith("❌"), "an existing folder is never overwritten"
    restarted = make_context(["sd1"])
    assert restarted.extensions.records["my-ext"].status == LOADED
    actions = AdminActions(restarted)
    assert actions.update("my-ext").startswith("✅")
    assert actions.uninstall("my-ext").startswith("✅") and not installed.exists()


def test_admin_actions_are_refused_when_the_server_is_on_the_lan(make_context, tmp_path):
    from webui.ui.extensions_tab import AdminActions

    repo = _git_repo(tmp_path / "remote" / "my-ext", "my-ext")
    ctx = make_context(["sd1"], host="0.0.0.0")
    message = AdminActions(ctx).install(repo.as_uri())
    assert message.startswith("❌ Refused") and "--enable-insecure-extension-access" in message
    assert not (ctx.extensions.folder / "my-ext").exists()
    allowed = make_context(["sd1"], host="0.0.0.0", enable_insecure_extension_access=True)
    assert AdminActions(allowed).install(repo.as_uri()).startswith("✅")
    ctx.shared = True
    assert admin.refusal("127.0.0.1", True, False) == "the server is shared through a public link"


@pytest.mark.parametrize("url, name", [("https://x/a/..", None), ("https://x/repo", "../evil"),
                                       ("https://x/repo", "a/b"), ("https://x/repo", "a\\b"), ("https://x/.git", ""),
                                       ("https://x/repo", ".hidden"), ("https://x/repo", "x.disabled")])
def test_folder_names_from_urls_never_leave_the_extensions_folder(url, name):
    with pytest.raises(admin.AdminError):
        admin.folder_name_for(url, name)


def test_an_option_posing_as_a_url_is_refused(tmp_path):
    with pytest.raises(admin.AdminError):
        admin.install_from_git("--upload-pack=touch /tmp/pwned", tmp_path)
    assert admin.folder_name_for("https://github.com/someone/Cool-Ext.git") == "Cool-Ext"


# --------------------------------------------------------------------------- bundled extensions

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import torch

    from webui.config import load_settings
    from webui.context import AppContext

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("xyz")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    settings = load_settings({"settings_file": root / "settings.json", "models_dir": root / "models",
                              "outputs_dir": root / "outputs", "extensions_dir": ROOT / "extensions", "device": "cpu",
                              "precision": "fp32"}, env={})
    ctx = AppContext.create(settings)
    yield ctx
    ctx.close()


def test_bundled_extensions_load(demo):
    for ext_id in ("xyz-plot", "dynamic-prompts"):
        assert demo.extensions.records[ext_id].status == LOADED, demo.extensions.records[ext_id].error


@pytest.mark.slow
def test_xyz_plot_grid_has_the_right_shape_and_its_cells_equal_single_generations(demo):
    from webui.extensions.scripts import run_script

    owner, script = next((o, s) for o, s in demo.hooks.active_scripts("txt2img") if s.title == "X/Y/Z plot")
    base = GenerationRequest(prompt="a red circle on a blue background", steps=6, width=64, height=64, seed=11,
                             save_images=True)
    result = run_script(demo, owner, script, JobControl(), base,
                        ["Steps", "4, 8", "CFG Scale", "3-9 (+6)", "Nothing", "", True])
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 4
    assert "txt2img-grids" in str(result.paths[0]) and len(result.paths) == 5, "grid and cells saved"
    (ROOT / "tests" / "_output").mkdir(parents=True, exist_ok=True)
    grid.save(ROOT / "tests" / "_output" / "xyz-grid.png")
    assert grid.width > 2 * 64 and grid.height > 2 * 64, "room for the labels"
    left, top = grid.width - 2 * 64, grid.height - 2 * 64
    pixels = np.asarray(grid)
    assert (pixels[:top, left:] < 128).any(), "column labels are drawn"
    assert (pixels[top:, :left] < 128).any(), "row labels are drawn"
    for row, cfg in enumerate((3.0, 9.0)):
        for column, steps in enumerate((4, 8)):
            single = generate(demo.manager, base.replace(steps=steps, cfg_scale=cfg, save_images=False)).images[0]
            cell = pixels[top + row * 64: top + (row + 1) * 64, left + column * 64: left + (column + 1) * 64]
            assert np.array_equal(cell, np.asarray(single)), (steps, cfg)
    assert parse_infotext(result.infotexts[2])["Steps"] == 8


def test_xyz_plot_bad_values_name_the_problem(demo):
    from webui.extensions.scripts import run_script
    from webui.pipelines.request import RequestError

    owner, script = next((o, s) for o, s in demo.hooks.active_scripts("txt2img") if s.title == "X/Y/Z plot")
    with pytest.raises(RequestError, match="not a number"):
        run_script(demo, owner, script, JobControl(), request(), ["Steps", "4, lots", "Nothing", "", "Nothing", "",
                                                                  True])
    assert demo.extensions.records[owner].status == LOADED, "a user's typo does not switch the extension off"


@pytest.mark.slow
def test_dynamic_prompts_pick_from_the_seed(demo):
    req = GenerationRequest(prompt="a {red|green|blue} circle on a {black|white} background", steps=2, width=64,
                            height=64, seed=3, save_images=False)
    req.extra["dynamic-prompts"] = {"enabled": True}
    first = generate(demo.manager, req, hooks=demo.hooks)
    again = generate(demo.manager, req, hooks=demo.hooks)
    prompt = parse_infotext(first.infotexts[0])["Prompt"]
    assert "{" not in prompt and prompt == parse_infotext(again.infotexts[0])["Prompt"]
    off = req.replace(extra={})
    assert parse_infotext(generate(demo.manager, off, hooks=demo.hooks).infotexts[0])["Prompt"] == req.prompt


def test_extension_routes_are_served_behind_the_sign_in(make_context, tmp_path):
    import httpx

    from webui.auth import Credentials
    from webui.ui.app import launch

    write_extension(tmp_path / "extensions" / "probe")
    ctx = make_context(["sd1"], port=0, autolaunch=False)
    demo = launch(ctx, credentials=Credentials((("ann", "s3cret"),)), server_port=None, prevent_thread_lock=True,
                  quiet=True)
    try:
        url = demo.local_url.rstrip("/") + "/extensions/probe/ping"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, auth=("ann", "wrong")).status_code == 401
        answer = httpx.get(url, auth=("ann", "s3cret"))
        assert answer.status_code == 200 and answer.json() == {"pong": "hello"}
        ctx.hooks.switch_off("probe", "test")
        assert httpx.get(url, auth=("ann", "s3cret")).status_code == 503
    finally:
        demo.close()


def test_a_pip_installed_extension_is_found_through_its_entry_point(tmp_path, monkeypatch):
    """A package that declares ``[atelier.extensions] name = module:setup`` in its metadata, as pip installs it."""
    from webui.extensions.loader import ExtensionManager
    from webui.extensions.store import ExtensionStore

    site = tmp_path / "site"
    (site / "packaged_ext").mkdir(parents=True)
    (site / "packaged_ext" / "__init__.py").write_text(
        "ATELIER_API = '>=1,<2'\ndef setup(api):\n    api.add_setting('colour', 'red', 'Colour')\n")
    info = site / "packaged_ext-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: packaged-ext\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[atelier.extensions]\npackaged = packaged_ext:setup\n")
    monkeypatch.syspath_prepend(str(site))
    manager = ExtensionManager(tmp_path / "no-folder", ExtensionStore(tmp_path / "store.json"))
    manager.load_all()
    record = manager.records["packaged"]
    assert record.status == LOADED and record.source == "package" and record.version == "2.0"
    assert manager.registry.setting_value("packaged", "colour") == "red"
    manager.close()
