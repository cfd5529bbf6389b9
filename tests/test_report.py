"""promptmlr report: plots and report.md from real (tiny) runs, aggregation on hand-made records,
methods in registry order, and clear errors for incomplete run folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptmlr.api import run
from promptmlr.cli import main
from promptmlr.config import resolve_config
from promptmlr.metrics import per_class_average_precision
from promptmlr.report import (
    ReportError,
    RunRecord,
    aggregate,
    aggregate_table,
    known_table,
    load_run,
    method_order,
    write_report,
)
from tests.conftest import COLOUR_CLASSES, write_colour_csv

CLASSES = COLOUR_CLASSES
TINY = "openclip:promptmlr-tiny-vit"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """Two finished promptmlr runs that differ only in seed (mask and training)."""
    base = tmp_path_factory.mktemp("report")
    data = write_colour_csv(base / "data")
    runs = []
    for seed in (0, 1):
        config = resolve_config("csv", overrides=[{
            "data": {"root": str(data), "known": 0.5, "val_fraction": 0.25, "mask_seed": seed},
            "model": {"backbone": TINY, "method": "promptmlr"},
            "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "lr": 0.01, "seed": seed,
                      "cache": {"directory": str(base / "cache")},
                      "recovery": {"enabled": True, "known_only_epochs": 1}}}])
        runs.append(run(config, base / f"run-seed{seed}", log=lambda *_: None).run_dir)
    return runs


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


@pytest.mark.slow
def test_report_writes_plots_and_a_summary_with_the_runs_numbers(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    assert "report.md" in capsys.readouterr().out
    for name in ("run-seed0", "run-seed1"):
        for plot in ("per_class_ap.png", "pr_curves.png"):
            width, height = _png(out / name / plot)
            assert width > 100 and height > 100
    _png(out / "map_vs_known.png")

    text = (out / "report.md").read_text()
    maps = []
    for run_dir in two_runs:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        best = metrics["best"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {run_dir.name} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1:8] == ["csv", "promptmlr", TINY, "50%", str(metrics["seed"]), "val", str(metrics["best_epoch"])]
        assert cells[8:12] == [f"{best[key]:.2f}" for key in ("test_mAP", "test_mAP_voc2012", "test_CF1", "test_OF1")]
        assert cells[12] == f"{metrics['trainable_parameters']:,}"
        assert cells[13] == f"{metrics['train_seconds']:.1f}"
        assert cells[14] == metrics["mask_sha256"][:12]
        maps.append(best["test_mAP"])
        # the plots come from predictions_test.npz, which holds the selected epoch's scores
        with np.load(run_dir / "predictions_test.npz") as arrays:
            ap = per_class_average_precision(arrays["scores"], arrays["labels"])
        assert 100 * np.nanmean(ap) == pytest.approx(best["test_mAP"], abs=1e-3)
    assert f"| promptmlr | {np.mean(maps):.2f} ± {np.std(maps, ddof=1):.2f} |" in text


@pytest.mark.slow
def test_load_run_reads_recovery_from_the_last_epoch_that_recovered(two_runs):
    record = load_run(two_runs[0])
    last = json.loads((two_runs[0] / "metrics.json").read_text())["history"][-1]["recovery"]
    assert record.recovery_precision_positive == last["precision_positive"]
    assert record.recovered_positive == last["recovered_positive"]
    assert (record.known, record.seed, record.mask_seed, record.epochs) == (0.5, 0, 0, 1)


def test_aggregate_takes_mean_and_sample_std_over_seeds():
    records = [
        {"dataset": "d", "backbone": "b", "method": "promptmlr", "known": 0.1, "seed": 2, "test_mAP": 74.0},
        {"dataset": "d", "backbone": "b", "method": "promptmlr", "known": 0.1, "seed": 0, "test_mAP": 70.0},
        {"dataset": "d", "backbone": "b", "method": "promptmlr", "known": 0.1, "seed": 1, "test_mAP": 72.0},
        {"dataset": "d", "backbone": "b", "method": "promptmlr", "known": 0.5, "seed": 0, "test_mAP": 80.0},
        {"dataset": "d", "backbone": "b", "method": "zeroshot", "known": 0.1, "seed": 0, "test_mAP": 60.0},
        {"dataset": "d", "backbone": "b", "method": "zeroshot", "known": 0.1, "seed": 1, "test_mAP": None},
    ]
    groups = aggregate(records, metrics=("test_mAP",))
    assert [(g.method, g.known) for g in groups] == [("zeroshot", 0.1), ("promptmlr", 0.1), ("promptmlr", 0.5)]
    zeroshot, three_seeds, one_seed = groups
    assert three_seeds.seeds == [0, 1, 2] and three_seeds.runs == 3
    assert three_seeds.mean["test_mAP"] == pytest.approx(72.0)
    assert three_seeds.std["test_mAP"] == pytest.approx(2.0)  # sample std: sqrt((4 + 0 + 4) / 2)
    assert one_seed.mean["test_mAP"] == 80.0 and one_seed.std["test_mAP"] is None
    assert zeroshot.runs == 2 and zeroshot.mean["test_mAP"] == 60.0 and zeroshot.std["test_mAP"] is None

    table = known_table(groups)
    assert table.splitlines()[0] == "| method | 10% | 50% |"
    assert "| zeroshot | 60.00 (n=2) |  |" in table
    assert "| promptmlr | 72.00 ± 2.00 (n=3) | 80.00 (n=1) |" in table
    assert "| promptmlr | 10% | 3 | 0, 1, 2 | 72.00 ± 2.00 |" in aggregate_table(groups, ("test_mAP",))

    as_records = [RunRecord.from_dict(r) for r in records]  # RunRecords aggregate the same way
    assert [g.mean for g in aggregate(as_records, ("test_mAP",))] == [g.mean for g in groups]


def test_groups_differing_in_dataset_are_kept_apart_and_labelled():
    records = [{"dataset": name, "backbone": "b", "method": "linear", "known": 0.3, "seed": 0, "test_mAP": value}
               for name, value in (("voc2007", 80.0), ("coco2014", 60.0))]
    table = known_table(aggregate(records, ("test_mAP",)))
    assert "| linear · coco2014 | 60.00 |" in table and "| linear · voc2007 | 80.00 |" in table


def test_a_plugin_method_sorts_after_the_builtins_in_registry_order():
    from promptmlr.models import METHODS, register_method
    from promptmlr.models.linear import LinearProbe

    records = [{"dataset": "d", "backbone": "b", "method": name, "known": 0.5, "seed": 0, "test_mAP": 50.0}
               for name in ("zz-unregistered", "aaa-plugin", "promptmlr", "linear", "zeroshot")]

    @register_method
    class Plugin(LinearProbe):
        name = "aaa-plugin"

    try:
        assert method_order().index("aaa-plugin") > method_order().index("promptmlr")
        assert [g.method for g in aggregate(records, ("test_mAP",))] == [
            "zeroshot", "linear", "promptmlr", "aaa-plugin", "zz-unregistered"]
    finally:
        METHODS.unregister("aaa-plugin")
    assert "aaa-plugin" not in method_order()


@pytest.mark.slow
def test_an_incomplete_run_folder_is_a_clear_error(two_runs, tmp_path, capsys):
    broken = tmp_path / "broken-run"
    shutil.copytree(two_runs[0], broken)
    (broken / "predictions_test.npz").unlink()
    assert main(["report", str(two_runs[1]), str(broken), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert str(broken) in error and "predictions_test.npz" in error
    assert not (tmp_path / "out").exists()  # nothing written before every run was checked

    (broken / "metrics.json").unlink()
    with pytest.raises(ReportError, match=r"missing metrics\.json, predictions_test\.npz.*--resume"):
        write_report([broken], tmp_path / "out")
    with pytest.raises(ReportError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    assert main(["report", str(two_runs[0]), "--out", str(tmp_path / "out"), "--pr-classes", "red,mauve"]) == 1
    assert "'mauve'" in capsys.readouterr().err
