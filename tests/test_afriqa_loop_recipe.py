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
