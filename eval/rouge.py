"""
ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures exactly as lm-evaluation-harness's truthfulqa_gen computes them with
rouge_score, in plain Python (standard library only).

    rouge(references, prediction) -> {"rouge1": f, "rouge2": f, "rougeLsum": f}   # the best over references
    rouge_scores(references, prediction) -> [{"rouge1": f, "rouge2": f, "rougeLsum": f}, ...]  # one per reference
    rouge_pair(target, prediction) -> {"rouge1": f, "rouge2": f, "rougeLsum": f}  # rouge_score on raw texts
    tokenize(text) -> list[str]                                                    # rouge_score's default tokens

F-measures are in 0-1. The harness reports 100 times them: its utils.rouge([ref], [prediction])[t] equals
100 * rouge_scores([ref], prediction)[0][t], float for float. references is one str or a list of str; rouge_scores
scores each reference on its own, as the harness's process_results_gen does, and rouge takes the per-type maximum
(its rouge1_max etc. over the correct answers).

What the harness does (lm_eval/tasks/truthfulqa/utils.py, lm-eval 0.4.x): RougeScorer(["rouge1", "rouge2",
"rougeLsum"]) with rouge_score's defaults (no stemmer, no sentence splitter), and before scoring both texts replace
" . " with ".\\n" (its _prepare_summary), which only matters to ROUGE-Lsum. rouge_score then:
  - tokenizes: lowercase (str.lower(), so non-ASCII letters that lowercase to ASCII count), runs of [a-z0-9] are the
    tokens, everything else separates them (accents, CJK, punctuation vanish);
  - ROUGE-N: clipped n-gram overlap; precision over the prediction's n-grams, recall over the target's, each
    denominator at least 1; F1 = 2PR / (P + R), 0 when P + R = 0;
  - ROUGE-Lsum: splits both texts on "\\n" (empty lines dropped); for each target sentence, the union of the token
    positions of one LCS with each prediction sentence (rouge_score's particular LCS, read back from its table);
    each such token is a hit while both texts still have an unused copy of it; P = hits / prediction tokens,
    R = hits / target tokens.
tests/test_metrics.py checks equality with rouge_score and with the harness's own function to 1e-9.
"""
import re
from collections import Counter

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
_TOKEN = re.compile(r'[a-z0-9]+')


def tokenize(text):
    """rouge_score's DefaultTokenizer (no stemmer): lowercase, then the runs of ASCII letters and digits."""
    return _TOKEN.findall(text.lower())


def _f1(precision, recall):
    # rouge_score's scoring.fmeasure, in its operation order
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _rouge_n(target, prediction, n):
    t = Counter(zip(*[target[i:] for i in range(n)]))
    p = Counter(zip(*[prediction[i:] for i in range(n)]))
    overlap = sum(min(c, p[g]) for g, c in t.items())
    return _f1(overlap / max(sum(p.values()), 1), overlap / max(sum(t.values()), 1))


def _lcs_positions(ref, can):
    """The positions in ref of the LCS of ref and can that rouge_score's table read-back picks."""
    # table[i][j] = LCS length of ref[:i] and can[:j]
    table = [[0] * (len(can) + 1)]
    for x in ref:
        prev, row = table[-1], [0]
        for j, y in enumerate(can):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        table.append(row)
    # read back from the end: take a match; else move along the prediction only if that keeps a strictly longer LCS
    positions = []
    i, j = len(ref), len(can)
    while i > 0 and j > 0:
        if ref[i - 1] == can[j - 1]:
            positions.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions


def _rouge_lsum(target, prediction):
    sentences = lambda text: [tokenize(s) for s in text.split("\n") if s]  # noqa: E731
    refs, cans = sentences(target), sentences(prediction)
    m, n = sum(map(len, refs)), sum(map(len, cans))
    if not refs or not cans or not m or not n:
        return 0.0
    ref_left = Counter(t for s in refs for t in s)  # unused copies of each token, on each side
    can_left = Counter(t for s in cans for t in s)
    hits = 0
    for r in refs:
        union = sorted(set().union(*[_lcs_positions(r, c) for c in cans]))
        for token in (r[i] for i in union):
            if can_left[token] > 0 and ref_left[token] > 0:
                hits += 1
                can_left[token] -= 1
                ref_left[token] -= 1
    return _f1(hits / n, hits / m)


def rouge_pair(target, prediction):
    """F-measures of RougeScorer(["rouge1", "rouge2", "rougeLsum"]).score(target, prediction), texts as given."""
    t, p = tokenize(target), tokenize(prediction)
    return {"rouge1": _rouge_n(t, p, 1), "rouge2": _rouge_n(t, p, 2), "rougeLsum": _rouge_lsum(target, prediction)}


def _prepare(text):
    # the harness's _prepare_summary: a spaced period ends a sentence, for ROUGE-Lsum
    return text.replace(" . ", ".\n")


def rouge_scores(references, prediction):
    """One dict of F-measures (0-1) per reference, as the harness scores a prediction against each answer."""
    refs = [references] if isinstance(references, str) else list(references)
    if not isinstance(prediction, str) or not all(isinstance(r, str) for r in refs):
        raise TypeError("references must be a str or a list of str, prediction a str")
    prediction = _prepare(prediction)
    return [rouge_pair(_prepare(r), prediction) for r in refs]


def rouge(references, prediction):
    """F-measures (0-1) of prediction against one reference (a str), or the best of each type over several."""
    scores = rouge_scores(references, prediction)
    if not scores:
        raise ValueError("no references")
    return {t: max(s[t] for s in scores) for t in ROUGE_TYPES}
