"""One config path: the dataclass of each `cora train` command generates its flags, reads its --config file
(unknown keys and wrong types refused, naming the file and the key) and is saved with a provenance block that
reads back as --config. Outputs respect the umask."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from cora.cli import main
from cora.config import _git_commit, load_config, provenance, resolve_config, save_config
from cora.datasets import READER_SOURCES, ReaderSource
from cora.errors import CoraError

from .conftest import REPO

RECIPES = REPO / "recipes"


def _train_classes():
    from cora.commands.train import ReaderTrainConfig, RetrieverTrainConfig

    return ReaderTrainConfig, RetrieverTrainConfig


def _resolve(cls, config=None, **flags):
    return resolve_config(cls, argparse.Namespace(**flags), config)


@pytest.mark.parametrize("name", ["reader_me5_small_all.json", "reader_me5_small.json", "reader_me5_small_stage2.json",
                                  "mdpr_me5_small.json", "mdpr_me5_small_query.json"])
def test_shipped_recipe_configs_stay_valid(name):
    reader_cls, retriever_cls = _train_classes()
    cls = reader_cls if name.startswith("reader") else retriever_cls
    cfg = _resolve(cls, RECIPES / name, output_dir="run", **({} if cls is reader_cls else {"train_data": "t.json"}))
    raw = json.loads((RECIPES / name).read_text())
    assert {k: getattr(cfg, k) for k in raw if k != "output_dir"} == {k: v for k, v in raw.items() if k != "output_dir"}


def test_the_running_reader_recipe_keeps_its_meaning():
    """recipes/reader_me5_small_all.json started a long run that resumes with the same command: the same options,
    the default mixture (cora.datasets.READER_SOURCES, unchanged from reader.training's list)."""
    reader_cls, _ = _train_classes()
    cfg = _resolve(reader_cls, RECIPES / "reader_me5_small_all.json", output_dir="run")
    assert (cfg.init_from, cfg.trainable_layers, cfg.rank_head, cfg.negatives_per_example) == \
        ("me5-small-reader", 12, True, 2)
    assert (cfg.dropout, cfg.negative_rate, cfg.max_length, cfg.sources) == (False, 0.35, 256, None)
    assert len(READER_SOURCES) == 28 and READER_SOURCES[17] == ReaderSource("drcd/DRCD_dev.json", "zh", 2500)
    assert [s.path for s in READER_SOURCES[:12]] == [f"xquad/xquad.{lang}.json" for lang in
                                                   ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi",
                                                    "zh")]


@pytest.mark.parametrize("raw, message", [
    ({"lr": "fast"}, "'lr' must be float, not 'fast'"),
    ({"dropout": "yes"}, "'dropout' must be bool, not 'yes'"),  # once silently False
    ({"max_steps": 1.5}, "'max_steps' must be int | None, not 1.5"),
    ({"tower": "both"}, "'tower' must be one of shared, query, not 'both'"),
    ({"temprature": 0.1}, "unknown key temprature for RetrieverTrainConfig"),
])
def test_bad_config_values_are_refused_naming_file_and_key(raw, message, tmp_path):
    _, retriever_cls = _train_classes()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(CoraError) as err:
        _resolve(retriever_cls, path, output_dir="run", train_data="t.json")
    assert str(err.value).startswith(f"{path}: {message}")


def test_an_int_is_a_valid_float_and_flags_override_the_file(tmp_path):
    _, retriever_cls = _train_classes()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"lr": 1, "temperature": 0.1, "output_dir": "from-file"}))
    cfg = _resolve(retriever_cls, path, train_data="t.json", temperature=0.2)
    assert (cfg.lr, type(cfg.lr), cfg.temperature, cfg.output_dir) == (1.0, float, 0.2, "from-file")
    with pytest.raises(CoraError, match="--output-dir is required"):
        _resolve(retriever_cls, None, train_data="t.json")
    with pytest.raises(CoraError, match="--train-data is required"):
        _resolve(retriever_cls, None, output_dir="run")


