"""The Gradio page and the named API endpoints (/edit, /sweep, /generate, /models), also
served as MCP tools (edit, sweep, generate, models) at /gradio_api/mcp.

The page has three tabs (edit, text to image, models) built by one function each; the
settings' controls come from `editmgt_app.controls`, one per `EditSettings` field, kept in a
dict by field name and passed to the handlers by name. The page's own events are private;
the API endpoints are separate events on hidden components whose settings default to None
(= the chosen model's recommendation), so a `gradio_client` call needs only image and
instruction. All GPU work shares one concurrency group of size 1 and runs only through the
queue: Gradio's direct REST route, which would bypass it, is closed. Uploads and outputs are
deleted after CACHE_LIFETIME_S and at shutdown; messages shown to users never hold a server
path.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import gradio as gr
from gradio.components.image import ImageData
from gradio.utils import get_upload_folder, is_in_or_equal
from PIL import Image
from pydantic import ValidationError

from editmgt import settings
from editmgt.errors import InputError
from editmgt_app import controls, plots
from editmgt_app.controls import json_input
from editmgt_app.inputs import MAX_UPLOAD_MB, mask_from_editor, parse_lambdas
from editmgt_app.manager import ModelLoadError, ModelUnavailable
from editmgt_app.service import DEFAULT_SWEEP, GENERATE_SETTINGS, EditService, OutOfMemory

logger = logging.getLogger(__name__)

GPU = dict(concurrency_id="gpu", concurrency_limit=1)
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_SETS = {"photos": EXAMPLES_DIR / "examples.json", "shapes": EXAMPLES_DIR / "shapes" / "examples.json"}
QUEUE_SIZE = 64  # requests waiting at most; more are told the queue is full
CACHE_LIFETIME_S = 3600  # uploads and outputs older than this are deleted (all of them at shutdown)
MAX_SESSIONS = 1000  # client sessions whose state the server keeps (about 210 KB each); the oldest go first
IMAGE_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"
DISPLAY_MIN_SIDE = 256  # the page shows smaller pictures (64 px shapes scenes) enlarged, pixels kept sharp
CSS = """
#source-image img, #edit-output img, #generated img { image-rendering: pixelated; }
#source-image img { min-width: 60%; min-height: 60%; object-fit: contain; }
#sweep-gallery .thumbnail-item { height: auto; aspect-ratio: auto; display: flex; flex-direction: column; }
#sweep-gallery .caption-label { position: static; transform: none; max-width: 100%; margin: 2px auto; }
"""


def launch_options() -> dict:
    """What `demo.launch` takes besides host and port: the upload limit, the bound on
    sessions kept in memory, the MCP server, Gradio's error texts shown to the user, and the
    page's style sheet."""
    return dict(max_file_size=f"{MAX_UPLOAD_MB}mb", state_session_capacity=MAX_SESSIONS, mcp_server=True,
                show_error=True, css=CSS)


# ---------------------------------------------------------------------- messages users see
_SERVER_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`,;:()\[\]{}<>]+/)+[^\s/'\"`,;:()\[\]{}<>]*")


def public_message(text: str) -> str:
    """`text` with every absolute server path shortened: an upload to its file name (the
    name it was uploaded under), any other path to '.../' and its last part."""
    uploads = get_upload_folder()

    def short(match: re.Match) -> str:
        path = match.group(0)
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return name if is_in_or_equal(path, uploads) else f".../{name}"

    return _SERVER_PATH.sub(short, text)


def _no_upload(value: Any) -> gr.Error:
    return gr.Error(f"the image must be an uploaded file, got {public_message(reprlib.repr(value))}: upload a "
                    f"{IMAGE_FORMATS} file (gradio_client: handle_file(path); MCP: an http(s) or data: URL)")


class _UploadedImage(ImageData):
    """Gradio's image payload whose validation failure (a value that is no file at all) is a
    gr.Error saying what to send, instead of pydantic's dump of the model."""

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> ImageData:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError:
            raise _no_upload(obj) from None


