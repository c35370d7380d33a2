"""Language-link answer projection (CORA's language links, used at answer time).

When the best evidence is in a language other than the answer language and the datastore holds a passage of the
same group in the answer language, the answer is read again from that sibling with the question, and both
passages are cited. (The alternative, aligning the source span into the sibling with token embeddings, is not
implemented yet; which is better has not been measured.)
"""

from __future__ import annotations

import logging
from dataclasses import replace

from cora.datastore import Datastore
from cora.reader.base import Answer, Reader

logger = logging.getLogger(__name__)


def project_answer(reader: Reader, question: str, answer: Answer, datastore: Datastore) -> Answer:
    """Return the answer read from the answer-language sibling of its source passage, if there is one."""
    if not answer.evidence:
        return answer
    source = answer.evidence[0]
    if source.lang == answer.lang:
        return answer
    group = datastore.get(source.passage_id).group
    siblings = [p for p in datastore.rows(datastore.group_rows(group)) if p.lang == answer.lang]
    if not siblings:
        return answer
    projected = reader.read(question, siblings, answer.lang)
    target = replace(projected.evidence[0], role="projection")
    logger.debug("projected %r (%s) -> %r (%s)", answer.text, source.lang, projected.text, target.lang)
    return Answer(projected.text, answer.lang, projected.score, [source, target], projected=True)
