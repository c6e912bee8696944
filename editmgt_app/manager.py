"""On-demand model loading for the demo: shared components, LRU eviction, status.

A model is assembled from components (transformer, VQ model, text conditioner). Each
component is keyed by where it comes from (source, revision, sub-folder, 8-bit, device,
dtype), so two zoo entries that share a component load it once. Loaded models are kept
in least-recently-used order; loading one that would not fit the memory budget (or the
`max_loaded` count) first evicts the oldest others, and eviction drops the last
references, collects garbage and empties the CUDA cache so the memory is really freed.

The manager knows nothing about how a component is read: it calls a `Loader`, so tests
count loads with light fakes and the app plugs in `editmgt_app.loading.PipelineLoader`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch

from editmgt.zoo import Entry, Resolved, Zoo

logger = logging.getLogger(__name__)


LoadProgress = Callable[[int, int, str], None]  # (components done, components, what is being read)


class ModelUnavailable(LookupError):
    """The model id is unknown, or its weights cannot be found right now."""


class ModelLoadError(RuntimeError):
    """Loading the model's weights failed (the message has the reason)."""


@dataclass(frozen=True)
class ComponentKey:
    role: str  # transformer | vqvae | text (or whatever the loader names)
    location: str  # folder, repo id or builtin name
    revision: Optional[str]
    subfolder: Optional[str]
    load_8bit: bool
    device: str
    dtype: str


class Loader(Protocol):
    def plan(self, entry: Entry, resolved: Resolved, *, load_8bit: bool, device: str,
             dtype: torch.dtype) -> dict[str, ComponentKey]:
        """Which components `entry` needs: role -> key (equal keys are shared)."""

    def load(self, key: ComponentKey, entry: Entry) -> Any:
        """Read one component."""

    def assemble(self, entry: Entry, parts: dict[str, Any]) -> Any:
        """Build the model (e.g. an EditMGTPipeline) from loaded components."""

    # Optional: `saved_bytes(key) -> int`, memory an 8-bit component saved (shown in the UI).


def measure_bytes(obj: Any) -> int:
    """Bytes held by the tensors of `obj` (modules, tensors, containers, attributes two
    levels deep), counting shared storage once. An `nbytes` int attribute wins (fakes)."""
    seen: set[int] = set()

    def tensor_bytes(t: torch.Tensor) -> int:
        try:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = id(t), t.numel() * t.element_size()
        if key in seen:
            return 0
        seen.add(key)
        return size

    def walk(value: Any, depth: int) -> int:
        if isinstance(value, torch.nn.Module):
            return sum(tensor_bytes(t) for t in list(value.parameters()) + list(value.buffers()))
        if isinstance(value, torch.Tensor):
            return tensor_bytes(value)
        if isinstance(getattr(value, "nbytes", None), int) and not hasattr(value, "__array__"):
            return value.nbytes
        if depth <= 0:
            return 0
        if isinstance(value, dict):
            return sum(walk(v, depth - 1) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(v, depth - 1) for v in value)
        if hasattr(value, "__dict__") and not isinstance(value, type):
            return sum(walk(v, depth - 1) for v in vars(value).values())
        return 0

    return walk(obj, 3)