def checked_image(**kwargs) -> gr.Image:
    """gr.Image(type="filepath", image_mode=None) whose upload errors (no file, a path that
    was not uploaded, not an image, corrupt, decompression bomb) become a specific gr.Error
    instead of a generic failure. The component's own preprocess is wrapped on the instance
    (a subclass would make Gradio write a .pyi stub next to this module)."""
    component = gr.Image(type="filepath", image_mode=None, format="png", **kwargs)
    component.data_model = _UploadedImage
    preprocess = component.preprocess

    def checked(payload):
        name = getattr(payload, "orig_name", None) or "the upload"
        path = getattr(payload, "path", None)
        if payload is not None and path is None and not getattr(payload, "url", None):
            raise _no_upload(payload.model_dump(exclude_none=True, exclude={"meta", "is_stream"}))
        if path is not None and not is_in_or_equal(path, component.GRADIO_CACHE):
            # Gradio checks uploaded files only when the payload is marked as one; an unmarked
            # payload could name any file on the server.
            raise gr.Error(f"{public_message(str(path))} was not uploaded to this server: upload the image "
                           "(the page, gradio_client's handle_file, or a URL) instead of naming a path")
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError as err:
            raise gr.Error(f"the image was refused as a decompression bomb: {err}; upload a smaller image") from None
        except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
            raise gr.Error(public_message(f"{name!s} is not an image that can be read ({type(err).__name__}: {err}); "
                                          f"use {IMAGE_FORMATS}")) from None

    component.preprocess = checked
    return component


def user_errors(fn):
    """Turn the errors a user can act on into gr.Error with their message, without server
    paths; the app keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as err:
            message = public_message(str(err.message))
            if message == err.message:
                raise
            raise gr.Error(message) from None
        except (InputError, ModelUnavailable, ModelLoadError, OutOfMemory) as err:
            logger.info("%s refused: %s", fn.__name__, err)  # the full text, paths included, for the operator
            raise gr.Error(public_message(str(err))) from None
        except Exception as err:  # noqa: BLE001 - report, keep serving
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(public_message(f"internal error: {type(err).__name__}: {err}") +
                           " (a bug, not your input: the server log has the details)") from None

    return wrapper


def endpoint(name: str, summary: str, returns: str, **args: str) -> Callable:
    """Name and document an API handler. `name` is its MCP tool name (Gradio names tools
    after the function). The docstring it writes (summary, an Args line per argument,
    Returns) is what gradio_client's view_api and MCP clients show: an argument that is an
    edit setting takes its meaning from `editmgt.settings`, the others from `args`."""

    def document(fn: Callable) -> Callable:
        params = [p for p in inspect.signature(fn).parameters if p != "progress"]
        missing = [p for p in params if p not in args and p not in settings.names()]
        if missing:
            raise TypeError(f"endpoint {name!r}: describe argument(s) {missing}")
        lines = [summary]
        if params:
            lines += ["", "Args:"] + [f"    {p}: {args.get(p) or controls.api_meaning(p)}" for p in params]
        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = "\n".join(lines + ["", "Returns:", f"    {returns}"])
        return fn

    return document


# What the API's arguments mean, where they are not edit settings (those are in editmgt.settings).
API_ARGS = dict(
    image=f"the photo to edit, a {IMAGE_FORMATS} file (bounded in bytes, pixels and aspect ratio)",
    instruction="what to change, in English, e.g. 'make the cat black'",
    model="id of the model in the zoo (see models); blank = the model the app started with",
    seed="random seed (a whole number); blank or -1 = a new random seed, returned in the info",
    mask="optional image of the photo's size: white or opaque = the region to edit, the rest is kept",
    load_8bit="true: run the model with 8-bit weights (about half the memory, slightly different results)",
    lambdas="list of region-hold thresholds (see hold_lambda), one edit each, all with one seed; "
            "blank = the default grid",
    prompt="what to draw, in English, e.g. 'a red bicycle'",
)


def takes_settings(fn: Callable, names: Sequence[str]) -> Callable:
    """Give `fn` (whose settings arrive as **kwargs) a signature with one keyword argument per
    setting in `names`, default None (= the model's recommendation): Gradio names and
    documents the API's parameters from it, so the endpoint follows `EditSettings`."""
    own = [p for p in inspect.signature(fn).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name != "progress"]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in names]
    progress = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress())
    fn.__signature__ = inspect.Signature(own + extra + [progress])
    return fn


