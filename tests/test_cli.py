"""The command line, called in-process: help texts, the build -> index -> retrieve path, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cora.cli import build_parser, main


def _subcommand_paths(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


def test_every_command_has_a_help_text(capsys):
    paths = list(_subcommand_paths(build_parser()))
    assert {("datastore", "build"), ("index", "build"), ("index", "merge"), ("retrieve",), ("demo",)} <= set(paths)
    for path in [(), *paths]:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "usage: cora" in out and len(out) > 200, path


def test_help_starts_without_torch():
    # A fresh interpreter: this one has imported torch long ago. Every help but `cora train`'s (its flags are
    # cora.training's TrainConfig, whose module imports torch) must leave torch unimported.
    code = (
        "import json, sys\n"
        "from cora.cli import _HEAVY, build_parser, main\n"
        "heavy = {name for name, _ in _HEAVY.values()}\n"
        "commands = [c for c in build_parser(['--help'])._subparsers._group_actions[0].choices if c not in heavy]\n"
        "imported = {}\n"
        "for argv in [['--help']] + [[c, '--help'] for c in commands]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    imported[' '.join(argv)] = 'torch' in sys.modules\n"
        "print(json.dumps(imported))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    imported = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"--help", "datastore --help", "demo --help", "iterate --help", "serve --help"} <= set(imported)
    assert [argv for argv, torch in imported.items() if torch] == []


def test_stub_of_a_heavy_command_lists_it_as_the_real_one_does():
    assert build_parser(["--help"]).format_help() == build_parser().format_help()


def test_build_index_retrieve_round_trip(corpus_file, tiny_encoder_dir, tmp_path, capsys):
    ds, idx = tmp_path / "ds", tmp_path / "idx"
    assert main(["datastore", "build", str(corpus_file), "--out", str(ds)]) == 0
    capsys.readouterr()
    assert main(["datastore", "info", str(ds), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == 10 and info["languages"] == {"de": 3, "en": 4, "es": 3}
    assert main(["index", "build", "--datastore", str(ds), "--encoder", str(tiny_encoder_dir), "--out", str(idx),
                 "--factory", "Flat", "--device", "cpu"]) == 0
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "1", "question": "der mond umkreist die erde", "lang": "de"}\n'
                         '{"id": "2", "question": "tea is a drink made from leaves"}\n', encoding="utf-8")
    hits = tmp_path / "hits.jsonl"
    assert main(["retrieve", "--index", str(idx), "--questions", str(questions), "--k", "2", "--out", str(hits),
                 "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in hits.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2"]
    assert rows[0]["hits"][0]["passage_id"] == "moon-de"
    assert set(rows[0]["hits"][0]) == {"passage_id", "score", "rank", "lang", "group", "title", "text", "row"}
    assert rows[1]["lang"] == "en"  # detected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["datastore", "info", "{tmp}"], "is not a cora datastore"),
        (["datastore", "build", "{tmp}/nope.jsonl", "--out", "{tmp}/o"], "no such file"),
        (["index", "build", "--datastore", "{tmp}", "--out", "{tmp}/i"], "is not a cora datastore"),
        (["index", "build", "--datastore", "{tmp}", "--out", "{tmp}/i", "--shard", "3/2"], "--shard must look like"),
        (["retrieve", "--index", "{tmp}", "--questions", "{tmp}/q", "--out", "{tmp}/h"], "is not a cora index"),
    ],
)
def test_user_mistakes_get_one_line_errors(argv, message, tmp_path, capsys):
    (tmp_path / "q").write_text('{"id": "1", "question": "ok"}\n', encoding="utf-8")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("cora: error: ") and message in err[0]


@pytest.mark.parametrize("command, config, message", [
    ("retriever", {"lr": 1e-4, "learning_rate": 1e-4, "temprature": 0.1}, "unknown keys learning_rate, temprature"),
    ("reader", {"max_length": 256, "encoder": "me5-small"}, "unknown key encoder"),  # a retriever-only option
    ("reader", ["lr", 1e-4], "expected a JSON object of options, not list"),
])
def test_train_config_with_unknown_keys_is_refused(command, config, message, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config), encoding="utf-8")
    data = ["--train-data", str(tmp_path / "train.json")] if command == "retriever" else ["--data-root", str(tmp_path)]
    code = main(["train", command, "--config", str(cfg), *data, "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"cora: error: {cfg}: {message}")
    if isinstance(config, dict):  # the known keys are listed: this command's options and TrainConfig's fields
        known = err[0].split("(known: ")[1].rstrip(")").split(", ")
        assert {"lr", "batch_size", "output_dir", "device", "max_length" if command == "reader" else "temperature"} \
            <= set(known)
        assert "config" not in known and "func" not in known
    assert not (tmp_path / "run").exists()


def test_bad_questions_file_names_line_and_field(flat_index_dir, tmp_path, capsys):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "1", "question": "ok"}\n{"id": "2"}\n', encoding="utf-8")
    assert main(["retrieve", "--index", str(flat_index_dir), "--questions", str(bad), "--out",
                 str(tmp_path / "h")]) == 2
    assert "q.jsonl:2: field 'question' is missing" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


@pytest.fixture(scope="module")
def flat_index_dir(datastore, tiny_encoder, tiny_encoder_dir, tmp_path_factory):
    from cora.index import build_index

    out = tmp_path_factory.mktemp("cli-idx")
    build_index(datastore, tiny_encoder, out, str(tiny_encoder_dir), factory="Flat", show_progress=False)
    return out


def test_library_noise_is_hidden_unless_verbose(datastore, monkeypatch, capsys):
    """transformers' "Loading weights ... 197/197" bars and torch's int8 deprecation notices are hidden by the
    command line (never by importing cora); -v keeps them."""
    import warnings

    from transformers.utils import logging as hf_logging

    import cora.cli

    calls = []
    monkeypatch.setattr(cora.cli, "quiet_libraries", lambda: calls.append(1))
    assert main(["-v", "datastore", "info", str(datastore.path)]) == 0 and calls == []
    assert main(["datastore", "info", str(datastore.path)]) == 0 and calls == [1]
    monkeypatch.undo()
    capsys.readouterr()

    hf_logging.enable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    try:
        with warnings.catch_warnings(record=True) as seen:  # the filters quiet_libraries adds end with the block
            warnings.simplefilter("always")
            cora.cli.quiet_libraries()
            assert not hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == hf_logging.ERROR
            warnings.warn("torch.ao.quantization is deprecated and will be removed in 2.10.", DeprecationWarning, stacklevel=1)
            warnings.warn("some other deprecation", DeprecationWarning, stacklevel=1)
        assert [str(w.message) for w in seen] == ["some other deprecation"]
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)
