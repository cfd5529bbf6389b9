"""Numbers that are not numbers, and training options at their extremes: a run whose weights or scores
overflow stops at that epoch and keeps the last finite checkpoint; a prompts file with NaN weights, or
tensors that do not fit its header, is one line; JSON never holds a bare NaN; the text-embeddings export
is refused for every method whose scores it would not reproduce. Each audited extreme either works,
with finite results, or ends in one line."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import promptmlr
from promptmlr.api import run
from promptmlr.backbones import ImageFeatures, create_backbone
from promptmlr.checkpoint import load_checkpoint
from promptmlr.cli import main
from promptmlr.config import resolve_config
from promptmlr.engine import Trainer, TrainingDivergedError
from promptmlr.errors import ConfigError
from promptmlr.inference import Prediction, choose_labels
from promptmlr.losses import LossConfig, build_loss
from promptmlr.metrics import per_class_average_precision
from promptmlr.models import build_method
from promptmlr.models.factory import METHODS
from promptmlr.prompt_files import HEADER_KEY, PromptsFileError, export_text_embeddings, load_prompts, save_prompts
from tests.conftest import COLOUR_CLASSES, TINY_SPECS, write_colour_csv

TINY = TINY_SPECS[0]
pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["cat", "dog", "traffic light", "red sofa"]


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    return write_colour_csv(tmp_path_factory.mktemp("colours"), counts=(("train", 24), ("test", 8)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def vit():
    return create_backbone(TINY)


def _quiet(*_args, **_kwargs) -> None:
    pass


def _config(root: Path, cache: Path, method: str = "linear", data: dict | None = None, **train):
    settings = {"epochs": 3, "batch_size": 8, "num_workers": 0, "lr": 0.01, "cache": {"directory": str(cache)},
                **train}
    return resolve_config("csv", overrides=[{
        "data": {"root": str(root), "known": 0.5, **(data or {})},
        "model": {"backbone": TINY, "method": method},
        "train": settings}])


def _tune_args(root: Path, out: Path, cache: Path, method: str, *sets: str) -> list[str]:
    args = ["tune", "--dataset", "csv", "--data-root", str(root), "--known", "0.5", "--method", method,
            "--backbone", TINY, "--epochs", "3", "--out", str(out), "--set", "train.num_workers=0",
            "--set", "train.batch_size=8", "--set", f"train.cache.directory={cache}"]
    for setting in sets:
        args += ["--set", setting]
    return args


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in state.values() if tensor.is_floating_point())


def _history(result) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "seconds"} for record in result.metrics["history"]]


# ------------------------------------------------------------------------------------- divergence
@pytest.mark.slow
def test_weights_that_overflow_stop_at_their_epoch_and_keep_the_last_finite_checkpoint(colour_data, cache_dir,
                                                                                       tmp_path, capsys):
    """At lr 1e12, AdamW's decoupled weight decay multiplies the weights by about -1e8 per step: they are
    finite after epoch 1 and overflow in epoch 2's last step, while every loss is still finite."""
    out = tmp_path / "run"
    assert main(_tune_args(colour_data, out, cache_dir, "linear", "train.lr=1e12")) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error, error
    assert re.search(r"training diverged in epoch 2: classifier\.weight holds \d+ NaN or infinite value", error)
    assert f"the last good checkpoint is {out / 'checkpoint.safetensors'}, after epoch 1" in error
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    assert checkpoint["epoch"] == 1 and len(checkpoint["history"]) == 1
    assert _all_finite(checkpoint["method"]) and _all_finite(checkpoint["best_state"])
    assert not (out / "best.safetensors").exists() and not (out / "metrics.json").exists()

    # the checkpoint resumes; the same settings diverge again at the same place, as the message says
    assert main(["tune", "--out", str(out), "--resume"]) == 1
    assert capsys.readouterr().err.strip() == error
    assert load_checkpoint(out / "checkpoint.safetensors")["epoch"] == 1


