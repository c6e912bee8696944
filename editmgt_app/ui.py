"""The Gradio page and the named API endpoints (/edit, /sweep, /generate, /models), also
served as MCP tools (edit, sweep, generate, models) at /gradio_api/mcp.

The page's own events are private; the API endpoints are separate events on hidden
components whose optional parameters default to None (= the chosen model's defaults), so
a `gradio_client` call needs only image, instruction and model. All GPU work shares one
concurrency group of size 1 and runs only through the queue: Gradio's direct REST route,
which would bypass it, is closed. Uploads and outputs are deleted after CACHE_LIFETIME_S
and at shutdown; messages shown to users never hold a server path.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import re
import reprlib
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import gradio as gr
from gradio.components.image import ImageData
from gradio.utils import get_upload_folder, is_in_or_equal
from PIL import Image
from pydantic import ValidationError

from editmgt import settings
from editmgt.errors import InputError
from editmgt.sampling.sampler import MIN_SAMPLE_TEMPERATURE
from editmgt_app.inputs import MAX_INSTRUCTION_CHARS, MAX_UPLOAD_MB, mask_from_editor, parse_block, parse_lambdas
from editmgt_app.manager import ModelLoadError, ModelUnavailable
from editmgt_app.service import DEFAULT_SWEEP, MAX_STEPS, SMOOTHING_CHOICES, EditService, OutOfMemory

logger = logging.getLogger(__name__)

GPU = dict(concurrency_id="gpu", concurrency_limit=1)
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
QUEUE_SIZE = 64  # requests waiting at most; more are told the queue is full
CACHE_LIFETIME_S = 3600  # uploads and outputs older than this are deleted (all of them at shutdown)
MAX_SESSIONS = 1000  # client sessions whose state the server keeps (about 210 KB each); the oldest go first
IMAGE_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"


def launch_options() -> dict:
    """What `demo.launch` takes besides host and port: the upload limit, the bound on
    sessions kept in memory, the MCP server, and Gradio's error texts shown to the user."""
    return dict(max_file_size=f"{MAX_UPLOAD_MB}mb", state_session_capacity=MAX_SESSIONS, mcp_server=True,
                show_error=True)


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


def json_input(schema: dict, **kwargs) -> gr.JSON:
    """gr.JSON for an API argument that announces `schema` (valid JSON Schema, so MCP clients
    and gradio_client know the type) instead of Gradio's `{"type": {}}`, which MCP rejects."""
    component = gr.JSON(**kwargs)
    component.api_info = lambda: copy.deepcopy(schema)
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
            lines += ["", "Args:"] + [f"    {p}: {args.get(p) or _setting_meaning(p)}" for p in params]
        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = "\n".join(lines + ["", "Returns:", f"    {returns}"])
        return fn

    return document


def _setting_meaning(name: str) -> str:
    return f"{settings.spec(name)['help']}; blank = the model's default (see models)"


# What the API's arguments mean, where they are not edit settings (those are in editmgt.settings).
API_ARGS = dict(
    image=f"the photo to edit, a {IMAGE_FORMATS} file (bounded in bytes, pixels and aspect ratio)",
    instruction="what to change, in English, e.g. 'make the cat black'",
    model="id of the model in the zoo (see models); blank = the model the app started with",
    hold_first="first transformer block whose text-to-image attention localises the edit; "
               "blank = the model's default range",
    hold_last="last transformer block of that range (inclusive); blank = the model's default range",
    keyword="word(s) of the instruction, separated by commas, whose attention localises the edit; "
            "blank = the model's keyword set, or every word",
    negative_prompt="what classifier-free guidance steers away from; blank = the released negative prompt",
    seed="random seed (a whole number); blank or -1 = a new random seed, returned in the info",
    mask="optional image of the photo's size: white or opaque = the region to edit, the rest is kept",
    load_8bit="true: run the model with 8-bit weights (about half the memory, slightly different results)",
    lambdas="list of region-hold thresholds in [0, 1] (see hold_lambda), one edit each, all with one seed; "
            "blank = the default grid",
    prompt="what to draw, in English, e.g. 'a red bicycle'",
)


