"""tools/bench: the accuracy benchmark (runs, results files, resuming) and the speed benchmark
(micro-benchmarks, the data pipeline and a scaled-down recipe, timed through the Trainer's phase
hooks), on the tiny backbone and tiny data."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptmlr.config import resolve_config
from promptmlr.data.protocol import load_split
from tests.conftest import write_colour_csv
from tests.test_report import TINY


def _load(name: str):
    """A benchmark module, as ``python -m tools.bench.<name>`` runs it."""
    return importlib.import_module(f"tools.bench.{name}")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def accuracy():
    return _load("accuracy")


@pytest.fixture(scope="module")
def speed():
    return _load("speed")


def _accuracy_args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--dataset", "csv", "--data-root", str(data), "--backbone", TINY, "--methods", "zeroshot,linear",
            "--known", "0.3", "0.7", "--seeds", "0", "--epochs", "1", "--out", str(out),
            "--set", "train.num_workers=0", "--set", "train.batch_size=8", "--set", f"train.cache.directory={cache}",
            "--set", "data.val_fraction=0.25", *extra]


@pytest.mark.slow
def test_accuracy_bench_runs_every_method_and_proportion_and_resumes(accuracy, tmp_path, capsys, monkeypatch):
    data = write_colour_csv(tmp_path / "data")
    out = tmp_path / "bench"
    args = _accuracy_args(data, out, tmp_path / "cache")
    assert accuracy.main(args) == 0
    printed = capsys.readouterr().out
    assert "| method | 30% | 70% |" in printed

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["known"], r["seed"]) for r in rows] == [
        ("zeroshot", "0.3", "0"), ("linear", "0.3", "0"), ("zeroshot", "0.7", "0"), ("linear", "0.7", "0")]
    for row in rows:
        run = out / "runs" / f"{row['method']}-k{row['known']}-s0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert float(row["test_mAP"]) == pytest.approx(metrics["best"]["test_mAP"])
        assert float(row["test_mAP_voc2012"]) == pytest.approx(metrics["best"]["test_mAP_voc2012"])
        assert float(row["total_seconds"]) > 0 and row["recovery_precision_positive"] == ""
        assert int(row["trainable_parameters"]) == metrics["trainable_parameters"]
        assert metrics["known"] == float(row["known"])
    assert rows[0]["trainable_parameters"] == "0" and int(rows[1]["trainable_parameters"]) > 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4 and len(results["aggregate"]) == 4 and results["failed"] == []
    assert "## test mAP" in (out / "results.md").read_text()
    with Image.open(out / "map_vs_known.png") as image:
        assert image.format == "PNG"

    # run again: every run is read back, none is trained
    def no_training(*_args, **_kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(accuracy, "run", no_training)
    assert accuracy.main(args) == 0
    assert capsys.readouterr().out.count(": reused") == 4
    with open(out / "results.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == rows

    # the same folder with another config is refused, not mixed in
    assert accuracy.main(_accuracy_args(data, out, tmp_path / "cache", "--set", "train.lr=0.5")) == 1
    assert "train.lr" in capsys.readouterr().err


def test_accuracy_bench_refuses_overrides_it_sets_itself(accuracy, tmp_path, capsys):
    assert accuracy.main(["--dataset", "csv", "--data-root", str(tmp_path), "--out", str(tmp_path / "b"),
                          "--set", "data.known=0.5"]) == 2
    assert "--known" in capsys.readouterr().err


def test_seed_sets_mask_and_training_seed(accuracy, tmp_path):
    args = accuracy.build_parser().parse_args(["--dataset", "csv", "--data-root", str(tmp_path), "--methods",
                                               "linear", "--known", "0.5", "--seeds", "3", "--out", str(tmp_path)])
    [(name, config)] = accuracy.plan(args)
    assert name == "linear-k0.5-s3"
    assert (config.data.mask_seed, config.train.seed, config.data.known) == (3, 3, 0.5)


@pytest.mark.slow
def test_speed_quick_reports_every_throughput(speed, tmp_path, capsys):
    out = tmp_path / "speed"
    assert speed.main(["--quick", "--archs", "promptmlr-tiny-vit", "--image-sizes", "32", "--methods", "dualcoop",
                       "zeroshot", "--precisions", "fp32", "bf16", "--out", str(out)]) == 0
    report = json.loads((out / "speed.json").read_text())
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert "resource.getrusage" in report["memory_kind"]
    rows = report["results"]
    assert [(r["precision"], r["method"]) for r in rows] == [("fp32", "dualcoop"), ("fp32", "zeroshot"),
                                                             ("bf16", "dualcoop"), ("bf16", "zeroshot")]
    for row in rows:
        assert row["backbone"] == TINY and row["image_size"] == 32 and row["batch_size"] == 2
        expected = ["extract", "predict", "predict_cached", "peak_memory_mib"]
        if row["method"] == "dualcoop":
            expected += ["train_cached", "train_uncached"]
        assert all(row[key] > 0 for key in expected)
    assert "| backbone | px | batch |" in (out / "speed.md").read_text()
    assert report["device"]["name"] in capsys.readouterr().out


def _tiny_voc(root: Path, count: int) -> Path:
    """A VOCdevkit with only a train split (as ../shared has), built from the per-class files."""
    from promptmlr.data.voc import VOC_CLASSES

    year = root / "VOCdevkit" / "VOC2007"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"{index:06d}" for index in range(count)]
    for image_id in ids:
        pixels = rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(year / "JPEGImages" / f"{image_id}.jpg")
    (year / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    for name in VOC_CLASSES:
        labels = rng.choice([1, -1, -1, 0], size=count)
        (year / "ImageSets" / "Main" / f"{name}_train.txt").write_text(
            "".join(f"{i} {v:2d}\n" for i, v in zip(ids, labels)))
    return root / "VOCdevkit"


@pytest.mark.slow
def test_speed_recipe_scaled_down_splits_the_wall_time(speed, tmp_path, capsys):
    voc = _tiny_voc(tmp_path / "voc", 12)
    out = tmp_path / "recipe"
    assert speed.main(["--recipe", "voc2007", "--data-root", str(voc), "--recipe-images", "6", "--recipe-epochs", "2",
                       "--recipe-backbone", TINY, "--set", "model.image_size=32", "--set", "train.num_workers=0",
                       "--out", str(out)]) == 0
    report = json.loads((out / "recipe.json").read_text())
    assert report["data"] == {"train_images": 6, "test_images": 6, "scaled_down": True, "train_source": "train",
                              "test_source": "train (images 7-12; there is no test split here)"}
    phases = report["phases_seconds"]
    assert phases["caching"] > 0 and phases["training"] > 0 and phases["evaluation"] > 0
    assert phases["evaluation prompts"] > 0  # timed apart: once per evaluation pass, not per image
    assert sum(phases.values()) == pytest.approx(report["wall_seconds"])
    assert report["extrapolated_full_recipe_seconds"] > report["wall_seconds"]
    assert report["epochs"] == 2 and report["image_size"] == 32 and report["device"]["name"]
    assert not (out / "recipe-cache").exists()  # a cold cache next time
    assert "| caching |" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="--recipe-images"):  # the full recipe needs trainval and test
        speed.main(["--recipe", "voc2007", "--data-root", str(voc), "--out", str(out)])


def test_recipe_clock_fails_loudly_rather_than_drop_a_phase():
    """The recipe splits the wall time by the Trainer's phase hooks: a phase the clock and the
    Trainer do not both name, or one a run went through but never reported, is an error, not time
    quietly counted as 'other'."""
    recipe = _load("recipe")
    cpu = torch.device("cpu")
    with pytest.raises(recipe.PhaseError, match="the Trainer reports no 'data loading'"):
        recipe.PhaseClock(cpu, phases=(*recipe.PHASES, "data loading"))
    with pytest.raises(recipe.PhaseError, match="'checkpoint' is neither a row nor part of 'other'"):
        recipe.PhaseClock(cpu, in_other=())
    clock = recipe.PhaseClock(cpu)
    with pytest.raises(recipe.PhaseError, match="'prefetch', which promptmlr.engine.PHASES does not name"):
        with clock.phase("prefetch"):
            pass
    with clock.phase("evaluation"), clock.phase("evaluation prompts"):
        pass
    trained = [{"epoch": 1, "train_loss": 0.5}]
    with pytest.raises(recipe.PhaseError, match="went through 'caching', 'training', 'checkpoint' but the Trainer"):
        clock.check(recipe.reached_phases(trained))
    for name in ("caching", "training", "checkpoint"):
        with clock.phase(name):
            pass
    clock.check(recipe.reached_phases(trained))
    with pytest.raises(recipe.PhaseError, match="went through 'recovery'"):
        clock.check(recipe.reached_phases([*trained, {"epoch": 2, "train_loss": 0.4, "recovery": {}}]))
    assert set(clock.seconds) == {"caching", "training", "evaluation", "evaluation prompts", "checkpoint"}


@pytest.mark.slow
def test_speed_data_pipeline_times_decoding_per_worker_count(speed, tmp_path, capsys):
    voc = _tiny_voc(tmp_path / "voc", 10)
    out = tmp_path / "pipeline"
    assert speed.main(["--data-only", "--data-root", str(voc), "--image-sizes", "32", "--workers", "0", "1",
                       "--data-images", "8", "--out", str(out)]) == 0
    report = json.loads((out / "speed.json").read_text())
    assert report["results"] == []  # --data-only: no model micro-benchmarks
    rows = report["data_pipeline"]
    assert [(r["transform"], r["workers"]) for r in rows] == [
        ("eval (cache)", 0), ("eval (cache)", 1), ("train (RandAugment, Cutout)", 0),
        ("train (RandAugment, Cutout)", 1)]
    assert all(r["images"] == 8 and r["split"] == "train" and r["images_per_s"] > 0 for r in rows)
    assert "## Data pipeline: JPEG to normalised batch (8 VOC `train` images" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --data-root"):
        speed.main(["--data-only", "--out", str(out)])


def test_calibration_judges_each_published_property_on_the_numbers_given():
    calibration = _load("calibration")
    def row(*values):
        return {known: (value, None) for known, value in zip((0.1, 0.5, 0.9), values)}

    faithful = {"zeroshot": row(50, 50, 50), "linear": row(79, 82, 83), "linear-dense": row(75, 78, 80),
                "dualcoop": row(78, 81, 82), "positivecoop": row(79, 81, 82)}
    verdicts = {v["property"]: v for v in calibration.properties(faithful, chance=6.0)}
    assert all(v["pass"] for v in verdicts.values()), verdicts
    weak = {**faithful, "zeroshot": row(11, 11, 11), "linear-dense": row(60, 78, 80), "dualcoop": row(76, 81, 85.5),
            "positivecoop": row(75, 80, 82)}
    verdicts = {v["property"]: v for v in calibration.properties(weak, chance=6.0)}
    assert [name for name, v in verdicts.items() if not v["pass"]] == ["a", "c", "d", "e"]
    assert verdicts["d"]["measured"] == "0.1: -3.00, 0.9: +2.50" and verdicts["b"]["measured"].endswith("(+4.00)")
    missing = {name: {0.1: values[0.1]} for name, values in faithful.items()}  # 90 % known not measured
    verdicts = {v["property"]: v for v in calibration.properties(missing, chance=6.0)}
    assert verdicts["b"]["pass"] is None and verdicts["b"]["measured"] == "not measured" and verdicts["e"]["pass"]
    assert "| b |" in calibration.render(missing, list(verdicts.values()), 6.0, "cmd")


def test_calibration_measures_only_the_rows_asked_for(tmp_path, monkeypatch):
    """``--rows`` runs one accuracy benchmark per named row, with the row's own settings and the
    backbone given; a property resting on a row left out reads 'not measured'."""
    calibration = _load("calibration")
    calls = []

    def fake_accuracy(argv):
        out = Path(argv[argv.index("--out") + 1])
        calls.append((out.name, argv))
        out.mkdir(parents=True)
        runs = [{"dataset": "synthetic", "backbone": "cand", "method": argv[argv.index("--methods") + 1],
                 "known": known, "seed": 0, "test_mAP": 50.0}
                for known in (0.1, 0.9)]
        (out / "results.json").write_text(json.dumps({"runs": runs}))
        return 0
    monkeypatch.setattr(calibration.accuracy, "main", fake_accuracy)
    monkeypatch.setattr(calibration, "chance_map", lambda dataset: 6.0)
    calibration.main(["--out", str(tmp_path), "--rows", "linear", "linear-dense", "--known", "0.1", "0.9",
                      "--seeds", "0", "--backbone", "cand"])
    assert [name for name, _ in calls] == ["linear", "linear-dense"]
    dense = calls[1][1]
    assert dense[dense.index("--set") + 1] == "model.options.features=dense" and dense[-2:] == ["--backbone", "cand"]
    verdicts = {v["property"]: v["pass"] for v in json.loads((tmp_path / "calibration.json").read_text())["properties"]}
    assert verdicts == {"a": None, "b": False, "c": True, "d": None, "e": None}
    with pytest.raises(SystemExit):
        calibration.build_parser().parse_args(["--out", "x", "--rows", "sarl"])


def test_calibration_splits_test_map_by_the_classes_a_scene_holds(tmp_path):
    """Each bucket's mAP is computed on that bucket's scenes only and averaged over the seeds at the
    known proportion asked for; other proportions play no part, a row with a seed's predictions
    missing is left out, and a bucket without scenes reads None."""
    calibration = _load("calibration")
    classes_per_scene = np.repeat([1, 2, 4, 5], 6)  # no scene holds exactly 3 classes
    rng = np.random.default_rng(0)
    labels = -np.ones((len(classes_per_scene), 6), dtype=np.int8)
    for scene, count in enumerate(classes_per_scene):
        labels[scene, rng.choice(6, count, replace=False)] = 1
    ranked = np.where(labels == 1, 1.0, 0.0)  # every positive above every negative: AP 1
    lone = classes_per_scene[:, None] == 1

    def run(name: str, known: float, logits: np.ndarray) -> dict:
        folder = tmp_path / name
        folder.mkdir()
        np.savez(folder / "predictions_test.npz", logits=logits, labels=labels,
                 class_names=np.array([f"c{i}" for i in range(6)]),
                 images=np.array([f"{i}.jpg" for i in range(len(labels))]))
        return {"known": known, "run_dir": str(folder)}

    inverted_lone = np.where(lone, -ranked, ranked)
    runs = {"two-seeds": [run("a0", 0.1, ranked), run("a1", 0.1, inverted_lone), run("a9", 0.9, inverted_lone)],
            "one-seed-missing": [run("m0", 0.1, ranked), {"known": 0.1, "run_dir": str(tmp_path / "gone")}]}
    table = calibration.map_by_scene_classes(runs, 0.1)
    assert set(table) == {"two-seeds"}
    inverted = calibration.mean_average_precision(-ranked[lone[:, 0]], labels[lone[:, 0]])
    assert inverted < 60
    assert table["two-seeds"][0] == pytest.approx((100.0 + inverted) / 2)
    assert table["two-seeds"][1:] == [pytest.approx(100.0), None, pytest.approx(100.0)]
    text = calibration.render({"two-seeds": {0.1: (100.0, None)}}, [], 6.0, "cmd", table, 0.1)
    assert "| two-seeds | " in text and "| 100.00 |  | 100.00 |" in text and "(0.1 known" in text


def test_calibration_splits_test_map_by_object_size(tmp_path):
    """Each size's mAP keeps every negative and only the positives of that size: small positives
    ranked below every negative lower the small column alone, and a size no object has reads None."""
    calibration = _load("calibration")
    labels = np.array([[1, -1], [1, 1], [-1, 1], [-1, -1], [1, -1], [-1, 1]], dtype=np.int8)
    sizes = np.where(labels == 1, np.array([[0, 1], [1, 1], [0, 0], [0, 0], [1, 0], [0, 1]]), -1)  # no large
    logits = np.where(labels == 1, 1.0, 0.0)
    logits[(labels == 1) & (sizes == 0)] = -1.0  # small positives below every negative
    folder = tmp_path / "run"
    folder.mkdir()
    np.savez(folder / "predictions_test.npz", logits=logits, labels=labels, class_names=np.array(["a", "b"]),
             images=np.array([f"{i}.png" for i in range(len(labels))]))
    runs = {"row": [{"known": 0.1, "run_dir": str(folder)}]}
    table = calibration.map_by_object_size(runs, 0.1, sizes)
    small = calibration.mean_average_precision(logits, np.where((labels == 1) & (sizes != 0), 0, labels))
    assert small < 50 and table["row"] == [pytest.approx(small), pytest.approx(100.0), None]
    text = calibration.render({"row": {0.1: (80.0, None)}}, [], 6.0, "cmd", None, 0.1, table)
    assert "| row | small | medium | large |" in text and f"| row | {small:.2f} | 100.00 |  |" in text
    with pytest.raises(SystemExit, match="measure again"):
        calibration.map_by_object_size(runs, 0.1, sizes[:3])  # images 3-5 name scenes the split lacks


def test_the_synthetic_test_splits_object_sizes_agree_with_its_labels(tmp_path, monkeypatch):
    from promptmlr.data import synthetic
    monkeypatch.setattr(synthetic, "CACHE_ROOT", tmp_path)
    monkeypatch.setattr(synthetic, "STANDARD", {"seed": 2, "n_train": 4, "n_test": 30, "image_size": 32})
    calibration = _load("calibration")
    sizes = calibration.object_sizes_in_test_split("synthetic")
    test = load_split(resolve_config("synthetic").data, "test")
    np.testing.assert_array_equal(sizes >= 0, test.labels == 1)
    assert set(np.unique(sizes)) == {-1, 0, 1, 2}


def test_ablation_rows_resolve_to_the_settings_they_name_and_render_by_step():
    ablation = _load("ablation")
    runs = dict(ablation.plan(ablation.argparse.Namespace(data_root=None, rows=None)))
    assert len(runs) == len(ablation.ROWS)  # row names are unique
    base, defaults = runs["base"], runs["defaults"]
    assert (base.train.lr, base.model.options["global_weight"], base.model.options["enhance"]) == (0.005, 1.0, False)
    assert runs["align-off"].model.options["align_weight"] == 0 and runs["align-off"].train.lr == 0.005
    assert defaults.model.options["enhance"] and defaults.model.options["logit_scale"] == 5.0
    assert (defaults.train.lr, defaults.model.options["enhance_lr_scale"]) == (0.005, 4.0)
    assert defaults.model.options["enhance_text"] == "class"
    assert runs["own-rates"].model.options["enhance_text"] == "prompts"
    assert runs["enhance"].model.options["enhance_text"] == "prompts"  # history rows keep their meaning
    assert (runs["one-rate"].train.lr, runs["one-rate"].model.options["enhance_lr_scale"]) == (0.02, 1.0)
    assert runs["defaults-recovery"].train.recovery.thresholds == "calibrated"
    assert {config.data.known for config in runs.values()} == {0.1}
    assert runs["clsl-no-recovery"].model.method == "clsl"
    three = runs["three-branches"].model.options
    assert (three["enhance_layers"], three["decoupled"], three["branch_losses"]) == ("clsl", True, True)
    # the sandbox recipe's branches do not leak into the rows measured before them
    assert not defaults.model.options["decoupled"] and not defaults.model.options["branch_losses"]
    wide, narrow = runs["decoupled-ensemble"].model.options, runs["decoupled-narrow-ensemble"].model.options
    assert (wide["decoupling_dim"], wide["classifier_dim"], narrow["classifier_dim"]) == (512, 1024, 256)
    assert not defaults.model.options["probe"] and defaults.model.options["fusion"] == "mean"
    recipe = resolve_config("synthetic", None, [{"model": {"method": "promptmlr"}}])
    assert runs["probe-validated"].model.options == recipe.model.options
    only = dict(ablation.plan(ablation.argparse.Namespace(data_root=None, rows=["defaults", "ensemble"])))
    assert list(only) == ["defaults", "ensemble"]

    def record(name, val, recovered=None):
        return {"name": name, "val_mAP": val, "test_mAP": val - 5, "best_epoch": 3,
                "recovery_precision_positive": recovered, "recovery_recall_positive": recovered and 0.2}

    text = ablation.table([record("base", 77.3), record("recovery", 72.6, 0.947), record("defaults", 84.88),
                           {**record("align-off", 1.0), "val_mAP": None}])
    step1, step2 = text.split("## Step 2")
    assert "| align-off |" in step1 and "| – | -4.00 |" in step1  # no validation split: a dash
    assert "| base | the base configuration" in step1 and "| 72.60 | 67.60 | 3 | 94.7 / 20.0 |" in step1
    assert "| defaults |" in step2.split("## Step 3")[1] and "| base |" not in step2
    assert "| clsl" not in text  # rows without a run are left out


def test_text_encoder_profile_times_every_variant_and_all_agree(tmp_path):
    module = _load("text_encoder")
    report = module.main(["--out", str(tmp_path), "--backbone", "openclip:promptmlr-tiny-rn", "--classes", "3",
                          "--precisions", "fp32", "--warmup", "0", "--rounds", "1"])
    measured = {(row["contexts"], row["variant"]) for row in report["rows"]}
    assert measured == ({("class-agnostic", variant) for variant in module.VARIANTS}
                        | {("class-specific", "77 positions"), ("class-specific", "trimmed")})
    assert all(row["max_difference_fp32"] < 1e-4 and row["seconds"] > 0 for row in report["rows"])
    positions = {row["variant"]: row["positions"] for row in report["rows"] if row["contexts"] == "class-agnostic"}
    assert positions["shared prefix"] < positions["trimmed"] < positions["77 positions"]
    assert "| 3 | class-agnostic | fp32 |" in (tmp_path / "text_encoder.md").read_text()


def test_anchor_bench_refuses_a_folder_that_is_not_a_dualcoop_checkout(tmp_path):
    module = _load("anchor")
    with pytest.raises(SystemExit, match="is not a DualCoOp checkout .*clone https://github.com/sunxm2357/DualCoOp"):
        module.main(["--anchor-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_parity_bench_refuses_a_folder_that_is_not_a_positivecoop_checkout(tmp_path):
    module = _load("parity_positivecoop")
    with pytest.raises(SystemExit, match="is not a PositiveCoOp checkout .*github.com/SamyakR99/PositiveCoOp"):
        module.main(["--anchor-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_anchor_recipe_counts_steps_at_batch_32_and_the_anchors_prompts_per_test_batch():
    module = _load("anchor")
    per_step = {"anchor_train": 10.0, "anchor_image": 8.0, "anchor_text": 2.0, "encoder": 4.0, "ours_cached": 1.0,
                "ours_uncached": 5.0, "ours_test_pass": 3.0}
    at_32 = module.recipe_seconds(per_step, 32, epochs=1)
    assert at_32["anchor"] == pytest.approx(157 * 10 + 4952 * 8 / 32 + 50 * 2)
    assert at_32["ours_cached"] == pytest.approx((5011 + 4952) * 4 / 32 + 157 * 1 + 3)
    assert at_32["ours_uncached"] == pytest.approx(157 * 5 + 4952 * 4 / 32 + 3)  # test images encoded, then scored
    at_16 = module.recipe_seconds(per_step, 16, epochs=2)  # a step at 16 lacks 16 images' encoding
    assert at_16["anchor"] == pytest.approx(2 * (157 * (10 + 8) + 4952 * 8 / 16 + 50 * 2))


def test_cache_bench_reports_bytes_and_throughputs_per_dtype_and_cleans_up(tmp_path):
    module = _load("cache")
    report = module.main(["--out", str(tmp_path), "--images", "40", "--grid", "3", "3", "--dims", "16"])
    rows = {row["dtype"]: row for row in report["rows"]}
    assert rows["float16"]["bytes_per_image"] == (9 + 1) * 16 * 2 and rows["int8"]["bytes_per_image"] == 16 * (9 + 4)
    assert all(row[key] > 0 for row in rows.values()
               for key in ("store_images_per_s", "read_memory_images_per_s", "read_disk_images_per_s"))
    assert rows["int8"]["datasets_gib"]["MS-COCO 2014 (train + val)"] == pytest.approx(123_287 * 208 / 2**30)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache.json", "cache.md"]


@pytest.mark.slow
def test_onnx_bench_times_both_runtimes_on_the_same_images(tmp_path):
    module = _load("onnx")
    threads = torch.get_num_threads()
    try:
        report = module.main(["--out", str(tmp_path), "--methods", "linear", "--backbones", "sandbox-vit",
                              "--images", "6", "--batch", "4", "--rounds", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # the benchmark fixes the thread count for the whole process
    (row,) = report["rows"]
    assert row["method"] == "linear" and row["file_mib"] > 0 and row["max_logit_difference"] < 1e-4
    assert all(row[f"{name}_{runtime}_images_per_s"] > 0 for name in ("predict", "model")
               for runtime in ("pytorch", "onnxruntime"))
    assert "| sandbox-vit | linear |" in (tmp_path / "onnx.md").read_text()
    assert len(list((tmp_path / "images").iterdir())) == 6
    assert (tmp_path / "models" / "sandbox-vit-linear.onnx").is_file()


def test_run_comparison_skips_options_a_switched_off_component_ignores(accuracy):
    train = {"lr": 0.01}
    sarl = {"model": {"method": "sarl", "options": {"enhance": False, "enhance_text": "prompts"}}, "train": train}
    today = {"model": {"method": "sarl", "options": {"enhance": False, "enhance_text": "class"}}, "train": train}
    assert accuracy.config_differences(sarl, today) == []  # the enhancement is off in both: same model
    on = {"model": {"method": "promptmlr", "options": {"enhance": True, "enhance_text": "prompts"}}}
    also_on = {"model": {"method": "promptmlr", "options": {"enhance": True, "enhance_text": "class"}}}
    assert accuracy.config_differences(on, also_on) == ["model.options.enhance_text: 'prompts' -> 'class'"]
    assert accuracy.config_differences(sarl, {**today, "train": {"lr": 0.02}}) == ["train.lr: 0.01 -> 0.02"]


def _size(train: int, seconds: dict[str, float]) -> dict:
    """A size's record as scale.measure_size writes it, for the phases given."""
    module = _load("scale")
    counts = {"train": train, "test": train // 3, "val": train // 10, "fit": train - train // 10}
    per_image = {name: 1000 * value / module.IMAGES_OF[name](counts) for name, value in seconds.items()
                 if name in module.IMAGES_OF}
    return {"train_images": train, "test_images": train // 3, "counts": counts, "seconds": seconds,
            "per_image_ms": per_image, "memory_mib": {}, "peak_rss_mib": 1.0, "test_mAP": None,
            "disk_bytes": {"dataset": 0, "cache": 0, "run": 0, "report": 0},
            "config": {"method": "promptmlr", "known": 0.1, "overrides": [], "batch_size": 64, "cache_batch_size": 2,
                       "num_workers": 0, "mixed_precision": "no"}}


def test_scale_flags_a_phase_whose_cost_per_image_grows_with_the_data():
    module = _load("scale")
    small = _size(600, {"generation": 8.0, "training": 5.4, "report": 2.0})
    large = _size(6000, {"generation": 80.0, "training": 54.0 * 1.31, "report": 20.0 * 1.3})
    verdict = module.linearity([small, large])
    assert verdict["generation"] == {"ratio": pytest.approx(1.0), "flat": True}
    assert verdict["report"]["flat"] and not verdict["training"]["flat"]  # 1.3x is the tolerance, 1.31x is over it
    text = module.markdown({"device": {"name": "cpu", "type": "cpu"}, "command": "c", "sizes": [small, large],
                            "linearity": verdict, "classes": []})
    assert "| training |" in text and "1.31x **not flat**" in text and "1.00x |" in text


@pytest.mark.slow
def test_scale_measures_every_phase_per_size_in_its_own_process_and_per_class_count(tmp_path, monkeypatch):
    module = _load("scale")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the children run ``python -m tools.bench.scale``
    out = tmp_path / "scale"
    assert module.main(["--out", str(out), "--sizes", "12", "24", "--classes", "3", "--class-images", "40",
                        "--class-batch", "4", "--rounds", "1", "--threads", "1", "--generation-workers", "1",
                        "--backbone", TINY, "--set", f"model.backbone={TINY}", "--set", "model.image_size=32",
                        "--set", "train.num_workers=0", "--set", "train.batch_size=4"]) == 0
    report = json.loads((out / "scale.json").read_text())
    sizes = report["sizes"]
    assert [(s["train_images"], s["test_images"]) for s in sizes] == [(12, 4), (24, 8)]
    for size in sizes:
        assert set(size["seconds"]) == set(module.SIZE_PHASES)
        assert all(value >= 0 for value in size["seconds"].values()) and size["seconds"]["generation"] > 0
        assert size["counts"]["fit"] + size["counts"]["val"] == size["train_images"]
        assert size["disk_bytes"]["dataset"] > 0 and size["disk_bytes"]["cache"] > 0
        assert {"caching", "training", "report"} <= set(size["memory_mib"])
    assert set(report["linearity"]) == set(module.IMAGES_OF)
    assert [row["classes"] for row in report["classes"]] == [3] and report["classes"][0]["train_step_seconds"] > 0
    assert sorted(path.name for path in out.iterdir()) == ["scale.json", "scale.md", "size-12.json", "size-24.json"]


@pytest.mark.slow
def test_complete_bench_measures_precision_fill_and_the_retraining_loop(tmp_path, capsys):
    from promptmlr.data.synthetic import write_synthetic_dataset

    bench = _load("complete")
    root = write_synthetic_dataset(tmp_path / "world", n_train=80, n_test=24, seed=3, image_size=32)
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--known", "0.5", "--seeds", "0", "--targets", "0.6", "0.9", "--retrain-at", "0.6",
            "--review", "5", "--threads", "1", "--set", f"data.root={root}", "--set", f"model.backbone={TINY}",
            "--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "train.num_workers=0",
            "--set", "data.val_fraction=0.3", "--cross-fit", "2"]
    assert bench.main(argv) == 0
    result = json.loads((out / "complete.json").read_text())["results"][0]
    assert set(result) >= {"selected_partial", "partial", "completed", "review", "random", "targets"}
    assert set(result["targets"]) == {f"{calibration}/{target}" for calibration in ("cross-fit", "validation")
                                      for target in ("0.6", "0.9")}
    for measured in result["targets"].values():
        assert 0 <= measured["fill_rate"] <= 1 and measured["unknown"] > 0
        assert measured["precision_positive"] is None or 0 <= measured["precision_positive"] <= 1
    assert result["review_entries"] == 5
    report = (out / "complete.md").read_text()
    assert "| cross-fit | 50% | 0.6 |" in report and "| validation | 50% | 0.9 |" in report
    assert bench.main(argv) == 0  # a second time: every run read back, the same numbers
    assert json.loads((out / "complete.json").read_text())["results"][0]["completed"] == result["completed"]


