"""recipes/cora_loop_afriqa.py: the loop's training questions carry answers (question language and pivot) but no
gold passage; the gold group goes only to the label-quality file; translations only in the ablation."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import afriqa  # noqa: E402
import cora_loop_afriqa  # noqa: E402

QS = [afriqa.AfriQAQuestion("7", "Menene sunan komfuta ta farko?", "hau", "en", ["ENIAC"], ["ENIAC"],
                            "What was the name of the first computer?", "afriqa:abc"),
      afriqa.AfriQAQuestion("8", "Ina?", "wol", "fr", [], [], "Où ?", None)]


def test_training_questions_have_no_gold_passage_and_no_translation():
    [q] = cora_loop_afriqa.loop_questions(QS, "train", gold=False)  # the unanswerable one is left out
    assert (q.id, q.question, q.lang, q.answers, q.answers_by_lang) == (
        "hau/train/7", "Menene sunan komfuta ta farko?", "hau", ["ENIAC"], {"en": ["ENIAC"]})
    assert q.gold_passage is None and q.gold_group is None
    [g] = cora_loop_afriqa.loop_questions(QS, "train", gold=True)
    assert g.id == q.id and g.gold_group == "afriqa:abc" and g.gold_passage is None


def test_translation_ablation_adds_the_pivot_question():
    qs = cora_loop_afriqa.loop_questions(QS, "train", gold=False, translations=True)
    assert [(q.id, q.lang, q.answers) for q in qs] == [("hau/train/7", "hau", ["ENIAC"]),
                                                       ("hau/train/7/translated", "en", ["ENIAC"])]
    assert qs[1].question == "What was the name of the first computer?"


def test_teacher_ceiling_counts_an_answer_in_any_language_within_the_cut_off():
    import afriqa_teacher_ceiling

    from cora.questions import Question

    texts = ["nothing here", "the ENIAC was built in 1945", "Paris est la capitale"]
    qs = [Question("hau/dev/1", "Menene?", "hau", ["ENIAC"]),
          Question("hau/dev/2", "Menene kuma?", "hau", ["ENIAC"]),
          Question("wol/dev/3", "Fan la?", "wol", ["Parii"], answers_by_lang={"fr": ["Paris"]}),
          Question("wol/dev/4", "Fan la kat?", "wol", ["Parii"], answers_by_lang={"fr": ["Paris"]})]
    at = lambda row, rank: [0] * (rank - 1) + [row] + [0] * (30 - rank)  # noqa: E731
    rankings = [at(1, 1), at(1, 21), at(2, 5), at(2, 6)]
    table = afriqa_teacher_ceiling.recall(qs, rankings, texts)
    # [top 20, top 5]: rank 21 is out of both; the French (pivot) answer counts; rank 6 is in the top 20 only.
    assert table == {"hau": [50.0, 50.0], "wol": [100.0, 50.0], "macro": [75.0, 50.0]}


def test_flores_distillation_pairs_each_language_with_its_pivot_in_index_order(tmp_path):
    # ids out of file order and past 9, so a text sort would put "10" before "2"
    rows = {"eng_Latn": {"10": "Ten.", "2": "Two.", "1": "One."}, "fra_Latn": {"10": "Dix.", "2": "Deux.", "1": "Un."}}
    for lang, code in cora_loop_afriqa.FLORES_CODES.items():
        rows[code] = {i: f"{lang} {i}" for i in ("10", "2", "1")}
    for code, sentences in rows.items():
        (tmp_path / f"{code}.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in sentences.items()), encoding="utf-8")
    qs = cora_loop_afriqa.flores_distill_questions(tmp_path, 2)
    assert len(qs) == 20 and all(q.answers == [] for q in qs)
    by_id = {q.id: (q.question, q.lang, q.translation) for q in qs}
    assert by_id["flores/hau_Latn/1"] == ("hau 1", "hau", "One.")
    assert by_id["flores/hau_Latn/2"] == ("hau 2", "hau", "Two.")
    assert by_id["flores/wol_Latn/2"] == ("wol 2", "wol", "Deux.")  # Wolof's AfriQA evidence is French
    assert by_id["flores/swh_Latn/1"] == ("swa 1", "swa", "One.")  # Swahili is 'swh' in FLORES
    assert "flores/hau_Latn/10" not in by_id  # the first 2 by numeric id


def test_flores_pairs_refuse_files_that_do_not_line_up(tmp_path):
    import flores
    import pytest

    from cora.errors import DataFormatError

    (tmp_path / "eng_Latn.tsv").write_text("0\tA.\n1\tB.\n", encoding="utf-8")
    (tmp_path / "hau_Latn.tsv").write_text("0\tA.\n2\tC.\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"hau_Latn.tsv.*index_id.*eng_Latn.tsv"):
        flores.sentence_pairs(tmp_path, "hau_Latn", "eng_Latn")
    with pytest.raises(FileNotFoundError, match="yor_Latn"):
        flores.sentence_pairs(tmp_path, "yor_Latn", "eng_Latn")
