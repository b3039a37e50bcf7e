"""Block sparsity: which layers are sparsified, block scores, nested masks, pruning schedules.

Granularity. A mask is constant over blocks of `block` consecutive input channels at the same
(output channel, ky, kx) of a conv weight (torch OIHW), and over `block` consecutive inputs of a
linear weight ([out, in], `in` in NHWC-flatten order). The firmware's sparse kernels consume one
block per index (1×2 by default: one SMLAD), so this is a hard contract, not a preference.

Nesting. Each sparsified layer gets one ranking of its blocks by L2 norm; level k keeps the top
round((1 - s_k) · n_blocks) blocks. With sparsities s_0 < s_1 < … the kept sets shrink with k, so
level k+1 ⊂ level k by construction and every level reaches its target within half a block.

Increments. Going from the sparsest level (index L-1) to the densest (0), increment j holds the
blocks first added at level j: Δ_{L-1} = M_{L-1}, Δ_j = M_j \\ M_{j+1}. Gradient routing
(trainers/joint.py) is a matrix over (level, increment).

Layer selection. `sparsify` lists layer kinds and/or node names; `keep_dense` removes kinds or names
from that set. Kinds: ``standard`` (k×k conv, k > 1), ``pointwise`` (1×1 conv), ``depthwise``,
``linear``, ``first`` (every conv reading the network input; it belongs to no other kind). The
default, standard + pointwise + linear, leaves the first conv and depthwise convs dense — the usual
choice (Fast Sparse ConvNets, DSNN): they hold few weights and are costly to make sparse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Literal

import numpy as np
import torch

from trainers.graph import INPUT, Conv2d, Linear, NetSpec

LayerKind = Literal["first", "standard", "pointwise", "depthwise", "linear"]
LAYER_KINDS: tuple[str, ...] = ("first", "standard", "pointwise", "depthwise", "linear")
DEFAULT_SPARSIFY: tuple[str, ...] = ("standard", "pointwise", "linear")
BLOCKS: tuple[int, ...] = (1, 2, 4)


def layer_kind(node: Conv2d | Linear) -> LayerKind:
    if isinstance(node, Linear):
        return "linear"
    if node.input == INPUT:
        return "first"
    if node.depthwise:
        return "depthwise"
    return "pointwise" if node.kernel == 1 else "standard"


def _weight_nodes(spec: NetSpec) -> dict[str, Conv2d | Linear]:
    return {n.name: n for n in spec.nodes if isinstance(n, Conv2d | Linear)}


def select_layers(
    spec: NetSpec, sparsify: Iterable[str] = DEFAULT_SPARSIFY, keep_dense: Iterable[str] = ()
) -> list[str]:
    """Names of the sparsified layers, in network order.

    Raises ValueError starting with the option name for an item that is neither a kind nor a
    conv/linear node of `spec`.
    """
    nodes = _weight_nodes(spec)
    all_names = {n.name for n in spec.nodes}

    def resolve(option: str, items: Iterable[str]) -> set[str]:
        chosen: set[str] = set()
        for item in items:
            if item in LAYER_KINDS:
                chosen |= {name for name, node in nodes.items() if layer_kind(node) == item}
            elif item in nodes:
                chosen.add(item)
            elif item in all_names:
                raise ValueError(f"{option}: node {item!r} has no weights (only conv and linear nodes do)")
            else:
                raise ValueError(
                    f"{option}: {item!r} is neither a layer kind ({', '.join(LAYER_KINDS)}) nor a conv or "
                    f"linear node of {spec.name!r} ({', '.join(nodes)})"
                )
        return chosen

    chosen = resolve("sparsify", sparsify) - resolve("keep_dense", keep_dense)
    return [name for name in nodes if name in chosen]


def reduction_channels(node: Conv2d | Linear, spec: NetSpec) -> int:
    """The length of the axis blocks run along: a conv's input channels per group, a linear's inputs."""
    shapes = spec.shapes()
    h, w, c = shapes[node.input]
    if isinstance(node, Linear):
        return h * w * c
    return 1 if node.depthwise else c


def check_block(spec: NetSpec, layers: Sequence[str], block: int) -> None:
    """ValueError ("block: …", naming the layer) when `block` does not divide a sparsified layer."""
    if block not in BLOCKS:
        raise ValueError(f"block: {block} is not a supported block size ({', '.join(map(str, BLOCKS))})")
    nodes = _weight_nodes(spec)
    for name in layers:
        node = nodes[name]
        n = reduction_channels(node, spec)
        if n % block:
            what = "inputs" if isinstance(node, Linear) else "input channels"
            if isinstance(node, Conv2d) and node.depthwise:
                what = "input channels per group (depthwise)"
            raise ValueError(
                f"block: {block} does not divide the {n} {what} of layer {name!r}; use a block that "
                f"divides it or keep the layer dense (keep_dense: [{name}])"
            )


def check_levels(levels: Sequence[float]) -> None:
    """ValueError ("levels: …") unless levels are strictly increasing sparsities in (0, 1)."""
    if not levels:
        raise ValueError("levels: a sparse trainer needs at least one sparsity level")
    for s in levels:
        if not 0.0 < float(s) < 1.0:
            raise ValueError(f"levels: sparsity {s} is not strictly between 0 and 1")
    if any(b <= a for a, b in pairwise(levels)):
        raise ValueError(f"levels: {list(levels)} are not strictly increasing")


# --------------------------------------------------------------------------------------------------
# Blocks and masks (torch, so gradual re-ranking runs on the training device)


def _block_view(weight: torch.Tensor, block: int) -> torch.Tensor:
    """The weight as [..., n_blocks_along_reduction, block], blocks on the last axis.

    conv OIHW → [O, H, W, I/block, block]; linear [O, I] → [O, I/block, block].
    """
    if weight.dim() == 4:
        o, i, h, w = weight.shape
        return weight.permute(0, 2, 3, 1).reshape(o, h, w, i // block, block)
    if weight.dim() == 2:
        o, i = weight.shape
        return weight.reshape(o, i // block, block)
    raise ValueError(f"weights of rank {weight.dim()} have no block layout")


def block_scores(weight: torch.Tensor, block: int) -> torch.Tensor:
    """L2 norm of every block: [O, H, W, I/block] for conv, [O, I/block] for linear."""
    return torch.linalg.vector_norm(_block_view(weight.detach(), block), dim=-1)


def expand_blocks(block_mask: torch.Tensor, weight_shape: Sequence[int], block: int) -> torch.Tensor:
    """Per-block values (leading axes allowed, e.g. levels) back to the weight's layout."""
    lead = block_mask.shape[: block_mask.dim() - (3 if len(weight_shape) == 4 else 1) - 1]
    expanded = block_mask.unsqueeze(-1).expand(*block_mask.shape, block)
    if len(weight_shape) == 4:
        o, i, h, w = weight_shape
        x = expanded.reshape(*lead, o, h, w, i)
        return x.permute(*range(len(lead)), len(lead), len(lead) + 3, len(lead) + 1, len(lead) + 2)
    o, i = weight_shape
    return expanded.reshape(*lead, o, i)