def test_complete_bench_scores_only_the_entries_that_were_unknown():
    bench = _load("complete")
    truth = np.array([[1, -1, 1], [-1, 1, -1]])
    before = np.array([[1, 0, 0], [0, 0, -1]])
    filled = np.array([[1, -1, -1], [0, 1, -1]])
    measured = bench.realised(filled, before, truth)
    assert measured["filled"] == 3 and measured["unknown"] == 4 and measured["fill_rate"] == 0.75
    assert measured["precision_positive"] == 1.0 and measured["precision_negative"] == 0.5
    assert measured["positives_lost"] == 0.5 and measured["recall_positive"] == 0.5  # of the 2 hidden positives
    assert measured["all_negative_precision"] == 0.5
    assert bench.reveal(before, truth, [(0, 1)]).tolist() == [[1, -1, 0], [0, 0, -1]]


@pytest.mark.slow
def test_reproduce_estimates_first_then_runs_the_protocol_beside_the_published_numbers(
        tmp_path, capsys, monkeypatch):
    """End to end on a small synthetic world, the sandbox's dataset (one epoch, one proportion, one
    seed): the estimate is printed before any run starts, the runs are an accuracy benchmark, and the
    table sets each proportion's mean beside the published number of that proportion."""
    from promptmlr.data.synthetic import write_synthetic_dataset

    reproduce = _load("reproduce")
    root = write_synthetic_dataset(tmp_path / "world", n_train=80, n_test=24, seed=3, image_size=32)
    published = tmp_path / "published.yaml"
    published.write_text("synthetic:\n  dualcoop: {source: a test, backbone: sandbox, "
                         "map: [10, 20, 30, 40, 50, 60, 70, 80, 90], average: 50}\n")
    monkeypatch.setattr(reproduce, "PUBLISHED_FILE", published)
    args = ["--method", "dualcoop", "--dataset", "synthetic", "--data-root", str(root), "--backbone", TINY,
            "--known", "0.5", "--seeds", "0", "--set", "train.epochs=1", "--set", "train.batch_size=16",
            "--set", f"train.cache.directory={tmp_path / 'cache'}",
            "--set", "train.num_workers=0", "--out", str(tmp_path / "out")]
    assert reproduce.main([*args, "--estimate-only"]) == 0
    printed = capsys.readouterr().out
    assert "1 runs (1 proportions x 1 seeds), 1 epochs each" in printed and "estimated on cpu:" in printed
    assert not (tmp_path / "out").exists()  # the estimate trains nothing and writes nothing

    assert reproduce.main([*args, "--yes"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("estimated on cpu:") < printed.index("=== dualcoop-k0.5-s0")
    report = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    [row] = report["table"]
    measured = json.loads((tmp_path / "out" / "runs" / "dualcoop-k0.5-s0" / "metrics.json").read_text())
    assert row["mean"] == pytest.approx(measured["best"]["test_mAP"]) and row["published"] == 50
    assert row["difference"] == pytest.approx(row["mean"] - 50)
    assert report["estimate"]["runs"] == 1 and report["estimate"]["cache_images"] == 80 + 24
    text = (tmp_path / "out" / "reproduce.md").read_text()
    assert f"| 50% | {row['mean']:.2f} | 0 | 50.0 | {row['difference']:+.2f} |" in text
    assert "the authors select the epoch on the test split" in text
    # the protocol's own keys are refused, as the accuracy benchmark refuses them
    assert reproduce.main([*args[:-2], "--set", "data.known=0.3", "--out", str(tmp_path / "b")]) == 2
    assert "use --known" in capsys.readouterr().err


def test_published_rows_are_whole_and_agree_with_their_own_averages():
    """Each shipped published row has a source and either nine values (10 % to 90 %) whose mean is
    the printed average within its rounding, or an average alone."""
    import yaml

    reproduce = _load("reproduce")
    table = yaml.safe_load(reproduce.PUBLISHED_FILE.read_text())
    assert set(table) <= {"voc2007", "coco2014", "nuswide"} and table["voc2007"]["dualcoop"]["map"][0] == 90.3
    for dataset, rows in table.items():
        for method, row in rows.items():
            assert row["source"] and "average" in row, (dataset, method)
            if "map" in row:
                assert len(row["map"]) == 9 and abs(np.mean(row["map"]) - row["average"]) <= 0.1, (dataset, method)


def test_reproduce_compares_each_proportion_and_the_average_only_where_all_nine_were_measured():
    reproduce = _load("reproduce")
    rows = [{"dataset": "voc2007", "backbone": "b", "method": "sst", "known": step / 10, "seed": seed,
             "test_mAP": 80.0 + step + seed} for step in range(1, 10) for seed in (0, 1)]
    table = reproduce.comparison(rows, reproduce.published_row("voc2007", "sst"))
    assert [row["known"] for row in table] == [f"{10 * step}%" for step in range(1, 10)] + ["average"]
    assert table[0]["mean"] == 81.5 and table[0]["published"] == 81.5 and table[0]["difference"] == 0
    assert table[-1]["mean"] == pytest.approx(85.5) and table[-1]["difference"] == pytest.approx(85.5 - 90.4)
    only_average = reproduce.comparison(rows[:4], {"source": "s", "average": 78.4})
    assert [row["known"] for row in only_average] == ["10%", "20%"]
    assert all(row["published"] is None for row in only_average)
