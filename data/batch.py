"""
Which examples form each optimizer step, and how they become tensors: the same for train.py, bench.py and the tests.

    ids = step_examples(it, n, global_batch, seed)                 # (G,) fixed by seed and global batch only
    micro = split_micro_batches(ids, lengths, batch_size, n_micro)  # length-sorted micro-batches
    micro = split_by_tokens(ids, lengths, max_tokens, world)        # or: at most max_tokens padded tokens each
    x, y, w, r = collate(data, micro[0], plw)                      # inputs, targets, loss weights, target roles
    rows = pack_rows(ids, lengths, max_tokens, world)               # or: examples packed into rows, one per micro-step
    x, y, w, r, pos, doc = collate_packed(data, rows[:1], plw)     # + positions restarting per example, example ids
"""
import hashlib

import numpy as np
import torch

from data.prepare import PROMPT, TEXT

PAD_ROLE = 3  # the role collate gives padding: not a target


def step_examples(it, n, global_batch, seed):
    """Example indices (global_batch,) of optimizer step `it`: epoch e is a permutation fixed by (seed, e), cut
    into consecutive global batches (a partial last one is dropped). Depends on nothing but seed and global batch."""
    per_epoch = n // global_batch
    epoch, k = divmod(it, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * global_batch:(k + 1) * global_batch]


def split_micro_batches(ids, lengths, batch_size, n_micro):
    """The global batch sorted by length (longest first, ties by position) cut into n_micro micro-batches of
    batch_size: similar lengths share a micro-batch, so little is padded. Micro-batch m goes to rank m % world."""
    order = ids[np.argsort(-lengths[ids], kind="stable")]
    return [order[m * batch_size:(m + 1) * batch_size] for m in range(n_micro)]


