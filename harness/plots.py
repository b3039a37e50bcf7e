"""Plots of a run, as PNG files in the run folder (matplotlib's Agg renderer, no display needed).

- `pareto_plot`: accuracy on the device versus cycles per inference, one plot per target and cycle
  source (counts from different sources never share an axis). A model that serves several levels
  (one model hash on several rows: the nested model) is a connected line through its levels; a
  family of separate models (standalone `csr`) is a set of points; a single dense model is a star.
  Every entry of the suite, whatever its trainer, is its own series. The Pareto front over all
  points is drawn behind them.
- `storage_plot`: per entry the bytes it needs in flash to serve all its levels: one model for a
  nested entry, the sum over its models for a standalone ensemble; stacked weights/indices/meta.
- `layer_plot`: per entry and level the cycles of each layer, stacked.
- `compare_pareto_plot`: several runs' Pareto data on one plot per target, one colour per run.

The data behind each plot comes from functions that return plain values (`pareto_series`,
`storage_bars`, `layer_bars`), so tests check what is drawn without reading pixels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from harness.atomic import atomic_write_with
from harness.records import parse_cycles_per_layer

MEASURED = ("ok", "mismatch")  # rows with device figures
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
_MAX_LAYERS = 10  # per-layer bars: the largest layers by name, the rest as "other"
_SOURCE_UNITS = {
    "qemu-icount": "retired instructions (QEMU icount)",
    "renode-dwt": "Renode DWT cycles",
    "dwt": "core cycles (DWT)",
}


# --- data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    cycles: int
    accuracy: float
    level: int
    sparsity: float


@dataclass(frozen=True)
class Series:
    entry: str
    trainer: str
    format: str
    kind: str  # "nested" (one model, several levels) | "standalone" (several models) | "dense" | "single"
    points: tuple[Point, ...]

    @property
    def connected(self) -> bool:
        return self.kind == "nested"

    @property
    def label(self) -> str:
        return f"{self.entry} ({self.trainer}, {self.format})"


@dataclass(frozen=True)
class StorageBar:
    entry: str
    trainer: str
    format: str
    models: int  # distinct models the entry needs in flash to serve all its levels
    weight_bytes: int
    index_bytes: int
    meta_bytes: int

    @property
    def total(self) -> int:
        return self.weight_bytes + self.index_bytes + self.meta_bytes

    @property
    def label(self) -> str:
        what = "1 model" if self.models == 1 else f"{self.models} models"
        return f"{self.entry} ({self.format}, {what})"


@dataclass(frozen=True)
class LayerBar:
    label: str  # "entry L<level>"
    counts: dict[str, int] = field(default_factory=dict)


def safe_name(text: str) -> str:
    """A file-name-safe form of a target or source name."""
    return _SAFE.sub("_", text).strip("_") or "x"


def _int(value: object) -> int:
    return 0 if value is None or bool(pd.isna(value)) else int(value)  # type: ignore[call-overload]


def _measured(frame: pd.DataFrame) -> pd.DataFrame:
    ok = frame["status"].isin(MEASURED) & frame["cycles"].notna()
    return frame[ok]


def cycle_sources(frame: pd.DataFrame, target: str) -> list[str]:
    """The cycle sources of a target's measured rows (normally exactly one)."""
    rows = _measured(frame[frame["target"] == target])
    return sorted(str(s) for s in rows["cycle_source"].dropna().unique())


def pareto_series(frame: pd.DataFrame, target: str, source: str) -> list[Series]:
    """One series per entry measured on `target` with `source`, in the order entries appear."""
    rows = _measured(frame[(frame["target"] == target) & (frame["cycle_source"] == source)])
    out = []
    for entry in dict.fromkeys(str(e) for e in rows["entry"]):
        part = rows[rows["entry"] == entry].sort_values("level", kind="stable")
        points = []
        for _, row in part.iterrows():
            accuracy = row["accuracy_device"]
            if pd.isna(accuracy):
                continue
            sparsity = 0.0 if pd.isna(row["sparsity"]) else float(row["sparsity"])
            points.append(Point(int(row["cycles"]), float(accuracy), _int(row["level"]), sparsity))
        if not points:
            continue
        first = part.iloc[0]
        models = part["model_hash"].dropna().nunique()
        if len(points) > 1 and models <= 1:
            kind = "nested"
        elif len(points) > 1:
            kind = "standalone"
        elif str(first["trainer"]) == "dense" or str(first["format"]) == "dense":
            kind = "dense"
        else:
            kind = "single"
        out.append(Series(entry, str(first["trainer"]), str(first["format"]), kind, tuple(points)))
    return out


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (fewer cycles and higher accuracy), by cycles."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.cycles, -p.accuracy)):
        if not front or p.accuracy > front[-1].accuracy:
            front.append(p)
    return front