@pytest.mark.slow
def test_nan_scores_from_finite_weights_are_never_reported(colour_data, cache_dir, tmp_path):
    """The issue's case: promptmlr at lr 1e6 ends epoch 1 with finite weights (~3.5e8) whose scores are
    NaN. The epoch is neither reported nor checkpointed."""
    with pytest.raises(TrainingDivergedError) as error:
        run(_config(colour_data, cache_dir, "promptmlr", lr=1e6), tmp_path / "run", log=_quiet)
    message = str(error.value)
    assert re.search(r"training diverged in epoch 1: \d+ of the \d+ val logits are NaN or infinite, though every "
                     r"learned tensor is finite", message)
    assert "no checkpoint was written yet" in message and "\n" not in message
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def _inject(kind: str, monkeypatch) -> None:
    """A fault in epoch 2 only: a learned tensor, its EMA, or one validation logit set to inf/NaN."""
    if kind == "logits":
        real_score, calls = Trainer._score, []

        def score(self, loader, logits=True):
            scores = real_score(self, loader, logits)
            calls.append(1)
            if len(calls) == 3:  # epoch 1 scores val, then test; the third is epoch 2's val
                scores = scores.copy()
                scores[0, 0] = np.nan
            return scores

        monkeypatch.setattr(Trainer, "_score", score)
        return
    real_epoch = Trainer._train_epoch

    def train_epoch(self, epoch, loader, optimizer, scheduler, ema, checkpoint_path):
        loss = real_epoch(self, epoch, loader, optimizer, scheduler, ema, checkpoint_path)
        if epoch == 1:
            with torch.no_grad():
                if kind == "weights":
                    self._unwrapped.classifier.bias[0] = math.inf
                else:
                    ema.shadow["classifier.weight"][0, 0] = math.nan
        return loss

    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)


@pytest.mark.slow
@pytest.mark.parametrize("kind, named", [("weights", "classifier.bias holds 1 NaN or infinite"),
                                         ("ema", "the EMA of classifier.weight holds 1 NaN or infinite"),
                                         ("logits", "1 of the 6 val logits are NaN or infinite")])
def test_a_divergence_keeps_the_last_finite_checkpoint_and_resuming_from_it_is_exact(
        colour_data, cache_dir, tmp_path, monkeypatch, kind, named):
    def config():
        return _config(colour_data, cache_dir, ema_decay=0.5)

    uninterrupted = run(config(), tmp_path / "full", log=_quiet)
    _inject(kind, monkeypatch)
    with pytest.raises(TrainingDivergedError, match=f"training diverged in epoch 2: {re.escape(named)}"):
        run(config(), tmp_path / "faulty", log=_quiet)
    checkpoint = load_checkpoint(tmp_path / "faulty" / "checkpoint.safetensors")
    assert checkpoint["epoch"] == 1 and _all_finite(checkpoint["method"]) and _all_finite(checkpoint["ema"])

    monkeypatch.undo()  # a passing fault: resuming gives the run that never met it, bit for bit
    resumed = run(config(), tmp_path / "faulty", resume=True, log=_quiet)
    assert _history(resumed) == _history(uninterrupted)
    for name in ("best.safetensors", "last.safetensors"):
        full, again = load_file(tmp_path / "full" / name), load_file(tmp_path / "faulty" / name)
        assert all(torch.equal(full[key], again[key]) for key in full)


# ---------------------------------------------------------------------------------- prompts files
def _saved(vit, tmp_path: Path, method: str = "linear", **options) -> Path:
    torch.manual_seed(0)
    return save_prompts(build_method(method, vit, CLASSES, **options), tmp_path / "prompts.safetensors",
                        thresholds=[0.5] * len(CLASSES))


