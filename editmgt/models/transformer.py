"""The EditMGT transformer: Meissonic MM-DiT with reference-image attention injection.

Data flow of `EditMGTTransformer.forward` (shapes for batch B, VQ grid H x W, text T):

1. text   (B, T, joint_dim) -> connector -> context_embedder -> RMSNorm      (B, T, C)
2. cond   [pooled text; sin(micro-conds)] -> cond_embed -> c                  (B, C)
          temb = time_text_embed(step x 1000, c); reference temb uses step 0
3. tokens (B, H, W) -> embed -> down-sample -> flatten -> norm -> linear       (B, N, C)
          reference tokens go through the same weights                       (B, N, C)
4. RoPE tables for [text; image; reference] (text at 0, image and reference at
   (0, row, col) on the transformer grid) and the gamma bias, once per forward
5. double blocks, then single blocks (same call shape, two plain loops)
6. image tokens -> norm -> linear -> (B, C, h, w) -> up-sample -> MLM head     (B, V, H, W)

The checkpoint layout (parameter names) is that of the released model; see
`../shared/spec/state_dict_*.tsv`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from editmgt.errors import CheckpointError, InputError, UnsafeWeightsError, WeightMismatchError
from editmgt.hub import PICKLE_SUFFIXES
from editmgt.models.attention import (
    Attention,
    AttentionProbe,
    joint_attention,
    reference_bias,
)
from editmgt.models.embeddings import (
    MLPEmbedding,
    DownBlock,
    MaskedTokenHead,
    RMSNorm,
    Rope,
    TimestepTextEmbedding,
    TokenEmbedding,
    UpBlock,
    rope_tables,
    rotary_positions,
    sinusoidal_embedding,
)

__all__ = [
    "TransformerConfig",
    "AttentionProbe",
    "TransformerOutput",
    "EditMGTTransformer",
    "DoubleBlock",
    "SingleBlock",
    "BlockOutput",
    "parameter_manifest",
]

logger = logging.getLogger(__name__)

NUM_MICRO_CONDS = 5          # width, height, crop_top, crop_left, aesthetic score
MICRO_COND_CHANNELS = 256    # sinusoidal features per micro-condition
TIMESTEP_SCALE = 1000.0      # the model embeds scheduler step x 1000
NORM_EPS = 1e-6
CONNECTOR_TYPES = ("none", "linear")
STATIC_CACHE_ENTRIES = 4     # cached (RoPE, gamma bias) sets; one per (shapes, gamma, dtype, device)


@dataclass
class TransformerConfig:
    """Architecture of the transformer; field names are the diffusers config.json keys."""

    num_layers: int                       # double (MM-DiT) blocks
    num_single_layers: int                # single blocks
    attention_head_dim: int               # D per head
    num_attention_heads: int              # heads; width C = heads x D
    joint_attention_dim: int              # width of the text-encoder hidden states
    pooled_projection_dim: int            # width of the pooled CLIP text embedding
    axes_dims_rope: tuple[int, ...]       # RoPE dims per position axis, sum = D
    vocab_size: int                       # token ids incl. mask id (= vocab_size - 1)
    codebook_size: int                    # logits per token (VQ codebook)
    downsample: bool = False              # 2x down-sample before the blocks
    upsample: bool = False                # 2x up-sample after the blocks
    text_encoder_architecture: str = "CLIP"  # "CLIP" | "CLIP_Gemma2" | ... (informational)
    connector_type: str = "none"          # "none" | "linear" (text -> width projection)
    patch_size: int = 1                   # unused by the model; kept for config.json
    in_channels: int = 64                 # unused by the model; kept for config.json
    guidance_embeds: bool = False         # must be False (no guidance embedder)

    def __post_init__(self) -> None:
        self.axes_dims_rope = tuple(int(a) for a in self.axes_dims_rope)
        if self.guidance_embeds:
            raise ValueError("guidance_embeds=True is not supported by EditMGT")
        if self.connector_type not in CONNECTOR_TYPES:
            raise ValueError(f"connector_type {self.connector_type!r} not in {CONNECTOR_TYPES}")
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(a % 2 for a in self.axes_dims_rope):
            raise ValueError(
                f"axes_dims_rope {self.axes_dims_rope} must be even and sum to "
                f"attention_head_dim {self.attention_head_dim}"
            )

    @property
    def inner_dim(self) -> int:
        """Model width C."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size - 1

    @property
    def num_blocks(self) -> int:
        """Double + single blocks (global block indices are 0 .. num_blocks - 1)."""
        return self.num_layers + self.num_single_layers

    @property
    def downsample_factor(self) -> int:
        return 2 if self.downsample else 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransformerConfig":
        """Build from a config.json dict; keys starting with "_" are ignored, unknown keys warned."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names and not k.startswith("_"))
        if unknown:
            logger.warning("ignoring unknown transformer config keys: %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "TransformerConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"missing transformer config file: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"invalid transformer config {path}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["axes_dims_rope"] = list(self.axes_dims_rope)
        return d


@dataclass
class TransformerOutput:
    logits: Tensor                      # (B, codebook_size, H, W) float32
    text_to_image: dict[int, Tensor] = field(default_factory=dict)
    # block -> (B, heads, N) or (B, heads, R, N) float32; {} without a probe


class BlockOutput(NamedTuple):
    text: Tensor                      # (B, T, C)
    image: Tensor                     # (B, N, C)
    reference: Optional[Tensor]       # (B, N, C) or None
    text_to_image: Optional[Tensor]   # probe result of this block, or None


# ----------------------------------------------------------------------------- blocks


class AdaNormZero(nn.Module):
    """LayerNorm (no affine) modulated by temb: SiLU -> linear -> `chunks` x (B, C)."""

    def __init__(self, dim: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, chunks * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)

    def forward(self, x: Tensor, temb: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x: (B, L, C), temb: (B, C) -> modulated x (B, L, C), remaining chunks (B, C) each.

        Chunk order: shift, scale (applied here), then the rest (gate, ...).
        """
        shift, scale, *rest = self.linear(self.silu(temb)).chunk(self.chunks, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None], tuple(rest)


