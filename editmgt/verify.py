"""Check this implementation against parity fixtures and state-dict manifests.

    python -m editmgt.verify parity DIR     # DIR: transformer/, inputs/outputs/smoothing
                                            #      .safetensors, case.json
    python -m editmgt.verify manifest TSV   # names and shapes of a released state dict

`parity` prints one line per compared tensor (name, max abs diff, tolerance, ok/FAIL)
and exits 0 only when nothing fails. It reads whatever keys the fixture holds:

- `logits_t2i`, `logits_edit_gamma1`, `logits_edit_gamma`           tol 1e-4
- `[t2i.|edit_gamma1.]attn_text_to_image.{block}`                   tol 1e-5
  (text->image probabilities with every text row kept)
- `[t2i.|edit_gamma1.]local_scores_raw|rescaled`                    tol 1e-5
  (mean over blocks, heads and rows of the conditional half; per-row min-max)
- `smooth_out.{input}.{method}.s{strength}.peaks{bool}`             tol 1e-4 (bilateral 2/255)
- `upsample_out` (bicubic up-sample of `upsample_in`)               tol 1e-5
- `scheduler.timesteps`, `scheduler.temperatures`                   exact
`trace.*` tensors are debugging aids and are not compared. Comparisons whose module
cannot be imported are reported as SKIP (they do not fail the run).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from safetensors.torch import load_file
from torch import Tensor

from editmgt.models.transformer import (
    AttentionProbe,
    EditMGTTransformer,
    TransformerConfig,
    parameter_manifest,
)

logger = logging.getLogger(__name__)

LOGITS_TOL = 1e-4
ATTENTION_TOL = 1e-5
LOCAL_TOL = 1e-5
SMOOTH_TOL = 1e-4
BILATERAL_TOL = 2 / 255
UPSAMPLE_TOL = 1e-5
RESCALE_EPS = 1e-8

# fixture case prefix -> (logits key, uses the reference, uses the case's gamma)
CASES = {
    "t2i.": ("logits_t2i", False, False),
    "edit_gamma1.": ("logits_edit_gamma1", True, False),
    "": ("logits_edit_gamma", True, True),
}
_ATTN_KEY = re.compile(r"^(?P<prefix>(?:t2i\.|edit_gamma1\.)?)attn_text_to_image\.(?P<block>\d+)$")
_LOCAL_KEY = re.compile(r"^(?P<prefix>(?:t2i\.|edit_gamma1\.)?)local_scores_(?P<kind>raw|rescaled)$")
_SMOOTH_KEY = re.compile(
    r"^smooth_out\.(?P<source>[^.]+)\.(?P<method>[a-z]+)\.s(?P<strength>\d+(?:\.\d+)?)\.peaks(?P<peaks>True|False)$"
)


@dataclass
class Comparison:
    name: str
    max_abs_diff: Optional[float]   # None when skipped
    tolerance: float
    status: str                     # "ok" | "FAIL" | "SKIP ..."

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def line(self) -> str:
        diff = "-" if self.max_abs_diff is None else f"{self.max_abs_diff:.3e}"
        return f"{self.name:<52} {diff:>10} {self.tolerance:>9.1e} {self.status}"


def compare(name: str, got: Tensor, expected: Tensor, tolerance: float) -> Comparison:
    """Max abs difference (inf on a shape mismatch) against a tolerance."""
    if tuple(got.shape) != tuple(expected.shape):
        logger.warning("%s: shape %s, expected %s", name, tuple(got.shape), tuple(expected.shape))
        return Comparison(name, math.inf, tolerance, "FAIL")
    diff = (got.detach().double().cpu() - expected.double()).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    ok = worst <= tolerance and not math.isnan(worst)
    return Comparison(name, worst, tolerance, "ok" if ok else "FAIL")


def skipped(name: str, tolerance: float, why: str) -> Comparison:
    return Comparison(name, None, tolerance, f"SKIP ({why})")


# ------------------------------------------------------------------- transformer


def local_scores(text_to_image: dict[int, Tensor], blocks: Iterable[int]) -> tuple[Tensor, Tensor]:
    """Raw and rescaled localisation scores of the conditional (second) half of the batch.

    text_to_image: block -> (B, heads, R, N). Returns two (B/2, N) tensors.
    """
    maps = torch.stack([text_to_image[b] for b in blocks], dim=1)  # (B, blocks, heads, R, N)
    maps = maps[maps.shape[0] // 2 :]
    raw = maps.mean(dim=(1, 2, 3))
    low, high = raw.amin(-1, keepdim=True), raw.amax(-1, keepdim=True)
    return raw, (raw - low) / (high - low + RESCALE_EPS)


def _transformer_comparisons(folder: Path, outputs: dict[str, Tensor], case: dict) -> list[Comparison]:
    config = TransformerConfig.from_json(folder / "transformer" / "config.json")
    model = EditMGTTransformer.from_pretrained(folder / "transformer", dtype=torch.float32, device="cpu")
    inputs = load_file(str(folder / "inputs.safetensors"))
    scalars = case.get("scalars", {})
    gamma = float(scalars.get("gamma_case3", 1.0))
    local_blocks = scalars.get("local_scores", {}).get("attention_enable_blocks")
    if local_blocks is None:
        local_blocks = list(range(config.num_layers, config.num_blocks))

    results: list[Comparison] = []
    for prefix, (logits_key, with_reference, with_gamma) in CASES.items():
        attn_keys = {int(m["block"]): k for k in outputs if (m := _ATTN_KEY.match(k)) and m["prefix"] == prefix}
        local_keys = {m["kind"]: k for k in outputs if (m := _LOCAL_KEY.match(k)) and m["prefix"] == prefix}
        if logits_key not in outputs and not attn_keys and not local_keys:
            continue
        blocks = sorted(set(attn_keys) | (set(local_blocks) if local_keys else set()))
        probe = AttentionProbe(blocks=tuple(blocks), keep_rows=True) if blocks else None
        with torch.no_grad():
            out = model(
                inputs["hidden_states"],
                inputs["encoder_hidden_states"],
                inputs["pooled_projections"],
                inputs["micro_conds"],
                inputs["timestep"],
                reference_tokens=inputs["reference_image_hidden_states"] if with_reference else None,
                gamma=gamma if with_gamma else 1.0,
                probe=probe,
            )
        if logits_key in outputs:
            results.append(compare(logits_key, out.logits, outputs[logits_key], LOGITS_TOL))
        for block, key in sorted(attn_keys.items()):
            results.append(compare(key, out.text_to_image[block], outputs[key], ATTENTION_TOL))
        if local_keys:
            raw, rescaled = local_scores(out.text_to_image, local_blocks)
            for kind, value in (("raw", raw), ("rescaled", rescaled)):
                if kind in local_keys:
                    results.append(compare(local_keys[kind], value, outputs[local_keys[kind]], LOCAL_TOL))
    return results


# --------------------------------------------------------- scheduler / smoothing


def _scheduler_comparisons(outputs: dict[str, Tensor], case: dict) -> list[Comparison]:
    keys = [k for k in ("scheduler.timesteps", "scheduler.temperatures") if k in outputs]
    if not keys:
        return []
    try:
        from editmgt.sampling import schedule
    except ImportError as err:
        return [skipped(k, 0.0, f"editmgt.sampling.schedule: {err}") for k in keys]
    start, end = case.get("scheduler", {}).get("temperature", (2.0, 0.0))
    results = []
    if "scheduler.timesteps" in outputs:
        expected = outputs["scheduler.timesteps"]
        got = schedule.timesteps(expected.shape[0])
        results.append(_exact("scheduler.timesteps", got, expected))
    if "scheduler.temperatures" in outputs:
        expected = outputs["scheduler.temperatures"]
        got = schedule.temperatures(expected.shape[0], float(start), float(end))
        results.append(_exact("scheduler.temperatures", got, expected))
    return results


def _exact(name: str, got: Tensor, expected: Tensor) -> Comparison:
    result = compare(name, got, expected, 0.0)
    if not result.failed and got.dtype != expected.dtype:
        logger.warning("%s: dtype %s, expected %s", name, got.dtype, expected.dtype)
        result.status = "FAIL"
    return result


def _smoothing_comparisons(folder: Path) -> list[Comparison]:
    path = folder / "smoothing.safetensors"
    if not path.is_file():
        return []
    data = load_file(str(path))
    smooth_keys = sorted(k for k in data if k.startswith("smooth_out."))
    results: list[Comparison] = []
    smooth: Optional[Callable[..., Tensor]] = None
    upsample: Optional[Callable[..., Tensor]] = None
    try:
        from editmgt.sampling.smoothing import smooth_scores as smooth
    except ImportError as err:
        results += [skipped(k, SMOOTH_TOL, f"editmgt.sampling.smoothing: {err}") for k in smooth_keys]
    try:
        from editmgt.sampling.localization import upsample
    except ImportError as err:
        if "upsample_out" in data:
            results.append(skipped("upsample_out", UPSAMPLE_TOL, f"editmgt.sampling.localization: {err}"))

    if smooth is not None:
        for key in smooth_keys:
            m = _SMOOTH_KEY.match(key)
            source = f"smooth_in.{m['source']}" if m else None
            if m is None or source not in data:
                results.append(skipped(key, SMOOTH_TOL, "unrecognised key"))
                continue
            tol = BILATERAL_TOL if m["method"] == "bilateral" else SMOOTH_TOL
            got = smooth(data[source], m["method"], float(m["strength"]), m["peaks"] == "True")
            results.append(compare(key, got, data[key], tol))

    if upsample is not None and "upsample_out" in data and "upsample_in" in data:
        flat_in, expected = data["upsample_in"], data["upsample_out"]
        side_in, side_out = math.isqrt(flat_in.shape[-1]), math.isqrt(expected.shape[-1])
        grid = flat_in.reshape(flat_in.shape[0], side_in, side_in)
        results.append(compare("upsample_out", upsample(grid, (side_out, side_out)), expected, UPSAMPLE_TOL))
    return results


def parity(folder: Path) -> list[Comparison]:
    """Every comparison the fixture folder supports (see the module docstring)."""
    folder = Path(folder)
    outputs = load_file(str(folder / "outputs.safetensors"))
    case_path = folder / "case.json"
    case = json.loads(case_path.read_text()) if case_path.is_file() else {}
    results = _transformer_comparisons(folder, outputs, case)
    results += _scheduler_comparisons(outputs, case)
    results += _smoothing_comparisons(folder)
    known = {r.name for r in results}
    for key in sorted(outputs):
        if key not in known and not key.startswith("trace."):
            results.append(skipped(key, 0.0, "not compared"))
    return results


# ---------------------------------------------------------------------- manifest


def read_manifest(tsv: Path) -> tuple[TransformerConfig, list[tuple[str, tuple[int, ...]]]]:
    """Config (from the `# built with ... config={...}` header) and (name, shape) rows."""
    config: Optional[TransformerConfig] = None
    rows: list[tuple[str, tuple[int, ...]]] = []
    for line in Path(tsv).read_text().splitlines():
        if line.startswith("#"):
            m = re.search(r"config=(\{.*\})\s*$", line)
            if line.startswith("# built with") and m:
                config = TransformerConfig.from_dict(json.loads(m.group(1)))
            continue
        if not line.strip():
            continue
        name, shape = line.split("\t")[:2]
        rows.append((name, tuple(int(s) for s in shape.split("x")) if shape else ()))
    if config is None:
        raise ValueError(f"{tsv}: no '# built with ... config={{...}}' header line")
    return config, rows


def manifest_differences(tsv: Path, limit: int = 20) -> list[str]:
    """Differences between the TSV and the model built from its config; [] = exact match."""
    config, expected = read_manifest(tsv)
    built = parameter_manifest(config)
    want, have = dict(expected), dict(built)
    diffs = [f"missing in model: {n} {want[n]}" for n in want if n not in have]
    diffs += [f"not in manifest: {n} {have[n]}" for n in have if n not in want]
    diffs += [f"shape {n}: model {have[n]}, manifest {want[n]}" for n in want if n in have and have[n] != want[n]]
    if not diffs and [n for n, _ in built] != [n for n, _ in expected]:
        diffs.append("same names and shapes, different order")
    if len(expected) != len(want):
        diffs.append(f"manifest lists {len(expected) - len(want)} duplicate names")
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editmgt.verify", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("parity", help="compare against a parity fixture folder").add_argument("dir", type=Path)
    sub.add_parser("manifest", help="compare parameter names/shapes with a TSV").add_argument("tsv", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "parity":
        torch.set_grad_enabled(False)
        results = parity(args.dir)
        for r in results:
            sys.stdout.write(r.line() + "\n")
        failed = sum(r.failed for r in results)
        passed = sum(r.status == "ok" for r in results)
        sys.stdout.write(f"{passed} ok, {failed} failed, {len(results) - passed - failed} skipped\n")
        return 1 if failed or not passed else 0

    diffs = manifest_differences(args.tsv)
    for d in diffs:
        sys.stdout.write(d + "\n")
    sys.stdout.write(f"{args.tsv}: {'exact match' if not diffs else 'MISMATCH'}\n")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