def kept_blocks(n_blocks: int, sparsity: float) -> int:
    """Blocks a layer keeps at `sparsity`: the nearest count, and at least one (a layer never vanishes)."""
    return min(n_blocks, max(1, round((1.0 - sparsity) * n_blocks)))


def nested_block_masks(scores: torch.Tensor, sparsities: Sequence[float]) -> torch.Tensor:
    """bool [len(sparsities), *scores.shape]: level k keeps the top kept_blocks(s_k) blocks by score.

    One ranking serves every level, so for increasing sparsities the masks nest. Ties are broken by
    block position (stable sort), so the masks are deterministic.
    """
    flat = scores.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), device=flat.device)
    keeps = torch.tensor([kept_blocks(flat.numel(), s) for s in sparsities], device=flat.device)
    return (rank.unsqueeze(0) < keeps.unsqueeze(1)).reshape(len(sparsities), *scores.shape)


def nested_masks(weight: torch.Tensor, sparsities: Sequence[float], block: int) -> torch.Tensor:
    """bool [len(sparsities), *weight.shape]: nested block masks of one layer from its magnitudes."""
    bm = nested_block_masks(block_scores(weight, block), sparsities)
    return expand_blocks(bm, tuple(weight.shape), block).contiguous()


def increments(masks: torch.Tensor) -> torch.Tensor:
    """bool [L, *shape]: increment j = blocks first kept at level j going from sparsest to densest."""
    inc = masks.clone()
    inc[:-1] &= ~masks[1:]
    return inc


def routing_weights(masks: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """float [L, *shape]: the gradient weight each weight gets from level k's loss.

    route[k] = Σ_j matrix[k, j] · 1[increment j], restricted to level k's mask (a level's loss never
    reaches weights it does not use).
    """
    inc = increments(masks).to(torch.float32)
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float32), device=masks.device)
    route = torch.einsum("kj,j...->k...", m, inc)
    return route * masks.to(torch.float32)


