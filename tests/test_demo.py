"""The demo path on what ships: the offline me5-small index, the shipped mdpr-me5-small query tower and the
shipped me5-small-reader, answering the packaged sample questions above an F1 floor.

tests/test_reader_training.py checks the shipped reader alone and tests/test_packaging.py that the files are in
the wheel; this is the one test that loads both shipped models and runs them together as a user first does.
"""

from __future__ import annotations

DEMO_F1_FLOOR = 60.0  # the mean token F1 measured with the shipped models is 72.7 over 20 questions (CI's wheel
# check keeps a looser floor of 50)


def test_demo_answers_the_sample_with_the_shipped_reader_and_query_tower(tmp_path):
    from cora.commands.demo import demo
    from cora.server import _query_tower

    run = demo(out=tmp_path / "demo")
    assert run.pipeline.config.reader == "me5-small-reader"
    # The shipped query tower is loaded and used for questions in languages the sample datastore lacks.
    assert _query_tower(run.pipeline) == {"name": "mdpr-me5-small", "adapter": "query_adapter",
                                          "scope": "cross-lingual"}
    missing = {q.lang for q in run.questions} - set(run.datastore.languages)
    assert missing, "the sample should hold questions the query tower serves"
    assert len(run.answers) == len(run.questions) == 20 and all(a.evidence for a in run.answers)
    assert all(f is not None for f in run.f1)
    assert run.mean_f1 >= DEMO_F1_FLOOR, [(q.question, a.text) for q, a in zip(run.questions, run.answers, strict=True)]