def _rewrite(path: Path, out: Path, header_edit=None, tensors_edit=None) -> Path:
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()[HEADER_KEY])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if header_edit:
        header_edit(header)
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, str(out), metadata={HEADER_KEY: json.dumps(header)})
    return out


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_prompts_file_with_non_finite_weights_is_refused_naming_file_and_tensor(vit, tmp_path, make_image, capsys,
                                                                                   value):
    def poison(tensors):
        tensors["classifier.weight"][1, 2] = value

    bad = _rewrite(_saved(vit, tmp_path), tmp_path / "bad.safetensors", tensors_edit=poison)
    with pytest.raises(PromptsFileError, match=rf"{re.escape(str(bad))}: tensor 'classifier.weight' holds 1 NaN or "
                                               r"infinite value\(s\) of 128"):
        load_prompts(bad, backbone=vit)
    image = make_image(tmp_path / "x.png")
    assert main(["predict", str(image), "--prompts", str(bad), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "classifier.weight" in captured.err


def _add_class(header):
    header["class_names"].append("unicorn")
    header["thresholds"].append(0.5)


@pytest.mark.parametrize("method, header_edit, tensors_edit, message", [
    ("linear", _add_class, None, r"tensor 'classifier.weight' has shape \[4, 32\], but the method linear for 5 "
                                 r"classes its header describes needs \[5, 32\]"),
    ("dualcoop", lambda header: header["method_config"].update(n_ctx=8), None,
     r"tensor 'positive.context' has shape \[4, 16, 32\], but the method dualcoop for 4 classes .* needs \[4, 8, 32\]"),
    ("linear", None, lambda tensors: tensors.update(extra=torch.zeros(2)), r"unexpected \['extra'\]"),
    ("linear", None, lambda tensors: tensors.pop("classifier.bias"), r"missing \['classifier.bias'\]"),
    ("linear", None, lambda tensors: tensors.update({"classifier.weight": tensors["classifier.weight"].int()}),
     r"tensor 'classifier.weight' holds torch.int32 values where the method keeps torch.float32"),
])
def test_a_prompts_file_whose_tensors_do_not_fit_its_header_is_one_line(vit, tmp_path, method, header_edit,
                                                                         tensors_edit, message):
    bad = _rewrite(_saved(vit, tmp_path, method), tmp_path / "bad.safetensors", header_edit, tensors_edit)
    with pytest.raises(PromptsFileError, match=message) as error:
        load_prompts(bad, backbone=vit)
    assert "\n" not in str(error.value) and str(bad) in str(error.value)


@pytest.mark.parametrize("thresholds", [[math.nan] * 4, [1.5] * 4, [0.5] * 3, "high", [True] * 4])
def test_header_thresholds_that_are_not_one_probability_per_class_are_refused(vit, tmp_path, thresholds):
    bad = _rewrite(_saved(vit, tmp_path), tmp_path / "bad.safetensors",
                   header_edit=lambda header: header.update(thresholds=thresholds))
    with pytest.raises(PromptsFileError, match="its header's thresholds must be null or 4 probabilities in"):
        load_prompts(bad, backbone=vit)


def test_predict_json_is_strict_json_and_says_when_a_number_was_not_finite(tmp_path, monkeypatch, capsys):
    """A prompts file with NaN weights is refused on load, so a NaN probability should never reach the
    writer; if one does, the line is still JSON (null), and stderr says so."""
    prediction = Prediction(tmp_path / "x.png", labels=[("b", 0.75)], probabilities={"a": math.nan, "b": 0.75})
    monkeypatch.setattr(promptmlr.api, "predict", lambda *args, **kwargs: [prediction])
    assert main(["predict", str(tmp_path / "x.png"), "--prompts", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(captured.out, parse_constant=refuse)["probabilities"] == {"a": None, "b": 0.75}
    assert "1 value(s) that are not finite numbers (nan) written as null" in captured.err


# ---------------------------------------------------------------------------------------- export
EXPORT_CASES = [(name, {}) for name in METHODS.names()] + [("zeroshot", {"standardize": True}),
                                                             ("linear", {"features": "dense"})]


def _random_features(vit, count: int = 48) -> ImageFeatures:
    """Global and dense features that vary independently from image to image (a randomly initialised
    tiny encoder maps random images to nearly one feature)."""
    generator = torch.Generator().manual_seed(0)
    shape = vit.encode_image(torch.zeros(1, 3, vit.image_size, vit.image_size))
    return ImageFeatures(torch.randn(count, *shape.global_features.shape[1:], generator=generator),
                         torch.randn(count, *shape.dense_features.shape[1:], generator=generator), shape.grid)


def _affine_residual(scores: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the least-squares fit ``logits ~ a * scores + b``: the slopes ``a`` and the largest
    residual relative to the logits' spread."""
    design = torch.stack([scores, torch.ones_like(scores)], dim=-1).permute(1, 0, 2)  # [C, N, 2]
    solution = torch.linalg.lstsq(design, logits.T.unsqueeze(-1)).solution.squeeze(-1)  # [C, 2]
    fitted = (design @ solution.unsqueeze(-1)).squeeze(-1).T
    spread = logits.std(dim=0).clamp_min(1e-12)
    return solution[:, 0], ((fitted - logits).abs().amax(dim=0) / spread)


EXPORT_IDS = [name + "".join(f"-{key}={value}" for key, value in options.items()) for name, options in EXPORT_CASES]


@pytest.mark.parametrize("name, options", EXPORT_CASES, ids=EXPORT_IDS)
def test_text_embeddings_reproduce_each_methods_ranking_or_are_refused(vit, tmp_path, name, options):
    """Scored as documented, ``normalize(global feature) @ embeddings.T``, the export must rank every
    class's images exactly as the method does (its logits an increasing affine map of the scores: the
    same AP); every method for which that does not hold refuses the export in one line."""
    torch.manual_seed(1)
    method = build_method(name, vit, CLASSES, **options).eval()
    with torch.no_grad():  # a learned state, not the initialisation (the linear probe gains a bias)
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
        features = _random_features(vit)
        logits = method(features).logits.double()
    image = F.normalize(features.global_features.double(), dim=-1)
    targets = np.where(np.random.default_rng(0).random(logits.shape) < 0.4, 1, -1)
    path = tmp_path / "embeddings.safetensors"
    refusal = type(method).text_embeddings_refusal(method.config)
    if refusal is None:
        embeddings = load_file(export_text_embeddings(method, path))["text_embeddings"].double()
        scores = image @ embeddings.T
        slopes, residual = _affine_residual(scores, logits)
        assert (slopes > 0).all() and (residual < 1e-4).all(), (slopes, residual)
        np.testing.assert_allclose(per_class_average_precision(scores.numpy(), targets),
                                   per_class_average_precision(logits.numpy(), targets), rtol=0, atol=1e-12)
        return
    with pytest.raises(ConfigError) as error:
        export_text_embeddings(method, path)
    message = str(error.value)
    assert "\n" not in message and refusal in message and "export the prompts file (--format promptmlr)" in message
    assert not path.exists()
    if name != "clsl":  # the refusal is warranted: the classifier it would write ranks images otherwise
        _, residual = _affine_residual(image @ method.class_embeddings().double().T, logits)
        assert (residual > 0.1).any(), residual


# ----------------------------------------------------------------------------- audited extremes
@pytest.mark.slow
@pytest.mark.parametrize("train", [{"batch_size": 1000}, {"grad_accum": 10}], ids=["batch>images", "accum>batches"])
def test_a_run_of_one_optimiser_step_takes_it_at_the_learning_rate(colour_data, cache_dir, tmp_path, capsys, train):
    """The warm-up's first step is at lr 0; a run whose only step it is would write its initial weights as
    learned ones. That step is taken at train.lr, and the run says so."""
    result = run(_config(colour_data, cache_dir, **{"epochs": 1, **train}), tmp_path / "run", log=_quiet)
    assert "this run makes one optimiser step" in capsys.readouterr().out
    torch.manual_seed(0)
    initial = build_method("linear", result.method.backbone, COLOUR_CLASSES).state_dict()
    learned = load_file(tmp_path / "run" / "last.safetensors")
    assert (learned["classifier.bias"] - initial["classifier.bias"]).abs().max() > 1e-3


def test_selecting_on_a_test_split_that_does_not_exist_is_refused_before_anything_is_written(colour_data, tmp_path,
                                                                                             capsys):
    out = tmp_path / "run"
    assert main(_tune_args(colour_data, out, tmp_path / "cache", "linear", "data.test_split=null") +
                ["--select-on", "test"]) == 1
    error = capsys.readouterr().err.strip()
    assert "train.select_on test picks the epoch with the best test mAP, but data.test_split is null" in error
    assert "\n" not in error and not out.exists()


@pytest.mark.parametrize("setting", ["train.lr=.inf", "train.lr=.nan", "train.lr_warmup_epochs=.inf",
                                     "train.weight_decay=.nan"])
def test_non_finite_training_numbers_are_one_line_before_anything_is_written(colour_data, tmp_path, capsys, setting):
    out = tmp_path / "run"
    assert main(_tune_args(colour_data, out, tmp_path / "cache", "linear", setting)) == 1
    error = capsys.readouterr().err.strip()
    assert setting.split("=")[0] in error and "\n" not in error and not out.exists()


@pytest.mark.slow
def test_a_learning_rate_of_1e_30_learns_nothing_and_ranks_as_zero_shot(colour_data, cache_dir, tmp_path):
    """The linear probe starts as the zero-shot classifier: a step of 1e-30 moves no weight, so its test
    mAP is zero-shot's, and every number is finite."""
    tiny = run(_config(colour_data, cache_dir, lr=1e-30, epochs=2), tmp_path / "tiny", log=_quiet)
    zeroshot = run(_config(colour_data, cache_dir, "zeroshot"), tmp_path / "zeroshot", log=_quiet)
    for record in tiny.metrics["history"]:
        assert record["test_mAP"] == pytest.approx(zeroshot.metrics["history"][0]["test_mAP"], abs=1e-9)
        assert all(math.isfinite(value) for value in record.values() if isinstance(value, float))


@pytest.mark.slow
def test_an_ema_decay_near_one_over_one_epoch_evaluates_nearly_the_initial_weights(colour_data, cache_dir, tmp_path):
    """Documented acceptance: ema_decay 0.9999 over three steps keeps 99.97 % of the initial weights in the
    average that is evaluated and saved."""
    result = run(_config(colour_data, cache_dir, ema_decay=0.9999, epochs=1), tmp_path / "run", log=_quiet)
    torch.manual_seed(0)
    initial = build_method("linear", result.method.backbone, COLOUR_CLASSES).state_dict()
    saved = load_file(tmp_path / "run" / "best.safetensors")
    torch.testing.assert_close(saved["classifier.weight"], initial["classifier.weight"], rtol=0, atol=1e-5)
    assert math.isfinite(result.metrics["best"]["test_mAP"])


def _finite_run(result) -> None:
    for record in result.metrics["history"]:
        numbers = [value for value in record.values() if isinstance(value, float)]
        assert all(math.isfinite(value) for value in numbers), record
        assert 0 <= record["test_mAP"] <= 100


@pytest.mark.slow
@pytest.mark.parametrize("method", [name for name in METHODS.names() if name != "zeroshot"])
def test_bf16_on_the_cpu_gives_finite_results_for_every_method(colour_data, cache_dir, tmp_path, method):
    _finite_run(run(_config(colour_data, cache_dir, method, mixed_precision="bf16", epochs=2),
                    tmp_path / "run", log=_quiet))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["asl", "partial-bce", "bce"])
@pytest.mark.parametrize("known", [1.0, 0.05])
def test_every_loss_at_full_and_almost_no_known_labels_gives_finite_results(colour_data, cache_dir, tmp_path, loss,
                                                                           known):
    """At 5 % known, most batches hold no known label: their loss is 0, not 0/0."""
    config = _config(colour_data, cache_dir, data={"known": known, "val_fraction": 0}, select_on="test",
                     loss={"name": loss}, epochs=2)
    _finite_run(run(config, tmp_path / "run", log=_quiet))


@pytest.mark.parametrize("name", ["asl", "partial-bce", "bce"])
def test_losses_stay_finite_without_known_labels_and_at_extreme_logits(name):
    """A batch without a known label costs 0 (bce takes every unknown label as negative), and saturated
    logits of the wrong sign give a finite loss and gradient (larger ones can overflow the loss: the
    training loop stops on it, naming the batch)."""
    loss = build_loss(LossConfig(name=name))
    logits = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 20.0]], requires_grad=True)
    unknown = loss(logits, torch.zeros(2, 3)).item()
    assert unknown == 0.0 if name != "bce" else math.isfinite(unknown) and unknown > 0
    value = loss(logits, torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 0.0]]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.fixture(scope="module")
