"""model.compile_blocks(): per-block torch.compile holds (no graph breaks, a bounded number of graphs over many
lengths and micro-batch sizes, with and without activation checkpointing, under FSDP2) and equals eager.

Tiny models (2 layers, 32 wide): compiling is slow on a CPU. The counting tests use the aot_eager backend (dynamo and
AOTAutograd, whose guards decide graph breaks and recompiles, without inductor's code generation); one test compiles
with inductor and checks the values. bench/gpu_check.sh repeats the counts with inductor on CUDA.
"""
import json
import os
import subprocess
import sys

import torch
import pytest
from torch._dynamo.utils import clear_compilation_metrics, counters, get_compilation_metrics

from conftest import ROOT
from model import ModelArgs, Transformer


ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=64, vocab_size=100,
                 max_seq_len=128)
# (micro-batch size, length): 12 lengths, batch sizes 1-4; B = 1 is specialised by dynamo (one extra graph)
SHAPES = [(2, 5), (2, 9), (3, 17), (1, 33), (2, 40), (4, 12), (2, 64), (3, 7), (2, 21), (1, 50), (2, 2), (4, 31)]


def batch(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, ARGS.vocab_size, (B, T), generator=g)
    targets = idx.roll(-1, 1)
    targets[0, T // 2:] = -1  # padding: the eager head skips these rows (a host sync, outside the compiled blocks)
    w = torch.rand(B, T, generator=g)
    return idx, targets, w


def model(seed=0, ckpt=False, dropout=0.0):
    torch.manual_seed(seed)
    args = ModelArgs(**{**ARGS.__dict__, "dropout": dropout})
    m = Transformer(args).train()
    m.activation_checkpointing = ckpt
    return m


def step(m, B, T, seed):
    idx, targets, w = batch(B, T, seed)
    loss = (m(idx, targets) * w).sum() / w.sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    return loss.detach(), grads


def fresh_counts():
    torch._dynamo.reset()
    counters.clear()
    clear_compilation_metrics()


def recompiles():
    """compiles of a function already compiled once (its guards failed), since fresh_counts()"""
    return [m.recompile_reason for m in get_compilation_metrics() if m.recompile_reason]


@pytest.mark.parametrize("ckpt", [False, True])
def test_compiled_blocks_hold_over_lengths_and_batch_sizes(ckpt):
    fresh_counts()
    m = model(ckpt=ckpt).compile_blocks(backend="aot_eager")
    for i, (B, T) in enumerate(SHAPES):
        step(m, B, T, i)
    assert dict(counters["graph_break"]) == {}
    # one graph for B, T >= 2, one more for B = 1 (both layers share them): 1 recompile over 12 shapes (<= 2 asked)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 2 and len(recompiles()) == 1 and "size()[0]" in recompiles()[0], (graphs, recompiles())
    for i, (B, T) in enumerate(SHAPES[:4]):
        step(m, B, T, i)
    assert counters["stats"]["unique_graphs"] == graphs


# packed rows (train.py pack=True): the examples' lengths in each row, one row per micro-batch
PACKED = [[5, 9, 17], [33, 2], [40, 12, 7, 3], [64], [21, 21, 21], [50, 10], [8, 8]]


def packed_row(lens, seed):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    idx = torch.randint(0, ARGS.vocab_size, (1, T), generator=g)
    targets = idx.roll(-1, 1)
    pos = torch.cat([torch.arange(L) for L in lens])[None]                          # (1, T) restarting per example
    doc = torch.cat([torch.full((L,), i) for i, L in enumerate(lens)])[None]          # (1, T)
    return idx, targets, pos, doc, torch.rand(1, T, generator=g)


def packed_step(m, lens, seed):
    idx, targets, pos, doc, w = packed_row(lens, seed)
    loss = (m(idx, targets, input_pos=pos, doc=doc) * w).sum() / w.sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("every", [0, 2])
def test_compiled_blocks_hold_over_packed_rows(every):
    # packed rows of 7 lengths through the compiled blocks, without checkpointing and with every 2nd block
    # checkpointed: one graph, no graph break, the eager values; then FlexAttention's block mask (forward: it has no
    # CPU backward; train.py uses it on CUDA) through the same blocks, also without a graph break
    fresh_counts()
    m, ref = model(ckpt=every > 0).compile_blocks(backend="aot_eager"), model(ckpt=every > 0)
    m.checkpoint_every = ref.checkpoint_every = max(every, 1)
    for i, lens in enumerate(PACKED):
        loss, grads = packed_step(m, lens, i)
        ref_loss, ref_grads = packed_step(ref, lens, i)
        assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6), lens
        assert all(torch.allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6) for k in grads), lens
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1 and recompiles() == [], (dict(counters["stats"]), recompiles())
    m.flex = ref.flex = True
    graphs = []
    with torch.no_grad():
        for i, lens in enumerate(PACKED):
            idx, targets, pos, doc, _ = packed_row(lens, i)
            out = m(idx, targets, input_pos=pos, doc=doc)
            assert torch.allclose(out, ref(idx, targets, input_pos=pos, doc=doc), rtol=1e-5, atol=1e-6), lens
            graphs.append(counters["stats"]["unique_graphs"])
    assert dict(counters["graph_break"]) == {}
    # the first length is specialised, the second makes it dynamic (in the block and in eager flex_attention's own
    # compiled wrapper): from the third row on, no new graph
    assert len(set(graphs[2:])) == 1, (graphs, recompiles())


