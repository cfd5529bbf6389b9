"""``export --format onnx`` and ``predict --model``: for every method on the sandbox, the logits of
``promptmlr predict --model`` (onnxruntime) equal those of ``--prompts`` (PyTorch) within 1e-4, and
so do those of the plain snippet of docs/deploy.md (run with promptmlr and PyTorch unimportable);
weights from local files, open_clip and transformers, ResNet and ViT; and the refusals, each before
anything is written."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx  # the [onnx] extra, part of [dev]
import pytest
import torch
from PIL import Image

import promptmlr
from promptmlr import api, tagger
from promptmlr.backbones import create_backbone
from promptmlr.backbones.factory import WEIGHTS_DIR
from promptmlr.cli import main
from promptmlr.config import resolve_config
from promptmlr.data.world import SYNTHETIC_CLASS_NAMES as CLASSES
from promptmlr.data.world import SyntheticWorld
from promptmlr.errors import PromptMLRError
from promptmlr.inference import Prediction, predict_images
from promptmlr.models import build_method
from promptmlr.models.factory import METHODS
from promptmlr.prompt_files import save_prompts

pytestmark = pytest.mark.slow
DEPLOY_DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
IMAGES = 64
TOLERANCE = 1e-4
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def world_images(tmp_path_factory) -> list[Path]:
    """64 sandbox scenes: PNG and JPEG, square and not, one grey-scale and one turned by its EXIF
    orientation, so that the resize and the decoding are exercised."""
    folder = tmp_path_factory.mktemp("world")
    world = SyntheticWorld(seed=5)
    paths = []
    for index in range(IMAGES):
        image = world.render(world.scene(index), image_size=128 + 16 * (index % 3))
        if index % 4 == 1:
            image = image.resize((160, 112))
        path = folder / f"scene{index:02d}.{'jpg' if index % 2 else 'png'}"
        if index == 2:
            image = image.convert("L")
        exif = Image.Exif()
        if index == 3:
            exif[EXIF_ORIENTATION] = 6  # stored on its side: upright after a quarter turn
        image.save(path, exif=exif)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory) -> Path:
    """A JPEG large enough for predict to decode at reduced size (4 times the input side)."""
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    world = SyntheticWorld(seed=6)
    world.render(world.scene(0), image_size=128).resize((600, 520)).save(path)
    return path


@pytest.fixture(scope="module")
def sandbox():
    return create_backbone("sandbox")


def _prompts_run(folder: Path, method_name: str, backbone, classes=CLASSES, seed: int = 0,
                 metrics: dict | None = None, **options) -> Path:
    """A run folder holding ``method_name``'s prompts with every learned tensor moved off its
    initial value (a zero-initialised head would make every image score alike)."""
    torch.manual_seed(seed)
    method = build_method(method_name, backbone, list(classes), None, **options)
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
        if method.fits_on_validation():  # weights as fitted, not the mean they start at
            method.branch_weights.copy_(torch.randn_like(method.branch_weights).softmax(0))
    thresholds = np.linspace(0.3, 0.7, len(classes)).tolist()
    save_prompts(method, folder / "best.safetensors", thresholds=thresholds, metrics=metrics or {"mAP": 50.0},
                 mask_sha256="0" * 64, extra={"epoch": 3, "selected_on": "val"})
    return folder


def _logits(predictions: list[Prediction]) -> np.ndarray:
    assert not any(prediction.error for prediction in predictions)
    return np.array([list(prediction.logits.values()) for prediction in predictions])


def _pytorch_logits(run: Path, images: list[Path], backbone) -> np.ndarray:
    """``promptmlr predict --prompts``'s logits, its method rebuilt on ``backbone``."""
    return _logits(predict_images(promptmlr.load_prompts(run, backbone=backbone).method, images))