def lopsided_data(colour_data, tmp_path_factory) -> Path:
    """The colour data with 'red' positive in every image and 'blue' in no training image."""
    root = tmp_path_factory.mktemp("lopsided")
    shutil.copytree(colour_data / "images", root / "images")
    for split in ("train", "test"):
        with open(colour_data / f"{split}.csv") as handle:
            rows = list(csv.reader(handle))
        for row in rows[1:]:
            row[1] = "1"
            if split == "train":
                row[3] = "-1"
        with open(root / f"{split}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear", "sst", "dsrb", "clsl", "promptmlr"])
def test_a_class_never_positive_in_training_and_one_always_positive_give_finite_results(lopsided_data, cache_dir,
                                                                                        tmp_path, method):
    config = _config(lopsided_data, cache_dir, method, recovery={"enabled": True, "known_only_epochs": 1},
                     threshold=0.999)
    _finite_run(run(config, tmp_path / "run", log=_quiet))


def test_topk_beyond_the_classes_and_thresholds_0_and_1_are_accepted():
    """--topk larger than the number of classes lists every class, most probable first; --threshold 0
    admits every class and 1 only scores saturated in float64 (a logit of ~36.7 or more)."""
    logits = np.array([0.5, 40.0, -3.0])
    names = ["a", "b", "c"]
    assert [name for name, _ in choose_labels(logits, names, None, top_k=10)] == ["b", "a", "c"]
    assert [name for name, _ in choose_labels(logits, names, 0.0, None)] == ["b", "a", "c"]
    assert [name for name, _ in choose_labels(logits, names, 1.0, None)] == ["b"]
    assert choose_labels(np.array([0.5, 30.0, -3.0]), names, 1.0, None) == []



def test_a_text_embeddings_export_is_refused_from_the_header_before_any_backbone_loads(vit, tmp_path, monkeypatch):
    from promptmlr import prompt_files

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_prompts(build_method("promptmlr", vit, CLASSES), run_dir / "best.safetensors")

    def untouchable(*_args, **_kwargs):
        raise AssertionError("a backbone was loaded to refuse the export")

    monkeypatch.setattr(prompt_files, "create_backbone", untouchable)
    with pytest.raises(ConfigError, match="method promptmlr scores a feature pooled .* plus its enhancement's MLPs"):
        promptmlr.export(run_dir, tmp_path / "embeddings.npy", format="text-embeddings")
    assert not (tmp_path / "embeddings.npy").exists()
