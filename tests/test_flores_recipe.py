"""recipes/flores_query_tower.py: FLORES files are read strictly, recall counts the own sentence's rank, and a
fresh adapter (LoRA's B at zero) scores exactly as the frozen backbone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import flores  # noqa: E402
import flores_query_tower  # noqa: E402

from cora.errors import DataFormatError  # noqa: E402

SENTENCES = {"eng_Latn": ["The cat sleeps.", "Rain falls in spring.", "He reads a book."],
             "deu_Latn": ["Die Katze schläft.", "Im Frühling fällt Regen.", "Er liest ein Buch."],
             "amh_Ethi": ["ድመቷ ትተኛለች።", "በፀደይ ዝናብ ይዘንባል።", "መጽሐፍ ያነባል።"]}


def _write(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for code, lines in SENTENCES.items():
        (folder / f"{code}.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in enumerate(lines)), encoding="utf-8")
    return folder


def test_read_flores_names_the_bad_line(tmp_path):
    good = _write(tmp_path / "f") / "eng_Latn.tsv"
    assert flores.read_flores(good) == {"0": "The cat sleeps.", "1": "Rain falls in spring.",
                                                    "2": "He reads a book."}
    bad = tmp_path / "bad.tsv"
    bad.write_text("0\tone\n0\tagain\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad.tsv:2.*index_id.*duplicate"):
        flores.read_flores(bad)


def test_every_training_language_counts_as_trained_whatever_its_tag():
    # FLORES tags (code_Script) against the training sets' tags: 'twi_Latn' is Akan ('ak') to langcodes, as 'twi' is
    for code in ("twi_Latn", "swh_Latn", "hau_Latn", "zho_Hant", "arb_Arab", "fon_Latn"):
        assert flores_query_tower.base_code(code) in flores_query_tower.TRAINED, code
    for code in ("amh_Ethi", "xho_Latn", "som_Latn"):
        assert flores_query_tower.base_code(code) not in flores_query_tower.TRAINED, code


def test_recall_counts_the_rank_of_the_own_row():
    store = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0, 0], [0.9, 0.5, 0], [0, 0.2, 0.1]], dtype=np.float32)  # right, 2nd, 2nd
    assert flores_query_tower.recall_at(queries, store, ks=(1, 2)) == {"R@1": 33.33, "R@2": 100.0}


def test_a_fresh_adapter_scores_as_the_frozen_backbone(tiny_encoder_dir, tmp_path):
    from cora.encoder import Encoder

    enc = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu")
    enc.add_query_adapter(rank=4)
    enc.save_pretrained(tmp_path / "q")
    assert flores_query_tower.main(["--data", str(_write(tmp_path / "flores")), "--encoder", str(tmp_path / "q"),
                                    "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert set(result["languages"]) == {"amh_Ethi", "deu_Latn"} and result["sentences"] == 3
    assert result["languages"]["deu_Latn"]["trained"] and not result["languages"]["amh_Ethi"]["trained"]
    for row in result["languages"].values():
        assert row["adapter"] == row["frozen"]
    assert set(result["summary"]) == {"trained languages", "unseen languages"}


def test_skip_scores_only_the_sentences_after_the_first_n(tiny_encoder_dir, tmp_path):
    from cora.encoder import Encoder

    enc = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu")
    enc.add_query_adapter(rank=4)
    enc.save_pretrained(tmp_path / "q")
    args = ["--data", str(_write(tmp_path / "flores")), "--encoder", str(tmp_path / "q"), "--langs", "deu_Latn"]
    assert flores_query_tower.main([*args, "--skip", "1", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert (result["skip"], result["sentences"], list(result["languages"])) == (1, 2, ["deu_Latn"])
    with pytest.raises(SystemExit, match="leaves no sentence"):
        flores_query_tower.main([*args, "--skip", "3", "--out", str(tmp_path / "out2")])
