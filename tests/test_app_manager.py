"""Model manager: on-demand loading, shared components, LRU eviction under a budget (counted
loads, memory really freed), failures reported and recovered from."""

import copy
import gc
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from editmgt_app.manager import ComponentKey, ModelLoadError, ModelManager, ModelUnavailable, measure_bytes
from editmgt.zoo import parse_zoo

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "checkpoints.yaml").read_text())


def make_zoo(tmp_path, specs):
    """specs: id -> (folder name, transformer sub-folder). Entries copy the tiny one."""
    template = next(e for e in RAW["models"] if e["id"] == "tiny")
    models = []
    for model_id, (folder, transformer) in specs.items():
        root = tmp_path / folder
        (root / transformer).mkdir(parents=True, exist_ok=True)
        entry = copy.deepcopy(template)
        entry.update(id=model_id, label=model_id, source={"path": str(root)}, size_gb=0.001)
        entry["components"]["transformer"] = transformer
        models.append(entry)
    models.append(copy.deepcopy(next(e for e in RAW["models"] if e["id"] == "editmgt-stage2")))
    return parse_zoo({"models": models})


class FakeLoader:
    """Components are real tensors (so memory is measurable and its release observable)."""

    def __init__(self, numel=256 * 1024, fail=()):
        self.numel, self.fail = numel, set(fail)
        self.loaded = []  # keys, in load order
        self.refs = {}  # key -> weakref of the last value

    def plan(self, entry, resolved, *, load_8bit, device, dtype):
        def key(role, sub):
            return ComponentKey(role, resolved.location, resolved.revision, sub, load_8bit, device, str(dtype))

        return {"transformer": key("transformer", entry.components["transformer"]),
                "vqvae": key("vqvae", entry.components["vqvae"])}

    def load(self, key, entry):
        if entry.id in self.fail:
            raise OSError(f"{entry.id}: diffusion_pytorch_model.safetensors is truncated")
        self.loaded.append(key)
        module = torch.nn.Linear(self.numel // 1024, 1024, bias=False)  # numel * 4 bytes
        self.refs[key] = weakref.ref(module)
        return module

    def assemble(self, entry, parts):
        return SimpleNamespace(entry=entry.id, **parts)


def test_nothing_loads_until_first_use_and_then_once(tmp_path):
    zoo = make_zoo(tmp_path, {"a": ("ckpt", "editmgt")})
    loader = FakeLoader()
    manager = ModelManager(zoo, loader, budget_bytes=10**9)
    assert loader.loaded == [] and manager.loaded() == []
    assert {s.id: s.state for s in manager.status()}["a"] == "not loaded"
    model = manager.get("a")
    assert manager.get("a") is model
    assert len(loader.loaded) == 2 and manager.loaded() == [("a", False)]
    status = {s.id: s for s in manager.status()}["a"]
    assert status.state == "ready" and status.memory_mb == pytest.approx(2.0, rel=0.01)


def test_loading_reports_each_component_before_reading_it(tmp_path):
    """The page shows loading progress on first use: one report per component read, none when
    the model is loaded already or a shared component is loaded."""
    zoo = make_zoo(tmp_path, {"a": ("ckpt", "editmgt"), "b": ("ckpt", "other")})
    manager = ModelManager(zoo, FakeLoader(), budget_bytes=10**9)
    heard = []
    manager.get("a", progress=lambda done, total, what: heard.append((done, total, what)))
    assert heard == [(0, 2, "loading a: transformer"), (1, 2, "loading a: vqvae")]
    heard.clear()
    manager.get("a", progress=lambda *report: heard.append(report))
    manager.get("b", progress=lambda *report: heard.append(report))  # shares a's VQ model
    assert heard == [(0, 2, "loading b: transformer")]


def test_components_with_same_source_revision_and_subfolder_load_once(tmp_path):
    zoo = make_zoo(tmp_path, {"a": ("ckpt", "editmgt"), "b": ("ckpt", "other"), "c": ("elsewhere", "editmgt")})
    loader = FakeLoader()
    manager = ModelManager(zoo, loader, budget_bytes=10**9)
    a, b, c = manager.get("a"), manager.get("b"), manager.get("c")
    assert a.vqvae is b.vqvae  # same folder + sub-folder: shared
    assert a.transformer is not b.transformer  # different sub-folder
    assert c.vqvae is not a.vqvae  # different folder
    assert sorted(k.role for k in loader.loaded) == ["transformer"] * 3 + ["vqvae"] * 2
    assert all(n == 1 for n in manager.load_counts.values())
    # 8-bit is a different load of the same entry (its own quantised transformer)
    manager.get("a", load_8bit=True)
    assert manager.loaded()[-1] == ("a", True)


def test_eviction_under_budget_frees_memory_and_counts_loads(tmp_path):
    zoo = make_zoo(tmp_path, {"a": ("one", "editmgt"), "b": ("two", "editmgt"), "c": ("three", "editmgt")})
    loader = FakeLoader()
    per_model = 2 * loader.numel * 4
    manager = ModelManager(zoo, loader, budget_bytes=int(2.5 * per_model))
    manager.get("a")
    manager.get("b")
    assert manager.used_bytes == 2 * per_model
    a_keys = [k for k in loader.loaded if k.location.endswith("one")]
    manager.get("a")  # a becomes most recently used: b is now the eviction candidate
    manager.get("c")
    gc.collect()
    assert manager.loaded() == [("a", False), ("c", False)]
    assert manager.used_bytes == 2 * per_model
    b_refs = [loader.refs[k] for k in loader.loaded if k.location.endswith("two")]
    assert b_refs and all(ref() is None for ref in b_refs)  # b's tensors are really gone
    assert all(loader.refs[k]() is not None for k in a_keys)
    manager.get("b")  # reload: counted again, a (LRU) goes
    assert sum(n for k, n in manager.load_counts.items() if k.location.endswith("two")) == 4
    assert manager.loaded() == [("c", False), ("b", False)]


def test_max_loaded_limits_the_count(tmp_path):
    zoo = make_zoo(tmp_path, {"a": ("one", "editmgt"), "b": ("two", "editmgt")})
    manager = ModelManager(zoo, FakeLoader(), budget_bytes=10**12, max_loaded=1)
    manager.get("a")
    manager.get("b")
    assert manager.loaded() == [("b", False)]
    assert manager.evict(("b", False)) == 2 * 256 * 1024 * 4
    assert manager.used_bytes == 0


def test_shared_component_survives_eviction_of_one_user(tmp_path):
    zoo = make_zoo(tmp_path, {"a": ("ckpt", "editmgt"), "b": ("ckpt", "other")})
    loader = FakeLoader()
    manager = ModelManager(zoo, loader, budget_bytes=10**9)
    a = manager.get("a")
    vq_ref = weakref.ref(a.vqvae)
    manager.get("b")
    del a
    manager.evict(("a", False))
    gc.collect()
    assert vq_ref() is not None  # b still uses it
    manager.evict(("b", False))
    gc.collect()
    assert vq_ref() is None and manager.used_bytes == 0


def test_failures_are_reported_and_the_manager_keeps_working(tmp_path, monkeypatch):
    monkeypatch.delenv("EDITMGT_STAGE2", raising=False)
    zoo = make_zoo(tmp_path, {"a": ("one", "editmgt"), "broken": ("two", "editmgt")})
    manager = ModelManager(zoo, FakeLoader(fail={"broken"}), budget_bytes=10**9)
    with pytest.raises(ModelUnavailable, match="unknown model 'nope'"):
        manager.get("nope")
    with pytest.raises(ModelUnavailable, match="'editmgt-stage2' is unavailable: no public weights"):
        manager.get("editmgt-stage2")
    with pytest.raises(ModelLoadError, match="'broken' failed to load: OSError: .*truncated"):
        manager.get("broken")
    status = {s.id: s for s in manager.status()}
    assert status["broken"].state == "failed" and "truncated" in status["broken"].reason
    assert status["editmgt-stage2"].state == "unavailable"
    assert manager.get("a").entry == "a" and manager.used_bytes == 2 * 256 * 1024 * 4


def test_measure_bytes_counts_shared_storage_once():
    lin = torch.nn.Linear(10, 10)
    holder = SimpleNamespace(a=lin, b=lin, t=lin.weight, extra=[torch.zeros(5)])
    assert measure_bytes(holder) == (100 + 10 + 5) * 4


# ---------------------------------------------------------------------------- the real tiny pipeline


def test_tiny_pipelines_share_components_evict_and_quantise(tiny_checkpoint, tmp_path):
    """Two zoo entries on the same tiny checkpoint share every component; an 8-bit load is a
    separate transformer / text encoder whose linears are int8 and which still edits on the
    CPU; a budget that fits one model evicts the other, and its tensors are freed."""
    import bitsandbytes as bnb

    from editmgt_app.loading import PipelineLoader
    from editmgt.zoo import Zoo, parse_entry

    tiny = next(e for e in RAW["models"] if e["id"] == "tiny")
    entries = []
    for model_id in ("t1", "t2"):
        item = copy.deepcopy(tiny)
        item.update(id=model_id, label=model_id, source={"path": str(tiny_checkpoint)})
        entries.append(parse_entry(item, model_id))
    zoo = Zoo({e.id: e for e in entries}, ["t1"])
    manager = ModelManager(zoo, PipelineLoader(local_files_only=True), device="cpu", budget_bytes=10**9)
    p1, p2 = manager.get("t1"), manager.get("t2")
    assert p1 is not p2 and p1.transformer is p2.transformer and p1.vq is p2.vq and p1.text is p2.text
    assert sum(manager.load_counts.values()) == 4  # transformer, vqvae, text, scheduler: once each
    fp32_bytes = manager.used_bytes

    q = manager.get("t1", load_8bit=True)
    assert q.vq is p1.vq and q.transformer is not p1.transformer  # the VQ model is shared
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in q.transformer.modules())
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in q.text.modules())
    saved = {s.id: s for s in manager.status()}["t1"].reason
    assert "8-bit saves" in saved
    result = q.edit(str(ROOT / "examples" / "coffee.jpg"), "make the cup red", steps=2, seed=0)
    assert 0 <= result.changed_fraction <= 1

    # a budget for one model: switching evicts the least recently used one, for real
    del p1, p2, q
    manager = ModelManager(zoo, PipelineLoader(local_files_only=True), device="cpu", budget_bytes=fp32_bytes + 1)
    transformer_ref = weakref.ref(manager.get("t1").transformer)
    vq_ref = weakref.ref(manager.get("t1").vq)
    manager.get("t1", load_8bit=True)  # over budget: the fp32 t1 goes, the shared VQ model stays
    gc.collect()
    assert manager.loaded() == [("t1", True)]
    assert transformer_ref() is None and vq_ref() is not None
    manager.get("t2")  # fp32 parts load again (counted); the 8-bit t1 goes
    gc.collect()
    assert manager.loaded() == [("t2", False)]
    assert manager.used_bytes <= fp32_bytes
    fp32_transformer = [k for k in manager.load_counts if k.role == "transformer" and not k.load_8bit]
    assert [manager.load_counts[k] for k in fp32_transformer] == [2]
    manager.evict(("t2", False))
    gc.collect()
    assert vq_ref() is None and manager.used_bytes == 0
