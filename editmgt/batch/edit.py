"""One row of a batch -> its edits: the seed, the one call into the pipeline, the Ray actor.

A row with several lambdas is one `pipe.sweep` call: one batch on the model, every lambda with
the row's seed, so each result equals the single-lambda edit of that seed. A row that fails
(unreadable image, empty instruction, out of memory) gives records with its error; the job
goes on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from editmgt.batch.inputs import image_source
from editmgt.batch.models import ModelSource
from editmgt.settings import MAX_SEED, EditSettings

logger = logging.getLogger(__name__)



def row_seed(base_seed: int, row_id: str) -> int:
    """The seed of row `row_id`: sha256 of 'base_seed:row_id' in [0, MAX_SEED]. It depends on
    nothing else (not the worker, the order or the machine)."""
    digest = hashlib.sha256(f"{int(base_seed)}:{row_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_SEED + 1)


def run_edits(pipe, image: Any, instruction: str, lambdas: Sequence[float], settings: EditSettings, *,
              seed: int, mask: Any = None, size: Optional[int] = None) -> list:
    """The batch's only call into the pipeline: one edit per lambda as one batch -> EditResults."""
    return pipe.sweep(image, instruction, list(lambdas), settings, seed=seed, mask=mask, size=size)


@dataclass(frozen=True)
class EditJob:
    """What every worker needs: the model, the settings and how to derive seeds."""

    model: ModelSource
    settings: EditSettings  # the model's recommended settings with the command line's flags
    base_seed: int
    size: Optional[int] = None  # about SIZE x SIZE pixels at the image's aspect; None = the model's
    use_masks: bool = True  # pass the rows' masks (False: mask-free edits)
    dtype: str = "fp32"


def record_schema():
    """Arrow schema of the records a worker returns: one per (row, lambda)."""
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("lambda", pa.float64()), ("seed", pa.int64()), ("keywords", pa.list_(pa.string())),
        ("image_png", pa.binary()), ("attention_png", pa.binary()), ("l1_to_source", pa.float64()),
        ("l1_to_reconstruction", pa.float64()), ("changed_fraction", pa.float64()), ("seconds", pa.float64()),
        ("error", pa.string()),
    ])


def row_keywords(job: EditJob, instruction: str) -> Optional[tuple[str, ...]]:
    """The words region-hold reads for this row: --keywords, else the model's keyword rule."""
    return job.settings.keywords or job.model.keywords_for(instruction or "")


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _attention_png(result) -> Optional[bytes]:
    if result.attention_map is None:
        return None
    from PIL import Image

    heat = (result.attention_map.float().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    return _png(Image.fromarray(heat))


def edit_row(pipe, job: EditJob, row: dict) -> list[dict]:
    """One input row (with its `lambdas` to do) -> one record per lambda."""
    lambdas = [float(lam) for lam in row["lambdas"]]
    seed = row_seed(job.base_seed, row["id"])
    base = {"id": row["id"], "seed": seed, "keywords": None, "image_png": None, "attention_png": None,
            "l1_to_source": None, "l1_to_reconstruction": None, "changed_fraction": None, "seconds": None,
            "error": None}
    start = time.perf_counter()
    try:
        keywords = row_keywords(job, row["instruction"])
        settings = job.settings.replace(keywords=keywords)
        mask = image_source(row["mask"]) if job.use_masks else None
        results = run_edits(pipe, image_source(row["image"]), row["instruction"], lambdas, settings,
                            seed=seed, mask=mask, size=job.size)
    except Exception as error:  # noqa: BLE001 - recorded in the row; the job goes on
        _release_cuda_memory()
        logger.warning("row %s failed: %s: %s", row["id"], type(error).__name__, error)
        return [dict(base, **{"lambda": lam, "error": f"{type(error).__name__}: {error}"}) for lam in lambdas]
    seconds = (time.perf_counter() - start) / len(lambdas)  # the lambdas share one call
    return [dict(base, **{"lambda": lam, "keywords": list(keywords) if keywords else None,
                          "image_png": _png(result.image), "attention_png": _attention_png(result),
                          "l1_to_source": result.l1_to_source, "l1_to_reconstruction": result.l1_to_reconstruction,
                          "changed_fraction": result.changed_fraction, "seconds": seconds})
            for lam, result in zip(lambdas, results)]


def _release_cuda_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class EditWorker:
    """Ray Data actor: loads the pipeline once, then edits the batches of rows it is given."""

    def __init__(self, job: EditJob) -> None:
        import torch

        from editmgt.batch.execution import use_assigned_cpus
        from editmgt.pipeline import DTYPES, EditMGTPipeline

        use_assigned_cpus()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.job = job
        self.pipe = EditMGTPipeline.from_pretrained(job.model.location, revision=job.model.revision, device=device,
                                                    dtype=DTYPES[job.dtype],
                                                    resolution=job.model.resolution)

    def __call__(self, batch):
        """pyarrow.Table of input rows (+ `lambdas`) -> pyarrow.Table of records."""
        import pyarrow as pa

        records = [record for row in batch.to_pylist() for record in edit_row(self.pipe, self.job, row)]
        return pa.Table.from_pylist(records, schema=record_schema())
