"""
TER exactly as sacreBLEU 2.6.0 computes it by default, in plain Python (standard library only).

    corpus_ter(hypotheses, references) -> float     # == sacrebleu.corpus_ter(hypotheses, [references]).score
    sentence_ter(hypothesis, references) -> float   # == sacrebleu.sentence_ter(hypothesis, references).score
    ter_edits(hypothesis_words, reference_words) -> int   # the edits (shifts + Levenshtein) of one pair

references take the same layouts as eval/bleu.py's corpus_bleu: a list of str (one reference per hypothesis), or a
list of reference streams (sacreBLEU's layout, None where a segment lacks that reference). sentence_ter takes one
reference (a str) or several (a list of str).

sacreBLEU's defaults (signature nrefs:N|case:lc|tok:tercom|norm:no|punct:yes|asian:no):
  - words = segment.rstrip().lower().split(): no tokenization beyond whitespace, case-insensitive;
  - edits of a pair = number of block shifts + the edit distance left after them (insertions, deletions,
    substitutions all cost 1), found greedily like Tercom: while some shift of a block of up to 10 words, by up to
    50 positions, lowers the edit distance, take the best one (largest gain, then longest block, then earliest block,
    then earliest target). Candidate blocks are hypothesis spans that equal a reference span, are misaligned in the
    current alignment, and are moved next to where their reference copy is aligned. At most 1,000 candidates are
    tried per pair; when that budget runs out, the search stops without taking its last best shift;
  - the edit distance is sacreBLEU's "beam" distance: only cells within 25 (or more, for very unequal lengths) of the
    length-scaled diagonal are computed, so on long, badly aligned pairs it can exceed the true Levenshtein distance;
    the alignment behind the candidate filter follows sacreBLEU's tie-breaking (match/substitution, then the step
    that skips a hypothesis word, then the one that skips a reference word);
  - a segment's edits are the fewest over its references, its length the mean reference length (in words); corpus
    TER = 100 * total edits / total length (100 if the length is 0 and there are edits, else 0).
Scores equal sacreBLEU's floats (tests/test_metrics.py checks 1e-9 on adversarial and random corpora).

Speed: the shift search tries many candidates, and each needs an edit distance. sacreBLEU computes each one as a
dynamic program in Python (reusing rows of shared prefixes). We get the exact Levenshtein distance with Myers'
bit-parallel algorithm (a few integer operations per hypothesis word) and use it whenever it provably equals the beam
distance: when it is smaller than the cheapest path through any cell outside the beam. Otherwise, and for the
alignment, we run the beam program itself. About 10x faster than sacreBLEU on 2,000 WMT sentences.
"""
import math

from eval.bleu import corpus_streams, sentence_refs

MAX_SHIFT_SIZE = 10         # longest block a shift moves (Tercom's limit)
MAX_SHIFT_DIST = 50         # largest distance between a block's hypothesis and reference positions
BEAM_WIDTH = 25             # cells computed either side of the diagonal
MAX_SHIFT_CANDIDATES = 1000  # per hypothesis/reference pair, sacreBLEU's own limit
INF = int(1e16)


def _words(line):
    """sacreBLEU's default TER preprocessing: TercomTokenizer(case_sensitive=False)(line.rstrip()).split()."""
    return line.rstrip().lower().split()

# -----------------------------------------------------------------------------
# edit distances


def _beam(n_h, n_r):
    """(lo, hi) per row i = 1..n_h (index i-1): the reference positions j in [lo, hi) sacreBLEU computes in row i."""
    ratio = n_r / n_h if n_h else 1
    width = math.ceil(ratio / 2 + BEAM_WIDTH) if BEAM_WIDTH < ratio / 2 else BEAM_WIDTH
    rows = []
    for i in range(1, n_h + 1):
        diag = math.floor(i * ratio)
        rows.append((max(0, diag - width), n_r + 1 if i == n_h else min(n_r + 1, diag + width)))
    return rows


def _cheapest_outside(beam, n_h, n_r):
    """A lower bound on the cost of any alignment path through a cell outside the beam (INF if there is none).

    A path through cell (i, j) costs at least |i - j| to get there and |(n_h - i) - (n_r - j)| from there on. With
    k = i - j and c = n_h - n_r that is |k| + |c - k|: convex in k, equal to |c| for k between 0 and c. So on a run of
    cells of one row the minimum sits at the k nearest to that flat part."""
    c = n_h - n_r
    flat_lo, flat_hi = min(0, c), max(0, c)
    best = INF
    for i, (lo, hi) in enumerate(beam, 1):
        for a, b in ((0, lo - 1), (hi, n_r)):  # the cells left and right of the beam in row i
            if a > b:
                continue
            k_lo, k_hi = i - b, i - a
            k = k_hi if k_hi < flat_lo else k_lo if k_lo > flat_hi else flat_lo if k_lo <= flat_lo <= k_hi else k_lo
            best = min(best, abs(k) + abs(c - k))
    return best