def _progress_fn(progress: Optional[gr.Progress]):
    """The service's progress (done, total, what) on Gradio's progress bar."""
    if progress is None:
        return None
    return lambda done, total, what: progress((done, total), desc=what,
                                              unit="steps" if what == "sampling" else "parts")


def load_examples() -> list[dict]:
    """The examples of every set of EXAMPLE_SETS, each with its `path` and the `inputs` it
    suits (a zoo entry's `inputs`: photos, or the synthetic shapes scenes)."""
    examples = []
    for inputs, path in EXAMPLE_SETS.items():
        if path.is_file():
            examples += [dict(e, path=str(path.parent / e["file"]), inputs=inputs) for e in json.loads(path.read_text())]
    return examples


def for_display(image: Optional[Image.Image]) -> Optional[Image.Image]:
    """`image` enlarged (nearest, a whole factor) when its shorter side is below DISPLAY_MIN_SIDE,
    so small pictures are legible on the page; the API returns the real size."""
    if image is None or min(image.size) >= DISPLAY_MIN_SIDE:
        return image
    factor = -(-DISPLAY_MIN_SIDE // min(image.size))
    size = plots.bounded_size((image.width * factor, image.height * factor))
    return image.resize(size, Image.NEAREST)


# ---------------------------------------------------------------------- what the page shows
class PageText:
    """The page's words about the models: dropdown labels, the one-line card, the status line,
    the Models table."""

    def __init__(self, service: EditService) -> None:
        self.service = service
        self.zoo = service.manager.zoo

    def choices(self) -> list[tuple[str, str]]:
        """(label, id) for the model pickers; unavailable models say so, with the reason."""
        out = []
        for model_id in self.zoo.ids:
            resolved = self.service.manager.resolve(model_id)
            label = self.zoo[model_id].label
            if not resolved.available:  # the reason's first clause; the card has all of it
                reason = public_message(re.split(r";| \(", resolved.reason)[0])
                label += f" - unavailable: {reason[:70]}{'...' if len(reason) > 70 else ''}"
            out.append((label, model_id))
        return out

    def card(self, model_id: str) -> str:
        """What the model can do (its zoo summary), and whether it can run now (why not)."""
        if model_id not in self.zoo:
            return ""
        entry = self.zoo[model_id]
        row = next(r for r in self.service.models() if r["id"] == model_id)
        if row["state"] == "unavailable":
            return public_message(f"**{entry.label}**: {entry.summary}\n\n**Unavailable:** {row['reason']}")
        state = f"{row['state']}{': ' + row['reason'] if row['reason'] else ''}"
        return public_message(f"**{entry.label}**: {entry.summary} ({entry.resolution} px; {state})")

    def status(self, model_id: Optional[str] = None) -> str:
        state = ""
        if model_id in self.zoo:
            row = next(r for r in self.service.models() if r["id"] == model_id)
            state = f"**{model_id}**: {row['state']}{' (' + row['reason'] + ')' if row['reason'] else ''} | "
        return public_message(f"{state}{self.service.manager.summary_line()}")

    def models_table(self) -> str:
        """The zoo as a markdown table: each model's task, state, what it can do, the settings it
        recommends (those that differ from EditSettings' defaults) and where its weights are."""
        def cell(value: Any) -> str:
            return public_message(str(value)).replace("|", "\\|").replace("\n", " ")

        lines = ["| model | task | state | what it can do | recommended settings | weights |",
                 "|---|---|---|---|---|---|"]
        for m in self.service.models():
            recommended = ", ".join(f"{k} {v}" for k, v in m["settings"].items()
                                    if v != settings.spec(k)["default"] and k != "negative_prompt")
            state = f"**{m['state']}**" + (f": {m['reason']}" if m["reason"] else "")
            lines.append("| " + " | ".join(cell(c) for c in (
                f"**{m['id']}** ({m['label']})", f"{m['task']}, {m['inputs']}, {m['resolution']} px", state,
                m["summary"], recommended or "the library's defaults",
                m["source"] or "not configured")) + " |")
        return "\n".join(lines)


# ---------------------------------------------------------------------- layout
@dataclass
class EditTab:
    image: gr.Image
    instruction: gr.Textbox
    model: gr.Dropdown
    use_8bit: gr.Checkbox
    card: gr.Markdown
    run: gr.Button
    mask: gr.ImageMask
    settings: dict[str, gr.Component]  # one control per EditSettings field, by name
    seed: gr.Number
    randomize: gr.Checkbox
    run_sweep: gr.Checkbox
    grid: gr.Textbox
    slider: gr.ImageSlider
    heat: gr.Image
    curve: gr.Image
    info: gr.JSON
    gallery: gr.Gallery
    examples: dict[str, gr.Column]  # the example sets, by the inputs they suit


def edit_tab(text: PageText, default_model: str, default_8bit: bool) -> EditTab:
    entry = text.zoo[default_model]
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            image = checked_image(label="Photo (upload, paste or webcam)", sources=["upload", "clipboard", "webcam"],
                                  elem_id="source-image", height=320)
            instruction = gr.Textbox(label="Instruction", placeholder="make the cat black", lines=2,
                                     max_length=settings.MAX_TEXT_CHARS, elem_id="instruction")
            with gr.Row():
                model = gr.Dropdown(choices=text.choices(), value=default_model, label="Model", elem_id="model",
                                    scale=3)
                use_8bit = gr.Checkbox(label="8-bit", value=default_8bit, scale=1,
                                       info="quantise transformer + Gemma2 linears")
            card = gr.Markdown(text.card(default_model), elem_id="model-card")
            run = gr.Button("Edit", variant="primary", elem_id="run-edit")
            examples = {}
            for inputs, found in _examples_by_inputs().items():
                with gr.Column(visible=inputs == entry.inputs, elem_id=f"examples-{inputs}") as column:
                    gr.Examples(examples=[[e["path"], e["instruction"]] for e in found], inputs=[image, instruction],
                                example_labels=[f"{Path(e['file']).stem}: {e['instruction']}" for e in found],
                                label=EXAMPLE_LABELS[inputs], cache_examples=False)
                examples[inputs] = column
            with gr.Accordion("Mask brush (optional: paint where to edit)", open=False):
                mask = gr.ImageMask(label="Mask", type="pil", sources=[], elem_id="mask-brush", height=320)
            with gr.Accordion("Advanced (blank boxes: the model's recommendation)", open=False):
                controls_ = {name: controls.page_control(name, getattr(entry.settings, name))
                             for name in settings.names()}
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    randomize = gr.Checkbox(value=True, label="Randomize seed")
                with gr.Row():
                    run_sweep = gr.Checkbox(value=True, label="Run the lambda sweep (curve)")
                    grid = gr.Textbox(value=", ".join(f"{x:g}" for x in DEFAULT_SWEEP), label="Sweep lambdas")
        with gr.Column(scale=2, min_width=480):
            with gr.Row():
                slider = gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="edit-output")
                heat = gr.Image(label="Attention map", type="pil", format="png", interactive=False,
                                elem_id="heatmap")
            gr.Markdown("Attention map: bright where the instruction's words attend, i.e. where the model "
                        "decided to edit. With region-hold (lambda > 0) a cyan line outlines the edit region; "
                        "everything outside it is the held region, kept at the source.", elem_id="heatmap-legend")
            with gr.Row():
                curve = gr.Image(label="L1 to source vs lambda", type="pil", format="png", interactive=False,
                                 elem_id="curve", height=380)
                info = gr.JSON(label="Info", elem_id="info")
            gallery = gr.Gallery(label="Sweep (one image per lambda)", format="png", columns=len(DEFAULT_SWEEP) + 1,
                                 height=190, object_fit="contain", elem_id="sweep-gallery")
    return EditTab(image, instruction, model, use_8bit, card, run, mask, controls_, seed, randomize, run_sweep,
                   grid, slider, heat, curve, info, gallery, examples)