class FeedForward(nn.Module):
    """net.0.proj -> tanh-GELU -> net.1 (dropout 0) -> net.2 (diffusers FeedForward layout)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class _GeluProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


def _clip_fp16(x: Tensor) -> Tensor:
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


class DoubleBlock(nn.Module):
    """MM-DiT block: text has its own weights, image and reference share the image weights."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = AdaNormZero(dim, 6)
        self.norm1_context = AdaNormZero(dim, 6)
        self.attn = Attention(dim, heads, head_dim, context=True, pre_only=False, eps=NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)
        self.ff = FeedForward(dim)
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)
        self.ff_context = FeedForward(dim)

    @staticmethod
    def _residual(x: Tensor, attn_out: Tensor, mod: tuple[Tensor, ...], norm: nn.Module, ff: nn.Module) -> Tensor:
        """Gated attention residual, then the modulated, gated feed-forward residual."""
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + gate_msa[:, None] * attn_out
        h = norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return _clip_fp16(x + gate_mlp[:, None] * ff(h))

    def forward(
        self,
        text: Tensor,
        image: Tensor,
        reference: Optional[Tensor],
        temb: Tensor,
        reference_temb: Optional[Tensor],
        rope: Rope,
        bias: Optional[Tensor],
        probe: Optional[AttentionProbe],
    ) -> BlockOutput:
        """text (B, T, C), image (B, N, C), reference (B, N, C) | None, temb (B, C)."""
        image_n, image_mod = self.norm1(image, temb)
        text_n, text_mod = self.norm1_context(text, temb)
        ref_n = ref_mod = None
        if reference is not None:
            ref_n, ref_mod = self.norm1(reference, reference_temb)

        out = joint_attention(self.attn, text_n, image_n, ref_n, rope, bias, probe)

        image = self._residual(image, out.image, image_mod, self.norm2, self.ff)
        text = self._residual(text, out.text, text_mod, self.norm2_context, self.ff_context)
        if reference is not None:
            reference = self._residual(reference, out.reference, ref_mod, self.norm2, self.ff)
        return BlockOutput(text, image, reference, out.text_to_image)


