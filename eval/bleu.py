"""
BLEU exactly as sacreBLEU computes it by default, in plain Python (standard library only).

    corpus_bleu(hypotheses, references, tokenize="13a") -> float    # == sacrebleu.corpus_bleu(hypotheses, [references],
                                                                     #      tokenize=tokenize).score
    sentence_bleu(hypothesis, references, tokenize="13a") -> float  # == sacrebleu.sentence_bleu(hypothesis, references,
                                                                     #      tokenize=tokenize).score
    bleu_stats(hypotheses, references, effective_order=False, tokenize="13a") -> dict  # score, precisions, bp, counts
    tokenize_13a(line) -> list[str]                  # the tokens BLEU compares (default)
    tokenize_intl(line) -> list[str]                 # sacreBLEU's tokenize="intl" (mteval-v14's international tokens)

"sacreBLEU's default" is the WMT recipe, signature nrefs:N|case:mixed|eff:no|tok:13a|smooth:exp:
  - 13a tokenization (mteval-v13a.pl's): ASCII punctuation becomes separate tokens, except that periods and commas
    stay inside numbers ("3.14", "1,000") and hyphens inside words ("well-known"; but "10-year" -> "10 - year");
    case-sensitive;
  - modified n-gram precisions for n = 1..4: a hypothesis n-gram matches at most as many times as it occurs in the
    reference that has it most often;
  - 'exp' smoothing (mteval's): the k-th order with no match (k counting such orders only) gets precision
    1 / (2^k * total) instead of 0; but a corpus with no match of any order scores 0;
  - brevity penalty exp(1 - r/c) when c < r, c = hypothesis tokens, r = sum over segments of the reference length
    closest to the hypothesis length (on a tie the shorter reference);
  - the geometric mean over all 4 orders (an order with no n-grams at all, i.e. every hypothesis shorter than n,
    makes the corpus score 0); sentence_bleu uses sacreBLEU's sentence default, "effective order": only the orders
    the hypothesis has n-grams of.
tokenize="intl" is what lm-evaluation-harness's truthfulqa_gen BLEU uses (sacrebleu.corpus_bleu(preds, [[ref]],
smooth_method="exp", tokenize="intl", use_effective_order=False), i.e. our corpus_bleu([pred], [ref], tokenize="intl")):
mteval-v14's rules, each over the previous one's output: a punctuation mark (Unicode category P*) after a non-digit
(anything outside category N*) is split off, then one before a non-digit, then every symbol (S*). So "3.14" and
"1,000" stay whole, and so does the period of "in 2024." at a segment's very end (mteval-v14 does that too); no
entities, no <skipped>. tokenize="none" splits on whitespace only. Both strip trailing whitespace first, as sacreBLEU.
Scores are on sacreBLEU's 0-100 scale and equal to its floats (tests/test_bleu.py checks 1e-9 on adversarial
and random corpora). About 2.5x faster than sacreBLEU on 10,000 Alpaca-length segments (intl: ~1.8x on WMT): the
tokenizer's regexes run once over the whole corpus rather than once per segment, and n-grams are counted in C-level
Counter/map calls.

CLI, one segment per line (UTF-8), several REF_FILEs for several references per segment:
    python eval/bleu.py HYP_FILE REF_FILE [REF_FILE ...]
"""
import math
import re
import string
import sys
import unicodedata
from collections import Counter
from itertools import chain, repeat

MAX_ORDER = 4

# -----------------------------------------------------------------------------
# 13a tokenization

