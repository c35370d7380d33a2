"""cora.mining: the one answer test, the saved records, and the mining of a round on hand-made labels."""

from __future__ import annotations

from cora.evaluation.text import answer_occurrences, contains_answer, normalize_answer
from cora.mining import Label, Mined, MinedQuestion, QuestionLabels, Retrieved, load_labels, mine, save_labels
from cora.questions import Question


# ------------------------------------------------------------------------------------------ contains_answer
def test_contains_answer_is_normalised_as_the_answer_scorers_are():
    # Case and punctuation do not matter (the XOR 'fixed' / MKQA normalisation), nor runs of whitespace.
    assert contains_answer("The Nile is a river in Africa.", ["africa"])
    assert contains_answer("deaths: 23,087 in 2020", ["23087"])
    assert contains_answer("Kamala Harris, the U.S. vice president", ["US  vice-president"]) is False
    assert contains_answer("Kamala Harris, the U.S. vice president", ["us vice president"])
    assert contains_answer("İstanbul'da", ["i̇stanbul"])  # agglutinated suffix: substring, no word boundary
    assert contains_answer("东京都是日本的首都", ["东京"])  # no spaces in the script
    # Empty or punctuation-only answers never match.
    assert not contains_answer("anything", ["", "  ", "..."])
    assert not contains_answer("The Moon orbits the Earth", ["Mars"])
    assert normalize_answer("  The  U.S.!  ") == "the us"


def test_answer_occurrences_give_the_passage_s_own_spelling():
    text = "The Nile flows in AFRICA; africa's longest river (U.S. spelling)."
    assert answer_occurrences(text, ["Africa"]) == ["AFRICA", "africa"]
    assert answer_occurrences(text, ["us spelling"]) == ["U.S. spelling"]
    assert answer_occurrences(text, ["Asia", ""]) == []
    for found in answer_occurrences(text, ["africa", "nile"]):
        assert found in text


# ------------------------------------------------------------------------------------------------ records
def test_records_keep_the_saved_json_layout(tmp_path):
    r = Retrieved({"q1": [3, 1], "q2": []})
    r.save(tmp_path / "retrieved.json")
    assert (tmp_path / "retrieved.json").read_text().replace(" ", "").replace("\n", "") == '{"q1":[3,1],"q2":[]}'
    assert Retrieved.load(tmp_path / "retrieved.json") == r

    labels = [QuestionLabels("q1", [Label(3, "en", "Africa", True, True), Label(1, "de", "", False, False)])]
    save_labels(tmp_path / "labels.jsonl", labels)
    line = (tmp_path / "labels.jsonl").read_text().strip()
    assert line.startswith('{"id": "q1", "labels": [{"row": 3, "lang": "en", "prediction": "Africa", "correct": true')
    assert load_labels(tmp_path / "labels.jsonl") == {"q1": labels[0].labels}

    m = Mined(2, {"hard_negatives": 1}, {"de->en": 2}, {"q1": MinedQuestion({3: "reader", 5: "gold"}, [1])})
    assert m.to_dict() == {"round": 2, "counts": {"hard_negatives": 1}, "new_cross_lingual_positives": {"de->en": 2},
                           "new_cross_lingual_total": 2,
                           "questions": {"q1": {"positives": {"3": "reader", "5": "gold"}, "hard_negatives": [1]}}}
    m.save(tmp_path / "mined.json")
    assert Mined.load(tmp_path / "mined.json") == m


# ------------------------------------------------------------------------------------------------- mining
def test_mine_applies_cora_s_rule_expands_groups_and_accumulates(datastore):
    row = datastore.row_of
    q = Question("nile/en", "where is the nile river", "en", ["Africa"], answers_by_lang={"de": ["Afrika"]})
    labels = {q.id: [Label(row("moon-en"), "en", "Earth", False, False),
                     Label(row("nile-en"), "en", "Africa", True, True),
                     Label(row("tea-en"), "en", "x", False, False)]}
    asked = []

    def confirm(question, p):
        asked.append(p.id)
        return p.id == "nile-es"

    first = mine(1, [q], labels, datastore, confirm, hard_negatives=1)
    rec = first.questions[q.id]
    assert rec.positives == {row("nile-en"): "reader", row("nile-de"): "expand-answer",
                             row("nile-es"): "expand-reader"}
    assert rec.hard_negatives == [row("moon-en")]  # the first, capped at hard_negatives
    assert asked == ["nile-es"]  # the German version holds 'Afrika': no need to ask the reader
    assert first.counts["reader_positive_questions"] == 1 and first.new_cross_lingual_total == 2
    assert first.new_cross_lingual_positives == {"en->de": 1, "en->es": 1}
    assert rec.positive_rows(datastore, "en")[0] == row("nile-en")

    # Round 2: the reader now only finds the answer string (fallback); old positives stay, nothing is new.
    labels2 = {q.id: [Label(row("nile-en"), "en", "river", False, True)]}
    second = mine(2, [q], labels2, datastore, lambda *_: False, hard_negatives=1, previous=first)
    assert set(second.questions[q.id].positives) == set(rec.positives)
    assert second.counts["fallback_questions"] == 1 and second.new_cross_lingual_total == 0


class _SpanReader:
    """An extractive stand-in: answers with a span of the passage (the gold answer when the passage holds it, else
    the passage's last word), and records what it read."""

    def __init__(self, answers: list[str]):
        self.answers, self.read_ids = answers, []

    def read(self, question, passages, lang):
        from types import SimpleNamespace

        (p,) = passages
        self.read_ids.append(p.id)
        hit = next((a for a in self.answers if a.lower() in p.text.lower()), None)
        return SimpleNamespace(text=hit or p.text.split()[-1])


def test_labelling_only_answer_holding_passages_gives_the_same_verdicts(datastore):
    from cora.mining import label_questions

    q = Question("nile/en", "where is the nile river", "en", ["Africa"], answers_by_lang={"de": ["Afrika"]})
    rows = [datastore.row_of(i) for i in ("moon-en", "nile-de", "tea-es", "nile-en", "solo-en")]
    retrieved = Retrieved({q.id: rows})
    full_reader, lean_reader = _SpanReader(["Africa", "Afrika"]), _SpanReader(["Africa", "Afrika"])
    full = label_questions(full_reader, [q], retrieved, datastore, depth=4, progress=False)
    lean = label_questions(lean_reader, [q], retrieved, datastore, depth=4, progress=False, read_answerless=False)
    assert full_reader.read_ids == ["moon-en", "nile-de", "tea-es", "nile-en"]  # depth 4: solo-en is not labelled
    assert lean_reader.read_ids == ["nile-de", "nile-en"]  # only the passages holding an answer in their language
    verdict = [(lb.row, lb.lang, lb.correct, lb.contains) for lb in full[0].labels]
    assert [(lb.row, lb.lang, lb.correct, lb.contains) for lb in lean[0].labels] == verdict
    assert [lb.correct for lb in lean[0].labels] == [False, True, False, True]
    assert [lb.prediction for lb in lean[0].labels] == ["", "Afrika", "", "Africa"]  # unread: empty prediction
    assert mine(1, [q], {q.id: lean[0].labels}, datastore, lambda *_: False, 3).questions[q.id].hard_negatives == \
        mine(1, [q], {q.id: full[0].labels}, datastore, lambda *_: False, 3).questions[q.id].hard_negatives