def _progress_fn(progress: Optional[gr.Progress]):
    if progress is None:
        return None
    return lambda done, total: progress((done, total), desc="sampling", unit="steps")


def load_examples() -> list[dict]:
    """Photos (examples/examples.json), then the synthetic scenes the tiny-shapes model
    was trained for (examples/shapes/examples.json)."""
    examples = []
    for path in (EXAMPLES_DIR / "examples.json", EXAMPLES_DIR / "shapes" / "examples.json"):
        if path.is_file():
            examples += [dict(e, path=str(path.parent / e["file"])) for e in json.loads(path.read_text())]
    return examples


def _block_texts(hold_blocks: Optional[Sequence[int]]) -> tuple[str, str]:
    """A model's default hold blocks as the page's two boxes ("" = the pipeline's default)."""
    return (str(hold_blocks[0]), str(hold_blocks[-1])) if hold_blocks else ("", "")


def _opt(value: Any) -> Any:
    """'' and None both mean: use the model's default."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def build_demo(service: EditService, default_model: str, title: str = "EditMGT",
               default_8bit: bool = False, cache_lifetime_s: int = CACHE_LIFETIME_S) -> gr.Blocks:
    zoo = service.manager.zoo
    choices = [(zoo[m].label, m) for m in zoo.ids]
    t2i_default = next((m for m in zoo.ids if zoo[m].task == "text-to-image" and service.manager.resolve(m).available),
                       default_model)
    d0 = zoo[default_model].defaults

    # ------------------------------------------------------------------ API handlers
    @endpoint("edit", "Edit a photo as an instruction says. Only image and instruction are needed; every other "
              "argument defaults to the model's recommendation (see models).",
              "the edited image (PNG), the attention heat-map over the photo with the held region outlined, "
              "and JSON info (l1_to_source, changed_fraction, seed, seconds, notes, ...)", **API_ARGS)
    @user_errors
    def api_edit(image: str, instruction: str, model: str, steps: Optional[float] = None,
                 guidance: Optional[float] = None, gamma: Optional[float] = None,
                 hold_lambda: Optional[float] = None, hold_first: Optional[float] = None,
                 hold_last: Optional[float] = None, keyword: Optional[str] = None, smoothing: Optional[str] = None,
                 smoothing_strength: Optional[float] = None, negative_prompt: Optional[str] = None,
                 seed: Optional[float] = None, mask: Optional[str] = None, load_8bit: bool = False,
                 sample_temperature: Optional[float] = None, keep_unchanged_pixels: Optional[bool] = None,
                 progress=gr.Progress()):
        out = service.edit(
            image, instruction, model, steps=steps, guidance=guidance, gamma=gamma, hold_lambda=hold_lambda,
            hold_first=hold_first, hold_last=hold_last, keyword=_opt(keyword), smoothing=_opt(smoothing),
            smoothing_strength=smoothing_strength, negative_prompt=_opt(negative_prompt), seed=seed,
            mask=mask or None, load_8bit=bool(load_8bit), sample_temperature=sample_temperature,
            keep_unchanged_pixels=keep_unchanged_pixels, progress=_progress_fn(progress))
        return out.edited, out.heatmap, out.info

    @endpoint("sweep", "Edit a photo once per lambda (one batch where memory allows, one seed), to see how "
              "region-hold trades the edit against keeping the rest of the photo.",
              "JSON rows {lambda, l1_to_source, l1_to_reconstruction, changed_fraction, seed}, the edited "
              "images and the L1-vs-lambda plot", **API_ARGS)
    @user_errors
    def api_sweep(image: str, instruction: str, model: str, lambdas: Optional[Any] = None,
                  steps: Optional[float] = None, guidance: Optional[float] = None, gamma: Optional[float] = None,
                  keyword: Optional[str] = None, seed: Optional[float] = None, load_8bit: bool = False,
                  sample_temperature: Optional[float] = None, keep_unchanged_pixels: Optional[bool] = None,
                  progress=gr.Progress()):
        out = service.sweep(image, instruction, model, lambdas, steps=steps, guidance=guidance, gamma=gamma,
                            keyword=_opt(keyword), seed=seed, load_8bit=bool(load_8bit),
                            sample_temperature=sample_temperature, keep_unchanged_pixels=keep_unchanged_pixels,
                            progress=_progress_fn(progress))
        return out.rows, out.sweep_images, out.curve

    @endpoint("generate", "Draw an image from a text prompt (the text-to-image entries of the zoo, e.g. "
              "Meissonic; any entry works).", "the image (PNG) and JSON info (seed, seconds, ...)",
              **dict(API_ARGS, model="id of the model in the zoo (see models); blank = the first available "
                                     "text-to-image model"))
    @user_errors
    def api_generate(prompt: str, model: str, steps: Optional[float] = None, guidance: Optional[float] = None,
                     seed: Optional[float] = None, load_8bit: bool = False, progress=gr.Progress()):
        return service.generate(prompt, model, steps=steps, guidance=guidance, seed=seed,
                                load_8bit=bool(load_8bit), progress=_progress_fn(progress))

    @endpoint("models", "List the model zoo: the ids to pass as model, with each entry's task and status.",
              "one JSON object per model: id, label, task, state (loading / ready / failed / unavailable) and "
              "why, device, dtype, memory and the recommended settings")
    def api_models():
        return service.models()

    # ------------------------------------------------------------------ page handlers
    def status_markdown(model_id: Optional[str] = None) -> str:
        rows = service.models()
        lines = [f"**Status** - {service.manager.summary_line()}", "",
                 "| model | task | state | detail |", "|---|---|---|---|"]
        for r in rows:
            mark = "**" if r["id"] == model_id else ""
            lines.append(f"| {mark}{r['label']}{mark} | {r['task']} | {r['state']} | {r['reason']} |")
        return "\n".join(lines)

    def on_model_change(model_id: str):
        d = zoo[model_id].defaults
        first, last = _block_texts(d.hold_blocks)
        return (gr.update(value=d.steps), gr.update(value=d.guidance), gr.update(value=d.gamma),
                gr.update(value=d.hold_lambda), gr.update(value=first), gr.update(value=last),
                gr.update(value=d.smoothing), gr.update(value=d.smoothing_strength),
                gr.update(value=d.sample_temperature), gr.update(value=d.keep_unchanged_pixels),
                status_markdown(model_id))

    def on_image_change(path: Optional[str]):
        if not path:
            return None
        return {"background": path, "layers": [], "composite": path}

    @user_errors
    def ui_edit(image, instruction, model, load_8bit, mask_value, steps, guidance, gamma, hold_lambda,
                hold_first, hold_last, keyword, smoothing, smoothing_strength, negative_prompt, seed, randomize,
                run_sweep, grid, sample_temperature, keep_pixels, progress=gr.Progress()):
        sweep = parse_lambdas(grid) if run_sweep else None
        out = service.edit(
            image, instruction, model, steps=steps, guidance=guidance, gamma=gamma, hold_lambda=hold_lambda,
            hold_first=parse_block(hold_first, "hold blocks (first)"),
            hold_last=parse_block(hold_last, "hold blocks (last)"), keyword=_opt(keyword), smoothing=smoothing,
            smoothing_strength=smoothing_strength, negative_prompt=_opt(negative_prompt),
            seed=None if randomize else seed, mask_fn=lambda size: mask_from_editor(mask_value, size),
            load_8bit=bool(load_8bit), sweep=sweep, sample_temperature=sample_temperature,
            keep_unchanged_pixels=bool(keep_pixels), progress=_progress_fn(progress))
        return ((out.source, out.edited), out.heatmap, out.curve, out.sweep_images or None, out.info,
                out.info["seed"], status_markdown(model))

    @user_errors
    def ui_generate(prompt, model, steps, guidance, seed, randomize, load_8bit, progress=gr.Progress()):
        image, info = service.generate(prompt, model, steps=steps, guidance=guidance,
                                       seed=None if randomize else seed, load_8bit=bool(load_8bit),
                                       progress=_progress_fn(progress))
        return image, info, info["seed"], status_markdown(model)

    # ------------------------------------------------------------------ layout
    examples = load_examples()
    # Uploads and outputs older than cache_lifetime_s are deleted (checked four times per
    # lifetime), and every file the app created is deleted when the server shuts down.
    with gr.Blocks(title=title, delete_cache=(max(1, cache_lifetime_s // 4), cache_lifetime_s)) as demo:
        gr.Markdown(
            f"# {title}: edit a photo with a sentence\n"
            "A masked generative transformer edits the photo; the attention map shows where it decided to "
            "edit, and region-hold (lambda) keeps tokens scoring below lambda at the source. "
            "The curve shows how far the edit moves from the source as lambda grows.")
        with gr.Tabs():
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        image = checked_image(label="Photo (upload, paste or webcam)",
                                              sources=["upload", "clipboard", "webcam"], elem_id="source-image",
                                              height=320)
                        instruction = gr.Textbox(label="Instruction", placeholder="make the cat black", lines=2,
                                                 max_length=MAX_INSTRUCTION_CHARS, elem_id="instruction")
                        with gr.Row():
                            model = gr.Dropdown(choices=choices, value=default_model, label="Model",
                                                elem_id="model", scale=3)
                            use_8bit = gr.Checkbox(label="8-bit", value=default_8bit, scale=1,
                                                   info="quantise transformer + Gemma2 linears")
                        run = gr.Button("Edit", variant="primary", elem_id="run-edit")
                        with gr.Accordion("Mask brush (optional: paint where to edit)", open=False):
                            mask = gr.ImageMask(label="Mask", type="pil", sources=[], elem_id="mask-brush",
                                                height=320)
                        with gr.Accordion("Advanced", open=False):
                            steps = gr.Slider(1, MAX_STEPS, value=d0.steps, step=1, label="Steps")
                            guidance = gr.Slider(0.0, 20.0, value=d0.guidance, step=0.1, label="Guidance")
                            gamma = gr.Slider(0.0, 5.0, value=d0.gamma, step=0.05,
                                              label="Gamma (reference strength)")
                            sample_temperature = gr.Slider(
                                MIN_SAMPLE_TEMPERATURE, 2.0, value=d0.sample_temperature, step=0.01,
                                label="Sampling temperature (1 = the released sampler; lower draws tokens more greedily)")
                            hold_lambda = gr.Slider(0.0, 1.0, value=d0.hold_lambda, step=0.01,
                                                    label="Lambda (region-hold threshold; 0 = off)")
                            keep_pixels = gr.Checkbox(
                                value=d0.keep_unchanged_pixels, elem_id="keep-pixels",
                                label="Keep the photo's own pixels where no token changed",
                                info="off: every pixel is redrawn through the VQ, as in the paper")
                            with gr.Row():
                                # text boxes: a blank gr.Number shows and sends 0 (block 0), not "default"
                                first0, last0 = _block_texts(d0.hold_blocks)
                                hold_first = gr.Textbox(value=first0, placeholder="model default",
                                                        label="Hold blocks: first (blank = model default)")
                                hold_last = gr.Textbox(value=last0, placeholder="model default",
                                                       label="Hold blocks: last")
                            keyword = gr.Textbox(label="Keywords for localisation (optional, comma-separated; "
                                                       "blank = the model's default)",
                                                 placeholder="cat, hat")
                            with gr.Row():
                                smoothing = gr.Dropdown(list(SMOOTHING_CHOICES), value=d0.smoothing,
                                                        label="Smoothing")
                                smoothing_strength = gr.Slider(0.0, 5.0, value=d0.smoothing_strength, step=0.1,
                                                               label="Smoothing strength")
                            negative_prompt = gr.Textbox(label="Negative prompt (blank = the released one)")
                            with gr.Row():
                                seed = gr.Number(value=0, precision=0, label="Seed")
                                randomize = gr.Checkbox(value=True, label="Randomize seed")
                            with gr.Row():
                                run_sweep = gr.Checkbox(value=True, label="Run the lambda sweep (curve)")
                                grid = gr.Textbox(value=", ".join(f"{x:g}" for x in DEFAULT_SWEEP),
                                                  label="Sweep lambdas")
                    with gr.Column(scale=2, min_width=480):
                        with gr.Row():
                            slider = gr.ImageSlider(label="Before / after", type="pil", format="png",
                                                    elem_id="edit-output")
                            heat = gr.Image(label="Attention map (held region outlined)", type="pil",
                                            format="png", interactive=False, elem_id="heatmap")
                        with gr.Row():
                            curve = gr.Image(label="L1 to source vs lambda", type="pil", format="png",
                                             interactive=False, elem_id="curve", height=380)
                            info = gr.JSON(label="Info", elem_id="info")
                        gallery = gr.Gallery(label="Sweep", format="png", columns=6, height=200,
                                             elem_id="sweep-gallery")
                if examples:
                    gr.Examples(examples=[[e["path"], e["instruction"], e["keyword"]] for e in examples],
                                inputs=[image, instruction, keyword],
                                example_labels=[f"{Path(e['file']).stem}: {e['instruction']}" for e in examples],
                                label="Examples (CC0 / public-domain photos, see examples/*.LICENSE.txt; synthetic shapes scenes for the tiny-shapes model)",
                                cache_examples=False)
            with gr.Tab("Text to image", id="t2i"):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", lines=2, max_length=MAX_INSTRUCTION_CHARS)
                        t2i_model = gr.Dropdown(choices=choices, value=t2i_default, label="Model")
                        t2i_steps = gr.Slider(1, MAX_STEPS, value=zoo[t2i_default].defaults.steps, step=1,
                                              label="Steps")
                        t2i_guidance = gr.Slider(0.0, 20.0, value=zoo[t2i_default].defaults.guidance, step=0.1,
                                                 label="Guidance")
                        with gr.Row():
                            t2i_seed = gr.Number(value=0, precision=0, label="Seed")
                            t2i_random = gr.Checkbox(value=True, label="Randomize seed")
                        t2i_8bit = gr.Checkbox(value=False, label="8-bit")
                        t2i_run = gr.Button("Generate", variant="primary")
                    with gr.Column():
                        t2i_image = gr.Image(label="Generated", type="pil", format="png", interactive=False)
                        t2i_info = gr.JSON(label="Info")
            with gr.Tab("Models", id="models"):
                models_json = gr.JSON(label="Zoo and status")
                refresh = gr.Button("Refresh")
        status = gr.Markdown(elem_id="status")

        # Page events (private: the browser calls them, API clients use the endpoints below).
        model.change(on_model_change, model, [steps, guidance, gamma, hold_lambda, hold_first, hold_last,
                                              smoothing, smoothing_strength, sample_temperature, keep_pixels,
                                              status],
                     api_visibility="private")
        image.change(on_image_change, image, mask, api_visibility="private")
        gr.on([run.click, instruction.submit], ui_edit,
              [image, instruction, model, use_8bit, mask, steps, guidance, gamma, hold_lambda, hold_first,
               hold_last, keyword, smoothing, smoothing_strength, negative_prompt, seed, randomize, run_sweep,
               grid, sample_temperature, keep_pixels],
              [slider, heat, curve, gallery, info, seed, status], api_visibility="private", **GPU)
        t2i_run.click(ui_generate, [prompt, t2i_model, t2i_steps, t2i_guidance, t2i_seed, t2i_random, t2i_8bit],
                      [t2i_image, t2i_info, t2i_seed, status], api_visibility="private", **GPU)
        refresh.click(lambda: service.models(), None, models_json, api_visibility="private", queue=False)
        demo.load(lambda: (status_markdown(default_model), service.models()), None, [status, models_json],
                  api_visibility="private", queue=False)

        # Named API endpoints on hidden components (None = the model's default).
        with gr.Column(visible=False):
            a_image = checked_image(label="image")
            a_instruction = gr.Textbox(label="instruction")
            a_model = gr.Dropdown(choices=zoo.ids, value=default_model, label="model", allow_custom_value=True)
            a_steps = gr.Number(value=None, label="steps")
            a_guidance = gr.Number(value=None, label="guidance")
            a_gamma = gr.Number(value=None, label="gamma")
            a_lambda = gr.Number(value=None, label="hold_lambda")
            a_first = gr.Number(value=None, label="hold_first")
            a_last = gr.Number(value=None, label="hold_last")
            a_keyword = gr.Textbox(value=None, label="keyword")
            a_smoothing = gr.Textbox(value=None, label="smoothing")
            a_strength = gr.Number(value=None, label="smoothing_strength")
            a_negative = gr.Textbox(value=None, label="negative_prompt")
            a_seed = gr.Number(value=None, label="seed")
            a_mask = checked_image(label="mask")
            a_8bit = gr.Checkbox(value=False, label="load_8bit")
            a_lambdas = json_input({"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "null"}]},
                                   value=None, label="lambdas")
            a_temperature = gr.Number(value=None, label="sample_temperature")
            a_keep = json_input({"anyOf": [{"type": "boolean"}, {"type": "null"}]}, value=None,
                                label="keep_unchanged_pixels")  # true / false / null: the model's
            a_prompt = gr.Textbox(label="prompt")
            a_t2i_model = gr.Dropdown(choices=zoo.ids, value=t2i_default, label="model",
                                      allow_custom_value=True)
            o_edited = gr.Image(label="edited", type="pil", format="png")
            o_heat = gr.Image(label="attention_map", type="pil", format="png")
            o_info = gr.JSON(label="info")
            o_rows = gr.JSON(label="rows")
            o_gallery = gr.Gallery(label="images", format="png")
            o_curve = gr.Image(label="curve", type="pil", format="png")
            o_generated = gr.Image(label="image", type="pil", format="png")
            o_models = gr.JSON(label="models")
            trigger = gr.Button(visible=False)
        trigger.click(api_edit, [a_image, a_instruction, a_model, a_steps, a_guidance, a_gamma, a_lambda, a_first,
                                 a_last, a_keyword, a_smoothing, a_strength, a_negative, a_seed, a_mask, a_8bit,
                                 a_temperature, a_keep],
                      [o_edited, o_heat, o_info], api_name="edit", **GPU)
        trigger.click(api_sweep, [a_image, a_instruction, a_model, a_lambdas, a_steps, a_guidance, a_gamma,
                                  a_keyword, a_seed, a_8bit, a_temperature, a_keep],
                      [o_rows, o_gallery, o_curve], api_name="sweep", **GPU)
        trigger.click(api_generate, [a_prompt, a_t2i_model, a_steps, a_guidance, a_seed, a_8bit],
                      [o_generated, o_info], api_name="generate", **GPU)
        trigger.click(api_models, None, o_models, api_name="models", queue=False)
    # Model work runs only through the queue: api_open=False closes Gradio's direct route
    # (POST /gradio_api/run/<name>), which runs queued events at once, beside the queue.
    return demo.queue(api_open=False, max_size=QUEUE_SIZE, default_concurrency_limit=1)