# --------------------------------------------------------------------------------------------------
# Routing presets


RoutingPreset = Literal["sum", "exclusive", "weighted"]


def routing_matrix(
    preset: str, n_levels: int, weights: Sequence[Sequence[float]] | None = None
) -> np.ndarray:
    """float [L, L], row = level whose loss, column = increment receiving it.

    `sum`: every level's loss reaches every weight it uses (entries j ≥ k are 1);
    `exclusive`: increment k learns only from level k's loss (the identity);
    `weighted`: `weights` as given (entries for increments a level does not use are ignored).
    """
    if preset == "sum":
        return np.triu(np.ones((n_levels, n_levels), dtype=np.float32))
    if preset == "exclusive":
        return np.eye(n_levels, dtype=np.float32)
    if preset == "weighted":
        if weights is None:
            raise ValueError("routing_matrix: routing 'weighted' needs a routing_matrix")
        m = np.asarray(weights, dtype=np.float32)
        if m.shape != (n_levels, n_levels):
            raise ValueError(
                f"routing_matrix: expected {n_levels}×{n_levels} (levels × increments), got "
                f"{'×'.join(map(str, m.shape))}"
            )
        if not np.all(np.isfinite(m)) or np.any(m < 0):
            raise ValueError("routing_matrix: entries must be finite and non-negative")
        m = np.triu(m)  # level k does not use increments j < k: those entries have no effect
        if np.any(m.sum(axis=0) <= 0):
            j = int(np.argmin(m.sum(axis=0)))
            raise ValueError(f"routing_matrix: increment {j} receives no gradient from any level")
        return m
    raise ValueError(f"routing: unknown preset {preset!r} (sum, exclusive, weighted)")


# --------------------------------------------------------------------------------------------------
# Schedules


def cubic_sparsity(final: float, progress: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's gradual schedule: s = s_f + (s_i - s_f) · (1 - p)^3, p clipped to [0, 1]."""
    p = min(1.0, max(0.0, progress))
    return final + (initial - final) * (1.0 - p) ** 3


def scheduled_levels(levels: Sequence[float], progress: float) -> list[float]:
    """Every level's sparsity at `progress` of a cubic schedule from dense to its target.

    The cubic factor is common to all levels, so the scheduled sparsities keep their order (and the
    masks computed from them stay nested); at progress 0 all levels are dense.
    """
    return [cubic_sparsity(s, progress) for s in levels]


# --------------------------------------------------------------------------------------------------
# Inspection (numpy: what tests and meta use)


def sparsity_of(mask: np.ndarray) -> float:
    return float(1.0 - np.count_nonzero(mask) / mask.size)


def mask_sparsities(masks: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Fraction of zeros per layer and level."""
    return {name: [sparsity_of(m[k]) for k in range(m.shape[0])] for name, m in masks.items()}


def is_nested(masks: np.ndarray) -> bool:
    """True when every level's mask is a subset of the previous (denser) level's."""
    return all(not np.any(masks[k + 1] & ~masks[k]) for k in range(masks.shape[0] - 1))


def is_block_constant(mask: np.ndarray, block: int, *, conv: bool) -> bool:
    """True when `mask` ([..., *weight.shape], conv OIHW or linear [out, in]) is constant over blocks."""
    m = np.asarray(mask)
    axis = -3 if conv else -1
    i = m.shape[axis]
    if i % block:
        return False
    v = np.moveaxis(m, axis, -1)
    v = v.reshape(*v.shape[:-1], i // block, block)
    return bool(np.all(v == v[..., :1]))


def target_error_blocks(mask: np.ndarray, sparsity: float, block: int) -> float:
    """|kept − target kept| in blocks, for a single-level mask."""
    kept = np.count_nonzero(mask) / block
    n_blocks = mask.size / block
    return abs(kept - (1.0 - sparsity) * n_blocks)


__all__ = [
    "BLOCKS",
    "DEFAULT_SPARSIFY",
    "LAYER_KINDS",
    "block_scores",
    "check_block",
    "check_levels",
    "cubic_sparsity",
    "expand_blocks",
    "increments",
    "is_block_constant",
    "is_nested",
    "kept_blocks",
    "layer_kind",
    "mask_sparsities",
    "nested_block_masks",
    "nested_masks",
    "reduction_channels",
    "routing_matrix",
    "routing_weights",
    "scheduled_levels",
    "select_layers",
    "sparsity_of",
    "target_error_blocks",
]
