"""Suite files: every malformed one is an InputError at the right line and field; valid ones load
with their defaults.

Each tests/data/suites/bad_*.yaml starts with ``# expect: line=N field=F contains=TEXT`` (``-`` for
"none"): the line, the dotted field and a piece of the message the error must carry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import EXIT_INPUT, InputError
from harness.suite import Catalog, Suite, SuiteError, Tolerance, load_suite
from harness.yamlsrc import MAX_BYTES, load_yaml

DATA = Path(__file__).parent / "data" / "suites"
REPO = Path(__file__).resolve().parents[1]


class DenseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(default=30, ge=1)
    lr: float = Field(default=0.01, gt=0)
    batch_size: int = 64


class NestedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(default=40, ge=1)
    schedule: Literal["linear", "cubic"] = "cubic"


CATALOG = Catalog(
    trainers={"dense": DenseOptions, "nested": NestedOptions},
    archs=("digits_cnn", "cifar_resnet8"),
    datasets=("digits", "cifar10", "synthetic"),
    targets=("qemu_mps2_an500", "nucleo_f767zi"),
    formats=("dense", "csr", "nested"),
)

_EXPECT = re.compile(r"^# expect: line=(?P<line>\S+) field=(?P<field>\S+) contains=(?P<text>.+)$")


def _expectation(path: Path) -> tuple[int | None, str | None, str]:
    match = _EXPECT.match(path.read_text().splitlines()[0])
    assert match, f"{path.name}: first line must be '# expect: line=N field=F contains=TEXT'"
    line = None if match["line"] == "-" else int(match["line"])
    field = None if match["field"] == "-" else match["field"]
    return line, field, match["text"]


BAD = sorted(DATA.glob("bad_*.yaml"))


def test_enough_malformed_suites() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_suite(path: Path) -> None:
    line, field, text = _expectation(path)
    with pytest.raises(InputError) as info:
        load_suite(path, CATALOG)
    err = info.value
    assert err.exit_code == EXIT_INPUT
    assert (err.line, err.field) == (line, field), str(err)
    assert text in err.message, str(err)
    assert path.name in str(err)
    first = str(err).splitlines()[0]
    assert first.startswith(f"{path}:{line}: " if line else f"{path}: ")


def test_all_errors_listed_one_per_line_sorted() -> None:
    path = DATA / "bad_several_errors.yaml"
    with pytest.raises(SuiteError) as info:
        load_suite(path, CATALOG)
    lines = str(info.value).splitlines()
    assert [(p.line, p.field) for p in info.value.problems] == [
        (3, "samples"),
        (9, "models[0].options.epochs"),
        (13, "models[1].format"),
    ]
    assert len(lines) == 3
    assert lines[1].startswith(f"{path}:9: models[0].options.epochs: ")
    assert lines[2].startswith(f"{path}:13: models[1].format: unknown format 'sparse'")


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(InputError) as info:
        load_suite(DATA / "bad_unknown_arch.yaml", CATALOG)
    assert "known: cifar_resnet8, digits_cnn" in info.value.message


def _write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """\
dataset: digits
targets: [qemu_mps2_an500]
models:
  - name: dense
    arch: digits_cnn
    trainer: dense