EXAMPLE_LABELS = {
    "photos": "Examples (CC0 / public-domain photos, see examples/*.LICENSE.txt)",
    "shapes": "Examples: synthetic 64 px shapes scenes, what the tiny-shapes model knows",
}


def _examples_by_inputs() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in load_examples():
        out.setdefault(e["inputs"], []).append(e)
    return out


@dataclass
class GenerateTab:
    prompt: gr.Textbox
    model: gr.Dropdown
    settings: dict[str, gr.Component]  # the settings text-to-image uses (GENERATE_SETTINGS)
    seed: gr.Number
    randomize: gr.Checkbox
    use_8bit: gr.Checkbox
    run: gr.Button
    image: gr.Image
    info: gr.JSON


def generate_tab(text: PageText, default_model: str) -> GenerateTab:
    entry = text.zoo[default_model]
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=2, max_length=settings.MAX_TEXT_CHARS, elem_id="prompt")
            model = gr.Dropdown(choices=text.choices(), value=default_model, label="Model", elem_id="t2i-model")
            with gr.Accordion("Settings", open=False):
                controls_ = {name: controls.page_control(name, getattr(entry.settings, name), "t2i-setting-")
                             for name in GENERATE_SETTINGS}
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed")
                randomize = gr.Checkbox(value=True, label="Randomize seed")
            use_8bit = gr.Checkbox(value=False, label="8-bit")
            run = gr.Button("Generate", variant="primary", elem_id="run-generate")
        with gr.Column():
            image = gr.Image(label="Generated", type="pil", format="png", interactive=False, elem_id="generated",
                             height=512)
            info = gr.JSON(label="Info", elem_id="generate-info")
    return GenerateTab(prompt, model, controls_, seed, randomize, use_8bit, run, image, info)