# Step 1 pads every ASCII punctuation mark with spaces except the four that can sit inside numbers and words:
# apostrophe ("don't"), period, comma ("3.14", "1,000") and hyphen ("well-known").
_SYMBOLS = ''.join(c for c in string.punctuation if c not in "',-.")
_SYMBOL = re.compile(f'([{re.escape(_SYMBOLS)}])')
# mteval's regex pads the space character too; we don't, because that cannot change a token and costs time. Steps
# 2-4 decide each split from a character's immediate neighbours (and steps 2-3 from whether the left neighbour was the
# period/comma of the previous match), where a space only ever counts as "a non-digit": a run of 3 spaces acts
# exactly like 1, and the final whitespace split is the same (tests/test_bleu.py checks every short string).
# Steps 2-4, in this order, each over the previous one's output:
_NONDIGIT_THEN_STOP = re.compile(r'([^0-9])([.,])')  # "end." -> "end . ": split a period/comma off a non-digit...
_STOP_THEN_NONDIGIT = re.compile(r'([.,])([^0-9])')  # ...and off a non-digit after it: ".x" -> " . x", "3.14" stays
_DIGIT_THEN_DASH = re.compile(r'-(?<=[0-9]-)')       # a dash after a digit: "3-4" -> "3 - 4", "10-year" -> "10 - year"
# Steps 2 and 3 consume both characters they match, and that is part of their meaning: in "a..1" step 2 splits the
# first "." but not the second (its left neighbour was consumed), and step 3 then leaves ".1" whole, while "a...1"
# splits into 5 tokens. So we keep those two regexes exactly and only make applying them cheap (see _pad_stops).
# Step 4 cannot overlap itself, so a lookbehind does the same; it starts with the literal "-" for a fast scan.
_PADDED = {'.': ' . ', ',': ' , '}


def _pad_stops(pattern, text, group):
    """re.sub(pattern, <the match with spaces around its period/comma group>, text).

    Python 3.11 expands a replacement template like r'\\1 \\2 ' with a Python call per match; splitting on the two
    groups and swapping the period/comma group for its padded self gives the same string, built in C."""
    parts = pattern.split(text)  # [before, g1, g2, between, g1, g2, ..., after]
    parts[group::3] = map(_PADDED.__getitem__, parts[group::3])
    return ''.join(parts)


def _clean(line):
    """mteval's language-independent part on one segment, in sacreBLEU's order."""
    line = line.rstrip()  # sacreBLEU strips first, so a final "-\n" is a dash, not a line broken at a hyphen
    if '<skipped>' in line:
        line = line.replace('<skipped>', '')
    if '\n' in line:
        line = line.replace('-\n', '').replace('\n', ' ')
    if '&' in line:
        # only these four entities, in this order: "&amp;quot;" ends as "&quot;", but "&amp;lt;" as "<"
        line = line.replace('&quot;', '"').replace('&amp;', '&').replace('&lt;', '<').replace('&gt;', '>')
    return line


def _tokenize_all(lines):
    """13a-tokenize many segments at once: list of str -> list of token lists.

    The regexes run once over all segments joined as ' seg1 \\n seg2 \\n ... '. That is exact: cleaned segments
    hold no newline, each is padded with spaces as mteval pads it, and no rule can match across ' \\n ' (neither
    character is a symbol, period, comma, dash or digit), so each segment gets the matches it gets alone."""
    text = ' ' + ' \n '.join(map(_clean, lines)) + ' '
    text = ' '.join(_SYMBOL.split(text))  # splitting on a captured symbol and joining with ' ' pads each symbol
    text = _pad_stops(_NONDIGIT_THEN_STOP, text, 2)  # r'\1 \2 '
    text = _pad_stops(_STOP_THEN_NONDIGIT, text, 1)  # r' \1 \2'
    text = _DIGIT_THEN_DASH.sub(' - ', text)
    return [seg.split() for seg in text.split('\n')]


def tokenize_13a(line):
    """The 13a tokens of one segment; ' '.join of them is sacreBLEU's BLEU()._preprocess_segment(line)."""
    return _tokenize_all([line])[0]

# -----------------------------------------------------------------------------
# intl tokenization (mteval-v14's international tokenizer, sacreBLEU's TokenizerV14International)

