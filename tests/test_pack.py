"""Packed rows (train.py pack=True): several examples per row, attention kept within each example, positions
restarting. The packing itself, the model on packed rows against each example alone, and one update against the
per-example computation for every loss_norm."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train
from conftest import STORIES
from data.batch import collate_packed, example_targets, pack_rows, padded_tokens, step_examples
from data.prepare import COMPLETION, PROMPT, load_records, select, tokenize
from model import ModelArgs, Transformer
from test_train import SAMPLE, independent_gradient
from tokenizer import Tokenizer

ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


def test_pack_rows_is_a_partition_within_budget_balanced_and_even_over_ranks():
    lengths = np.random.default_rng(0).integers(5, 300, 200)
    ids = step_examples(0, 200, 96, 3)
    for budget in (256, 700, 2048, 10 ** 6):
        for world, pad in ((1, 1), (2, 8), (3, 1), (4, 8)):
            rows = pack_rows(ids, lengths, budget, world, pad)
            assert sorted(np.concatenate(rows).tolist()) == sorted(ids.tolist())
            assert len(rows) % world == 0, (budget, world)
            sizes = [-(-int((lengths[r] - 1).sum()) // pad) * pad for r in rows]
            assert all(s <= budget or len(r) == 1 for s, r in zip(sizes, rows)), (budget, world)
            assert padded_tokens(rows, lengths, pad, packed=True) == sum(sizes)
            if len(rows) == world * -(-int((lengths[ids] - 1).sum()) // budget // world):  # no row overflowed:
                assert max(sizes) - min(sizes) <= lengths[ids].max() + pad                 # balanced (LPT's bound)
    total = int((lengths[ids] - 1).sum())
    assert len(pack_rows(ids, lengths, 10 ** 6)) == 1 and padded_tokens(pack_rows(ids, lengths, 10 ** 6), lengths,
                                                                        packed=True) == total
    assert [len(r) for r in pack_rows(ids, lengths, 1)] == [1] * 96  # every example longer than the budget: alone


def test_collate_packed_roles_positions_and_documents():
    # [BOS p p c c EOS] and [BOS p c EOS] in one row: 5 + 3 targets, padded to a multiple of 5
    data = {"tokens": np.array([1, 10, 11, 20, 21, 2, 1, 12, 22, 2], dtype=np.int32),
            "roles": np.array([PROMPT, PROMPT, PROMPT, COMPLETION, COMPLETION, COMPLETION, PROMPT, PROMPT, COMPLETION,
                               COMPLETION], dtype=np.uint8),
            "offsets": np.array([0, 6, 10])}
    x, y, w, r, pos, doc = collate_packed(data, [np.array([0, 1])], 0.25, pad_multiple=5)
    assert x.tolist() == [[1, 10, 11, 20, 21, 1, 12, 22, 0, 0]]
    assert y.tolist() == [[10, 11, 20, 21, 2, 12, 22, 2, -1, -1]]
    assert w.tolist() == [[0.25, 0.25, 1, 1, 1, 0.25, 1, 1, 0, 0]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 0]]
    assert doc.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, -1, -1]]
    assert r.tolist()[0][:8] == [PROMPT, PROMPT, COMPLETION, COMPLETION, COMPLETION, PROMPT, COMPLETION, COMPLETION]


def tiny(seed=0):
    torch.manual_seed(seed)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=64, vocab_size=100,
                     max_seq_len=64)
    return Transformer(args)


def test_packed_rows_equal_each_example_alone():
    # two rows of three and two examples (one row padded), against each example's own forward: the per-token CE and
    # its gradient, the dense SDPA mask (training on the CPU) and FlexAttention's block mask (forward only here)
    m = tiny().train()
    g = torch.Generator().manual_seed(1)
    lens = [[17, 5, 30], [40, 9]]
    seqs = [[torch.randint(3, 100, (L + 1,), generator=g) for L in row] for row in lens]
    data = {"tokens": torch.cat([s for row in seqs for s in row]).numpy(),
            "offsets": np.cumsum([0] + [L + 1 for row in lens for L in row]),
            "roles": np.ones(sum(L + 1 for row in lens for L in row), dtype=np.uint8)}
    rows = [np.array([0, 1, 2]), np.array([3, 4])]
    x, y, w, p, pos, doc = collate_packed(data, rows, 1.0)
    ce = m(x, y, input_pos=pos, doc=doc)                                                   # (2, 52)
    ref = torch.cat([F.cross_entropy(m(s[None, :-1])[0], s[1:], reduction="none") for row in seqs for s in row])
    assert torch.allclose(ce[y >= 0], ref, rtol=1e-5, atol=1e-6)
    assert (ce[y < 0] == 0).all()
    wt = torch.rand(ref.shape, generator=g)
    grads = []
    for loss in ((ce[y >= 0] * wt).sum(), (ref * wt).sum()):
        m.zero_grad()
        loss.backward(retain_graph=True)
        grads.append({k: q.grad.clone() for k, q in m.named_parameters()})
    for k in grads[1]:
        assert (grads[0][k] - grads[1][k]).abs().max() <= 1e-5 * grads[1][k].abs().max(), k
    with torch.no_grad():  # FlexAttention: exact on the CPU too, but without a CPU backward
        m.flex = True
        assert isinstance(m.doc_mask(doc), torch.nn.attention.flex_attention.BlockMask)
        assert torch.allclose(m(x, y, input_pos=pos, doc=doc), ce, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def stories_data():
    records = load_records(SAMPLE)[:64]
    tok = Tokenizer(STORIES / "tokenizer.model")
    data, _, _ = select(tokenize(records, tok), np.arange(len(records)), 256)
    return records, data


@pytest.mark.parametrize("norm", ["global", "nonzero", "micro_mean"])
def test_packed_update_equals_per_example_for_every_loss_norm(stories_data, norm):
    # train.py's building blocks on packed rows (pack_rows, host_batch, row_factors, micro_loss) against each
    # normalisation written out one example at a time; two ranks simulated (their gradients averaged, as DDP does):
    # micro_mean keeps HF Trainer's micro-batches of batch_size examples, as per-example weights
    records, data = stories_data
    plw, bs, accum, world = 0.1, 2, 2, 2
    ids = step_examples(0, len(records), 8, 1337)
    lengths = np.diff(data["offsets"])
    micro = [ids[r.start:r.stop] for r in train.hf_micro_batches(len(ids), bs)]
    ref = independent_gradient(records, plw, ids, norm, micro=micro)
    c = {"loss_norm": norm, "batch_size": bs}
    factors = train.row_factors(c, *train.example_weights(*example_targets(data, ids), plw), world)
    m = train.load_model(STORIES).train()
    rows = pack_rows(ids, lengths, 600, world)
    assert len(rows) >= 2 * world and max(len(r) for r in rows) >= 2  # several rows, several examples in a row
    for row in rows:
        b = train.host_batch(data, row, plw, 1, True, 1.0, ids, factors)
        loss, _ = train.micro_loss(m, b["x"], b["y"], b["wl"] / world, 0.0, keep=b["keep"],  # ranks' average
                                   input_pos=b["input_pos"], doc=b["doc"])
        loss.backward()
    scale_g = max(v.abs().max().item() for v in ref.values())
    err = max((q.grad - ref[k]).abs().max().item() for k, q in m.named_parameters())
    assert err <= 1e-5 * scale_g, (norm, err, scale_g)
    if norm == "micro_mean":  # the test can tell: micro_mean's update is not the global one
        other = independent_gradient(records, plw, ids, "global")
        assert max((other[k] - ref[k]).abs().max().item() for k in ref) > 1e-3 * scale_g
