"""The dense trainer and trainer discovery (trainers/dense.py, trainers/registry.py, trainers/devices.py).

The external-plugin test installs tests/plugins/nb_toy_trainer with pip (--no-deps --no-build-isolation
--no-index, so it works offline) into a temporary --target folder, puts that folder on sys.path and
checks that the plugin is discovered through its own entry point, exactly as a user's package would be.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from trainers.archs import ARCHS
from trainers.base import Trainer, TrainerOptions, TrainRequest
from trainers.datasets import Dataset, load_dataset
from trainers.dense import DenseOptions, DenseTrainer
from trainers.graph import TrainedModel
from trainers.registry import (
    TrainerPluginError,
    available_trainers,
    get_trainer,
    register_trainer,
    resolve_device,
    trainer_names,
    unregister_trainer,
)
from trainers.torchnet import build_module, load_params, predict

PLUGIN_SRC = Path(__file__).parent / "plugins" / "nb_toy_trainer"


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _request(ds: Dataset, seed: int = 0, **options: object) -> TrainRequest:
    spec = ARCHS["digits_cnn"](ds.x_train.shape[1:], ds.num_classes)
    return TrainRequest(ds, spec, (0.0,), seed, "cpu", DenseOptions(**options))  # type: ignore[arg-type]


def test_dense_trainer_learns_digits_with_defaults(digits: Dataset) -> None:
    reports: list[tuple[float, str]] = []
    request = _request(digits)
    request = TrainRequest(**{**request.__dict__, "progress": lambda f, s: reports.append((f, s))})
    models = DenseTrainer().train(request)
    assert len(models) == 1
    model = models[0]
    assert model.levels == (0.0,) and model.masks == {}
    meta = model.meta
    assert meta["trainer"] == "dense" and meta["options"] == DenseOptions().model_dump()
    assert len(meta["train_loss"]) == len(meta["test_accuracy"]) == meta["epochs"] == DenseOptions().epochs
    assert meta["train_loss"][-1] < meta["train_loss"][0]
    assert meta["wall_time_s"] > 0
    # the accuracy recorded in meta is what the exported weights really give
    module = build_module(model.spec)
    load_params(module, model.spec, model.params)
    acc = float(np.mean(predict(module, digits.x_test).argmax(axis=1) == digits.y_test))
    assert acc >= 0.90
    assert meta["test_accuracy_final"] == pytest.approx(acc)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == meta["epochs"]
    assert "epoch" in reports[-1][1]


def test_dense_trainer_is_deterministic_per_seed(digits: Dataset, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    a = DenseTrainer().train(_request(digits, seed=3, epochs=2))[0]
    b = DenseTrainer().train(_request(digits, seed=3, epochs=2))[0]
    c = DenseTrainer().train(_request(digits, seed=4, epochs=2))[0]
    assert torch.get_num_threads() == threads  # the pinned thread count is restored
    for node, tensors in a.params.items():
        for key, value in tensors.items():
            np.testing.assert_array_equal(value, b.params[node][key])
    assert not np.array_equal(a.params["conv1"]["weight"], c.params["conv1"]["weight"])
    assert not np.array_equal(a.params["fc"]["weight"], c.params["fc"]["weight"])
    # what the harness caches reloads identically
    a.save(tmp_path / "m")
    again = TrainedModel.load(tmp_path / "m")
    np.testing.assert_array_equal(again.params["conv2"]["bn_var"], a.params["conv2"]["bn_var"])
    assert again.meta["train_loss"] == a.meta["train_loss"]


def test_dense_trainer_sgd_and_smoothing_options(digits: Dataset) -> None:
    model = DenseTrainer().train(_request(digits, epochs=2, optimizer="sgd", lr=0.05, label_smoothing=0.1))[0]
    assert model.meta["options"]["optimizer"] == "sgd"
    assert model.meta["test_accuracy"][-1] > 0.5


def test_dense_options_are_validated() -> None:
    with pytest.raises(pydantic.ValidationError, match="epoch"):
        DenseOptions.model_validate({"epoch": 3})  # unknown key (typo of epochs)
    with pytest.raises(pydantic.ValidationError, match="optimizer"):
        DenseOptions.model_validate({"optimizer": "lbfgs"})
    with pytest.raises(pydantic.ValidationError, match="batch_size"):
        DenseOptions.model_validate({"batch_size": 0})


def test_dense_trainer_serves_level_zero_whatever_the_suite_lists(digits: Dataset) -> None:
    request = _request(digits, epochs=1)
    request = TrainRequest(**{**request.__dict__, "levels": (0.7, 0.8, 0.9)})
    (model,) = DenseTrainer().train(request)
    assert model.levels == (0.0,) and model.masks == {}
    assert model.meta["requested_levels"] == [0.7, 0.8, 0.9]


def test_dense_qat_fine_tunes_on_fake_int8_and_keeps_the_int8_accuracy(digits: Dataset) -> None:
    from harness import quantize, reference

    base = DenseTrainer().train(_request(digits, epochs=4))[0]
    qat = DenseTrainer().train(_request(digits, epochs=4, qat_epochs=1, qat_lr=1e-4))[0]
    assert "qat_test_accuracy_per_level" not in base.meta
    assert len(qat.meta["qat_test_accuracy_per_level"]) == 1 and len(qat.meta["qat_train_loss"]) == 1
    # the same 4 epochs, then one QAT epoch: the weights moved, batch-norm statistics did not
    assert not np.array_equal(base.params["conv2"]["weight"], qat.params["conv2"]["weight"])
    np.testing.assert_array_equal(base.params["conv2"]["bn_mean"], qat.params["conv2"]["bn_mean"])

    def int8(model: TrainedModel) -> float:
        qm = quantize.quantize(model, digits.x_train[:256], digits.input_range, name="d")
        x_q = quantize.quantize_input(digits.x_test, qm.tensors[qm.input])
        return float(np.mean(reference.run_int8(qm, x_q).argmax(1) == digits.y_test))

    # fake-quant accuracy during QAT predicts the real int8 accuracy
    assert abs(int8(qat) - qat.meta["qat_test_accuracy_per_level"][-1][0]) <= 0.02
    assert int8(qat) >= int8(base) - 0.02


def test_trainer_metadata_for_the_harness() -> None:
    assert DenseTrainer.serves == "one"
    spec = ARCHS["digits_cnn"]((8, 8, 1), 10)
    DenseTrainer.check(spec, (0.7, 0.8), {"epochs": 2})  # dense accepts any levels
    assert isinstance(DenseTrainer.parse_options({"epochs": 2}), DenseOptions)
    with pytest.raises(pydantic.ValidationError):
        DenseTrainer.parse_options({"epoch": 2})


def test_registry_finds_dense_through_its_entry_point() -> None:
    assert get_trainer("dense") is DenseTrainer
    assert available_trainers()["dense"] is DenseTrainer
    assert "dense" in trainer_names()
    # the built-in sparse trainers register the same way
    assert {"nested", "standalone", "dsnn"} <= set(trainer_names())
    assert {get_trainer(n).serves for n in ("nested", "standalone", "dsnn")} == {"all", "per_level"}
    with pytest.raises(KeyError, match="dense"):
        get_trainer("no-such-trainer")


def test_register_trainer_in_process() -> None:
    class Echo(Trainer):
        name = "echo-test"

    try:
        register_trainer(Echo)
        assert get_trainer("echo-test") is Echo
        assert available_trainers()["echo-test"] is Echo
    finally:
        unregister_trainer("echo-test")
    with pytest.raises(KeyError):
        get_trainer("echo-test")
    with pytest.raises(TrainerPluginError, match="not a subclass"):
        register_trainer(int)  # type: ignore[arg-type]


def _write_dist_info(site: Path, name: str, entry: str) -> None:
    info = site / f"{name}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[nestbench.trainers]\n{entry}\n")


def test_broken_plugin_is_named_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    _write_dist_info(site, "nb_broken", "broken = nb_missing_module_xyz:Trainer")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert "broken" in trainer_names()
    with pytest.raises(TrainerPluginError, match=r"'broken'.*nb_missing_module_xyz.*nb_broken") as info:
        get_trainer("broken")
    assert "ModuleNotFoundError" in str(info.value)
    with pytest.raises(TrainerPluginError, match="broken"):
        available_trainers()
    assert get_trainer("dense") is DenseTrainer  # a broken neighbour does not block the others


def test_external_trainer_package_installed_with_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(PLUGIN_SRC, src)  # build a copy: setuptools writes build/ and egg-info into the source
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    cmd += ["--quiet", "--disable-pip-version-check", "--target", str(site), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (site / "nb_toy_trainer").is_dir()

    assert "toy" not in trainer_names()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        trainers = available_trainers()
        assert {"dense", "toy"} <= set(trainers)
        toy = get_trainer("toy")
        assert toy.__module__ == "nb_toy_trainer" and toy.name == "toy"
        ds = load_dataset("synthetic")
        spec = ARCHS["layer_zoo"](ds.x_train.shape[1:], ds.num_classes)
        options = toy.Options.model_validate({"epochs": 3})
        assert isinstance(options, TrainerOptions)
        models = toy().train(TrainRequest(ds, spec, (0.0,), 0, "cpu", options))
        assert len(models) == 1 and models[0].meta["trainer"] == "toy"
        assert set(models[0].params) == {"stem", "down", "dw", "pw", "expand", "head_gap", "head_flat"}
        module = build_module(spec)
        load_params(module, spec, models[0].params)
        acc = float(np.mean(predict(module, ds.x_train).argmax(axis=1) == ds.y_train))
        assert acc > 0.5  # 4 classes: it really trained
    finally:
        sys.modules.pop("nb_toy_trainer", None)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
