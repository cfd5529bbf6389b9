"""The package-level Python API (``promptmlr.tune`` and friends), typed configs resolved up front,
the one scoring path, one error base, the feature cache's identity and experiment tracking."""

from __future__ import annotations

import ast
import csv
import importlib
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

import promptmlr
from promptmlr.errors import ConfigError, PromptMLRError, UsageError
from tests.conftest import write_colour_csv

REPO = Path(__file__).resolve().parents[1]

TINY = "openclip:promptmlr-tiny-vit"
PACKAGE = Path(promptmlr.__file__).parent


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    return write_colour_csv(tmp_path_factory.mktemp("colours"), counts=(("train", 40), ("test", 16)))


def _tune(root: Path, out: Path, **arguments) -> promptmlr.TuneResult:
    options = dict(dataset="csv", data_root=root, known=0.5, method="promptmlr", backbone=TINY, out=out, epochs=2,
                   overrides={"data": {"val_fraction": 0.25},
                              "train": {"batch_size": 8, "num_workers": 0, "cache": {"enabled": "off"}}},
                   log=lambda *_: None)
    return promptmlr.tune(**{**options, **arguments})


@pytest.fixture(scope="module")
def finished_run(colour_data, tmp_path_factory) -> promptmlr.TuneResult:
    return _tune(colour_data, tmp_path_factory.mktemp("runs") / "run")


# ------------------------------------------------------------------------------------------- facade
@pytest.mark.slow
def test_import_is_lazy_and_lists_the_api():
    code = ("import sys, promptmlr; assert 'torch' not in sys.modules, 'import promptmlr loaded torch'; "
            "assert {'tune', 'evaluate', 'predict', 'zeroshot', 'load_prompts', 'create_backbone', 'list_methods', "
            "'list_datasets', 'list_backbones'} <= set(dir(promptmlr))")
    subprocess.run([sys.executable, "-c", code], check=True)
    help_code = ("import sys, contextlib, io; from promptmlr.cli.main import main\n"
                 "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['--help'])\n"
                 "assert 'torch' not in sys.modules, 'promptmlr --help loaded torch'")
    subprocess.run([sys.executable, "-c", help_code], check=True)
    assert "promptmlr" in promptmlr.list_methods() and "voc2007" in promptmlr.list_datasets()
    assert "sandbox" in promptmlr.list_backbones()
    importlib.import_module("promptmlr.api")  # a submodule named like an API function would now shadow it

    for name in promptmlr.__all__[1:]:
        assert not isinstance(getattr(promptmlr, name), types.ModuleType), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        promptmlr.nothing  # noqa: B018


@pytest.mark.slow
def test_tune_returns_a_typed_result_and_fills_the_run_folder(finished_run):
    assert isinstance(finished_run, promptmlr.TuneResult)
    assert set(finished_run.files) == {"config", "metrics", "best_prompts", "last_prompts", "predictions"}
    assert finished_run.test_metrics["mAP"] == finished_run.metrics["best"]["test_mAP"]
    assert finished_run.config.model.method == "promptmlr" and finished_run.method.name == "promptmlr"
    written = yaml.safe_load((finished_run.run_dir / "config.yaml").read_text())
    # the method's whole configuration, not just what was overridden
    assert written["model"]["options"]["n_ctx"] == 16 and written["model"]["options"]["query"] == "learnable"


@pytest.mark.slow
def test_one_scoring_path_evaluate_and_predict_reproduce_training_time_scores(finished_run, colour_data):
    """Features computed the same way (cache off), ``evaluate`` gives the run's own test metrics to
    the bit, and ``predict`` the probabilities the run wrote (other batches: float rounding only)."""
    evaluated = promptmlr.evaluate(finished_run.run_dir)
    assert evaluated.metrics == finished_run.test_metrics
    assert (finished_run.run_dir / "eval_csv_test.json").is_file()
    with open(finished_run.files["predictions"], newline="") as handle:
        rows = list(csv.reader(handle))[1:4]
    predictions = promptmlr.predict([colour_data / row[0] for row in rows], finished_run.run_dir)
    for row, prediction in zip(rows, predictions):
        assert [prediction.probabilities[name] for name in ("red", "green", "blue")] == pytest.approx(
            [float(value) for value in row[1:]], abs=2e-6)
    loaded = promptmlr.load_prompts(finished_run.run_dir, which="last")
    assert loaded.path.name == "last.safetensors" and loaded.header["class_names"] == ["red", "green", "blue"]