def cuda_free_bytes() -> Optional[int]:
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def default_budget(device: str) -> int:
    """90% of free GPU memory on CUDA, else half of the available RAM."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        try:
            return int(0.9 * (cuda_free_bytes() or 0))
        except RuntimeError:  # e.g. ZeroGPU: no device attached outside @spaces.GPU calls
            logger.warning("cannot query free GPU memory; using a 40 GB budget (set --memory-budget)")
            return 40 * 1024**3
    try:
        import psutil

        return int(0.5 * psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil ships with gradio's deps
        return 8 * 1024**3


@dataclass
class _Component:
    value: Any
    nbytes: int
    users: set = field(default_factory=set)  # model keys holding it


@dataclass
class _Model:
    value: Any
    parts: dict[str, ComponentKey]
    load_8bit: bool
    seconds: float
    nbytes: int  # sum of its components' bytes (shared ones included)
    saved_bytes: int = 0  # memory saved by 8-bit (reported by the loader, if any)


@dataclass
class ModelStatus:
    id: str
    label: str
    task: str
    stage: str
    state: str  # unavailable | not loaded | loading | ready | failed
    reason: str
    available: bool
    loaded_8bit: list[bool]
    device: str
    dtype: str
    memory_mb: float
    settings: dict  # the recommended settings (EditSettings' fields)
    resolution: int
    inputs: str  # photos | shapes
    summary: str
    description: str
    source: str

    def as_dict(self) -> dict:
        return dict(vars(self))


class ModelManager:
    """Loads zoo entries on first use and keeps the recently used ones within a budget."""

    def __init__(self, zoo: Zoo, loader: Loader, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 budget_bytes: Optional[int] = None, max_loaded: Optional[int] = None,
                 hub_reachable: Callable[[], bool] = lambda: False) -> None:
        self.zoo = zoo
        self.loader = loader
        self.device = str(device)
        self.dtype = dtype
        self.budget_bytes = budget_bytes if budget_bytes is not None else default_budget(self.device)
        self.max_loaded = max_loaded
        self.hub_reachable = hub_reachable
        self._lock = threading.RLock()  # guards the dicts below (held briefly)
        self._load_lock = threading.Lock()  # serialises loads
        self._models: "OrderedDict[tuple[str, bool], _Model]" = OrderedDict()  # LRU first
        self._components: dict[ComponentKey, _Component] = {}
        self._states: dict[str, str] = {}  # id -> "loading" | "failed: ..."
        self._measured: dict[tuple[str, bool], int] = {}  # bytes of models loaded before
        self.load_counts: dict[ComponentKey, int] = {}  # every component read, for tests and logs

    # ------------------------------------------------------------------ queries
    def resolve(self, model_id: str) -> Resolved:
        return self.zoo.resolve(model_id, self.hub_reachable)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(c.nbytes for c in self._components.values())

    def loaded(self) -> list[tuple[str, bool]]:
        """(id, 8-bit) of the loaded models, least recently used first."""
        with self._lock:
            return list(self._models)

    def status(self) -> list[ModelStatus]:
        with self._lock:
            return [self._status(model_id) for model_id in self.zoo.ids]

    def _status(self, model_id: str) -> ModelStatus:
        entry = self.zoo[model_id]
        resolved = self.resolve(model_id)
        loaded = [(m, key) for key, m in self._models.items() if key[0] == model_id]
        state = self._states.get(model_id, "")
        if loaded:
            state, reason = "ready", f"loaded in {loaded[-1][0].seconds:.1f}s"
            if any(m.saved_bytes for m, _ in loaded):
                reason += f"; 8-bit saves {max(m.saved_bytes for m, _ in loaded) / 2**20:.0f} MB"
        elif state == "loading":
            reason = "loading"
        elif state.startswith("failed"):
            state, reason = "failed", state.partition(": ")[2]
        elif not resolved.available:
            state, reason = "unavailable", resolved.reason
        else:
            state, reason = "not loaded", resolved.reason
        return ModelStatus(
            id=model_id, label=entry.label, task=entry.task, stage=entry.stage, state=state, reason=reason,
            available=resolved.available, loaded_8bit=[key[1] for _, key in loaded], device=self.device,
            dtype=str(self.dtype).replace("torch.", ""),
            memory_mb=round(sum(m.nbytes for m, _ in loaded) / 2**20, 2),
            settings=entry.settings.as_dict(), resolution=entry.resolution, inputs=entry.inputs,
            summary=entry.summary, description=entry.description,
            source=(f"{resolved.location}@{resolved.revision}" if resolved.revision else str(resolved.location or ""))
            + (f" (via {resolved.via})" if resolved.via != "checkpoints.yaml" else ""),
        )

    def summary_line(self) -> str:
        """One line for the UI: what is loaded, device, dtype, memory."""
        with self._lock:
            parts = [f"{mid}{' (8-bit)' if q else ''}" for mid, q in self._models]
            line = (f"loaded: {', '.join(parts) or 'none'} | device {self.device} | "
                    f"{str(self.dtype).replace('torch.', '')} | models {self.used_bytes / 2**20:.0f} MB"
                    f" of {self.budget_bytes / 2**30:.1f} GB budget")
        if torch.cuda.is_available() and self.device.startswith("cuda"):
            try:
                line += f" | GPU allocated {torch.cuda.memory_allocated() / 2**30:.2f} GB"
            except RuntimeError:  # no device attached right now (ZeroGPU)
                pass
        return line

    # ------------------------------------------------------------------ loading
    def get(self, model_id: str, load_8bit: bool = False, progress: Optional[LoadProgress] = None) -> Any:
        """The model for `model_id`, loading it (and evicting others) if needed; `progress`
        hears of each component before it is read (a model already loaded says nothing)."""
        if model_id not in self.zoo:
            raise ModelUnavailable(f"unknown model {model_id!r}; choose one of: {', '.join(self.zoo.ids)}")
        key = (model_id, bool(load_8bit))
        with self._load_lock:  # one load at a time; status() stays answerable meanwhile
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key].value
            resolved = self.resolve(model_id)
            if not resolved.available:
                raise ModelUnavailable(f"model {model_id!r} is unavailable: {resolved.reason}")
            entry = self.zoo[model_id]
            self._states[model_id] = "loading"
            try:
                model = self._load(key, entry, resolved, progress)
            except Exception as err:  # noqa: BLE001 - reported to the user, app keeps serving
                self._states[model_id] = f"failed: {type(err).__name__}: {err}"
                with self._lock:
                    for comp in self._components.values():
                        comp.users.discard(key)
                    self._drop_unused_components()
                logger.exception("loading %s failed", model_id)
                raise ModelLoadError(f"model {model_id!r} failed to load: {type(err).__name__}: {err}") from err
            self._states.pop(model_id, None)
            return model

    def _load(self, key: tuple[str, bool], entry: Entry, resolved: Resolved,
              progress: Optional[LoadProgress] = None) -> Any:
        t0 = time.perf_counter()
        plan = self.loader.plan(entry, resolved, load_8bit=key[1], device=self.device, dtype=self.dtype)
        unique = set(plan.values())
        missing = [k for k in unique if k not in self._components]
        size = self._measured.get(key, entry.size_bytes)  # the zoo's size until measured once
        estimate = size * len(missing) // len(unique)  # shared parts cost nothing more
        with self._lock:  # claim the shared parts first, so making room cannot drop them
            for ckey in plan.values():
                if ckey in self._components:
                    self._components[ckey].users.add(key)
        self._make_room(estimate)
        parts = {}
        for done, (role, ckey) in enumerate(plan.items()):
            comp = self._components.get(ckey)
            if comp is None:
                logger.info("loading %s component %s from %s", entry.id, role, ckey.location)
                if progress is not None:
                    progress(done, len(plan), f"loading {entry.id}: {role}")
                value = self.loader.load(ckey, entry)
                with self._lock:
                    self.load_counts[ckey] = self.load_counts.get(ckey, 0) + 1
                    comp = self._components[ckey] = _Component(value, measure_bytes(value))
            comp.users.add(key)
            parts[role] = comp.value
        value = self.loader.assemble(entry, parts)
        nbytes = sum(self._components[k].nbytes for k in set(plan.values()))
        saved_of = getattr(self.loader, "saved_bytes", None)
        saved = sum(saved_of(k) for k in set(plan.values())) if saved_of else 0
        self._measured[key] = nbytes
        with self._lock:
            self._models[key] = _Model(value, plan, key[1], time.perf_counter() - t0, nbytes, saved)
        logger.info("%s ready in %.1fs (%.1f MB)", entry.id, time.perf_counter() - t0, nbytes / 2**20)
        self._make_room(0, protect=key)
        return value

    def _make_room(self, incoming: int, protect: Optional[tuple] = None) -> None:
        """Evict least recently used models until `incoming` more bytes fit the budget and
        the count limit holds. Never evicts `protect`."""
        def over() -> bool:
            count = len(self._models) + (0 if protect else 1)
            too_many = self.max_loaded is not None and count > self.max_loaded
            return too_many or self.used_bytes + incoming > self.budget_bytes

        while over():
            victims = [k for k in self._models if k != protect]
            if not victims:
                if self.used_bytes + incoming > self.budget_bytes:
                    logger.warning("model needs %.0f MB beyond the %.0f MB budget; loading anyway",
                                   (self.used_bytes + incoming - self.budget_bytes) / 2**20, self.budget_bytes / 2**20)
                return
            self.evict(victims[0])

    def evict(self, key: tuple[str, bool]) -> int:
        """Drop a loaded model; free components no other model uses. Returns bytes freed."""
        with self._lock:
            model = self._models.pop(key, None)
            if model is None:
                return 0
            for ckey in set(model.parts.values()):
                comp = self._components.get(ckey)
                if comp is not None:
                    comp.users.discard(key)
            del model
            freed = self._drop_unused_components()
            logger.info("evicted %s%s: freed %.1f MB", key[0], " (8-bit)" if key[1] else "", freed / 2**20)
            return freed

    def evict_all(self, except_key: Optional[tuple[str, bool]] = None) -> int:
        with self._lock:
            return sum(self.evict(k) for k in list(self._models) if k != except_key)

    def _drop_unused_components(self) -> int:
        unused = [k for k, c in self._components.items() if not c.users]
        freed = sum(self._components[k].nbytes for k in unused)
        for k in unused:
            del self._components[k]
        free_memory()
        return freed


def free_memory() -> None:
    """Collect garbage and give cached CUDA blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