def _assert_same_predictions(run: Path, model: Path, images: list[Path]) -> None:
    """``predict --prompts`` and ``predict --model``: the same logits (within 1e-4), the same labels."""
    by_torch = promptmlr.predict(images, run)
    by_onnx = promptmlr.predict(images, model=model)
    np.testing.assert_allclose(_logits(by_onnx), _logits(by_torch), rtol=0, atol=TOLERANCE)
    assert list(by_onnx[0].logits) == list(by_torch[0].logits)  # the same classes, in the same order
    for torch_prediction, onnx_prediction in zip(by_torch, by_onnx, strict=True):
        assert [name for name, _ in torch_prediction.labels] == [name for name, _ in onnx_prediction.labels]


@pytest.mark.parametrize("method_name", METHODS.names())
def test_every_method_exports_the_logits_predict_gives(method_name, sandbox, world_images, large_jpeg, tmp_path):
    run = _prompts_run(tmp_path / "run", method_name, sandbox)
    model = promptmlr.export(run, tmp_path / "tagger.onnx", format="onnx")
    by_torch = _logits(promptmlr.predict(world_images, run))
    assert by_torch.shape == (IMAGES, len(CLASSES)) and np.ptp(by_torch, axis=0).min() > 0  # images score apart
    _assert_same_predictions(run, model, [*world_images, large_jpeg])
    metadata = tagger.OnnxTagger(model).metadata
    assert metadata["method"] == method_name and metadata["class_names"] == list(CLASSES)
    assert metadata["thresholds"] == pytest.approx(np.linspace(0.3, 0.7, len(CLASSES)))
    assert metadata["run"]["epoch"] == 3 and metadata["run"]["mask_sha256"] == "0" * 64
    assert metadata["run"]["folder"] == "run" and metadata["run"]["selected_on"] == "val"
    assert metadata["preprocess"]["image_size"] == 128 and metadata["backbone"]["fingerprint"] == sandbox.fingerprint
    assert str(WEIGHTS_DIR) not in json.dumps(metadata)  # where the weights lie stays on this machine


def test_promptmlr_on_its_sandbox_recipe_exports_its_weighted_branches(sandbox, world_images, tmp_path):
    """The quickstart's run: four branches, their logits weighted by weights fitted on validation
    (configs/methods/synthetic/promptmlr.yaml)."""
    options = resolve_config("synthetic", None, [{"model": {"method": "promptmlr"}}]).model.options
    assert options["decoupled"] and options["probe"] and options["branch_losses"] and options["fusion"] == "validated"
    run = _prompts_run(tmp_path / "run", "promptmlr", sandbox, **options)
    _assert_same_predictions(run, promptmlr.export(run, tmp_path / "tagger.onnx", format="onnx"), world_images)