# sacreBLEU runs three `regex` substitutions with Unicode properties, each over the previous one's output:
#   (\P{N})(\p{P}) -> r'\1 \2 ',   (\p{P})(\P{N}) -> r' \1 \2',   (\p{S}) -> r' \1 '
# The standard library's re has no \p{...}, so we build the three classes from unicodedata's general categories.
# The `regex` module sacreBLEU uses knows a newer Unicode than Python 3.11's unicodedata (14.0); these code points
# were unassigned in 14.0 and are digits (N), punctuation (P) or symbols (S) in regex 2026.11's tables (Unicode 17).
# tests/test_metrics.py checks every code point against regex, so a newer regex shows up there.
_UNICODE_ADDITIONS = {
    'N': "10D40-10D49 116D0-116E3 11BF0-11BF9 11DE0-11DE9 11F50-11F59 1246F 12475-1247F 12550-12686 16130-16139 "
         "16D70-16D79 16FF4-16FF6 1CCF0-1CCF9 1D2C0-1D2D3 1E4F0-1E4F9 1E5F1-1E5FA",
    'P': "1B4E-1B4F 1B7F 2E60-2E63 10D6E 10ED0 113D4-113D5 113D7-113D8 11B00-11B09 11BE1 11F43-11F4F 16D6D-16D6F "
         "1E5FF",
    'S': "20C1-20C4 2427-2429 2B96 2FFC-2FFF 31E4-31E5 31EF FBC3-FBD2 FD90-FD91 FDC8-FDCE 10D8E-10D8F 10EC9-10ECA "
         "10ED1-10ED8 1CC00-1CCEF 1CCFA-1CCFC 1CD00-1CEB3 1CEBA-1CED0 1CED2-1CED4 1CEDD-1CEFD 1D1EB-1D1FF 1D253-1D25A "
         "1D25D-1D25E 1D260-1D27F 1DB00-1DB1C 1F1AE 1F6D8-1F6D9 1F6DC 1F774-1F77F 1F7D9-1F7DB 1F7F1-1F7FF 1F8B2-1F8BB "
         "1F8C0-1F8C1 1F8D0-1F8D8 1FA54-1FA57 1FA75-1FA77 1FA87-1FA8F 1FAAD-1FAAF 1FABB-1FABF 1FAC6 1FAC8 1FACC-1FACF "
         "1FADA-1FADD 1FADF 1FAE8-1FAEB 1FAEF 1FAF7-1FAFA 1FBCB-1FBEF 1FBFA",
}
# Segments are tokenized in one pass, joined by a separator character that none of them holds (normally NUL).
# Excluding it from the "non-digit" side of the first two rules means no match can reach across it, so each segment
# gets exactly the matches it gets alone (a mark at a segment's start or end has no neighbour there, as in sacreBLEU).
_SEPARATORS = [chr(cp) for cp in [*range(0x20), *range(0xF0000, 0xFFFFE)]]  # controls, then private use
_unicode_class_bodies = {}
_intl_rules = {}  # (separator, whether beyond the BMP) -> the three compiled rules
# re matches a character against a class's code points below U+10000 with one table lookup, but against those above
# one range at a time. So text without such characters (most text: they are emoji, historic scripts, math letters)
# gets classes cut at U+FFFF, several times faster; other text the full ones.
_BEYOND_BMP = re.compile('[\U00010000-\U0010ffff]')


def _unicode_classes(limit=0x110000):
    """'N', 'P', 'S' -> re character-class body (ranges of \\U escapes) of the code points below limit in that
    class."""
    cls = bytearray(b'-' * 0x110000)  # one byte per code point: its category's first letter if N/P/S, else '-'
    cat = unicodedata.category
    for cp in range(limit):  # the BMP alone takes ~10 ms, all of Unicode ~0.1 s
        c = cat(chr(cp))[0]
        if c in 'NPS':
            cls[cp] = ord(c)
    for c, spans in _UNICODE_ADDITIONS.items():
        for span in spans.split():
            a, _, b = span.partition('-')
            a, b = int(a, 16), int(b or a, 16)
            cls[a:b + 1] = c.encode() * (b + 1 - a)
    bodies = {}
    for c in 'NPS':
        ranges, key = [], c.encode()
        start = cls.find(key, 0, limit)
        while start != -1:
            end = start
            while end + 1 < len(cls) and cls[end + 1] == key[0]:
                end += 1
            ranges.append(f'\\U{start:08x}' if start == end else f'\\U{start:08x}-\\U{end:08x}')
            start = cls.find(key, end + 1, limit)
        bodies[c] = ''.join(ranges)
    return bodies