class SingleBlock(nn.Module):
    """Single-stream block over [text; image]; the reference shares every weight."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm = AdaNormZero(dim, 3)
        self.proj_mlp = nn.Linear(dim, dim * mlp_ratio)
        self.proj_out = nn.Linear(dim + dim * mlp_ratio, dim)
        self.attn = Attention(dim, heads, head_dim, context=False, pre_only=True, eps=NORM_EPS)

    def _residual(self, x: Tensor, attn_out: Tensor, mlp_in: Tensor, gate: Tensor) -> Tensor:
        mlp = F.gelu(self.proj_mlp(mlp_in), approximate="tanh")
        return _clip_fp16(x + gate[:, None] * self.proj_out(torch.cat([attn_out, mlp], dim=2)))

    def forward(
        self,
        text: Tensor,
        image: Tensor,
        reference: Optional[Tensor],
        temb: Tensor,
        reference_temb: Optional[Tensor],
        rope: Rope,
        bias: Optional[Tensor],
        probe: Optional[AttentionProbe],
    ) -> BlockOutput:
        """Same call shape as `DoubleBlock.forward`."""
        text_len = text.shape[1]
        x = torch.cat([text, image], dim=1)
        x_n, (gate,) = self.norm(x, temb)
        ref_n = ref_gate = None
        if reference is not None:
            ref_n, (ref_gate,) = self.norm(reference, reference_temb)

        out = joint_attention(self.attn, x_n[:, :text_len], x_n[:, text_len:], ref_n, rope, bias, probe)

        x = self._residual(x, torch.cat([out.text, out.image], dim=1), x_n, gate)
        if reference is not None:
            reference = self._residual(reference, out.reference, ref_n, ref_gate)
        return BlockOutput(x[:, :text_len], x[:, text_len:], reference, out.text_to_image)


class TextConnector(nn.Module):
    """Linear projection of the text-encoder states to the model width."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.projector = nn.Linear(in_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(x)


# ------------------------------------------------------------------------ transformer


