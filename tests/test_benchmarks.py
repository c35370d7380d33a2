"""Keep the benchmark scripts working: each one's --quick mode, in-process, with its JSON written."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


# Measured with --durations on 2 busy CPU cores: scale 291 s, serve_load 48 s, encode 17 s; search (rewritten) 3 s,
# the others 4-9 s. The three long ones would be most of the suite's time, so they run with -m slow.
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("name, key", [pytest.param("encode", "rows", marks=_SLOW),
                                       ("search", "rows"), ("generate", "rows"),
                                       ("answer", "rows"), pytest.param("scale", "rows", marks=_SLOW),
                                       pytest.param("serve_load", "rows", marks=_SLOW), ("precision", "rows")])
def test_quick_mode_runs_and_writes_results(name, key, tmp_path, capsys):
    module = importlib.import_module(name)
    out = tmp_path / f"{name}.json"
    assert module.main(["--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results[key] and "machine" in results
    assert "|" in capsys.readouterr().out  # printed a table
    if name == "scale":
        assert results["exact_count"] and results["merged_vectors"] == results["passages"] == 20_000
    if name == "serve_load":
        assert all(r["errors"] == 0 and r["requests"] == 24 for r in results["rows"])
        assert results["batching"]["questions"] == 24 * 2 + 1  # every request reached the model, plus the warm-up
        burst = results["burst"]  # 4x capacity at once: answered or refused (503 + Retry-After) within the timeout
        assert burst["answered"] + burst["refused_503"] == burst["burst"] and burst["answered"] >= 1
        assert burst["retry_after_on_503"] and burst["all_within_timeout"]
        assert burst["recovery_s"] is not None and burst["recovery_s"] <= burst["timeout_s"]
    if name == "encode":
        paths = [r["path"] for r in results["rows"]]
        assert paths[0].startswith("naive") and any(p.startswith("ours int8") for p in paths)


def test_every_script_documents_itself(capsys):
    for name in ("encode", "search", "generate", "answer", "scale", "serve_load", "precision"):
        module = importlib.import_module(name)
        with pytest.raises(SystemExit) as exit_:
            module.main(["--help"])
        assert exit_.value.code == 0
        assert "--quick" in capsys.readouterr().out
    del sys.modules["search"]