def storage_bars(frame: pd.DataFrame, target: str) -> list[StorageBar]:
    """Flash bytes per entry on `target`: each distinct model (by hash) counted once."""
    rows = frame[frame["target"] == target]
    out = []
    for entry in dict.fromkeys(str(e) for e in rows["entry"]):
        part = rows[(rows["entry"] == entry) & rows["model_bytes"].notna()]
        if part.empty:
            continue
        # A nested model repeats its storage on every level row; a standalone family has one model
        # (one hash) per row. Rows without a hash count as their own model.
        hashed = part[part["model_hash"].notna()].drop_duplicates("model_hash")
        models = pd.concat([hashed, part[part["model_hash"].isna()]])
        first = part.iloc[0]
        out.append(
            StorageBar(
                entry=entry,
                trainer=str(first["trainer"]),
                format=str(first["format"]),
                models=len(models),
                weight_bytes=sum(_int(v) for v in models["weight_bytes"]),
                index_bytes=sum(_int(v) for v in models["index_bytes"]),
                meta_bytes=sum(_int(v) for v in models["meta_bytes"]),
            )
        )
    return out


def layer_bars(frame: pd.DataFrame, target: str) -> list[LayerBar]:
    rows = _measured(frame[frame["target"] == target])
    out = []
    for _, row in rows.iterrows():
        text = row["cycles_per_layer"]
        if pd.isna(text) or not text:
            continue
        try:
            counts = parse_cycles_per_layer(str(text))
        except ValueError:
            continue
        out.append(LayerBar(f"{row['entry']} L{_int(row['level'])}", counts))
    return out


# --- drawing -----------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def _thousands(ax: Axes) -> None:
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))


def _axis_label(source: str) -> str:
    return f"cycles per inference: {_SOURCE_UNITS.get(source, source)}"


def _draw_series(ax: Axes, series: Series, index: int, color: object = None, prefix: str = "") -> None:
    xs = [p.cycles for p in series.points]
    ys = [p.accuracy * 100 for p in series.points]
    label = prefix + series.label
    marker = _MARKERS[index % len(_MARKERS)]
    if series.kind == "dense":
        ax.plot(xs, ys, linestyle="none", marker="*", markersize=14, label=label, color=color)
    elif series.connected:
        ax.plot(xs, ys, linestyle="-", marker=marker, label=label, color=color)
    else:
        ax.plot(xs, ys, linestyle="none", marker=marker, markersize=8, label=label, color=color)
    for p in series.points:
        if len(series.points) > 1 or p.sparsity:
            ax.annotate(
                f"{p.sparsity:.0%}", (p.cycles, p.accuracy * 100), textcoords="offset points",
                xytext=(4, 4), fontsize=7,
            )  # fmt: skip


def _draw_front(ax: Axes, points: Sequence[Point]) -> None:
    front = pareto_front(points)
    if len(front) > 1:
        ax.step(
            [p.cycles for p in front], [p.accuracy * 100 for p in front], where="post",
            color="0.75", linewidth=3, zorder=0, label="Pareto front",
        )  # fmt: skip