class EditMGTTransformer(nn.Module):
    """Meissonic MM-DiT with EditMGT's reference stream (see module docstring)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        text_in = dim if config.connector_type != "none" else config.joint_attention_dim
        cond_in = NUM_MICRO_CONDS * MICRO_COND_CHANNELS + config.pooled_projection_dim

        # registration order = the released state-dict order
        self.time_text_embed = TimestepTextEmbedding(dim, cond_dim=dim)
        self.context_embedder = nn.Linear(text_in, dim)
        self.transformer_blocks = nn.ModuleList(DoubleBlock(dim, heads, head_dim) for _ in range(config.num_layers))
        self.single_transformer_blocks = nn.ModuleList(
            SingleBlock(dim, heads, head_dim) for _ in range(config.num_single_layers)
        )
        self.embed = TokenEmbedding(config.vocab_size, dim, NORM_EPS)
        self.mlm_layer = MaskedTokenHead(dim, config.codebook_size, NORM_EPS)
        self.cond_embed = MLPEmbedding(cond_in, dim, bias=False)
        self.encoder_proj_layer_norm = RMSNorm(dim, NORM_EPS)
        self.project_to_hidden_norm = RMSNorm(dim, NORM_EPS)
        self.project_to_hidden = nn.Linear(dim, dim, bias=False)
        self.project_from_hidden_norm = RMSNorm(dim, NORM_EPS)
        self.project_from_hidden = nn.Linear(dim, dim, bias=False)
        self.down_block = DownBlock(dim, config.downsample, NORM_EPS)
        self.up_block = UpBlock(dim, config.upsample, NORM_EPS)
        self.connector: Optional[TextConnector] = (
            TextConnector(config.joint_attention_dim, dim) if config.connector_type == "linear" else None
        )
        self._static_inputs: dict[tuple, tuple[Rope, Optional[Tensor]]] = {}  # see _rope_and_bias

    # ------------------------------------------------------------------ properties

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.embeddings.weight.device

    # --------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls, folder: Union[str, Path], dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu"
    ) -> "EditMGTTransformer":
        """Load a diffusers-layout folder (config.json + safetensors, sharded index supported).

        Names and shapes must match exactly (WeightMismatchError otherwise); a missing file
        raises CheckpointError, pickle-only weights raise UnsafeWeightsError.
        """
        folder = Path(folder)
        config = TransformerConfig.from_json(folder / "config.json")
        state = _read_safetensors(folder, dtype, torch.device(device))
        with torch.device("meta"):
            model = cls(config)
        _check_names_and_shapes(model, state, source=str(folder))
        model.load_state_dict(state, strict=True, assign=True)
        logger.info("loaded transformer from %s (%d tensors, %s)", folder, len(state), dtype)
        return model.eval()

    # --------------------------------------------------------------------- forward

    def forward(
        self,
        tokens: Tensor,
        text_states: Tensor,
        pooled_text: Tensor,
        micro_conds: Tensor,
        timestep: Tensor,
        reference_tokens: Optional[Tensor] = None,
        gamma: float = 1.0,
        probe: Optional[AttentionProbe] = None,
    ) -> TransformerOutput:
        """Logits for every token of the canvas.

        tokens: (B, H, W) VQ ids (mask id allowed); text_states: (B, T, joint_attention_dim);
        pooled_text: (B, pooled_projection_dim); micro_conds: (B, 5) width, height,
        crop_top, crop_left, aesthetic; timestep: (B,) scheduler step value (N-1 ... 0);
        reference_tokens: (B, H, W) source ids (edit mode, timestep 0) or None;
        gamma: reference strength (bias log(gamma), 1 = none, 0 = reference cut off);
        probe: which blocks' text->image probabilities to return.
        Returns logits (B, codebook_size, H, W) float32 and the probed probabilities.
        """
        timestep = self._check_inputs(tokens, text_states, pooled_text, micro_conds, timestep, reference_tokens, probe)
        dtype = self.dtype

        # 1. text stream
        text = text_states.to(dtype)
        if self.connector is not None:
            text = self.connector(text)
        text = self.encoder_proj_layer_norm(self.context_embedder(text))  # (B, T, C)

        # 2. conditioning vectors
        cond = self._conditioning(pooled_text, micro_conds)  # (B, C)
        temb = self.time_text_embed(timestep.float() * TIMESTEP_SCALE, cond)
        reference_temb = None
        if reference_tokens is not None:
            reference_temb = self.time_text_embed(torch.zeros_like(timestep, dtype=torch.float32), cond)

        # 3. image (and reference) tokens on the transformer grid
        image, grid = self._embed_tokens(tokens)  # (B, N, C)
        reference = self._embed_tokens(reference_tokens)[0] if reference_tokens is not None else None

        # 4. positions and the gamma bias (built on the first call for these shapes, then reused)
        rope, bias = self._rope_and_bias(text.shape[1], grid, reference is not None, gamma)

        # 5. blocks
        captured: dict[int, Tensor] = {}
        wanted = set(probe.blocks) if probe is not None else set()
        for index, block in enumerate(self.transformer_blocks):
            out = block(text, image, reference, temb, reference_temb, rope, bias, probe if index in wanted else None)
            text, image, reference = out.text, out.image, out.reference
            if out.text_to_image is not None:
                captured[index] = out.text_to_image
        for offset, block in enumerate(self.single_transformer_blocks):
            index = self.config.num_layers + offset
            out = block(text, image, reference, temb, reference_temb, rope, bias, probe if index in wanted else None)
            text, image, reference = out.text, out.image, out.reference
            if out.text_to_image is not None:
                captured[index] = out.text_to_image

        # 6. logits head
        logits = self._head(image, grid)
        return TransformerOutput(logits=logits, text_to_image=captured)

    # ------------------------------------------------------------------- helpers

    def _check_inputs(
        self,
        tokens: Tensor,
        text_states: Tensor,
        pooled_text: Tensor,
        micro_conds: Tensor,
        timestep: Tensor,
        reference_tokens: Optional[Tensor],
        probe: Optional[AttentionProbe],
    ) -> Tensor:
        """Validate shapes; returns timestep as (B,)."""
        cfg = self.config
        if tokens.ndim != 3:
            raise InputError(f"tokens must be (B, H, W), got {tuple(tokens.shape)}")
        batch, height, width = tokens.shape
        factor = cfg.downsample_factor
        if height % factor or width % factor:
            raise InputError(f"token grid {height}x{width} must be divisible by the down-sample factor {factor}")
        if reference_tokens is not None and reference_tokens.shape != tokens.shape:
            raise InputError(
                f"reference_tokens {tuple(reference_tokens.shape)} must match tokens {tuple(tokens.shape)}"
            )
        if text_states.ndim != 3 or text_states.shape[0] != batch or text_states.shape[2] != cfg.joint_attention_dim:
            raise InputError(
                f"text_states must be (B={batch}, T, {cfg.joint_attention_dim}), got {tuple(text_states.shape)}"
            )
        if tuple(pooled_text.shape) != (batch, cfg.pooled_projection_dim):
            raise InputError(
                f"pooled_text must be ({batch}, {cfg.pooled_projection_dim}), got {tuple(pooled_text.shape)}"
            )
        if tuple(micro_conds.shape) != (batch, NUM_MICRO_CONDS):
            raise InputError(f"micro_conds must be ({batch}, {NUM_MICRO_CONDS}), got {tuple(micro_conds.shape)}")
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if tuple(timestep.shape) != (batch,):
            raise InputError(f"timestep must be ({batch},), got {tuple(timestep.shape)}")
        if probe is not None:
            bad = [b for b in probe.blocks if not 0 <= b < cfg.num_blocks]
            if bad:
                raise InputError(f"probe blocks {bad} out of range 0..{cfg.num_blocks - 1}")
            rows = probe.rows
            if rows is not None and rows.device.type == "cpu" and rows.numel():
                if rows.min() < 0 or rows.max() >= text_states.shape[1]:
                    raise InputError(f"probe rows must lie in 0..{text_states.shape[1] - 1}")
        return timestep

    def _conditioning(self, pooled_text: Tensor, micro_conds: Tensor) -> Tensor:
        """[pooled text; sinusoidal micro-conds] -> cond_embed. (B, P), (B, 5) -> (B, C)."""
        micro = sinusoidal_embedding(micro_conds.flatten(), MICRO_COND_CHANNELS)
        micro = micro.reshape(micro_conds.shape[0], -1)  # (B, 5 * 256)
        return self.cond_embed(torch.cat([pooled_text.to(self.dtype), micro.to(self.dtype)], dim=1))

    def _embed_tokens(self, tokens: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, H, W) ids -> (B, N, C) tokens on the transformer grid, and that grid (h, w)."""
        x = self.down_block(self.embed(tokens))  # (B, C, h, w)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return self.project_to_hidden(self.project_to_hidden_norm(x)), grid

    def _rope_and_bias(
        self, text_len: int, grid: tuple[int, int], with_reference: bool, gamma: float
    ) -> tuple[Rope, Optional[Tensor]]:
        """RoPE tables and gamma bias for these shapes, cached per (shapes, gamma, dtype, device):
        a sampling loop calls the model with the same ones every step, so they are built once
        (no per-step allocation or launches). Entries are built outside inference mode, so one
        made under `torch.inference_mode` also serves forwards that record autograd."""
        key = (text_len, tuple(grid), with_reference, float(gamma), self.dtype, self.device)
        entry = self._static_inputs.get(key)
        if entry is None:
            with torch.inference_mode(False), torch.no_grad():
                rope = self._rope(text_len, grid, with_reference)
                bias = None
                if with_reference:
                    image_len = grid[0] * grid[1]
                    bias = reference_bias(text_len + image_len, image_len, gamma, self.dtype, self.device)
            entry = (rope, bias)
            while len(self._static_inputs) >= STATIC_CACHE_ENTRIES:
                self._static_inputs.pop(next(iter(self._static_inputs)))
            self._static_inputs[key] = entry
        return entry

    def _apply(self, fn, *args, **kwargs):
        self._static_inputs.clear()  # .to() / .half(): entries would keep the old device / dtype
        return super()._apply(fn, *args, **kwargs)

    def _rope(self, text_len: int, grid: tuple[int, int], with_reference: bool) -> Rope:
        """RoPE tables for [text; image] (+ reference, same positions as the image)."""
        positions = rotary_positions(text_len, grid, device=self.device)
        if with_reference:
            positions = torch.cat([positions, positions[text_len:]], dim=0)
        return rope_tables(positions, self.config.axes_dims_rope)

    def _head(self, image: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N, C) image tokens -> (B, codebook_size, H, W) float32 logits."""
        x = self.project_from_hidden(self.project_from_hidden_norm(image))
        x = x.transpose(1, 2).unflatten(2, grid)  # (B, C, h, w)
        return self.mlm_layer(self.up_block(x)).float()


# ----------------------------------------------------------------------- checkpoints


def parameter_manifest(config: TransformerConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter then buffer, built on the meta device."""
    with torch.device("meta"):
        model = EditMGTTransformer(config)
    entries = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    return entries + [(n, tuple(b.shape)) for n, b in model.named_buffers()]