def test_saved_config_records_provenance_and_reads_back_as_config(tmp_path):
    import cora

    reader_cls, _ = _train_classes()
    cfg = _resolve(reader_cls, RECIPES / "reader_me5_small_all.json", output_dir=str(tmp_path / "run"))
    cfg.sources = [s.spec() for s in READER_SOURCES]
    save_config(cfg, tmp_path / "saved.json", mixture={"xquad/xquad.ar.json": 826})
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert saved["type"] == "ReaderTrainConfig" and saved["mixture"] == {"xquad/xquad.ar.json": 826}
    assert saved["provenance"]["cora_version"] == cora.__version__
    git = _git_commit()
    if git is not None:  # a checkout: the commit is recorded (a wheel install has none, and that is no error)
        assert saved["provenance"]["git_commit"] == git[0] and len(git[0]) == 40
    assert _resolve(reader_cls, tmp_path / "saved.json") == cfg  # rerunning what produced the run
    # A copy saved before provenance existed (options + the mixture counts) reads back too.
    old = {k: v for k, v in saved.items() if k not in ("type", "provenance", "sources")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert _resolve(reader_cls, tmp_path / "old.json").negatives_per_example == 2


def test_provenance_without_git_is_no_error(monkeypatch):
    import subprocess

    def no_git(*args, **kw):
        raise FileNotFoundError("git")

    _git_commit.cache_clear()
    monkeypatch.setattr(subprocess, "run", no_git)
    try:
        record = provenance()
        assert "git_commit" not in record and record["cora_version"]
    finally:
        _git_commit.cache_clear()


def test_artifact_configs_read_back_with_their_provenance(tmp_path):
    from cora.config import EncoderConfig

    cfg = EncoderConfig("me5-small", "mean", "query: ", "passage: ", True)
    save_config(cfg, tmp_path / "encoder_config.json")
    assert "provenance" in json.loads((tmp_path / "encoder_config.json").read_text())
    assert load_config(EncoderConfig, tmp_path / "encoder_config.json") == cfg


def test_boolean_options_are_on_off_flags(capsys):
    helps = {}
    for command in ("reader", "retriever"):
        with pytest.raises(SystemExit):
            main(["train", command, "--help"])
        helps[command] = capsys.readouterr().out
        assert "--dropout, --no-dropout" in helps[command] and "DROPOUT" not in helps[command]
    assert "--rank-head, --no-rank-head" in helps["reader"] and "RANK_HEAD" not in helps["reader"]
    assert "--freeze-embeddings, --no-freeze-embeddings" in helps["retriever"]
    with pytest.raises(SystemExit):
        main(["train", "reader", "--dropout", "yes", "--data-root", "d", "--output-dir", "o"])
    assert "unrecognized arguments: yes" in capsys.readouterr().err


@pytest.mark.parametrize("spec, source", [
    ("xquad/xquad.de.json:de", ReaderSource("xquad/xquad.de.json", "de")),
    ("/data/my train.json:sw:squad:5000", ReaderSource("/data/my train.json", "sw", 5000)),
    ("afriqa/x.json:hau:afriqa", ReaderSource("afriqa/x.json", "hau", None, "afriqa")),
])
def test_source_specs_parse_and_print_back(spec, source):
    assert ReaderSource.parse(spec) == source and ReaderSource.parse(source.spec()) == source


@pytest.mark.parametrize("spec, message", [
    ("train.json", "expected PATH:LANG"), ("t.json:de:csv", "unknown format 'csv'"),
    ("t.json:de:squad:many", "the cap 'many' is not a whole number"),
])
def test_bad_source_specs_are_one_line_errors(spec, message, tmp_path, capsys):
    code = main(["train", "reader", "--data-root", str(tmp_path), "--output-dir", str(tmp_path / "run"),
                 "--source", spec])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()


def _squad(n_articles: int, lang: str) -> dict:
    return {"data": [{"title": f"a{a}", "paragraphs": [{"context": f"tee {a} ist hier", "qas": [
        {"id": f"q{a}", "question": f"wo ist {a}", "answers": [{"text": str(a), "answer_start": 4}]}]}]}
        for a in range(n_articles)]}


def test_train_reader_takes_sources_and_reruns_from_its_saved_config(tiny_encoder_dir, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "xquad").mkdir(parents=True)
    (root / "xquad" / "xquad.en.json").write_text(json.dumps(_squad(40, "en")))
    (tmp_path / "mine.json").write_text(json.dumps(_squad(5, "de")))
    run = tmp_path / "run"
    argv = ["train", "reader", "--data-root", str(root), "--source", "xquad/xquad.en.json:en",
            "--source", f"{tmp_path / 'mine.json'}:de:squad:3", "--backbone", str(tiny_encoder_dir),
            "--output-dir", str(run), "--max-steps", "1", "--batch-size", "2", "--dev-per-lang", "0",
            "--cross-lingual", "0", "--max-length", "32", "--device", "cpu", "--precision", "fp32"]
    assert main(argv) == 0
    saved = json.loads((run / "reader_train_config.json").read_text())
    # XQuAD's training articles only (0-31), the capped source sampled to 3; both listed for a rerun.
    assert saved["mixture"] == {"xquad/xquad.en.json": 32, str(tmp_path / "mine.json"): 3}
    assert saved["sources"] == ["xquad/xquad.en.json:en", f"{tmp_path / 'mine.json'}:de:squad:3"]
    assert {"cora_version", "command", "created"} <= set(saved["provenance"])
    capsys.readouterr()
    assert main(["train", "reader", "--config", str(run / "reader_train_config.json")]) == 0  # resumes: done
    assert json.loads((run / "reader_train_config.json").read_text())["sources"] == saved["sources"]


# ----------------------------------------------------------------------------------------------------- umask
@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_respect_the_umask(umask_022, tiny_encoder, tmp_path):
    from cora.fileio import atomic_dir, atomic_write_json

    atomic_write_json(tmp_path / "pred.json", {"a": 1})
    assert _mode(tmp_path / "pred.json") == 0o644
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("x")
    assert _mode(tmp_path / "folder") == 0o755
    tiny_encoder.save_pretrained(tmp_path / "encoder")
    modes = {p.name: _mode(p) for p in [tmp_path / "encoder", *(tmp_path / "encoder").rglob("*")]}
    assert set(modes.values()) <= {0o644, 0o755} and modes["encoder_config.json"] == 0o644, modes
    os.umask(0o077)
    atomic_write_json(tmp_path / "private.json", {})
    assert _mode(tmp_path / "private.json") == 0o600