def models_tab(text: PageText) -> tuple[gr.Markdown, gr.Button]:
    table = gr.Markdown(text.models_table(), elem_id="models-table")
    gr.Markdown("The zoo is `checkpoints.yaml`: add your own fine-tune by copying an entry. A model loads on "
                "first use; the API's `models` endpoint gives the same as JSON.")
    refresh = gr.Button("Refresh")
    return table, refresh


# ---------------------------------------------------------------------- page events
def wire_edit_tab(service: EditService, text: PageText, tab: EditTab, status: gr.Markdown) -> None:
    """Model picker, image upload and the Edit button (private events)."""
    zoo = service.manager.zoo
    model_outputs = [*tab.settings.values(), tab.card, *tab.examples.values(), status]

    def on_model_change(model_id: str) -> list:
        """Show the model's recommendation in every control, its card and the examples that
        suit it; the last result stays."""
        if model_id not in zoo:
            return [gr.update() for _ in model_outputs]
        entry = zoo[model_id]
        values = [controls.to_control(name, getattr(entry.settings, name)) for name in tab.settings]
        shown = [gr.update(visible=inputs == entry.inputs) for inputs in tab.examples]
        return [*values, text.card(model_id), *shown, text.status(model_id)]

    def on_image_change(path: Optional[str]):
        if not path:
            return None
        return {"background": path, "layers": [], "composite": path}

    @user_errors
    def ui_edit(image, instruction, model, load_8bit, mask_value, seed, randomize, run_sweep, grid,
                progress=gr.Progress(), **values):
        out = service.edit(image, instruction, model, controls.overrides(values), seed=None if randomize else seed,
                           mask=lambda size: mask_from_editor(mask_value, size), load_8bit=bool(load_8bit),
                           sweep=parse_lambdas(grid) if run_sweep else None, progress=_progress_fn(progress))
        gallery = [(for_display(image_), caption) for image_, caption in out.sweep_images] or None
        return ((for_display(out.source), for_display(out.edited)), for_display(out.heatmap), out.curve,
                gr.Gallery(value=gallery, columns=max(1, len(gallery or ()))), out.info, out.info["seed"],
                text.card(model), text.status(model))

    tab.model.change(on_model_change, tab.model, model_outputs, api_visibility="private", queue=False)
    tab.image.change(on_image_change, tab.image, tab.mask, api_visibility="private")
    gr.on([tab.run.click, tab.instruction.submit], ui_edit,
          [tab.image, tab.instruction, tab.model, tab.use_8bit, tab.mask, tab.seed, tab.randomize, tab.run_sweep,
           tab.grid], [tab.slider, tab.heat, tab.curve, tab.gallery, tab.info, tab.seed, tab.card, status],
          inputs_kwargs=tab.settings, api_visibility="private",
          show_progress_on=[tab.slider, tab.heat, tab.curve, tab.info, tab.gallery], **GPU)


