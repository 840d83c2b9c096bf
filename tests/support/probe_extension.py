"""The source of a test extension that uses every hook and registration point and records each call.
Tests write it into an extensions folder (the API is its only import from Atelier)."""

PROBE = '''
import threading

CALLS = {"before_generate": [], "on_step": [], "after_image": [], "before_save": [], "tab": 0, "section": [],
         "script": []}
MODE = {"fail": None, "hang": None, "spin": None, "leak": None, "pause": None}
KEPT = []
ENTERED = threading.Event()  # set when a hanging, spinning or pausing hook has started
RELEASE = threading.Event()  # set by the test to let such a hook return


class Probe:
    title = "Probe script"
    modes = ("txt2img", "img2img")

    def ui(self, mode):
        import gradio as gr
        return [gr.Number(value=2, label="Runs", elem_id=f"{mode}-probe-runs")]

    def run(self, job, request, runs):
        results = [job.generate(request.replace(seed=request.seed + i)) for i in range(int(runs))]
        CALLS["script"].append(int(runs))
        return job.finish([r.images[0] for r in results], [r.infotexts[0] for r in results],
                          seeds=[r.seeds[0] for r in results])


def _maybe_fail(hook):
    if MODE["fail"] == hook:
        raise RuntimeError(f"probe broke in {hook}")
    if MODE["hang"] == hook or MODE["pause"] == hook:  # blocked (as on a lock or a socket) until released
        ENTERED.set()
        RELEASE.wait(120)
    if MODE["spin"] == hook:
        ENTERED.set()
    while MODE["spin"] == hook and not RELEASE.is_set():  # a busy loop in pure Python, endless on its own
        pass
    if MODE["leak"] == hook:
        KEPT.append(bytearray(64 * 2**20))  # 64 MB kept forever, touched so it counts


def setup(api):
    assert api.version.startswith("1.")

    @api.before_generate
    def before(request):
        _maybe_fail("before_generate")
        CALLS["before_generate"].append(dict(request.extra.get(api.id, {})))
        return request.replace(prompt=request.prompt + ", probed")

    @api.on_step
    def step(state):
        _maybe_fail("on_step")
        CALLS["on_step"].append((state.step, state.steps, tuple(state.latents.shape)))

    @api.after_image
    def after(image, info):
        _maybe_fail("after_image")
        CALLS["after_image"].append((image.size, info.seed, info.index))

    @api.before_save
    def save(image, info):
        _maybe_fail("before_save")
        CALLS["before_save"].append(info.seed)
        info.infotext += ", Probe: saved"
        return info

    def section(mode):
        import gradio as gr
        CALLS["section"].append(mode)
        return {"strength": gr.Slider(0, 1, value=0.5, label="Probe strength", elem_id=f"{mode}-probe-strength")}

    def tab():
        import gradio as gr
        CALLS["tab"] += 1
        gr.Markdown("Probe tab content", elem_id="probe-tab-content")

    api.add_section("Probe section", section)
    api.add_script(Probe())
    api.add_tab("Probe", tab)
    api.add_route("/ping", lambda: {"pong": api.setting("greeting")})
    api.add_setting("greeting", "hello", "Greeting")
'''

MANIFEST = '''
id = "{id}"
name = "Probe"
version = "0.1.0"
api = "{api}"
entry = "main:setup"
'''


def write_extension(folder, ext_id="probe", api=">=1,<2", source=PROBE, requirements=None):
    folder.mkdir(parents=True, exist_ok=True)
    text = MANIFEST.format(id=ext_id, api=api)
    if requirements is not None:
        text += "requirements = [" + ", ".join(f'"{r}"' for r in requirements) + "]\n"
    (folder / "extension.toml").write_text(text)
    (folder / "main.py").write_text(source)
    return folder
