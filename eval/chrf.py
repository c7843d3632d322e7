"""
chrF exactly as sacreBLEU 2.6.0 computes it by default, in plain Python (standard library only).

    corpus_chrf(hypotheses, references) -> float     # == sacrebleu.corpus_chrf(hypotheses, [references]).score
    sentence_chrf(hypothesis, references) -> float   # == sacrebleu.sentence_chrf(hypothesis, references).score

references take the same layouts as eval/bleu.py's corpus_bleu: a list of str (one reference per hypothesis), or a
list of reference streams (sacreBLEU's layout, None where a segment lacks that reference). sentence_chrf takes one
reference (a str) or several (a list of str).

sacreBLEU's defaults (signature nrefs:N|case:mixed|eff:yes|nc:6|nw:0|space:no) are:
  - character n-grams of orders 1..6 of each segment with all whitespace removed (Python's str.split() whitespace),
    case-sensitive, no word n-grams (plain chrF, not chrF++);
  - per order: hypothesis n-grams, reference n-grams and matches (an n-gram matches at most as often as it occurs in
    the reference); the hypothesis count is taken as 0 when the reference has no n-gram of that order;
  - with several references, each segment keeps the statistics of the reference with the best segment chrF (the
    first on a tie);
  - statistics are summed over the corpus, then precision and recall are averaged over the "effective" orders (those
    where both hypothesis and reference have n-grams) and combined as F-beta with beta = 2 (recall weighs 4x).
Scores are on the 0-100 scale and equal sacreBLEU's floats (tests/test_metrics.py checks 1e-9). About 2x faster than
sacreBLEU on WMT sentences: matches are counted in C-level map/Counter calls.
"""
from collections import Counter
from itertools import repeat

from eval.bleu import corpus_streams, sentence_refs

CHAR_ORDER = 6
BETA = 2


def _char_ngrams(line):
    """One Counter per order 1..CHAR_ORDER of the character n-grams of line without its whitespace."""
    line = ''.join(line.split())
    # zip of shifted copies, joined: the n-grams in C calls (a little faster than slicing in a comprehension)
    return [Counter(line)] + [Counter(map(''.join, zip(*[line[i:] for i in range(n)])))
                              for n in range(2, CHAR_ORDER + 1)]


def _match_stats(hyp_ngrams, ref_ngrams):
    """[hypothesis n-grams, reference n-grams, matches] for each order, flattened."""
    stats = []
    for h, r in zip(hyp_ngrams, ref_ngrams):
        n_ref = sum(r.values())
        n_hyp = sum(h.values()) if n_ref else 0  # sacreBLEU counts no hypothesis n-grams where the reference has none
        stats += [n_hyp, n_ref, sum(map(min, h.values(), map(r.get, h, repeat(0))))]
    return stats


def _f_score(stats):
    """chrF (0-100) from [hyp, ref, match] * CHAR_ORDER, operation for operation as sacreBLEU's CHRF._compute_f_score
    without eps smoothing, so that the floats are equal too."""
    factor = BETA ** 2
    avg_prec = avg_rec = 0.0
    effective_order = 0
    for i in range(CHAR_ORDER):
        n_hyp, n_ref, n_match = stats[3 * i: 3 * i + 3]
        if n_hyp > 0 and n_ref > 0:  # only orders both sides have count
            avg_prec += n_match / n_hyp
            avg_rec += n_match / n_ref
            effective_order += 1
    if effective_order == 0:
        return 0.0
    avg_prec /= effective_order
    avg_rec /= effective_order
    if avg_prec + avg_rec:
        score = (1 + factor) * avg_prec * avg_rec
        score /= factor * avg_prec + avg_rec
        return 100 * score
    return 0.0


def _segment_stats(hypothesis, references):
    """The statistics of the reference with the best segment chrF (the first on a tie)."""
    hyp_ngrams = _char_ngrams(hypothesis)
    best, best_f = None, -1.0
    for ref in references:
        stats = _match_stats(hyp_ngrams, _char_ngrams(ref))
        f = _f_score(stats)
        if f > best_f:
            best, best_f = stats, f
    return best


def corpus_chrf(hypotheses, references):
    """Corpus chrF (0-100) with sacreBLEU's defaults.

    hypotheses, references: a corpus as eval/bleu.py's corpus_streams describes it."""
    streams = corpus_streams(hypotheses, references)
    total = [0] * (3 * CHAR_ORDER)
    for hyp, refs in zip(hypotheses, zip(*streams)):
        stats = _segment_stats(hyp, [r for r in refs if r is not None])
        total = [a + b for a, b in zip(total, stats)]
    return _f_score(total)


def sentence_chrf(hypothesis, references):
    """chrF (0-100) of one hypothesis against one reference (a str) or several (a list of str), equal to
    sacrebleu.sentence_chrf(hypothesis, references).score, and to corpus_chrf of a one-segment corpus."""
    refs = sentence_refs(hypothesis, references)
    return _f_score(_segment_stats(hypothesis, refs))