@pytest.mark.slow
def test_zeroshot_from_python(colour_data):
    result = promptmlr.zeroshot("csv", data_root=colour_data, backbone=TINY, standardize=True)
    assert result.scores.shape == (16, 3) and 0 <= result.metrics["mAP"] <= 100
    assert "descriptions: none" in result.notes[0] and "| zeroshot |" in result.table


@pytest.mark.slow
def test_a_folder_holding_a_run_is_refused_and_resume_takes_no_other_settings(finished_run, colour_data):
    with pytest.raises(UsageError, match="already holds a run; pass --resume"):
        _tune(colour_data, finished_run.run_dir)
    with pytest.raises(UsageError, match="leave out --known, --epochs"):
        promptmlr.tune(out=finished_run.run_dir, resume=True, known=0.2, epochs=4)
    with pytest.raises(UsageError, match="--resume needs --out"):
        promptmlr.tune(out=finished_run.run_dir / "missing", resume=True)


@pytest.mark.slow
def test_cli_prints_a_user_error_as_one_line(finished_run, colour_data, capsys):
    from promptmlr.cli import main

    code = main(["tune", "--dataset", "csv", "--data-root", str(colour_data), "--backbone", TINY,
                 "--out", str(finished_run.run_dir)])
    error = capsys.readouterr().err.strip()
    assert code == 1 and error.count("\n") == 0 and "already holds a run" in error


# ------------------------------------------------------------------------------ config, up front
@pytest.mark.parametrize("options, message", [
    ({"n_context": 4}, r"model.options \(method dualcoop\): unknown key 'n_context'; valid keys: n_ctx"),
    ({"n_ctx": "four"}, r"model.options \(method dualcoop\).n_ctx: expected int, got 'four'"),
    ({"n_ctx": 0}, r"n_ctx must be at least 1, got 0"),
    ({"init": "words"}, r"init must be one of phrase, random"),
])
def test_method_options_are_checked_before_data_or_weights_are_touched(options, message, monkeypatch, tmp_path):
    from promptmlr.data import protocol
    from promptmlr.models import factory

    def untouchable(*_args, **_kwargs):
        raise AssertionError("data or weights were touched before the config was checked")

    monkeypatch.setattr(protocol, "build_dataset", untouchable)
    monkeypatch.setattr(factory, "create_backbone", untouchable)
    with pytest.raises(ConfigError, match=message):
        promptmlr.tune(dataset="csv", data_root=tmp_path, method="dualcoop", out=tmp_path / "run",
                       overrides={"model": {"options": options}})
    assert not (tmp_path / "run").exists()


def test_typed_values_and_unknown_methods_and_trackers(tmp_path):
    from promptmlr.config import resolve_config

    with pytest.raises(ConfigError, match="unknown method 'coop'; available: clsl, dsrb, dualcoop"):
        resolve_config("synthetic", overrides=[{"model": {"method": "coop"}}])
    with pytest.raises(ConfigError, match=r"command line.model.image_size: expected int, got 'big'"):
        resolve_config("synthetic", overrides=[{"model": {"image_size": "big"}}])
    with pytest.raises(ConfigError, match=r"train.report_to \(--report-to\) must be one of none, tensorboard"):
        resolve_config("synthetic", overrides=[{"train": {"report_to": "comet"}}])
    config = resolve_config("synthetic", overrides=[{"model": {"method": "zeroshot", "image_size": 48}},
                                                    {"data": {"train_split": 2007}}])
    assert config.model.options == {"templates": ["a photo of a {}."], "use_descriptions": True,
                                    "standardize": False}
    assert config.model.image_size == 48 and config.data.train_split == "2007"
    # options set before a later layer picks the method (the accuracy benchmark's order) are kept
    later = resolve_config("synthetic", overrides=[{"model": {"options": {"standardize": True}}},
                                                   {"model": {"method": "zeroshot"}}])
    assert later.model.options["standardize"] is True