def _intl(sep, beyond_bmp):
    """The three compiled rules for segments joined by sep; the Unicode classes are built on first use."""
    key = sep, beyond_bmp
    if key not in _intl_rules:
        if beyond_bmp not in _unicode_class_bodies:
            _unicode_class_bodies[beyond_bmp] = _unicode_classes(0x110000 if beyond_bmp else 0x10000)
        n, p, sy = (_unicode_class_bodies[beyond_bmp][c] for c in 'NPS')
        x = f'\\U{ord(sep):08x}'
        _intl_rules[key] = (re.compile(f'([^{n}{x}])([{p}])'),  # a mark after a non-digit
                            re.compile(f'([{p}])([^{n}{x}])'),  # a mark before a non-digit
                            re.compile(f'([{sy}])'))            # any symbol
    return _intl_rules[key]


def _tokenize_intl_all(lines):
    """intl-tokenize many segments at once: list of str -> list of token lists (as _tokenize_all for 13a)."""
    lines = [line.rstrip() for line in lines]  # sacreBLEU tokenizes line.rstrip()
    beyond = [_BEYOND_BMP.search(line) is not None for line in lines]
    if not any(beyond):
        return _intl_pass(lines, False)
    # the segments with characters beyond U+FFFF in a pass of their own, with the slower full classes
    tokens = [None] * len(lines)
    for group in (False, True):
        where = [i for i, b in enumerate(beyond) if b == group]
        for i, toks in zip(where, _intl_pass([lines[i] for i in where], group) if where else []):
            tokens[i] = toks
    return tokens


def _intl_pass(lines, beyond_bmp):
    text = '\n'.join(lines)
    sep = next((c for c in _SEPARATORS if c not in text), None)
    if sep is None:
        raise ValueError("cannot tokenize: the segments hold every control and private-use character")
    after_nondigit, before_nondigit, symbol = _intl(sep, beyond_bmp)
    text = sep.join(lines)
    # re.sub with a template expands it with a Python call per match; splitting on the two groups and padding them in
    # place gives the same string. Each rule consumes both characters of its match (so in "a..1" the second period
    # is not split from the first by rule 1, and rule 2 leaves ".1" whole), and split() keeps exactly that.
    parts = after_nondigit.split(text)  # [before, g1, g2, between, g1, g2, ..., after]
    parts[1::3] = [g + ' ' for g in parts[1::3]]
    parts[2::3] = [g + ' ' for g in parts[2::3]]  # r'\1 \2 '
    parts = before_nondigit.split(''.join(parts))
    parts[1::3] = [' ' + g + ' ' for g in parts[1::3]]  # r' \1 \2'
    text = ' '.join(symbol.split(''.join(parts)))  # r' \1 ': joining with ' ' pads each captured symbol
    return [seg.split() for seg in text.split(sep)]


def tokenize_intl(line):
    """The intl tokens of one segment; ' '.join of them is BLEU(tokenize='intl')._preprocess_segment(line)."""
    return _tokenize_intl_all([line])[0]


def _tokenize_none_all(lines):
    return [line.split() for line in lines]


_TOKENIZERS = {'13a': _tokenize_all, 'intl': _tokenize_intl_all, 'none': _tokenize_none_all}


def _tokenizer(name):
    if name not in _TOKENIZERS:
        raise ValueError(f"tokenize must be one of {', '.join(map(repr, _TOKENIZERS))}, not {name!r}")
    return _TOKENIZERS[name]

# -----------------------------------------------------------------------------
# n-gram statistics


def _orders(tokens):
    """The n-grams of each order 1..MAX_ORDER: the tokens themselves, then tuples (so orders never share a key)."""
    return [tokens] + [zip(*[tokens[i:] for i in range(n)]) for n in range(2, MAX_ORDER + 1)]


def _reference_counts(refs):
    """n-gram -> how many times a hypothesis may match it: its count in the reference that has it most often."""
    counts = Counter(chain.from_iterable(_orders(refs[0])))
    for ref in refs[1:]:
        for g, c in Counter(chain.from_iterable(_orders(ref))).items():
            if c > counts[g]:
                counts[g] = c
    return counts


def sentence_refs(hypothesis, references):
    """Check one segment (hypothesis: a str; references: a str or a list of str) and return the references as a list"""
    if not isinstance(hypothesis, str):
        raise TypeError("hypothesis must be a str")
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("no references")
    if not all(isinstance(r, str) for r in refs):
        raise TypeError("references must be a str or a list of str")
    return refs


