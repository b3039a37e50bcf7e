"""The nested and dsnn trainers (trainers/nested.py, trainers/dsnn.py) and the joint engine they share
(trainers/joint.py): masks, gradient routing, distillation, mask schedules, determinism, QAT."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import quantize, reference
from trainers.archs import ARCHS
from trainers.base import TrainRequest
from trainers.datasets import Dataset, load_dataset
from trainers.dsnn import DsnnOptions, DsnnTrainer
from trainers.graph import INPUT, Conv2d, GlobalAvgPool, Linear, NetSpec, TrainedModel
from trainers.joint import JointPlan, compute_masks, compute_routes, joint_loss
from trainers.nested import NestedOptions, NestedTrainer
from trainers.qat import calibrate, disable_qat, enable_qat
from trainers.registry import get_trainer
from trainers.sparsity import increments, is_block_constant, is_nested, kept_blocks, routing_matrix
from trainers.torchnet import build_module, level_masks, load_params, predict, weight_layers

LEVELS = (0.7, 0.8, 0.9)
FAST = {"epochs": 4, "warmup_epochs": 1, "freeze_epoch": 2}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _request(ds: Dataset, options: object, seed: int = 0, levels: tuple[float, ...] = LEVELS) -> TrainRequest:
    spec = ARCHS["digits_cnn"](ds.x_train.shape[1:], ds.num_classes)
    return TrainRequest(ds, spec, levels, seed, "cpu", options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def nested_model(digits: Dataset) -> tuple[TrainedModel, list[tuple[float, str]]]:
    reports: list[tuple[float, str]] = []
    request = replace(_request(digits, NestedOptions(**FAST)), progress=lambda f, s: reports.append((f, s)))
    (model,) = NestedTrainer().train(request)
    return model, reports


def test_nested_model_masks_nest_at_block_granularity_and_reach_targets(
    nested_model: tuple[TrainedModel, list[tuple[float, str]]],
) -> None:
    model, _ = nested_model
    assert get_trainer("nested") is NestedTrainer
    assert model.levels == LEVELS
    assert sorted(model.masks) == ["conv2", "conv3", "fc"]  # conv1 (first) stays dense
    for name, masks in model.masks.items():
        weight = model.params[name]["weight"]
        assert masks.shape == (3, *weight.shape) and masks.dtype == bool
        assert is_nested(masks)
        assert is_block_constant(masks, 2, conv=weight.ndim == 4)
        for k, s in enumerate(LEVELS):
            kept = np.count_nonzero(masks[k]) / 2
            assert kept == kept_blocks(weight.size // 2, s)
            assert model.meta["sparsity_per_layer"][name][k] == pytest.approx(1 - kept * 2 / weight.size)


def test_nested_model_meta_and_progress(nested_model: tuple[TrainedModel, list[tuple[float, str]]]) -> None:
    model, reports = nested_model
    meta = model.meta
    assert meta["trainer"] == "nested" and meta["requested_levels"] == list(LEVELS)
    assert meta["served_levels"] == list(LEVELS) and meta["block"] == 2
    assert meta["sparsified_layers"] == ["conv2", "conv3", "fc"]
    assert len(meta["test_accuracy_per_level"]) == FAST["epochs"]
    assert len(meta["train_loss_per_level"][-1]) == 3
    assert meta["wall_time_s"] > 0
    assert 0.69 < meta["sparsity_sparsified"][0] < meta["sparsity_sparsified"][2] < 0.91
    assert meta["sparsity_overall"][0] < meta["sparsity_sparsified"][0]  # conv1 is dense
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    # the accuracy in meta is what the exported weights give at each level, and beats chance
    module = build_module(model.spec)
    load_params(module, model.spec, model.params)
    ds = load_dataset("digits")
    for k in range(3):
        with level_masks(module, model.masks, k):
            acc = float(np.mean(predict(module, ds.x_test).argmax(1) == ds.y_test))
        assert acc == pytest.approx(meta["test_accuracy_final"][k])
        assert acc > (0.5 if k == 0 else 0.2)  # chance is 0.1


def _no_bn_spec() -> NetSpec:
    # without batch norm, a level's loss depends on that level's forward pass only
    return NetSpec(
        "nobn",
        (8, 8, 1),
        10,
        (
            Conv2d("c1", INPUT, 8, padding=1, batchnorm=False, bias=True),
            Conv2d("c2", "c1", 16, padding=1, batchnorm=False, bias=True),
            GlobalAvgPool("gap", "c2"),
            Linear("fc", "gap", 10),
        ),
    )


def _grads(
    spec: NetSpec, ds: Dataset, preset: str, levels_used: list[int] | None, bn_stats: str = "mixed"
) -> dict[str, torch.Tensor]:
    """Weight gradients of one joint step; levels_used restricts the summed loss to those levels."""
    torch.manual_seed(0)
    module = build_module(spec)
    layers = ("c2", "fc")
    plan = JointPlan(
        levels=LEVELS,
        layers=layers,
        block=2,
        warmup_epochs=0,
        epochs=1,
        masks="fixed",
        freeze_epoch=1,
        update_every=1,
        routing=None if preset == "none" else routing_matrix(preset, 3),
        distill=True,
        bn_stats=bn_stats,  # type: ignore[arg-type]
    )
    masks = compute_masks(module, layers, LEVELS, 2)
    routes = compute_routes(masks, plan.routing)
    x = torch.as_tensor(ds.x_train[:64])
    y = torch.as_tensor(ds.y_train[:64])
    if levels_used is None:
        total, _ = joint_loss(module, masks, routes, plan, x, y)
    else:  # only the chosen levels' losses, from the same forward pass
        total = _partial_loss(module, masks, routes, plan, x, y, levels_used)
    module.zero_grad()
    total.backward()
    found = weight_layers(module)
    return {name: found[name].weight.grad.detach().clone() for name in layers} | {
        f"mask:{n}": masks[n] for n in layers
    }


def _partial_loss(
    module: torch.nn.Module,
    masks: dict[str, torch.Tensor],
    routes: dict[str, torch.Tensor] | None,
    plan: JointPlan,
    x: torch.Tensor,
    y: torch.Tensor,
    keep: list[int],
) -> torch.Tensor:
    from trainers.joint import _level_loss, level_logits

    logits = level_logits(module, masks, routes, 3, x, plan.bn_stats)  # type: ignore[arg-type]
    teacher = logits[0].detach()
    return torch.stack([_level_loss(plan, k, logits[k], y, teacher, 0.0) for k in keep]).sum()


@pytest.mark.parametrize("bn_stats", ["mixed", "per_level"])
def test_exclusive_routing_gives_each_increment_only_its_own_levels_gradient(
    digits: Dataset, bn_stats: str
) -> None:
    spec = _no_bn_spec()
    exclusive = _grads(spec, digits, "exclusive", None, bn_stats)
    plain = {k: _grads(spec, digits, "none", [k], bn_stats) for k in range(3)}  # unrouted, one level each
    for name in ("c2", "fc"):
        inc = increments(exclusive[f"mask:{name}"])
        for j in range(3):
            # increment j's gradient is exactly level j's loss gradient …
            torch.testing.assert_close(exclusive[name][inc[j]], plain[j][name][inc[j]], rtol=1e-5, atol=1e-8)
            # … although other levels' losses do reach it without routing
            for k in range(j):
                assert plain[k][name][inc[j]].abs().max() > 0
        # weights outside the densest mask get nothing
        assert torch.count_nonzero(exclusive[name][~exclusive[f"mask:{name}"][0]]) == 0


def test_sum_routing_differs_from_exclusive_and_adds_the_levels(digits: Dataset) -> None:
    spec = _no_bn_spec()
    summed = _grads(spec, digits, "sum", None)
    exclusive = _grads(spec, digits, "exclusive", None)
    plain = {k: _grads(spec, digits, "none", [k]) for k in range(3)}
    for name in ("c2", "fc"):
        inc = increments(summed[f"mask:{name}"])
        core = inc[2]  # the sparsest level's blocks: used by every level
        expected = plain[0][name][core] + plain[1][name][core] + plain[2][name][core]
        torch.testing.assert_close(summed[name][core], expected, rtol=1e-4, atol=1e-7)
        assert not torch.allclose(summed[name][core], exclusive[name][core])
    # "none" (no routing hooks) is the sum preset
    unrouted = _grads(spec, digits, "none", None)
    torch.testing.assert_close(unrouted["c2"], summed["c2"])


def test_routing_changes_what_one_training_step_updates(digits: Dataset) -> None:
    # one SGD step on the full joint loss: with exclusive routing the core (sparsest blocks) moves
    # exactly as a step on the sparsest level's loss alone would move it
    spec = _no_bn_spec()

    def step(preset: str, keep: list[int] | None) -> dict[str, torch.Tensor]:
        g = _grads(spec, digits, preset, keep)
        return {n: -0.1 * g[n] for n in ("c2", "fc")} | {k: v for k, v in g.items() if k.startswith("mask:")}

    full = step("exclusive", None)
    sparsest_only = step("none", [2])
    for name in ("c2", "fc"):
        core = increments(full[f"mask:{name}"])[2]
        torch.testing.assert_close(full[name][core], sparsest_only[name][core], rtol=1e-5, atol=1e-9)


def test_distillation_changes_only_the_sparser_levels_loss(digits: Dataset) -> None:
    spec = ARCHS["digits_cnn"]((8, 8, 1), 10)
    torch.manual_seed(0)
    module = build_module(spec)
    layers = ("conv2", "conv3", "fc")
    masks = compute_masks(module, layers, LEVELS, 2)
    x = torch.as_tensor(digits.x_train[:64])
    y = torch.as_tensor(digits.y_train[:64])
    base = JointPlan(LEVELS, layers, 2, 0, 1, "fixed", 1, 1, None, distill=False)
    _, plain = joint_loss(module, masks, None, base, x, y)
    _, kd = joint_loss(module, masks, None, replace(base, distill=True), x, y)
    _, half = joint_loss(module, masks, None, replace(base, distill=True, distill_weight=0.5), x, y)
    assert kd[0] == pytest.approx(plain[0])  # the densest level always learns from the labels
    for k in (1, 2):
        assert kd[k] != pytest.approx(plain[k])
        assert half[k] == pytest.approx(0.5 * kd[k] + 0.5 * plain[k], rel=1e-5)


@pytest.mark.parametrize("masks", ["fixed", "gradual"])
def test_fixed_and_gradual_masks_end_nested_and_frozen(digits: Dataset, masks: str) -> None:
    options = NestedOptions(epochs=5, warmup_epochs=1, masks=masks, freeze_epoch=3, update_every=4)  # type: ignore[arg-type]
    (model,) = NestedTrainer().train(_request(digits, options))
    changes = model.meta["mask_changes"]  # mask entries flipped by re-ranking during each epoch
    scheduled = model.meta["scheduled_sparsity"]
    assert scheduled[0] == [0.0, 0.0, 0.0]  # the dense warm-up
    if masks == "fixed":
        assert scheduled[1:] == [list(LEVELS)] * 4  # at their targets from the first sparse epoch
        assert changes == [0] * 5
    else:
        assert 0 < scheduled[1][2] < scheduled[2][2] < 0.9  # the cubic schedule climbs …
        assert scheduled[3:] == [pytest.approx(list(LEVELS))] * 2  # … reaches the targets at freeze_epoch
        assert changes[1] > 0 and changes[2] > 0  # re-ranked while the schedule runs …
        assert changes[4] == 0  # … and frozen after
    for m in model.masks.values():
        assert is_nested(m)


def test_nested_training_is_deterministic_for_a_seed(digits: Dataset, tmp_path: Path) -> None:
    options = NestedOptions(epochs=2, warmup_epochs=1, masks="gradual")
    a = NestedTrainer().train(_request(digits, options, seed=5))[0]
    b = NestedTrainer().train(_request(digits, options, seed=5))[0]
    c = NestedTrainer().train(_request(digits, options, seed=6))[0]
    for node, tensors in a.params.items():
        for key, value in tensors.items():
            np.testing.assert_array_equal(value, b.params[node][key])
    for node in a.masks:
        np.testing.assert_array_equal(a.masks[node], b.masks[node])
    assert not np.array_equal(a.params["conv2"]["weight"], c.params["conv2"]["weight"])
    a.save(tmp_path / "m")
    again = TrainedModel.load(tmp_path / "m")
    np.testing.assert_array_equal(again.masks["fc"], a.masks["fc"])
    assert again.levels == LEVELS


def test_dsnn_runs_as_its_own_trainer(digits: Dataset) -> None:
    assert get_trainer("dsnn") is DsnnTrainer
    assert not hasattr(DsnnOptions(), "routing") and not hasattr(DsnnOptions(), "distill")
    (model,) = DsnnTrainer().train(_request(digits, DsnnOptions(epochs=3, warmup_epochs=1, freeze_epoch=2)))
    assert model.meta["trainer"] == "dsnn" and model.levels == LEVELS
    assert model.meta["options"]["masks"] == "gradual"
    for m in model.masks.values():
        assert is_nested(m)
    assert max(model.meta["test_accuracy_final"]) > 0.3


def test_fake_quant_mirrors_the_int8_reference_at_every_level(
    nested_model: tuple[TrainedModel, list[tuple[float, str]]], digits: Dataset
) -> None:
    # QAT's forward must compute what the deployed int8 model computes, or it trains the wrong thing
    model, _ = nested_model
    module = build_module(model.spec)
    load_params(module, model.spec, model.params)
    masks = {k: torch.as_tensor(v) for k, v in model.masks.items()}
    calib = digits.x_train[:256]
    qm = quantize.quantize(model, calib, digits.input_range, name="n")
    x_q = quantize.quantize_input(digits.x_test, qm.tensors[qm.input])
    enable_qat(module, masks, calibrate(module, calib, masks, 3, "cpu"), digits.input_range)
    out = qm.tensors[qm.output]
    for k in range(3):
        with level_masks(module, model.masks, k):
            fake = predict(module, digits.x_test)
        ref = quantize.dequantize(reference.run_int8(qm, x_q, level=k), out)
        agree = float(np.mean(fake.argmax(1) == ref.argmax(1)))
        assert agree > 0.97
        assert float(np.median(np.abs(fake - ref))) <= 2 * out.scale
    disable_qat(module)
    plain = predict(module, digits.x_test[:8])
    assert not np.allclose(plain, np.round(plain / out.scale) * out.scale)  # float again


def test_qat_fine_tunes_with_fake_quant(digits: Dataset) -> None:
    options = NestedOptions(epochs=2, warmup_epochs=1, qat_epochs=1)
    (model,) = NestedTrainer().train(_request(digits, options))
    assert len(model.meta["qat_test_accuracy_per_level"]) == 1
    assert len(model.meta["qat_train_loss"]) == 1
    for m in model.masks.values():
        assert is_nested(m)
    # masked weights quantize to exactly zero at every level
    qm = quantize.quantize(model, digits.x_train[:64], digits.input_range, name="q")
    for layer in qm.layers:
        if layer.masks is not None:
            for k in range(3):
                w = layer.weight_at(k)
                assert w is not None and not np.any(w[~layer.masks[k]])


def test_cifar10_mobilenet_suite_validates_then_fails_clearly_without_data(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from harness.estimate import check_fits, estimate
    from harness.targets import load_targets

    root = Path(__file__).resolve().parents[1]
    path = root / "suites" / "cifar10_mobilenet.yaml"
    doc = yaml.safe_load(path.read_text())
    assert {m["trainer"] for m in doc["models"]} == {"nested", "standalone", "dsnn", "dense"}
    assert doc["levels"] == [0.7, 0.8, 0.9] and doc["device"] == "auto"
    assert doc["targets"] == ["qemu_mps2_an500", "nucleo_f767zi"]
    board = load_targets(root)["nucleo_f767zi"]
    for entry in doc["models"]:
        spec = ARCHS[entry["arch"]]((32, 32, 3), 10, **entry["arch_options"])
        trainer = get_trainer(entry["trainer"])
        trainer.check(spec, tuple(doc["levels"]), entry["options"])  # options and shapes are valid
        est = estimate(spec, tuple(doc["levels"]), entry["format"])
        assert check_fits(est, board.max_flash, board.max_ram) is None, entry["name"]
    # a copy, so that data a user keeps in <repo>/data/cifar10 does not change the outcome
    (tmp_path / "suites").mkdir()
    copy = tmp_path / "suites" / path.name
    copy.write_text(path.read_text())
    harness = Path(sys.executable).with_name("harness")
    done = subprocess.run(
        [str(harness), "run", str(copy), "--emulator-only", "--out", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "dataset.root" in done.stderr and "cifar10" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