def test_inductor_blocks_equal_eager_with_and_without_checkpointing():
    fresh_counts()
    eager = model()
    compiled = model().compile_blocks()  # inductor, as train.py uses it
    for i, (B, T) in enumerate([(2, 5), (3, 17), (2, 40), (4, 12)]):
        ref_loss, ref = step(eager, B, T, i)
        for ckpt in (False, True):  # checkpointing recomputes through the same compiled graph
            compiled.activation_checkpointing = ckpt
            loss, grads = step(compiled, B, T, i)
            assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6), (B, T, ckpt)
            for k in ref:
                assert torch.allclose(grads[k], ref[k], rtol=1e-4, atol=1e-6), (B, T, ckpt, k)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_generation_and_evaluation_with_compiled_blocks():
    # generation (KV cache) runs the blocks eagerly; eval under no_grad is one more graph, with the same values
    fresh_counts()
    m = model().compile_blocks(backend="aot_eager")
    ref = model()
    prompts = [[1, 5, 7, 9], [1, 3]]
    assert m.generate(prompts, 6) == ref.generate(prompts, 6)
    m.eval(), ref.eval()
    idx, targets, _ = batch(3, 11, 0)
    with torch.no_grad():
        assert torch.allclose(m(idx, targets), ref(idx, targets), rtol=1e-5, atol=1e-6)
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 1


def test_compiled_blocks_compose_with_fsdp2(tmp_path):
    # FSDP2's hooks stay eager around each compiled block: one CPU process (gloo), sharded over a world of 1
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    fresh_counts()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ref_loss, ref = step(model(), 2, 9, 0)
        m = model(ckpt=True)
        for layer in m.layers:
            fully_shard(layer)
        fully_shard(m)
        m.compile_blocks(backend="aot_eager")
        for B, T in [(2, 9), (3, 13), (2, 30)]:
            loss, grads = step(m, B, T, 0)
        loss, grads = step(m, 2, 9, 0)
        assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for k in ref:
            assert torch.allclose(grads[k].full_tensor(), ref[k], rtol=1e-4, atol=1e-6), k
        assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 1
    finally:
        dist.destroy_process_group()


def test_gpu_check_dry_runs_every_check_on_the_cpu(tmp_path):
    # bench/gpu_check.sh --dry: the GPU session's script, every check at tiny shapes on the CPU, without time limits
    # (~60 s on 2 busy cores with its compiler cache from an earlier run, ~2 min without)
    out = tmp_path / "rows.jsonl"
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--dry", f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["check"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"step7b_readme", "step7b_fast", "hf7b", "save7b", "compile", "optimizer", "gemm",
                         "train_single", "train_fsdp"}
    assert all(row["ok"] and row["dry"] for row in rows.values())
    assert rows["compile"]["graph_breaks"] == 0 and rows["compile"]["max_rel_loss_diff"] < 1e-5
    assert rows["step7b_readme"]["host_syncs_per_step"] == rows["step7b_fast"]["host_syncs_per_step"] == 1
    assert rows["step7b_readme"]["activation_checkpointing"] and not rows["step7b_fast"]["activation_checkpointing"]
    assert rows["optimizer"]["bit_exact"] and rows["save7b"]["written_gb"] >= rows["save7b"]["size_gb"]
    # train.py compiled on padded rows against FSDP2 eager on packed rows: the same first loss; FSDP2's resume exact
    assert rows["train_single"]["first_loss"] == pytest.approx(rows["train_fsdp"]["first_loss"], rel=1e-5)
    assert rows["train_fsdp"]["resume_bit_exact"]


def test_gpu_check_groups_fit_one_device_command_and_caches_survive_only_clean_runs(tmp_path):
    # each --only group's checks are limited to 540 s in all (one device command may run 600 s)
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--limits"], cwd=ROOT, capture_output=True, text=True)
    groups = {}
    for line in r.stdout.splitlines():
        group, _, limit = line.split()
        groups[group] = groups.get(group, 0) + int(limit)
    assert set(groups) == {"7b", "small"} and all(t <= 540 for t in groups.values()), groups
    # a cache a killed run left (no .complete) is started afresh; a run that ends cleanly marks its cache complete
    cache = tmp_path / "cache"
    (cache / "many-dry").mkdir(parents=True)
    (cache / "many-dry" / "truncated.py").write_text("def f(:\n")
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--dry", "--only=gemm", f"--out={tmp_path / 'rows.jsonl'}"],
                       cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (cache / "many-dry" / "truncated.py").exists() and (cache / "many-dry" / ".complete").exists()