def corpus_streams(hypotheses, references):
    """Check a corpus (hypotheses: a list of str; references: a list of str, one per hypothesis, or a list of
    reference streams each aligned with the hypotheses, None where a segment lacks that reference) and return the
    references as a list of streams. ValueError on an empty corpus or misaligned streams, TypeError on a str where
    a list belongs. BLEU, chrF and TER take their corpora in this layout."""
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses):
        raise TypeError("hypotheses must be a list of str")
    if not hypotheses:
        raise ValueError("no hypotheses")
    n_hyp = len(hypotheses)
    if isinstance(references, str):
        raise TypeError("references must be a list of str (one per hypothesis) or a list of such lists, not a str")
    streams = [references] if references and isinstance(references[0], str) else list(references)
    if not streams:
        raise ValueError("no references")
    for k, stream in enumerate(streams):
        if isinstance(stream, str):  # a flat list of str mixed with lists: neither layout
            raise TypeError(f"reference stream {k} is a str: pass a list of str (one reference per hypothesis) "
                            "or a list of lists of str (reference streams)")
        if len(stream) != n_hyp:
            raise ValueError(f"reference stream {k} has {len(stream)} segments but there are {n_hyp} hypotheses")
        if not all(r is None or isinstance(r, str) for r in stream):
            raise TypeError(f"reference stream {k} holds something other than str or None")
    if any(None in stream for stream in streams):
        for i, refs in enumerate(zip(*streams)):
            if all(r is None for r in refs):
                raise ValueError(f"segment {i} has no reference (every reference stream holds None there)")
    return streams


def _corpus_stats(hypotheses, references, tokenize='13a'):
    """The sufficient statistics summed over segments: correct[n] and total[n] (clipped matches and hypothesis
    n-grams of order n+1), sys_len (hypothesis tokens) and ref_len (closest reference tokens)."""
    tokenize_all = _tokenizer(tokenize)
    streams = corpus_streams(hypotheses, references)
    hyps = tokenize_all(hypotheses)
    refs = [tokenize_all(['' if r is None else r for r in stream]) for stream in streams]
    if len(streams) > 1:  # None marks a missing reference (how sacreBLEU varies the number of references)
        refs = [[r[i] for r, stream in zip(refs, streams) if stream[i] is not None] for i in range(len(hyps))]
    else:
        refs = [[r] for r in refs[0]]

    correct, total = [0] * MAX_ORDER, [0] * MAX_ORDER
    sys_len = ref_len = 0
    for hyp, seg_refs in zip(hyps, refs):
        ref_counts = _reference_counts(seg_refs)
        for n, ngrams in enumerate(_orders(hyp)):
            counts = Counter(ngrams)
            # clipped matches: sum over hypothesis n-grams of min(count here, count allowed by the references)
            correct[n] += sum(map(min, counts.values(), map(ref_counts.get, counts, repeat(0))))
            total[n] += max(0, len(hyp) - n)
        sys_len += len(hyp)
        # the reference length closest to the hypothesis length; on a tie, the shorter reference
        ref_len += min((len(r) for r in seg_refs), key=lambda r: (abs(len(hyp) - r), r))
    return correct, total, sys_len, ref_len


def _bleu(correct, total, sys_len, ref_len, effective_order):
    """BLEU from the summed statistics, sacreBLEU's BLEU.compute_bleu with 'exp' smoothing, operation for operation
    so that the floats are equal too. Returns score, precisions (%), brevity penalty."""
    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * MAX_ORDER
    if not any(correct):  # nothing matched at all: 0, rather than a smoothed positive number
        return 0.0, precisions, bp
    order, smooth = MAX_ORDER, 1.0
    for n in range(MAX_ORDER):
        if total[n] == 0:  # no hypothesis has n+1 tokens: this order and the higher ones keep precision 0
            break
        if effective_order:  # sentence level: average over the orders that exist only
            order = n + 1
        if correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    # sacreBLEU floors log(0) at -9999999999, which makes exp(...) exactly 0.0
    logs = [math.log(p) if p != 0.0 else -9999999999 for p in precisions[:order]]
    return bp * math.exp(sum(logs) / order), precisions, bp


