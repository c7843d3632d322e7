"""
Which examples form each optimizer step, and how they become tensors: the same for train.py, bench.py and the tests.

    ids = step_examples(it, n, global_batch, seed)                 # (G,) fixed by seed and global batch only
    micro = split_micro_batches(ids, lengths, batch_size, n_micro)  # length-sorted micro-batches
    micro = split_by_tokens(ids, lengths, max_tokens, world)        # or: at most max_tokens padded tokens each
    x, y, w, r = collate(data, micro[0], plw)                      # inputs, targets, loss weights, target roles
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
    prompt = np.array([int((roles[o[i] + 1:o[i + 1]] == PROMPT).sum()) for i in ids], dtype=np.int64)
    text = np.array([int((roles[o[i] + 1:o[i + 1]] == TEXT).sum()) for i in ids], dtype=np.int64)
    return (o[ids + 1] - o[ids] - 1).astype(np.int64), prompt, text


def target_counts(data, ids):
    """(targets, prompt targets) of the examples together"""
    n, prompt, _ = example_targets(data, ids)
    return int(n.sum()), int(prompt.sum())


def data_fingerprint(data):
    h = hashlib.sha256()
    for k in ("tokens", "roles", "offsets"):
        h.update(np.ascontiguousarray(data[k]).tobytes())
    return h.hexdigest()[:16]