def test_lenient_where_yaml_and_python_are(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string and ``2007`` as a number; Python callers pass paths."""
    from promptmlr.config import resolve_config

    config = resolve_config("synthetic", overrides=[
        {"train": {"lr": "1e-3", "cache": {"directory": tmp_path}}}, {"data": {"test_split": None}},
        {"data": {"options": {"classes": tmp_path / "classes.txt"}}}])
    assert config.train.lr == 0.001 and config.train.cache.directory == str(tmp_path)
    assert config.data.test_split is None and config.data.options == {"classes": str(tmp_path / "classes.txt")}
    with pytest.raises(ConfigError, match=r"train: unknown keys 'rate', 'step'"):
        resolve_config("synthetic", overrides=[{"train": {"rate": 1, "step": 2}}])


def test_layers_resolve_to_the_final_values_and_lose_no_typo():
    import dataclasses

    from promptmlr.config import checked, resolve_config

    with pytest.raises(ConfigError, match="unknown key 'n_ctxx'"):  # a typo survives a later method switch
        resolve_config("synthetic", overrides=[{"model": {"options": {"n_ctxx": 8}}},
                                               {"model": {"method": "dualcoop"}}])
    fixed = resolve_config("synthetic", overrides=[{"model": {"method": "nope"}}, {"model": {"method": "dualcoop"}}])
    assert fixed.model.method == "dualcoop"
    weights = [{"train": {"recovery": {"prototype_weight": 0.8}}},
               {"train": {"recovery": {"cooccurrence_weight": 0.5}}},
               {"train": {"recovery": {"prototype_weight": 0.2}}}]
    assert resolve_config("synthetic", overrides=weights).train.recovery.prototype_weight == 0.2
    with pytest.raises(ConfigError, match="must not exceed 1"):
        resolve_config("synthetic", overrides=weights[:2])
    with pytest.raises(ConfigError, match="expected a finite float, got 'nan'"):
        resolve_config("synthetic", overrides=[{"train": {"lr": "nan"}}])
    with pytest.raises(ConfigError, match=r"train.threshold is a probability in \(0, 1\)"):
        resolve_config("synthetic", overrides=[{"train": {"threshold": 1.0}}])
    config = resolve_config("synthetic")
    config.train.select_on = "tset"  # changed in Python after resolution: checked again before use
    with pytest.raises(ConfigError, match="train.select_on must be one of val, test, got 'tset'"):
        checked(config)
    assert checked(dataclasses.replace(config, train=dataclasses.replace(config.train, select_on="test")))


def test_each_method_runs_its_own_recipe_and_the_config_names_the_files(tmp_path, monkeypatch):
    from promptmlr import config as config_module
    from promptmlr.config import resolve_config

    general = yaml.safe_load((REPO / "configs" / "methods" / "dualcoop.yaml").read_text())
    recipes = yaml.safe_load((REPO / "configs" / "methods" / "synthetic" / "dualcoop.yaml").read_text())
    dualcoop = resolve_config("synthetic", overrides=[{"model": {"method": "dualcoop"}}])
    assert dualcoop.train.lr == general["train"]["lr"] and dualcoop.train.optimizer == general["train"]["optimizer"]
    assert dualcoop.train.loss.weight == recipes["train"]["loss"]["weight"]  # the dataset's recipe after the general
    assert dualcoop.recipes == ["configs/synthetic.yaml", "configs/methods/dualcoop.yaml",
                                "configs/methods/synthetic/dualcoop.yaml"]
    linear = resolve_config("synthetic", overrides=[{"model": {"method": "linear"}}])
    assert linear.train.lr != dualcoop.train.lr and linear.recipes[-1] == "configs/methods/synthetic/linear.yaml"
    # the method a user's file names picks the recipe; the user's file and flags still win over it
    user = tmp_path / "mine.yaml"
    user.write_text("model: {method: linear}\ntrain: {epochs: 2}\n")
    assert resolve_config(None, user).recipes[-1] == "configs/methods/synthetic/linear.yaml"
    assert resolve_config("synthetic", overrides=[{"model": {"method": "dualcoop"}},
                                                  {"train": {"lr": 0.3}}]).train.lr == 0.3
    assert resolve_config("vg200").recipes == ["configs/vg200.yaml"]  # a dataset without recipes: none merged
    # general recipes come first, dataset-specific ones after; a recipe with a bad key names its file
    (tmp_path / "configs" / "methods" / "synthetic").mkdir(parents=True)
    (tmp_path / "configs" / "methods" / "zeroshot.yaml").write_text("train: {epochs: 3}\n")
    (tmp_path / "configs" / "methods" / "synthetic" / "zeroshot.yaml").write_text("train: {epoch: 4}\n")
    monkeypatch.setattr(config_module, "shipped_file", lambda folder, name: (
        tmp_path / folder / name if (tmp_path / folder / name).is_file() else None))
    with pytest.raises(ConfigError, match=r"configs/methods/synthetic/zeroshot.yaml.train: unknown key 'epoch'"):
        resolve_config("synthetic", overrides=[{"model": {"method": "zeroshot"}}])


REAL_DATASETS = ("voc2007", "coco2014", "nuswide")


@pytest.mark.parametrize("dataset", REAL_DATASETS)
def test_every_method_has_a_recipe_for_each_paper_dataset_that_resolves_and_says_where_it_comes_from(dataset):
    """Each registered method ships ``configs/methods/<dataset>/<method>.yaml`` for the three paper
    datasets; a method with released code names the authors' repository and commit in its opening
    comment, and the shipped packaging installs the folder."""
    from promptmlr.config import resolve_config
    from promptmlr.models.factory import list_methods

    authors = {"dualcoop": "sunxm2357/DualCoOp", "positivecoop": "SamyakR99/PositiveCoOp",
               "sst": "HCPLab-SYSU/HCP-MLR-PL", "dsrb": "HCPLab-SYSU/HCP-MLR-PL", "clsl": "Qingdandian/CLSL"}
    for method in list_methods():
        path = REPO / "configs" / "methods" / dataset / f"{method}.yaml"
        assert path.is_file(), f"{method} has no recipe for {dataset}"
        text = path.read_text()
        assert text.startswith("# ") and (method not in authors or authors[method] in text), path
        config = resolve_config(dataset, overrides=[{"model": {"method": method}}])
        assert config.recipes[-1] == f"configs/methods/{dataset}/{method}.yaml"
    assert f'"share/promptmlr/configs/methods/{dataset}" = ["configs/methods/{dataset}/*.yaml"]' in \
        (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize("override, message", [
    ({"train": {"optimizer": "adagrad"}}, "train.optimizer must be one of adamw, adam, sgd, got 'adagrad'"),
    ({"train": {"lr_schedule": "linear"}}, "train.lr_schedule must be one of cosine, step, onecycle, got 'linear'"),
    ({"train": {"lr_pct_start": 1.0}}, "train.lr_pct_start"),
    ({"train": {"lr_step_gamma": 0}}, "train.lr_step_gamma"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision must be one of no, bf16, fp16"),
    ({"train": {"loss": {"name": "focal"}}}, "loss.name must be one of asl, partial-bce, bce"),
    ({"train": {"cache": {"enabled": "always"}}}, "train.cache.enabled must be one of auto, on, off"),
    ({"train": {"recovery": {"thresholds": "adaptive"}}}, "recovery.thresholds must be one of fixed, prior"),
    ({"data": {"known": 1.5}}, r"known proportion must be in \(0, 1\]"),
    ({"data": {"mask_scheme": "sst"}}, "mask_scheme must be one of hcp, dualcoop"),
])
def test_every_section_checks_its_choices_when_resolved(override, message):
    from promptmlr.config import resolve_config

    with pytest.raises(ConfigError, match=message):
        resolve_config("synthetic", overrides=[override])


def test_a_run_folder_from_before_an_option_existed_resumes_as_it_was_trained(tmp_path):
    """A dualcoop folder whose config lacks the mean_token option (an older folder) was trained without
    the mean token: read back, it keeps the method it trained, not the current default; a folder that
    has the option keeps its value."""
    import yaml

    from promptmlr.config import load_run_config, resolve_config

    values = resolve_config("synthetic", overrides=[{"model": {"method": "dualcoop"}}]).to_dict()
    assert values["model"]["options"].pop("mean_token") is True
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    assert load_run_config(path).model.options["mean_token"] is False
    values["model"]["options"]["mean_token"] = True
    path.write_text(yaml.safe_dump(values))
    assert load_run_config(path).model.options["mean_token"] is True


@pytest.mark.slow
def test_a_run_config_reused_with_another_method_drops_the_old_methods_options(finished_run, monkeypatch):
    from promptmlr import tracking
    from promptmlr.config import load_run_config, resolve_config

    saved = finished_run.run_dir / "config.yaml"
    linear = resolve_config(None, saved, [{"model": {"method": "linear"}}])
    assert linear.model.options == {"features": "global", "init_scale": 10.0}
    dualcoop = resolve_config(None, saved, [{"model": {"options": {"n_ctx": 4}}}, {"model": {"method": "dualcoop"}}])
    assert dualcoop.model.options["n_ctx"] == 4 and "query" not in dualcoop.model.options  # shared keys carry over
    with pytest.raises(ConfigError, match="unknown key 'query'"):
        resolve_config(None, saved, [{"model": {"method": "dualcoop", "options": {"query": "prompt"}}}])
    kept = resolve_config(None, saved, [{"model": {"options": {"n_ctx": 8}}}])
    assert kept.model.options["n_ctx"] == 8 and kept.model.options["query"] == "learnable"
    # a run logged to a tracker that is not installed here still loads (to evaluate it), but not to run
    text = saved.read_text().replace("report_to: none", "report_to: wandb")
    (finished_run.run_dir.parent / "tracked.yaml").write_text(text)
    monkeypatch.setitem(tracking.TRACKERS, "wandb", ("no_such_tracker_module", "wandb"))
    assert load_run_config(finished_run.run_dir.parent / "tracked.yaml").train.report_to == "wandb"
    with pytest.raises(ConfigError, match="--report-to wandb needs the no_such_tracker_module package"):
        resolve_config(None, finished_run.run_dir.parent / "tracked.yaml")


# ------------------------------------------------------------------------------------- structure
def _imports(path: Path) -> set[str]:
    """Every promptmlr module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("promptmlr"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _module_path(submodule) else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("promptmlr"))
    return found


def _module_path(module: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_no_import_cycles():
    """Imports run one way (data -> backbones -> models -> engine -> api -> cli), lazy imports inside
    functions included; a package's ``__init__`` re-exporting its own modules is not counted."""
    modules = {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
               for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = {target for target in _imports(path) if target in modules}
        if path.name == "__init__.py":  # a package re-exporting its own modules
            targets = {target for target in targets if not target.startswith(name + ".")}
        graph[name] = targets
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycle = (trail + [node])[(trail + [node]).index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_every_user_facing_error_shares_one_base():
    from promptmlr.backbones import BackboneLoadError
    from promptmlr.data import DatasetError, ImageLoadError, SplitNotFoundError
    from promptmlr.descriptions import DescriptionsError
    from promptmlr.engine import TrainingDivergedError
    from promptmlr.errors import ReportError
    from promptmlr.prompt_files import PromptsFileError

    for error, builtin in ((ConfigError, ValueError), (UsageError, ValueError), (ReportError, ValueError),
                           (DatasetError, ValueError), (SplitNotFoundError, ValueError), (ImageLoadError, OSError),
                           (DescriptionsError, ValueError), (PromptsFileError, ValueError),
                           (BackboneLoadError, RuntimeError), (TrainingDivergedError, RuntimeError)):
        assert issubclass(error, PromptMLRError) and issubclass(error, builtin), error


# ----------------------------------------------------------------------------------- feature cache
@pytest.mark.slow
def test_cache_key_follows_the_resolved_spec_and_the_weights_not_the_name(tmp_path):
    from promptmlr.backbones import create_backbone
    from promptmlr.backbones.factory import resolve_spec
    from promptmlr.cache import cache_key
    from promptmlr.data import build_dataset

    dataset = build_dataset("csv", write_colour_csv(tmp_path / "data", counts=(("train", 2),)), "train")
    alias = create_backbone("sandbox", image_size=32)
    explicit = resolve_spec("sandbox")
    arch, weights = explicit.split(":")[1], Path(explicit.split(":", 2)[2])
    copied = shutil.copy(weights, tmp_path / "elsewhere.safetensors")

    def key(backbone):
        return cache_key(backbone, dataset, [backbone.transform()], seed=0, dtype="float16")

    assert key(alias) == key(create_backbone(explicit, image_size=32))
    assert key(alias) == key(create_backbone(f"openclip:{arch}:{copied}", image_size=32))
    assert key(alias) != key(create_backbone(f"openclip:{arch}", image_size=32))  # random weights
    assert key(alias) != key(create_backbone("sandbox", image_size=64))


# ------------------------------------------------------------------------------------------ tracking
@pytest.mark.slow
def test_tensorboard_tracker_logs_every_epoch(colour_data, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install "
                                              "'promptmlr[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _tune(colour_data, tmp_path / "run", method="linear", report_to="tensorboard")
    events = sorted((result.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file was written"
    logged = {}
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            logged[tag] = [(event.step, event.value) for event in accumulator.Scalars(tag)]
    for tag in ("train_loss", "val_mAP", "test_mAP", "lr"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag
    history = result.metrics["history"]
    assert [value for _, value in logged["test_mAP"]] == pytest.approx([r["test_mAP"] for r in history])
    assert np.isfinite([value for _, value in logged["train_loss"]]).all()