def wire_generate_tab(service: EditService, text: PageText, tab: GenerateTab, status: gr.Markdown) -> None:
    zoo = service.manager.zoo

    def on_t2i_model_change(model_id: str) -> list:
        if model_id not in zoo:
            return [gr.update() for _ in tab.settings]
        return [controls.to_control(name, getattr(zoo[model_id].settings, name)) for name in tab.settings]

    @user_errors
    def ui_generate(prompt, model, seed, randomize, load_8bit, progress=gr.Progress(), **values):
        image, info = service.generate(prompt, model, controls.overrides(values), seed=None if randomize else seed,
                                       load_8bit=bool(load_8bit), progress=_progress_fn(progress))
        return for_display(image), info, info["seed"], text.status(model)

    tab.model.change(on_t2i_model_change, tab.model, list(tab.settings.values()), api_visibility="private",
                     queue=False)
    tab.run.click(ui_generate, [tab.prompt, tab.model, tab.seed, tab.randomize, tab.use_8bit],
                  [tab.image, tab.info, tab.seed, status], inputs_kwargs=tab.settings, api_visibility="private",
                  **GPU)


# ---------------------------------------------------------------------- API endpoints
def api_endpoints(service: EditService, default_model: str, t2i_default: str) -> None:
    """/edit, /sweep, /generate and /models on hidden components; every setting is an
    argument named as its EditSettings field (None = the model's recommendation)."""
    zoo = service.manager.zoo
    sweep_settings = [n for n in settings.names() if n != "hold_lambda"]  # the lambdas set it

    @user_errors
    def api_edit(image, instruction, model, seed=None, mask=None, load_8bit=False, progress=gr.Progress(),
                 **values):
        out = service.edit(image, instruction, model, controls.overrides(values), seed=seed, mask=mask or None,
                           load_8bit=bool(load_8bit), progress=_progress_fn(progress))
        return out.edited, out.heatmap, out.info

    @user_errors
    def api_sweep(image, instruction, model, lambdas=None, seed=None, mask=None, load_8bit=False,
                  progress=gr.Progress(), **values):
        out = service.sweep(image, instruction, model, lambdas, controls.overrides(values), seed=seed,
                            mask=mask or None, load_8bit=bool(load_8bit), progress=_progress_fn(progress))
        return out.rows, out.sweep_images, out.curve

    @user_errors
    def api_generate(prompt, model, seed=None, load_8bit=False, progress=gr.Progress(), **values):
        return service.generate(prompt, model, controls.overrides(values), seed=seed, load_8bit=bool(load_8bit),
                                progress=_progress_fn(progress))

    @endpoint("models", "List the model zoo: the ids to pass as model, with each entry's task and status.",
              "one JSON object per model: id, label, task, inputs, state (loading / ready / failed / unavailable) "
              "and why, what it can do, device, dtype, memory and the recommended settings")
    def api_models():
        return service.models()

    edit_fn = endpoint("edit", "Edit a photo as an instruction says. Only image and instruction are needed; "
                       "every other argument defaults to the model's recommendation (see models).",
                       "the edited image (PNG), the attention heat-map over the photo with the edit region "
                       "outlined, and JSON info (l1_to_source, changed_fraction, seed, settings, notes, ...)",
                       **API_ARGS)(takes_settings(api_edit, settings.names()))
    sweep_fn = endpoint("sweep", "Edit a photo once per lambda (one batch where memory allows, one seed), to see "
                        "how region-hold trades the edit against keeping the rest of the photo.",
                        "JSON rows {lambda, l1_to_source, l1_to_reconstruction, changed_fraction, seed}, the "
                        "edited images and the L1-vs-lambda plot", **API_ARGS)(takes_settings(api_sweep, sweep_settings))
    generate_fn = endpoint("generate", "Draw an image from a text prompt (the text-to-image entries of the zoo, "
                           "e.g. Meissonic; any entry works).", "the image (PNG) and JSON info (seed, seconds, ...)",
                           **dict(API_ARGS, model="id of the model in the zoo (see models); blank = the first "
                                                  "available text-to-image model"))(
        takes_settings(api_generate, GENERATE_SETTINGS))

    with gr.Column(visible=False):
        image = checked_image(label="image")
        instruction = gr.Textbox(label="instruction")
        model = gr.Dropdown(choices=zoo.ids, value=default_model, label="model", allow_custom_value=True)
        seed = gr.Number(value=None, label="seed")
        mask = checked_image(label="mask")
        load_8bit = gr.Checkbox(value=False, label="load_8bit")
        lambdas = json_input({"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "null"}]},
                             value=None, label="lambdas")
        values = {name: controls.api_input(name) for name in settings.names()}
        prompt = gr.Textbox(label="prompt")
        t2i_model = gr.Dropdown(choices=zoo.ids, value=t2i_default, label="model", allow_custom_value=True)
        o_edited = gr.Image(label="edited", type="pil", format="png")
        o_heat = gr.Image(label="attention_map", type="pil", format="png")
        o_info = gr.JSON(label="info")
        o_rows = gr.JSON(label="rows")
        o_gallery = gr.Gallery(label="images", format="png")
        o_curve = gr.Image(label="curve", type="pil", format="png")
        o_generated = gr.Image(label="image", type="pil", format="png")
        o_models = gr.JSON(label="models")
        trigger = gr.Button(visible=False)
    trigger.click(edit_fn, [image, instruction, model, seed, mask, load_8bit], [o_edited, o_heat, o_info],
                  inputs_kwargs=values, api_name="edit", **GPU)
    trigger.click(sweep_fn, [image, instruction, model, lambdas, seed, mask, load_8bit], [o_rows, o_gallery, o_curve],
                  inputs_kwargs={n: values[n] for n in sweep_settings}, api_name="sweep", **GPU)
    trigger.click(generate_fn, [prompt, t2i_model, seed, load_8bit], [o_generated, o_info],
                  inputs_kwargs={n: values[n] for n in GENERATE_SETTINGS}, api_name="generate", **GPU)
    trigger.click(api_models, None, o_models, api_name="models", queue=False)


# ---------------------------------------------------------------------- the demo
def build_demo(service: EditService, default_model: str, title: str = "EditMGT",
               default_8bit: bool = False, cache_lifetime_s: int = CACHE_LIFETIME_S) -> gr.Blocks:
    """The page (edit, text to image and models tabs, a status line) and the API endpoints."""
    zoo = service.manager.zoo
    text = PageText(service)
    t2i_default = next((m for m in zoo.ids if zoo[m].task == "text-to-image" and service.manager.resolve(m).available),
                       default_model)
    # Uploads and outputs older than cache_lifetime_s are deleted (checked four times per
    # lifetime), and every file the app created is deleted when the server shuts down.
    with gr.Blocks(title=title, delete_cache=(max(1, cache_lifetime_s // 4), cache_lifetime_s)) as demo:
        gr.Markdown(
            f"# {title}: edit a photo with a sentence\n"
            "A masked generative transformer edits the picture; the attention map shows where it decided to "
            "edit, and region-hold (lambda) keeps the tokens scoring below lambda at the source. "
            "The curve shows how far the edit moves from the source as lambda grows.")
        with gr.Tabs():
            with gr.Tab("Edit", id="edit"):
                edit = edit_tab(text, default_model, default_8bit)
            with gr.Tab("Text to image", id="t2i"):
                generate = generate_tab(text, t2i_default)
            with gr.Tab("Models", id="models") as models:
                table, refresh = models_tab(text)
        status = gr.Markdown(text.status(default_model), elem_id="status")

        wire_edit_tab(service, text, edit, status)
        wire_generate_tab(service, text, generate, status)
        gr.on([refresh.click, models.select], text.models_table, None, table, api_visibility="private", queue=False)
        demo.load(lambda: (text.status(default_model), text.models_table(), gr.update(choices=text.choices()),
                           gr.update(choices=text.choices())),
                  None, [status, table, edit.model, generate.model], api_visibility="private", queue=False)
        api_endpoints(service, default_model, t2i_default)
    # Model work runs only through the queue: api_open=False closes Gradio's direct route
    # (POST /gradio_api/run/<name>), which runs queued events at once, beside the queue.
    return demo.queue(api_open=False, max_size=QUEUE_SIZE, default_concurrency_limit=1)