def _weight_files(folder: Path) -> list[Path]:
    """Safetensors files of a diffusers model folder (single file or sharded index)."""
    if not folder.is_dir():
        raise CheckpointError(f"missing checkpoint folder: {folder}")
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        index = next((p for p in indexes if p.name.startswith("diffusion_pytorch_model")), indexes[0])
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [p for p in shards if not p.is_file()]
        if missing:
            raise CheckpointError(f"missing weight shard {missing[0]} (listed in {index})")
        if not shards:
            raise CheckpointError(f"empty weight_map in {index}")
        return shards
    default = folder / "diffusion_pytorch_model.safetensors"
    if default.is_file():
        return [default]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    if len(found) > 1:
        raise CheckpointError(f"several .safetensors files in {folder} and no index: {[p.name for p in found]}")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeWeightsError(
            f"only pickle weights in {folder} ({', '.join(pickles)}); convert them to safetensors"
        )
    raise CheckpointError(f"missing weight file: {default}")


def _read_safetensors(folder: Path, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
    """All tensors of the folder's safetensors files, floating ones cast to `dtype`."""
    state: dict[str, Tensor] = {}
    for path in _weight_files(folder):
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return state


def _check_names_and_shapes(model: nn.Module, state: dict[str, Tensor], source: str, limit: int = 8) -> None:
    """Raise WeightMismatchError listing the first differing names / shapes."""
    expected = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    wrong = [
        f"{n}: expected {expected[n]}, found {tuple(state[n].shape)}"
        for n in expected
        if n in state and tuple(state[n].shape) != expected[n]
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:limit]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected[:limit]}")
        if wrong:
            parts.append(f"wrong shape {len(wrong)}: {wrong[:limit]}")
        raise WeightMismatchError(f"state dict of {source} does not match the config; " + "; ".join(parts))