def _deploy_snippet() -> str:
    text = DEPLOY_DOC.read_text()
    match = re.search(r"<!-- tests/test_onnx.py runs this block.*?-->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/deploy.md lost its tested snippet"
    return match.group(1)


def test_the_plain_snippet_of_the_docs_gives_the_same_logits(sandbox, world_images, tmp_path):
    run = _prompts_run(tmp_path / "run", "promptmlr", sandbox)
    model = promptmlr.export(run, tmp_path / "tagger.onnx", format="onnx")
    snippet = tmp_path / "tag.py"
    snippet.write_text(_deploy_snippet())
    dump = tmp_path / "logits.npy"
    guard = ("import runpy, sys\n"
             "import numpy as np\n"
             "sys.modules.update(promptmlr=None, torch=None, torchvision=None)  # neither may be imported\n"
             f"sys.argv = [{str(snippet)!r}, *sys.argv[1:]]\n"
             f"np.save({str(dump)!r}, runpy.run_path({str(snippet)!r})['logits'])\n")
    done = subprocess.run([sys.executable, "-c", guard, str(model), *map(str, world_images)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    by_torch = promptmlr.predict(world_images, run)
    np.testing.assert_allclose(np.load(dump), _logits(by_torch), rtol=0, atol=TOLERANCE)
    printed = done.stdout.splitlines()
    assert len(printed) == IMAGES
    for line, prediction in zip(printed, by_torch):
        assert line.startswith(str(prediction.image))
        assert [name for name, _ in ast.literal_eval(line[len(str(prediction.image)):].strip())] == sorted(
            (name for name, _ in prediction.labels), key=list(CLASSES).index)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    from tests.conftest import write_colour_csv

    return write_colour_csv(tmp_path_factory.mktemp("colours"), counts=(("train", 24), ("test", 8)))


def _tune(colour_data: Path, out: Path, backbone: str, method: str = "promptmlr") -> Path:
    promptmlr.tune(dataset="csv", data_root=colour_data, known=0.5, method=method, backbone=backbone, out=out,
                   epochs=1, select_on="test", log=lambda *_: None,
                   overrides={"train": {"batch_size": 8, "num_workers": 0, "cache": {"enabled": "off"}}})
    return out


def test_a_run_on_a_local_open_clip_vit_file_exports_and_predicts_through_the_cli(colour_data, tmp_path, capsys):
    weights = shutil.copy(WEIGHTS_DIR / "sandbox-vit.safetensors", tmp_path / "my-vit.safetensors")
    run = _tune(colour_data, tmp_path / "run", f"openclip:promptmlr-sandbox-vit:{weights}", method="dualcoop")
    model = tmp_path / "tagger.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(model)]) == 0
    assert "wrote" in capsys.readouterr().out
    images = sorted((colour_data / "images").iterdir())
    _assert_same_predictions(run, model, images)
    assert main(["predict", *map(str, images), "--model", str(model), "--json"]) == 0
    by_onnx = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", *map(str, images), "--prompts", str(run), "--json"]) == 0
    by_torch = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[label["class"] for label in record["labels"]] for record in by_onnx] == [
        [label["class"] for label in record["labels"]] for record in by_torch]
    assert main(["export", str(run), "--format", "onnx", "--out", str(model), "--image-size", "96", "--opset",
                 "20", "--which", "last", "--force"]) == 0
    metadata = tagger.OnnxTagger(model).metadata
    assert metadata["preprocess"]["image_size"] == 96 and metadata["run"]["which"] == "last"
    assert onnx.load(str(model)).opset_import[0].version == 20
    assert main(["predict", str(images[0]), "--model", str(model), "--which", "best"]) == 1
    assert "--which applies to --prompts" in capsys.readouterr().err


def test_weights_that_moved_export_with_backbone_and_only_the_same_weights(colour_data, tmp_path):
    weights = shutil.copy(WEIGHTS_DIR / "sandbox-vit.safetensors", tmp_path / "my-vit.safetensors")
    run = _tune(colour_data, tmp_path / "run", f"openclip:promptmlr-sandbox-vit:{weights}", method="linear")
    moved = Path(shutil.move(weights, tmp_path / "moved.safetensors"))
    with pytest.raises(PromptMLRError, match="my-vit.safetensors"):
        promptmlr.export(run, tmp_path / "tagger.onnx", format="onnx")
    with pytest.raises(PromptMLRError, match="was learned on .*, not on 'sandbox'"):
        promptmlr.export(run, tmp_path / "tagger.onnx", format="onnx", backbone="sandbox")
    assert not (tmp_path / "tagger.onnx").exists()
    promptmlr.export(run, tmp_path / "tagger.onnx", format="onnx", backbone=f"openclip:promptmlr-sandbox-vit:{moved}")
    assert tagger.OnnxTagger(tmp_path / "tagger.onnx").metadata["backbone"]["spec"].endswith("<local>")


def test_a_transformers_clip_from_a_local_folder_exports(tiny_hf_dir, world_images, tmp_path):
    backbone = create_backbone(f"hf:{tiny_hf_dir}")
    for method_name in ("zeroshot", "promptmlr"):
        run = _prompts_run(tmp_path / method_name, method_name, backbone, classes=("red", "green", "blue"))
        model = promptmlr.export(run, tmp_path / f"{method_name}.onnx", format="onnx")
        _assert_same_predictions(run, model, world_images[:16])


def test_another_image_size_and_opset(sandbox, world_images, tmp_path):
    run = _prompts_run(tmp_path / "run", "sst", sandbox, metrics={"mAP": 50.0, "AP": [float("nan"), 1.0]})
    model = promptmlr.export(run, tmp_path / "tagger.onnx", format="onnx", image_size=160, opset=14)
    opened = tagger.OnnxTagger(model)
    assert opened.image_size == 160 and opened.metadata["run"]["trained_image_size"] == 128
    assert opened.metadata["run"]["metrics"]["AP"] == [None, 1.0]  # strict JSON: NaN written as null
    assert onnx.load(str(model)).opset_import[0].version == 14
    at_160 = create_backbone("sandbox", image_size=160)
    np.testing.assert_allclose(_logits(promptmlr.predict(world_images[:8], model=model)),
                               _pytorch_logits(run, world_images[:8], at_160), rtol=0, atol=TOLERANCE)


def test_the_batch_size_is_free_and_an_unreadable_image_does_not_stop_the_others(sandbox, world_images, tmp_path):
    run = _prompts_run(tmp_path / "run", "dualcoop", sandbox)
    model = promptmlr.export(run, tmp_path / "tagger.onnx", format="onnx")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    images = [world_images[0], broken, *world_images[1:6]]
    whole = promptmlr.predict(images, model=model, batch_size=32)
    one_by_one = promptmlr.predict(images, model=model, batch_size=1)
    assert whole[1].error and one_by_one[1].error and not whole[0].error
    for a, b in zip(whole, one_by_one):
        assert a.logits == pytest.approx(b.logits, abs=TOLERANCE)
    assert promptmlr.predict(images, model=model, topk=2)[0].labels[0] == max(whole[0].probabilities.items(),
                                                                              key=lambda item: item[1])


# --------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return _prompts_run(tmp_path_factory.mktemp("small"), "linear", create_backbone("openclip:promptmlr-tiny-vit"),
                        classes=("red", "green"))


@pytest.mark.parametrize("options, message", [
    ({"opset": 13}, r"--opset must be a whole number from 14 to 20, got 13"),
    ({"opset": 21}, r"--opset must be .* got 21"),
    ({"opset": True}, r"--opset must be"),
    ({"image_size": 7}, r"--image-size must be >="),
    ({"image_size": 100.5}, r"--image-size must be a whole number"),
])
def test_bad_numbers_are_refused_before_anything_is_written(small_run, tmp_path, options, message):
    with pytest.raises(PromptMLRError, match=message):
        promptmlr.export(small_run, tmp_path / "tagger.onnx", format="onnx", **options)
    assert list(tmp_path.iterdir()) == []


def test_the_onnx_options_belong_to_the_onnx_format(small_run, tmp_path):
    with pytest.raises(PromptMLRError, match="--image-size and --opset apply to --format onnx only"):
        promptmlr.export(small_run, tmp_path / "prompts.safetensors", image_size=64)
    with pytest.raises(PromptMLRError, match=r"ends in \.onnx"):
        promptmlr.export(small_run, tmp_path / "tagger.bin", format="onnx")
    with pytest.raises(PromptMLRError, match="is a folder"):
        promptmlr.export(small_run, tmp_path, format="onnx")
    with pytest.raises(PromptMLRError, match="--backbone applies to --format onnx and text-embeddings"):
        promptmlr.export(small_run, tmp_path / "prompts.safetensors", backbone="sandbox")
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_cannot_be_written_is_refused_before_the_weights_load(small_run, tmp_path, monkeypatch):
    def no_loading(*arguments, **options):
        raise AssertionError("the backbone was loaded before --out was checked")

    monkeypatch.setattr(api, "create_backbone", no_loading)
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(PromptMLRError, match="a-file is not a writable folder; choose another export --out"):
        promptmlr.export(small_run, tmp_path / "a-file" / "tagger.onnx", format="onnx")
    with pytest.raises(PromptMLRError, match="cannot write it .*; choose another --out") as refused:
        promptmlr.export(small_run, tmp_path / ("x" * 300 + ".onnx"), format="onnx")
    assert "\n" not in str(refused.value) and (tmp_path / "a-file").read_text() == "mine"


def test_an_existing_file_is_replaced_with_force_only(small_run, tmp_path):
    for format, name in (("onnx", "tagger.onnx"), ("promptmlr", "prompts.safetensors")):
        out = tmp_path / name
        out.write_text("keep me")
        with pytest.raises(PromptMLRError, match="already exists; pass --force"):
            promptmlr.export(small_run, out, format=format)
        assert out.read_text() == "keep me"
        promptmlr.export(small_run, out, format=format, force=True)
        assert out.stat().st_size > len("keep me")
    assert main(["export", str(small_run), "--format", "onnx", "--out", str(tmp_path / "tagger.onnx")]) == 1


def test_a_graph_that_fails_the_check_is_not_left_behind(small_run, tmp_path, monkeypatch):
    monkeypatch.setattr(tagger, "CHECK_TOLERANCE", -1.0)
    with pytest.raises(tagger.TaggerCheckError, match="differ from PyTorch's .* nothing was written"):
        promptmlr.export(small_run, tmp_path / "tagger.onnx", format="onnx")
    assert list(tmp_path.iterdir()) == []


def test_without_the_extra_one_line_says_how_to_install_it(small_run, world_images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(PromptMLRError, match=r"ONNX export needs the onnx package.*pip install 'promptmlr\[onnx\]'"):
        promptmlr.export(small_run, tmp_path / "tagger.onnx", format="onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(PromptMLRError, match=r"needs the onnxruntime package.*promptmlr\[onnx\]"):
        promptmlr.predict(world_images[:1], model=tmp_path / "tagger.onnx")
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_what_is_not_a_tagger_it_reads(small_run, world_images, tmp_path):
    model = promptmlr.export(small_run, tmp_path / "tagger.onnx", format="onnx")
    with pytest.raises(PromptMLRError, match="--prompts .* or --model .*one of the two"):
        promptmlr.predict(world_images[:1], small_run, model=model)
    with pytest.raises(PromptMLRError, match="--heatmaps needs --prompts"):
        promptmlr.predict(world_images[:1], model=model, heatmaps=tmp_path / "heat")
    with pytest.raises(PromptMLRError, match="does not exist"):
        promptmlr.predict(world_images[:1], model=tmp_path / "missing.onnx")
    with pytest.raises(PromptMLRError, match="is not an ONNX model onnxruntime can run"):
        promptmlr.predict(world_images[:1], model=small_run / "best.safetensors")
    stored = onnx.load(str(model))
    record = json.loads(stored.metadata_props[0].value)
    del stored.metadata_props[:]
    onnx.save(stored, str(tmp_path / "bare.onnx"))
    with pytest.raises(PromptMLRError, match="has no promptmlr metadata"):
        promptmlr.predict(world_images[:1], model=tmp_path / "bare.onnx")
    stored.metadata_props.add(key="promptmlr", value=json.dumps({**record, "format_version": 99}))
    onnx.save(stored, str(tmp_path / "newer.onnx"))
    with pytest.raises(PromptMLRError, match="version 99, newer than promptmlr .* upgrade promptmlr"):
        promptmlr.predict(world_images[:1], model=tmp_path / "newer.onnx")
    for damage, message in (({"thresholds": [0.5, 2.0]}, "thresholds must be null or 2 probabilities"),
                            ({"class_names": ["red", "green", "blue"], "thresholds": None},
                             "gives 2 logits per image but its metadata names 3 classes"),
                            ({"preprocess": {"image_size": 32}}, "metadata is damaged .*mean"),
                            ({"preprocess": {**record["preprocess"], "interpolation": "sharpest"}},
                             "not one Pillow applies")):
        del stored.metadata_props[:]
        stored.metadata_props.add(key="promptmlr", value=json.dumps({**record, **damage}))
        onnx.save(stored, str(tmp_path / "damaged.onnx"))
        with pytest.raises(PromptMLRError, match=message):
            promptmlr.predict(world_images[:1], model=tmp_path / "damaged.onnx")
    with pytest.raises(PromptMLRError, match="--which applies to --prompts RUN_DIR"):
        promptmlr.predict(world_images[:1], model=model, which="last")


def test_the_cli_offers_what_the_api_takes(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "{" + ",".join(api.EXPORT_FORMATS) + "}" in text
    low, high = tagger.OPSET_RANGE
    assert f"ONNX opset, {low} to {high} (default {tagger.DEFAULT_OPSET})" in text