def bleu_stats(hypotheses, references, effective_order=False, tokenize='13a'):
    """BLEU with its details, as a dict: score (0-100), precisions (%, orders 1..4), bp, sys_len, ref_len, and
    correct/total (clipped matches / hypothesis n-grams per order). Arguments as for corpus_bleu; effective_order=True
    gives sentence_bleu's averaging."""
    correct, total, sys_len, ref_len = _corpus_stats(hypotheses, references, tokenize)
    score, precisions, bp = _bleu(correct, total, sys_len, ref_len, effective_order)
    return dict(score=score, precisions=precisions, bp=bp, sys_len=sys_len, ref_len=ref_len,
                correct=correct, total=total)


def corpus_bleu(hypotheses, references, tokenize='13a'):
    """Corpus BLEU (0-100) with sacreBLEU's defaults.

    hypotheses: list of str, one per segment.
    references: one of
      - a list of str, one reference per hypothesis:  corpus_bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, [refs])
      - a list of reference streams, sacreBLEU's layout: [stream1, stream2, ...], each a list of str aligned with
        hypotheses, so hypothesis i has references stream1[i], stream2[i], ... (NOT a list of per-hypothesis lists).
        A None in a stream means that segment lacks that reference; every segment needs at least one.
    tokenize: '13a' (sacreBLEU's default), 'intl' or 'none', as sacreBLEU's tokenize= argument.
    Raises ValueError on an empty corpus or a stream whose length differs from len(hypotheses) (sacreBLEU silently
    truncates to the shortest) or an unknown tokenize, TypeError on a str where a list belongs.
    """
    return bleu_stats(hypotheses, references, tokenize=tokenize)['score']


def sentence_bleu(hypothesis, references, tokenize='13a'):
    """Sentence BLEU (0-100) of one hypothesis against one reference (a str) or several (a list of str), equal to
    sacrebleu.sentence_bleu(hypothesis, references, tokenize=tokenize).score. It differs from corpus_bleu([hypothesis],
    ...) only by effective order: a hypothesis shorter than 4 tokens is scored on the orders it has (2 tokens matching
    a 2-token reference score 100, not 0)."""
    if not isinstance(hypothesis, str):
        raise TypeError("hypothesis must be a str")
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("no references")
    return bleu_stats([hypothesis], [[r] for r in refs], effective_order=True, tokenize=tokenize)['score']

# -----------------------------------------------------------------------------
# CLI


def _read_segments(path):
    # as sacreBLEU's CLI: only '\n' ends a segment (a '\r' before it is trailing whitespace, stripped by _clean)
    with open(path, encoding='utf-8', newline='\n') as f:
        return list(f)


def main(argv=None):
    """python eval/bleu.py HYP_FILE REF_FILE [REF_FILE ...]: print corpus BLEU; on bad input one line on stderr, 1."""
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python eval/bleu.py HYP_FILE REF_FILE [REF_FILE ...]  (one segment per line; prints corpus BLEU)"
    if argv[:1] in (['-h'], ['--help']):
        print(usage)
        return 0
    if len(argv) < 2:
        print(usage, file=sys.stderr)
        return 1
    segments = {}
    for path in argv:
        try:
            segments[path] = _read_segments(path)
        except OSError as e:
            print(f"error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
            return 1
        except UnicodeDecodeError as e:
            print(f"error: {path} is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
            return 1
    hyp_path, ref_paths = argv[0], argv[1:]
    if not segments[hyp_path]:
        print(f"error: {hyp_path} is empty", file=sys.stderr)
        return 1
    for path in ref_paths:
        if len(segments[path]) != len(segments[hyp_path]):
            print(f"error: {path} has {len(segments[path])} lines but {hyp_path} has {len(segments[hyp_path])}",
                  file=sys.stderr)
            return 1
    s = bleu_stats(segments[hyp_path], [segments[path] for path in ref_paths])
    ratio = s['sys_len'] / s['ref_len'] if s['ref_len'] else 0.0
    print(f"BLEU = {s['score']:.2f} {'/'.join(f'{p:.1f}' for p in s['precisions'])} (BP = {s['bp']:.3f} "
          f"ratio = {ratio:.3f} hyp_len = {s['sys_len']} ref_len = {s['ref_len']})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