def pareto_plot(frame: pd.DataFrame, target: str, source: str, path: Path) -> Path | None:
    """Accuracy vs cycles for one target and cycle source; None when nothing was measured."""
    series = pareto_series(frame, target, source)
    if not series:
        return None
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    _draw_front(ax, [p for s in series for p in s.points])
    for i, s in enumerate(series):
        _draw_series(ax, s, i)
    ax.set_xlabel(_axis_label(source))
    ax.set_ylabel("accuracy on the device (%)")
    ax.set_title(f"{target}: accuracy vs latency")
    _thousands(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def storage_plot(frame: pd.DataFrame, target: str, path: Path) -> Path | None:
    bars = storage_bars(frame, target)
    if not bars:
        return None
    fig = Figure(figsize=(7.5, 1.2 + 0.5 * len(bars)))
    ax = fig.add_subplot()
    labels = [b.label for b in bars]
    left = [0] * len(bars)
    for part, color in (("weight_bytes", "C0"), ("index_bytes", "C1"), ("meta_bytes", "C2")):
        values = [getattr(b, part) for b in bars]
        ax.barh(labels, values, left=left, color=color, label=part.replace("_bytes", ""))
        left = [a + b for a, b in zip(left, values, strict=True)]
    for y, bar in enumerate(bars):
        ax.annotate(f" {bar.total:,} B", (bar.total, y), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("bytes in flash to serve every level of the entry")
    ax.set_title(f"{target}: model storage")
    _thousands(ax)
    ax.set_xlim(0, max(b.total for b in bars) * 1.25 or 1)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def layer_plot(frame: pd.DataFrame, target: str, source: str, path: Path) -> Path | None:
    bars = layer_bars(frame[frame["cycle_source"] == source], target)
    if not bars:
        return None
    totals: dict[str, int] = {}
    for bar in bars:
        for name, count in bar.counts.items():
            totals[name] = totals.get(name, 0) + count
    # The largest layers get their own colour; the others share "other". Layer order follows the
    # network (first bar's order), so stacks read input to output.
    big = set(sorted(totals, key=totals.__getitem__, reverse=True)[:_MAX_LAYERS])
    order = [n for n in dict.fromkeys(n for b in bars for n in b.counts) if n in big]
    fig = Figure(figsize=(8.5, 1.4 + 0.42 * len(bars)))
    ax = fig.add_subplot()
    labels = [b.label for b in bars]
    left = [0] * len(bars)
    for i, name in enumerate([*order, "other"]):
        if name == "other":
            values = [sum(c for n, c in b.counts.items() if n not in big) for b in bars]
            if not any(values):
                continue
        else:
            values = [b.counts.get(name, 0) for b in bars]
        ax.barh(labels, values, left=left, label=name, color=f"C{i % 10}" if name != "other" else "0.6")
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel(_axis_label(source))
    ax.set_title(f"{target}: cycles per layer")
    _thousands(ax)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def compare_pareto_plot(
    frames: Mapping[str, pd.DataFrame], target: str, source: str, path: Path
) -> Path | None:
    """Several runs (label -> records) on one accuracy-vs-cycles plot for `target` and `source`."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    drawn = False
    for r, (label, frame) in enumerate(frames.items()):
        for i, s in enumerate(pareto_series(frame, target, source)):
            _draw_series(ax, s, i, color=f"C{r % 10}", prefix=f"{label}: ")
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel(_axis_label(source))
    ax.set_ylabel("accuracy on the device (%)")
    ax.set_title(f"{target}: accuracy vs latency, {len(frames)} runs")
    _thousands(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


# --- a run's plots -----------------------------------------------------------------------------------


@dataclass
class TargetPlots:
    pareto: dict[str, Path] = field(default_factory=dict)  # cycle source -> file
    storage: Path | None = None
    layers: dict[str, Path] = field(default_factory=dict)


def run_plots(frame: pd.DataFrame, folder: Path) -> dict[str, TargetPlots]:
    """Every plot of a run into `folder`; target -> its files. A target with one cycle source gets
    ``pareto_<target>.png``; with several, one file per source (``pareto_<target>_<source>.png``)."""
    out: dict[str, TargetPlots] = {}
    for target in sorted(str(t) for t in frame["target"].dropna().unique()):
        plots = TargetPlots()
        sources = cycle_sources(frame, target)
        for source in sources:
            suffix = safe_name(target) + ("" if len(sources) == 1 else f"_{safe_name(source)}")
            pareto = pareto_plot(frame, target, source, folder / f"pareto_{suffix}.png")
            if pareto:
                plots.pareto[source] = pareto
            layers = layer_plot(frame, target, source, folder / f"layers_{suffix}.png")
            if layers:
                plots.layers[source] = layers
        plots.storage = storage_plot(frame, target, folder / f"storage_{safe_name(target)}.png")
        out[target] = plots
    return out


__all__ = [
    "LayerBar",
    "Point",
    "Series",
    "StorageBar",
    "TargetPlots",
    "compare_pareto_plot",
    "cycle_sources",
    "layer_bars",
    "layer_plot",
    "pareto_front",
    "pareto_plot",
    "pareto_series",
    "run_plots",
    "safe_name",
    "storage_bars",
    "storage_plot",
]
