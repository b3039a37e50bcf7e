"""Pre-training size estimate: will an architecture fit a target's flash and RAM in a given format?

`estimate(spec, levels, format)` counts, from the NetSpec alone (no training, no torch), what the
packer (harness/pack.py) will emit:

- dense layers: one int8 byte per weight;
- sparsified layers (the trainers' default selection, or the entry's `sparsify` / `keep_dense` /
  `block`): the weights kept at the densest stored level (the trainers' own rounding,
  trainers/sparsity.py) as 1x2 kernel blocks, two value bytes and a uint16 index per block, each
  channel's run padded to an even count (counted as one extra block per channel, an upper bound),
  an end pointer per (level, channel) and a kernel choice per level;
- meta: int32 bias, multiplier and shift per output channel; ADD layers three multipliers and shifts.

- a level denser than the measured kernel crossover (harness/crossover.json) runs the dense kernel:
  nested adds a dense copy of the layer for it, csr stores the layer dense.

Formats: `dense` (one model, every weight stored), `csr` (one model per level: the standalone
baseline; each model is its own firmware image, so `flash_bytes` is the largest of them and the
family's total is in `detail`), `nested` (one model serving every level: the densest level's blocks,
level-major, with per-level tables). Peak activation RAM is the arena code generation will plan:
the same liveness rule and greedy placement (harness/codegen.py) over the NetSpec's tensors, plus
each sparse layer's input scratch while it runs.

The figures are the model's data, not a linked image: `check_fits` adds the firmware's own flash
and RAM before comparing with the target's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.codegen import plan_arena
from harness.pack import ACC_BYTES, SCRATCH_BUDGET, SCRATCH_LIMIT, load_crossover
from trainers.graph import INPUT, Add, Conv2d, Linear, NetSpec, node_inputs
from trainers.sparsity import DEFAULT_SPARSIFY, kept_blocks, select_layers

FORMATS = ("dense", "csr", "nested")
INDEX_BYTES = 2  # a uint16 offset per stored block (the packer's "fast" index)


@dataclass(frozen=True)
class FirmwareOverhead:
    """What the firmware needs besides the model's data and its activation arena.

    The figures harness/fit.py checks packed models against (measured on the linked images, with
    headroom): 48 KiB of code and constants; 8 KiB of static RAM plus the 16 KiB stack the linker
    scripts reserve.
    """

    flash: int = 48 * 1024
    ram: int = (8 + 16) * 1024


DEFAULT_OVERHEAD = FirmwareOverhead()


@dataclass(frozen=True)
class Estimate:
    flash_bytes: int  # the packed model data one firmware image holds (largest model for csr)
    ram_bytes: int  # peak activation arena
    detail: dict[str, Any] = field(default_factory=dict)


def _positions(node: Conv2d | Linear, spec: NetSpec) -> tuple[int, int]:
    """(output channels, weights per output channel) of a weight layer."""
    h, w, c = spec.shapes()[node.input]
    if isinstance(node, Linear):
        return node.out_features, h * w * c
    return node.out_channels, node.kernel * node.kernel * (1 if node.depthwise else c)


def _meta(cout: int) -> int:
    return 3 * 4 * cout  # int32 bias, multiplier and shift per output channel


def _dense_layer(node: Conv2d | Linear, spec: NetSpec) -> dict[str, int]:
    cout, per_out = _positions(node, spec)
    return {"weight": cout * per_out, "index": 0, "meta": _meta(cout)}


def _pair_density(density: float, block: int) -> float:
    """Share of a channel's kernel pairs holding a kept weight: 1x2 and 1x4 blocks fill whole pairs;
    lone weights (1x1 masks) hit a pair unless both halves are dropped (taken as independent)."""
    return density if block >= 2 else 1.0 - (1.0 - density) ** 2


def _sparse_layer(
    node: Conv2d | Linear, spec: NetSpec, levels: Sequence[float], block: int, crossover: dict[str, float]
) -> dict[str, int]:
    """One layer in the sparse layout (csr: one level; nested: all levels, stored at the densest)."""
    cout, per_out = _positions(node, spec)
    kind = "fc" if isinstance(node, Linear) else ("conv1x1" if node.kernel == 1 else "conv")
    threshold = crossover.get(kind, 1.0)
    above = [s for s in levels if _pair_density(1.0 - s, block) > threshold]
    if len(levels) == 1 and above:
        return _dense_layer(node, spec)  # csr stores a layer above the crossover dense
    # Kernel blocks are weight pairs, each holding the weights one level adds: 1x2 and 1x4 masks fill
    # whole pairs; with 1x1 masks a pair holds a kept weight unless both halves are dropped (taken
    # as independent). Each channel's run is padded to an even block count (half a block per
    # channel on average; never with 1x4 masks, whose blocks come in pairs).
    n_blocks = cout * per_out // block
    kept = [kept_blocks(n_blocks, s) / n_blocks for s in levels] + [0.0]  # densities, densest first
    added = [kept[j] - kept[j + 1] for j in range(len(levels))]  # what each level adds
    padding = 0 if block % 4 == 0 else cout // 2
    pairs = round(sum(_pair_density(d, block) for d in added) * cout * per_out / 2) + padding
    n = len(levels)
    end_bytes = 1 if per_out // 2 <= 0xFF else 2  # uint8 end pointers when a channel cannot exceed 255
    return {
        # + a dense copy for every level whose density makes the dense kernel faster
        "weight": 2 * pairs + len(above) * cout * per_out,
        "index": INDEX_BYTES * pairs,
        "meta": _meta(cout) + n * cout * end_bytes + n,  # + the per-level kernel choice
    }


def _add_layer() -> dict[str, int]:
    return {"weight": 0, "index": 0, "meta": 2 * 4 * 3}  # int32 multipliers and shifts of 2 inputs + output


def _model(spec: NetSpec, sparse: set[str], layer_bytes: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for node in spec.nodes:
        if isinstance(node, Conv2d | Linear):
            out[node.name] = layer_bytes(node) if node.name in sparse else _dense_layer(node, spec)
        elif isinstance(node, Add):
            out[node.name] = _add_layer()
    return out


def _totals(layers: dict[str, dict[str, int]]) -> dict[str, int]:
    t = {k: sum(v[k] for v in layers.values()) for k in ("weight", "index", "meta")}
    return {"model_bytes": sum(t.values()), **{f"{k}_bytes": v for k, v in t.items()}}


def sparse_scratch(node: Conv2d | Linear, spec: NetSpec) -> int:
    """Bytes of scratch the sparse kernel of `node` uses, following harness/pack.py's geometry: the
    int16 input band of the most output rows within the scratch budget, plus the accumulators; 0
    when not even one row fits (the packer then stores the layer dense)."""
    h, w, c = spec.shapes()[node.input]
    cap = min(SCRATCH_BUDGET, SCRATCH_LIMIT)
    if isinstance(node, Linear):
        size = 4 * ((h * w * c + 1) // 2)
        return size + ACC_BYTES if size <= cap else 0
    k, stride, pad = node.kernel, node.stride, node.padding
    wq = -(-(w + 2 * pad) // stride)
    out_rows = spec.shapes()[node.name][0]
    best = 0
    for band in range(1, out_rows + 1):
        size = 4 * ((c + 1) // 2) * ((band - 1) * stride + k) * stride * wq  # the int16 input band
        if size > cap:
            break
        best = size
    return best + ACC_BYTES if best else 0  # + the kernel's accumulators


def activation_arena(spec: NetSpec, scratch: dict[str, int] | None = None) -> int:
    """Bytes of the activation arena code generation will plan for `spec` (int8, batch 1), with
    `scratch` (node → bytes) alive during its node's step, as the sparse kernels' scratch is."""
    shapes = spec.shapes()
    names = [INPUT] + [n.name for n in spec.nodes]
    index = {name: i for i, name in enumerate(names)}
    sizes = [shapes[n][0] * shapes[n][1] * shapes[n][2] for n in names]
    n_steps = len(spec.nodes)
    first = {0: -1}
    last = {0: n_steps}  # the input is kept for the whole run
    for step, node in enumerate(spec.nodes):
        for src in node_inputs(node):
            t = index[src]
            last[t] = max(last.get(t, step), step)
        out = index[node.name]
        first.setdefault(out, step)
        last[out] = max(last.get(out, step), step)
    last[index[spec.nodes[-1].name]] = n_steps  # the output is read back after the run
    spans: list[tuple[int, int] | None] = [
        (first[t], last[t]) if t in first else None for t in range(len(names))
    ]
    steps = {node.name: step for step, node in enumerate(spec.nodes)}
    extra = sorted((steps[name], nbytes) for name, nbytes in (scratch or {}).items() if nbytes > 0)
    _, size = plan_arena(sizes + [b for _, b in extra], [*spans, *((st, st) for st, _ in extra)])
    return size


def estimate(
    spec: NetSpec,
    levels: Sequence[float],
    format: str,
    *,
    block: int = 2,
    sparsify: Iterable[str] = DEFAULT_SPARSIFY,
    keep_dense: Iterable[str] = (),
) -> Estimate:
    """Estimated packed size and activation RAM of `spec` at `levels` in `format`.

    `block`, `sparsify` and `keep_dense` are the sparse trainers' options of the same names (their
    defaults by default). ValueError for an unknown format or a layer selection that names no layer.
    """
    if format not in FORMATS:
        raise ValueError(f"format: unknown format {format!r}; known: {', '.join(FORMATS)}")
    sparse = set(select_layers(spec, sparsify, keep_dense)) if format != "dense" else set()
    models: list[dict[str, dict[str, int]]]
    if format == "dense":
        models = [_model(spec, sparse, None)]
    elif format == "csr":
        cross = load_crossover()
        models = [
            _model(spec, sparse, lambda n, s=s: _sparse_layer(n, spec, (s,), block, cross)) for s in levels
        ]
    else:
        cross = load_crossover()
        models = [_model(spec, sparse, lambda n: _sparse_layer(n, spec, levels, block, cross))]
    per_model = [_totals(m) for m in models]
    nodes = {n.name: n for n in spec.nodes if isinstance(n, Conv2d | Linear)}
    scratch = {name: sparse_scratch(nodes[name], spec) for name in sparse}
    arena = activation_arena(spec, scratch)
    detail: dict[str, Any] = {
        "format": format,
        "levels": list(levels) if format != "dense" else [0.0],
        "block": block,
        "sparsified_layers": sorted(sparse, key=[n.name for n in spec.nodes].index),
        "models": per_model,
        "total_model_bytes": sum(m["model_bytes"] for m in per_model),
        "layers": models[0] if len(models) == 1 else {f"level{i}": m for i, m in enumerate(models)},
        "arena_bytes": arena,
        "scratch_bytes": scratch,
    }
    return Estimate(flash_bytes=max(m["model_bytes"] for m in per_model), ram_bytes=arena, detail=detail)


def estimate_for(spec: NetSpec, levels: Sequence[float], format: str, options: object = None) -> Estimate:
    """`estimate` with `block`, `sparsify` and `keep_dense` taken from a trainer's options object
    (the sparse trainers' options have them; the defaults apply to any other)."""
    return estimate(
        spec,
        levels,
        format,
        block=int(getattr(options, "block", 2)),
        sparsify=tuple(getattr(options, "sparsify", DEFAULT_SPARSIFY)),
        keep_dense=tuple(getattr(options, "keep_dense", ())),
    )


def check_fits(
    estimate: Estimate,
    max_flash: int,
    max_ram: int,
    firmware_overhead: FirmwareOverhead = DEFAULT_OVERHEAD,
) -> str | None:
    """None when the model plus the firmware overhead fits; else a message with every size involved.

    A limit of 0 means unknown (a board manifest without it) and is not checked.
    """
    problems = []
    flash = estimate.flash_bytes + firmware_overhead.flash
    if max_flash > 0 and flash > max_flash:
        problems.append(
            f"flash: needs about {flash:,} B (model data {estimate.flash_bytes:,} B + firmware "
            f"~{firmware_overhead.flash:,} B) but the target has {max_flash:,} B"
        )
    ram = estimate.ram_bytes + firmware_overhead.ram
    if max_ram > 0 and ram > max_ram:
        problems.append(
            f"RAM: needs about {ram:,} B (activation arena {estimate.ram_bytes:,} B + firmware "
            f"~{firmware_overhead.ram:,} B) but the target has {max_ram:,} B"
        )
    if not problems:
        return None
    fmt = estimate.detail.get("format", "?")
    return f"the model does not fit ({fmt} format, estimated before training): " + "; ".join(problems)


__all__ = [
    "DEFAULT_OVERHEAD",
    "FORMATS",
    "Estimate",
    "FirmwareOverhead",
    "activation_arena",
    "check_fits",
    "estimate",
    "estimate_for",
    "sparse_scratch",
]