"""


def test_huge_file(tmp_path: Path) -> None:
    filler = "# " + "x" * 98 + "\n"
    path = _write(tmp_path, MINIMAL + filler * (MAX_BYTES // len(filler) + 1))
    with pytest.raises(InputError) as info:
        load_suite(path, CATALOG)
    assert "too large" in info.value.message and str(path) in str(info.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file is empty"):
        load_suite(_write(tmp_path, ""), CATALOG)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found") as info:
        load_suite(tmp_path / "nope.yaml", CATALOG)
    assert "nope.yaml" in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_bytes(MINIMAL.encode() + b"description: caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8") as info:
        load_suite(path, CATALOG)
    assert info.value.line == 7


def test_alias_bomb(tmp_path: Path) -> None:
    # each level doubles the tree: 2^20 values once expanded
    lines = ["a0: &a0 [x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 21)]
    with pytest.raises(InputError, match="too many values"):
        load_suite(_write(tmp_path, MINIMAL + "\n".join(lines) + "\n"), CATALOG)


def test_missing_key_points_at_parent_line(tmp_path: Path) -> None:
    source = load_yaml(_write(tmp_path, MINIMAL))
    assert source.line_of(("models", 0, "options", "epochs")) == 4
    assert source.line_of(("models", 0, "trainer")) == 6
    assert source.line_of(("nothing",)) == 1


def test_minimal_suite_gets_defaults(tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path, MINIMAL, "nightly-2.yaml"), CATALOG)
    assert suite.name == "nightly-2"  # the file's stem
    assert (suite.seed, suite.samples, suite.device, suite.description) == (0, 0, "auto", "")
    assert suite.levels == [0.7, 0.8, 0.9]
    assert (suite.measure.repetitions, suite.measure.warmup, suite.measure.timeout_s) == (5, 1, 60.0)
    assert suite.tolerances.cycles == Tolerance(rel=0.0, abs=0.0)
    assert suite.tolerances.board_cycles == Tolerance(rel=0.03, abs=0.0)
    assert suite.tolerances.accuracy == Tolerance(rel=0.0, abs=0.01)
    assert suite.dataset.name == "digits" and suite.dataset.root is None
    entry = suite.models[0]
    assert (entry.format, entry.arch_options, entry.levels) == ("dense", {}, None)
    assert entry.trainer_options == DenseOptions()
    assert suite.levels_for(entry) == (0.7, 0.8, 0.9)
    assert entry.line == 4 and suite.dataset.line == 1 and suite.file == tmp_path / "nightly-2.yaml"


def test_file_stem_that_is_not_a_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="add a `suite:` key"):
        load_suite(_write(tmp_path, MINIMAL, "my suite.yaml"), CATALOG)


def test_full_suite() -> None:
    suite = load_suite(DATA / "ok_full.yaml", CATALOG)
    assert suite.name == "full"
    assert suite.dataset.root == DATA.parent.absolute()  # `root: ..` relative to the suite file
    assert suite.dataset.test_fraction == 0.25
    assert suite.targets == ["qemu_mps2_an500", "nucleo_f767zi"]
    # a partly given tolerance keeps its other default
    assert suite.tolerances.board_cycles == Tolerance(rel=0.03, abs=100.0)
    assert suite.tolerances.storage == Tolerance(rel=0.0, abs=16.0)
    dense, nested = suite.models
    assert dense.trainer_options == DenseOptions(epochs=2, lr=0.05)
    assert nested.trainer_options == NestedOptions(schedule="linear")
    assert suite.levels_for(dense) == (0.5, 0.75)
    assert suite.levels_for(nested) == (0.6, 0.9)
    assert nested.arch_options == {"width": 0.5}
    assert suite.entry("nested") is nested
    # the validated suite serializes (run.json provenance) with the trainers' options
    dumped = suite.model_dump(mode="json")
    assert dumped["models"][1]["options"] == {"epochs": 40, "schedule": "linear"}
    assert suite.line_of("models", 1, "arch_options") == 33
    err = suite.error_at(("models", 1, "arch_options", "width"), "not supported")
    assert (err.line, err.field) == (33, "models[1].arch_options.width")


def test_repository_suites_validate() -> None:
    from harness.catalog import build_catalog

    catalog = build_catalog(REPO)
    suite = load_suite(REPO / "suites" / "quickstart.yaml", catalog)
    assert [m.trainer for m in suite.models] == ["nested", "standalone", "dsnn", "dense"]
    # Everything but the data is valid; without the CIFAR-10 folder the suite stops at its root.
    with pytest.raises(InputError) as err:
        load_suite(REPO / "suites" / "cifar10_mobilenet.yaml", catalog)
    assert err.value.field == "dataset.root" and "cifar10" in str(err.value)


def test_suite_models_are_strict_and_closed() -> None:
    base = {"suite": "s", "dataset": "digits", "targets": ["t"],
            "models": [{"name": "m", "arch": "a", "trainer": "t"}]}  # fmt: skip
    assert isinstance(Suite.model_validate(base), Suite)  # no catalog in context: names unchecked
    with pytest.raises(ValueError):
        Suite.model_validate({**base, "extra": 1})
    with pytest.raises(ValueError):
        Suite.model_validate({**base, "seed": True})


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = MINIMAL + "  - <<: *base\n    name: copy\n    format: csr\n"
    text = text.replace("  - name: dense\n", "  - &base\n    name: dense\n")
    suite = load_suite(_write(tmp_path, text), CATALOG)
    assert [(m.name, m.arch, m.format) for m in suite.models] == [
        ("dense", "digits_cnn", "dense"),
        ("copy", "digits_cnn", "csr"),
    ]
    assert suite.line_of("models", 1, "format") == 10
    assert suite.line_of("models", 1, "arch") == 8  # merged in: the entry's own line


def test_nightly_suite_runs_every_entry_on_every_board_kind() -> None:
    """suites/nightly.yaml: every kind of board the project builds for (board, its Renode twin, QEMU),
    every entry fits the board (preflight), and its committed QEMU baseline covers every row."""
    from harness import baselines, targets
    from harness.catalog import build_catalog
    from harness.preflight import preflight
    from trainers.datasets import load_dataset

    suite = load_suite(REPO / "suites" / "nightly.yaml", build_catalog(REPO))
    kinds = targets.load_targets(REPO)
    assert set(suite.targets) == set(kinds)  # every env of platformio.ini is a board kind
    assert {kinds[t].backend for t in suite.targets} == {"board", "renode", "qemu"}
    assert suite.farm.mode == "repeat"
    assert {m.trainer for m in suite.models} >= {"nested", "standalone", "dsnn", "dense"}
    assert {m.arch for m in suite.models} >= {"digits_cnn", "mobilenet_v1", "resnet8"}
    data = load_dataset(suite.dataset.name, seed=suite.seed)
    preflight(suite, data.x_train.shape[1:], data.num_classes, [kinds[t] for t in suite.targets])
    stored = baselines.load_baseline(
        REPO / "results" / "baselines" / "nightly" / "qemu_mps2_an500.csv", "nightly"
    )
    levels = {m.name: (1 if m.format == "dense" else len(suite.levels)) for m in suite.models}
    assert sorted(stored["entry"].value_counts().items()) == sorted(levels.items())
    assert (stored["status"] == "ok").all()
