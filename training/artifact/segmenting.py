"""A report's text into the units the ATT&CK model classifies, one code path for the service's report
route, the report command and `evaluate --task attack-report`.

Sentences come from pysbd (rule-based, the "Golden Rules" of sentence boundaries: it keeps "e.g.", "U.S.",
"cmd.exe" and IP addresses inside their sentence), run per paragraph (blank-line blocks), so a heading or
a list item never glues onto the next paragraph's first sentence. Each unit classifies its sentence,
optionally with its neighbours in the paragraph as context; its evidence span is always its own sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*")  # a word: letters, maybe hyphenated ("attacker-controlled")
_PUNCT = "\"'()[]{}<>.,;:!?“”‘’«»"


@dataclass(frozen=True)
class Unit:
    """One classified unit: `text` is what the model reads; `start`/`end` the sentence it stands for."""

    start: int
    end: int
    text: str
    paragraph: int


@lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank paragraph."""
    out, pos = [], 0
    for m in [*_PARAGRAPH_BREAK.finditer(text), None]:
        end = m.start() if m else len(text)
        chunk = text[pos:end]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            out.append((pos + lead, pos + len(chunk.rstrip())))
        pos = m.end() if m else len(text)
    return out


def sentences(text: str) -> list[tuple[int, int, int]]:
    """(start, end, paragraph index) of every sentence, offsets into `text`, whitespace trimmed."""
    out = []
    for p, (a, b) in enumerate(paragraphs(text)):
        cursor = a
        for s in _segmenter().segment(text[a:b]):
            s = s.strip()
            if not s:
                continue
            # pysbd returns the sentence strings; find each where the previous one ended (its own char_span
            # search can land on an earlier repeat of the same sentence)
            at = text.find(s, cursor, b)
            if at < 0:  # not expected with clean=False; fall back to the paragraph as one sentence
                return [(a, b, p) for p, (a, b) in enumerate(paragraphs(text))]
            out.append((at, at + len(s), p))
            cursor = at + len(s)
    return out


def is_prose(sentence: str, min_words: int = 4) -> bool:
    """Whether a sentence reads as prose: at least `min_words` of its whitespace-separated tokens are words
    of letters, and words are at least half its tokens. IoC lists, hashes, URLs, file paths, page numbers
    and short headings are not."""
    tokens = sentence.split()
    words = sum(1 for t in tokens if _WORD.fullmatch(t.strip(_PUNCT)))
    return words >= min_words and words >= 0.5 * len(tokens)


def units(text: str, context: int = 0, prose_only: bool = True) -> list[Unit]:
    """The units of `text`: each (prose) sentence, read with up to `context` neighbouring sentences of its
    paragraph on each side."""
    sents = sentences(text)
    out = []
    for i, (a, b, p) in enumerate(sents):
        if prose_only and not is_prose(text[a:b]):
            continue
        lo, hi = i, i
        while lo > 0 and i - lo < context and sents[lo - 1][2] == p:
            lo -= 1
        while hi < len(sents) - 1 and hi - i < context and sents[hi + 1][2] == p:
            hi += 1
        out.append(Unit(a, b, text[sents[lo][0] : sents[hi][1]], p))
    return out