def split_by_tokens(ids, lengths, max_tokens, world=1, pad_multiple=1):
    """The global batch sorted by length (as split_micro_batches) cut into micro-batches of at most max_tokens
    padded tokens (rows x padded length, the length being the longest row's targets rounded up to pad_multiple,
    as collate pads), so that short examples travel in large micro-batches and long ones in small: few, large
    micro-steps at a bounded activation memory. An example longer than max_tokens forms a micro-batch of its own.

    Micro-batch m goes to rank m % world, and every rank must run the same number of micro-steps (DDP's and FSDP's
    collectives): while the count is not a multiple of world, the micro-batch with the most rows (the first of
    them) is halved, in place. No micro-step is padded with a dummy one; the split always ends, at the latest
    when every row is alone (a global batch is batch_size * accumulation * world rows). The update is the same
    for any split: train.py normalises by the global batch's weight, known before the first micro-step."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = ids[np.argsort(-lengths[ids], kind="stable")]
    padded = -(-(lengths[order] - 1) // pad_multiple) * pad_multiple       # each row's padded length, descending
    micro, start = [], 0
    for i in range(1, len(order) + 1):  # rows are sorted longest first: a micro-batch is padded to its first row
        if i == len(order) or (i + 1 - start) * padded[start] > max_tokens:
            micro.append(order[start:i])
            start = i
    while len(micro) % world:
        m = max(range(len(micro)), key=lambda j: (len(micro[j]), -j))
        half = (len(micro[m]) + 1) // 2
        micro[m:m + 1] = [micro[m][:half], micro[m][half:]]
    return micro


def pack_rows(ids, lengths, max_tokens, world=1, pad_multiple=1):
    """The global batch packed into rows of at most max_tokens tokens (an example's targets, the row's total rounded up
    to pad_multiple), each row one micro-step (train.py pack=True): no padding but the rounding. Longest first, each
    example goes to the row with the most room (LPT scheduling), starting from as few rows as could hold the batch
    (a multiple of world): the rows come out about equally long, so ranks wait little on each other. An example
    that fits no row opens a new one (an example longer than max_tokens is a row of its own). Then, while the count
    is not a multiple of world, the row with the most examples is split in two. Row m goes to rank m % world.
    Packing changes no update: attention stays within each example (Transformer.doc_mask) and the loss weights are
    the examples' own."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = ids[np.argsort(-lengths[ids], kind="stable")]
    size = lengths[order] - 1                                                  # targets per example, descending
    cap = max(pad_multiple, max_tokens // pad_multiple * pad_multiple)         # a row's padded length stays <= this
    n = -(-max(-(-int(size.sum()) // cap), 1) // world) * world
    rows, load = [[] for _ in range(n)], [0] * n
    for i, t in zip(order, size):
        r = min(range(len(rows)), key=lambda j: (load[j], j))                   # the emptiest row
        if rows[r] and load[r] + t > cap:
            rows.append([])
            load.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        load[r] += int(t)
    rows = [np.array(r, dtype=ids.dtype) for r in rows if r]
    while len(rows) % world:
        m = max(range(len(rows)), key=lambda j: (len(rows[j]), -j))
        rows[m:m + 1] = [rows[m][0::2], rows[m][1::2]]
    return rows


def padded_tokens(micro, lengths, pad_multiple=1, packed=False):
    """The tokens the micro-batches compute, padding included: rows x the longest row's targets (collate), or each
    packed row's targets (collate_packed; one row per micro-batch), rounded up to pad_multiple"""
    def up(n):
        return -(-int(n) // pad_multiple) * pad_multiple
    if packed:
        return sum(up((lengths[mb] - 1).sum()) for mb in micro)
    return sum(len(mb) * up(lengths[mb].max() - 1) for mb in micro)


def collate_packed(data, rows, plw, pad_multiple=1, text_weight=1.0):
    """Packed rows (lists of example ids) -> x, y, w, r as collate's, each row its examples one after another (then
    padding to the longest row, rounded up to pad_multiple), and pos (R, T) the RoPE positions, restarting at 0 with
    each example, and doc (R, T) the example id of each token (-1: padding), for Transformer.doc_mask."""
    tokens, roles, offsets = data["tokens"], data["roles"], data["offsets"]
    totals = [int((offsets[np.asarray(r) + 1] - offsets[np.asarray(r)] - 1).sum()) for r in rows]
    T = int(-(-max(totals) // pad_multiple) * pad_multiple)
    x = np.zeros((len(rows), T), dtype=np.int64)
    y = np.full((len(rows), T), -1, dtype=np.int64)
    r = np.full((len(rows), T), PAD_ROLE, dtype=np.uint8)
    pos = np.zeros((len(rows), T), dtype=np.int64)
    doc = np.full((len(rows), T), -1, dtype=np.int64)
    for b, row in enumerate(rows):
        s = 0
        for i in row:
            o, L = offsets[i], offsets[i + 1] - offsets[i] - 1                   # L targets
            x[b, s:s + L] = tokens[o:o + L]
            y[b, s:s + L] = tokens[o + 1:o + L + 1]
            r[b, s:s + L] = roles[o + 1:o + L + 1]
            pos[b, s:s + L] = np.arange(L)
            doc[b, s:s + L] = i
            s += L
    w = np.choose(r, [plw, 1.0, text_weight, 0.0]).astype(np.float32)                # by role, as collate's
    return tuple(torch.from_numpy(t) for t in (x, y, w, r, pos, doc))


def collate(data, ids, plw, pad_multiple=1, text_weight=1.0):
    """Examples -> x (B, T) inputs, y (B, T) targets (-1 = padding), w (B, T) loss weights, r (B, T) the targets'
    roles (data/prepare.py's PROMPT, COMPLETION, TEXT; PAD_ROLE on padding). Weights: plw on prompt targets, 1 on
    completion targets, text_weight on plain-text records' targets, 0 on padding. Targets are the next tokens, so
    BOS is never a target; a target's role is the role of the token it predicts."""
    tokens, roles, offsets = data["tokens"], data["roles"], data["offsets"]
    lens = offsets[ids + 1] - offsets[ids] - 1                                    # targets per example
    T = int(-(-lens.max() // pad_multiple) * pad_multiple)
    x = np.zeros((len(ids), T), dtype=np.int64)
    y = np.full((len(ids), T), -1, dtype=np.int64)
    r = np.full((len(ids), T), PAD_ROLE, dtype=np.uint8)
    for b, (i, L) in enumerate(zip(ids, lens)):
        o = offsets[i]
        x[b, :L] = tokens[o:o + L]
        y[b, :L] = tokens[o + 1:o + L + 1]
        r[b, :L] = roles[o + 1:o + L + 1]
    w = np.choose(r, [plw, 1.0, text_weight, 0.0]).astype(np.float32)                # by role: PROMPT ... PAD_ROLE
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w), torch.from_numpy(r)


def example_targets(data, ids):
    """(targets, prompt targets, plain-text targets) per example, (len(ids),) int64 each, from the data alone:
    identical on every rank, no device sync."""
    o, roles = data["offsets"], data["roles"]
    counts = np.array([np.bincount(roles[o[i] + 1:o[i + 1]], minlength=TEXT + 1) for i in ids],
                      dtype=np.int64).reshape(len(ids), TEXT + 1)                     # (len(ids), 3) per role
    return (o[ids + 1] - o[ids] - 1).astype(np.int64), counts[:, PROMPT], counts[:, TEXT]


def target_counts(data, ids):
    """(targets, prompt targets) of the examples together"""
    n, prompt, _ = example_targets(data, ids)
    return int(n.sum()), int(prompt.sum())


def data_fingerprint(data):
    h = hashlib.sha256()
    for k in ("tokens", "roles", "offsets"):
        h.update(np.ascontiguousarray(data[k]).tobytes())
    return h.hexdigest()[:16]