def _beam_distance(h, r, beam, with_alignment=False):
    """sacreBLEU's BeamEditDistance on words h against r: the distance, and with_alignment the alignment its trace
    gives: align[j] = the hypothesis position reference word j is aligned to (-1 before the first), and error flags
    per hypothesis and per reference word."""
    n_r = len(r)
    prev = list(range(n_r + 1))  # row 0: j insertions
    costs, ops = [prev], [None]
    for i, (lo, hi) in enumerate(beam, 1):
        w = h[i - 1]
        row = [INF] * (n_r + 1)  # cells outside the beam stay "infinite"
        op = bytearray(b'x' * (n_r + 1)) if with_alignment else None
        for j in range(lo, hi):
            if j == 0:
                row[0] = prev[0] + 1
                if with_alignment:
                    op[0] = 100  # 'd'
                continue
            # the first of the cheapest, in sacreBLEU's order: match/substitution, deletion, insertion
            if w == r[j - 1]:
                best, o = prev[j - 1], 32  # ' '
            else:
                best, o = prev[j - 1] + 1, 115  # 's'
            if prev[j] + 1 < best:
                best, o = prev[j] + 1, 100  # 'd': skip hypothesis word i
            if row[j - 1] + 1 < best:
                best, o = row[j - 1] + 1, 105  # 'i': skip reference word j
            row[j] = best
            if with_alignment:
                op[j] = o
        costs.append(row)
        ops.append(op)
        prev = row
    distance = prev[n_r]
    if not with_alignment:
        return distance
    # walk the trace back from the last cell; sacreBLEU flips it (hypothesis <-> reference) before aligning
    trace = []
    i, j = len(h), n_r
    while i > 0 or j > 0:
        o = ops[i][j] if i > 0 else 105  # row 0 is all insertions
        trace.append(o)
        if o in (32, 115):
            i, j = i - 1, j - 1
        elif o == 105:
            j -= 1
        elif o == 100:
            i -= 1
        else:
            raise AssertionError("trace left the beam")  # as sacreBLEU, which raises here too
    align, hyp_err, ref_err = [], [], []
    pos_h = -1
    for o in reversed(trace):
        if o == 32 or o == 115:  # aligned pair, equal or not
            pos_h += 1
            align.append(pos_h)
            hyp_err.append(o == 115)
            ref_err.append(o == 115)
        elif o == 100:  # hypothesis word with no reference word
            pos_h += 1
            hyp_err.append(True)
        else:  # reference word with no hypothesis word: aligned to the hypothesis position before it
            align.append(pos_h)
            ref_err.append(True)
    return distance, align, hyp_err, ref_err


def _myers_states(h, peq, m):
    """Myers/Hyyro bit-parallel Levenshtein of h against the reference (peq: word -> bit mask of its positions, m
    reference words): the state (vp, vn, distance) after each prefix of h, states[k] for h[:k]."""
    mask, top = (1 << m) - 1, 1 << (m - 1)
    vp, vn, d = mask, 0, m
    states = [(vp, vn, d)]
    for w in h:
        vp, vn, d = _myers_step(peq.get(w, 0), vp, vn, d, mask, top)
        states.append((vp, vn, d))
    return states


def _myers_step(eq, vp, vn, d, mask, top):
    """One hypothesis word: the vertical deltas of the next column and the distance in the bottom cell."""
    x = eq | vn
    d0 = ((((eq & vp) + vp) ^ vp) | eq)
    hn = vp & d0
    hp = (vn | ~(d0 | vp)) & mask
    if hp & top:
        d += 1
    elif hn & top:
        d -= 1
    hp = (hp << 1) | 1  # global distance: the top row grows by one per hypothesis word
    hn <<= 1
    return (hn | ~(x | hp)) & mask, hp & x, d

# -----------------------------------------------------------------------------
# the shift search


def _shifted(words, start, length, target):
    """sacreBLEU's _perform_shift: the block words[start:start+length] moved to before position target."""
    if target < start:
        return words[:target] + words[start:start + length] + words[target:start] + words[start + length:]
    if target > start + length:
        return words[:start] + words[start + length:target] + words[start:start + length] + words[target:]
    # a target inside the block: sacreBLEU's formula, kept as is
    return words[:start] + words[start + length:length + target] + words[start:start + length] + \
        words[length + target:]


