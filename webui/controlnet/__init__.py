"""ControlNet: guide a picture with a control map (edges, lines, scribbles, poses, depth).

Modules, one job each (importing the package imports nothing heavy; the torch ones are marked):
- ``units``: ``ControlUnit``, the sd-webui-controlnet unit with its field names, defaults and enums (pure).
- ``catalog``: the preprocessors ("modules") with their names, labels and sliders (pure).
- ``infotext``: the ``ControlNet N: "Module: ..."`` infotext entries, written and read (pure).
- ``preprocess``: the weight-free preprocessors and pixel-perfect resolution (numpy + OpenCV).
- ``annotators``: the weight-based preprocessors' files in models/ControlNetAnnotators/, and which run (pure).
- ``annotator_store``: ``AnnotatorStore``: annotator networks loaded weights-only on first use, a few kept (torch).
- ``annotator_maps``: the weight-based preprocessors' maps, as the extension makes them (torch).
- ``nets``: the annotator networks (HED, PiDiNet, line art, M-LSD, OpenPose body, Depth Anything) with the
  original files' tensor names (torch).
- ``maps``: fitting a control map to the picture's size by resize mode (numpy + OpenCV).
- ``detect``: what a ControlNet file is (original / diffusers / union layout, SD 1.x / 2.x / SDXL) from its
  tensor names and shapes (pure).
- ``layout``: original-layout keys -> diffusers ``ControlNetModel`` keys, and the model config read off the
  tensors (pure).
- ``files``: the model folders, entries and their titles "name [hash]" (the extension's short hash) (pure).
- ``library``: ``ControlNetLibrary``: listing, lookup, and loading into the checkpoint RAM cache (torch).
- ``loader``: one file or folder -> a diffusers ControlNetModel / ControlNetUnionModel (torch).
- ``placement``: where a ControlNet sits during a pass, following the checkpoint's offload plan (torch).
- ``guidance``: the UNet hook that adds each unit's residuals with its weight, steps and control mode (torch).
- ``session``: one job's units, resolved, loaded and preprocessed, attached to each denoising pass (torch).

What front ends call: ``ControlUnit.from_dict`` (A1111 unit dicts, or let ``build_request`` do it),
``catalog.module_list`` / ``module_detail`` (``/controlnet/module_list``), ``PipelineManager.controlnets.titles()``
(``/controlnet/model_list``), ``preprocess.detect_map`` (the preview button, ``/controlnet/detect``),
``infotext.units_from_params`` (PNG Info; ``request_fields_from_infotext`` already returns ``controlnet_units``).
"""

# What GET /controlnet/version answers: the sd-webui-controlnet API version clients check for.
EXTENSION_API_VERSION = 2