def _matching_blocks(h, r):
    """(start_h, start_r, length) of every block h[start_h:start_h+length] == r[start_r:start_r+length] of up to
    MAX_SHIFT_SIZE words with start_r within MAX_SHIFT_DIST of start_h, in sacreBLEU's order (_find_shifted_pairs)."""
    n_h, n_r = len(h), len(r)
    for start_h in range(n_h):
        for start_r in range(max(0, start_h - MAX_SHIFT_DIST), min(n_r, start_h + MAX_SHIFT_DIST + 1)):
            length = 0
            while length < MAX_SHIFT_SIZE and h[start_h + length] == r[start_r + length]:
                length += 1
                yield start_h, start_r, length
                if start_h + length == n_h or start_r + length == n_r:
                    break


def ter_edits(h, r):
    """TER edits of hypothesis words h against reference words r (lists of str), as sacreBLEU's
    translation_edit_rate(h, r)[0]."""
    n_h, n_r = len(h), len(r)
    if n_r == 0:
        return n_h
    if n_h == 0:
        return n_r
    beam = _beam(n_h, n_r)  # shifts keep the hypothesis length, so the beam is the same for every candidate
    outside = _cheapest_outside(beam, n_h, n_r)
    peq = {}  # word -> bit mask of its reference positions
    for j, w in enumerate(r):
        peq[w] = peq.get(w, 0) | (1 << j)
    mask, top = (1 << n_r) - 1, 1 << (n_r - 1)

    def distance(words, states, p):
        """Beam distance of words, which agree on their first p with the words behind states."""
        vp, vn, d = states[p]
        for w in words[p:]:
            vp, vn, d = _myers_step(peq.get(w, 0), vp, vn, d, mask, top)
        return d if d < outside else _beam_distance(words, r, beam)

    shifts, checked = 0, 0
    while True:
        # one round of sacreBLEU's _shift: the best candidate shift of h
        score, align, hyp_err, ref_err = _beam_distance(h, r, beam, with_alignment=True)
        states = _myers_states(h, peq, n_r)
        best = None
        for start_h, start_r, length in _matching_blocks(h, r):
            # worth moving only if some of the block is wrong where it is, some of its reference copy is unmatched,
            # and the copy is not aligned into the block itself
            if not (any(hyp_err[start_h:start_h + length]) and any(ref_err[start_r:start_r + length])
                    and not start_h <= align[start_r] < start_h + length):
                continue
            prev_idx = -1
            for offset in range(-1, length):
                # target: just after the hypothesis word aligned to reference word start_r + offset
                idx = 0 if start_r + offset == -1 else align[start_r + offset] + 1
                if idx == prev_idx:
                    continue
                prev_idx = idx
                words = _shifted(h, start_h, length, idx)
                # the shifted words agree with h before min(start_h, idx): resume Myers' columns from there
                candidate = (score - distance(words, states, min(start_h, idx)), length, -start_h, -idx)
                checked += 1
                if best is None or candidate > best[0]:  # on a tie the first stays, as in sacreBLEU
                    best = candidate, words
            if checked >= MAX_SHIFT_CANDIDATES:
                break
        # sacreBLEU stops when the candidate budget is spent, even before taking this round's best shift
        if checked >= MAX_SHIFT_CANDIDATES or best is None or best[0][0] <= 0:
            return shifts + score
        shifts += 1
        h = best[1]

# -----------------------------------------------------------------------------
# segments and corpora


def _segment_stats(hypothesis, references):
    """[fewest edits over the references, mean reference length] of one segment."""
    h = _words(hypothesis)
    refs = [_words(r) for r in references]
    edits = min(ter_edits(h, r) for r in refs)
    return edits, sum(map(len, refs)) / len(refs)


def _score(edits, length):
    if length > 0:
        return 100 * (edits / length)
    return 100.0 if edits > 0 else 0.0


def corpus_ter(hypotheses, references):
    """Corpus TER (0-100+, lower is better) with sacreBLEU's defaults.

    hypotheses, references: a corpus as eval/bleu.py's corpus_streams describes it."""
    streams = corpus_streams(hypotheses, references)
    edits, length = 0, 0
    for hyp, refs in zip(hypotheses, zip(*streams)):
        e, n = _segment_stats(hyp, [r for r in refs if r is not None])
        edits += e
        length += n  # summed in corpus order, as sacreBLEU does, so the float is the same
    return _score(edits, length)


def sentence_ter(hypothesis, references):
    """TER of one hypothesis against one reference (a str) or several (a list of str), equal to
    sacrebleu.sentence_ter(hypothesis, references).score, and to corpus_ter of a one-segment corpus."""
    refs = sentence_refs(hypothesis, references)
    return _score(*_segment_stats(hypothesis, refs))
