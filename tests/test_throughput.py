"""What the GPU's throughput rests on, checked on the CPU: one host sync per optimizer step (train.py), padding of the
packed rows on Stanford Alpaca records (bench.py's padding mode), and bench.py's memory and FLOP plan against what
a small model measures."""
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import bench
from model import ModelArgs, Transformer
import train
from config import load_config
from test_train import SAMPLE, TINY

ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("syncs") / "run"
    c = load_config(train.DEFAULTS, [*TINY, f"--dataset={SAMPLE}", f"--out_dir={out}", "--max_iters=4",
                                     "--batch_size=4", "--global_batch_size=8", "--val_size=0"])
    train.check_config(c)
    r = train.setup(c)
    r["params"] = [p for p in r["raw_model"].parameters() if p.requires_grad]
    r["lengths"] = np.diff(r["train_data"]["offsets"])
    # as on CUDA (train.py: fused=True there): the fused update keeps its step count on the device, where the
    # CPU's default (foreach) update reads it with .item()
    r["opt"] = torch.optim.AdamW(r["raw_model"].parameters(), lr=1e-3, fused=True)
    yield r
    r["log_file"].close()


@pytest.mark.parametrize("settings", [{}, {"pack": True, "tokens_per_micro_batch": 700},
                                      {"pack": True, "tokens_per_micro_batch": 700, "loss_norm": "micro_mean"},
                                      {"tokens_per_micro_batch": 700, "grad_clip": 0.0}])
def test_one_host_sync_per_optimizer_step(run, monkeypatch, settings):
    # every op that would make the host wait for a GPU, counted over whole train.py steps: the one is the transfer
    # of the gradient norm and the log's sums; collating on the host is not device work (paused)
    syncs = bench.HostSyncs("cpu")
    host_batch = train.host_batch

    def collated_on_the_host(*args, **kwargs):
        with syncs.paused():
            return host_batch(*args, **kwargs)
    monkeypatch.setattr(train, "host_batch", collated_on_the_host)
    monkeypatch.setitem(run, "cfg", {**run["cfg"], **settings})
    for it in range(2):
        syncs.count, syncs.calls = 0, []
        with syncs:
            s = train.train_step(run, run["raw_model"], it, nullcontext(), 1)
        assert syncs.count == 1 and syncs.calls == ["tolist"], (settings, syncs.calls)
        assert len(s["micro"]) >= 2 and np.isfinite(s["gnorm"])


def test_the_sync_counter_sees_what_would_wait_on_a_gpu():
    x = torch.randn(10)
    with bench.HostSyncs("cpu") as syncs:
        float(x.sum()), x[x > 0], (x > 0).nonzero(), bool(x.max() > 0), x.tolist(), x.abs().sum(0)
        with syncs.paused():
            x[0].item()
    assert syncs.count == 5, syncs.calls


# ------------------------------------------------------------------------------------------------ the plan

PLAN_ARGS = ModelArgs(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, head_dim=16, hidden_dim=256, vocab_size=512,
                      max_seq_len=512)


def kept_for_backward(m, T, autocast, seed=0):
    """bytes autograd keeps for backward after one forward of a row of T tokens (parameters and buffers excluded)"""
    idx = torch.randint(0, PLAN_ARGS.vocab_size, (1, T), generator=torch.Generator().manual_seed(seed))
    skip = {t.untyped_storage()._cdata for t in [*m.parameters(), *m.buffers()]}
    kept = {}

    def pack(t):
        if t.untyped_storage()._cdata not in skip:
            kept[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", enabled=autocast):
        ce = m(idx, idx.roll(-1, 1))
    ce.sum().backward()
    m.zero_grad(set_to_none=True)
    return sum(kept.values())


@pytest.mark.parametrize("weights, autocast", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
def test_plan_activations_are_what_autograd_keeps(weights, autocast):
    # bench.activation_bytes and head_bytes against the bytes autograd keeps on the CPU, eager and compiled blocks
    # (aot_eager_decomp_partition: the min-cut partitioner inductor uses, without code generation), every block or
    # every 2nd recomputed: exact, on a GQA shape the formulas were not read from
    from bench import activation_bytes, head_bytes
    e, T, L, d = 2 if weights == torch.bfloat16 or autocast else 4, 200, PLAN_ARGS.n_layers, PLAN_ARGS.dim
    copies = 2 * sum(p.numel() for p in Transformer(PLAN_ARGS).layers[0].parameters() if p.dim() == 2)
    for compiled in (False, True):
        for every in (0, 2):
            torch.manual_seed(0)
            m = Transformer(PLAN_ARGS).to(weights).train()
            m.activation_checkpointing, m.checkpoint_every = every > 0, max(every, 1)
            if compiled:
                m.compile_blocks(backend="aot_eager_decomp_partition")
                kept_for_backward(m, 64, autocast)  # compile
            k = len(range(0, L, every)) if every else 0
            a = activation_bytes(PLAN_ARGS, e, compiled, autocast)
            head = head_bytes(PLAN_ARGS, 4 if autocast else e, T, chunk=0)  # the kept softmax is no saved tensor
            expected = T * ((L - k) * a + k * (4 if autocast else e) * d) + head + (L - k) * copies * autocast
            assert kept_for_backward(m, T, autocast) == expected, (compiled, every)


class TensorMemory(torch.utils._python_dispatch.TorchDispatchMode):
    """The bytes of the tensors ops allocate while it is on (a view or an in-place result allocates nothing), live
    and at their peak: the CPU's stand-in for torch.cuda.max_memory_allocated"""
    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref
        from torch.utils._pytree import tree_flatten
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)}
        for t in tree_flatten(out)[0]:
            st = t.untyped_storage() if torch.is_tensor(t) else None
            if st is not None and st._cdata not in self.storages | inputs and st.nbytes():
                self.storages.add(st._cdata)
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(st, self.free, st._cdata, st.nbytes())
        return out

    def free(self, key, n):
        self.live -= n
        self.storages.discard(key)


@pytest.mark.parametrize("every", [0, 2])
def test_plan_peak_and_flops_hold_on_the_cpu(every):
    # bench.step_plan's peak (weights, gradients, AdamW state, activations, the backward's transient) against the
    # tensors a bf16 step holds at its peak, in a micro-step that accumulates into existing gradients with the
    # optimizer's state in place (train.py's second micro-step on); its FLOPs against torch's FlopCounterMode
    from optim import AdamWBF16
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    T, L = 200, PLAN_ARGS.n_layers
    torch.manual_seed(0)
    m = Transformer(PLAN_ARGS).to(torch.bfloat16).train()
    m.activation_checkpointing, m.checkpoint_every = every > 0, max(every, 1)
    opt = AdamWBF16(m.parameters(), lr=1e-3)

    def micro(seed):
        idx = torch.randint(0, PLAN_ARGS.vocab_size, (1, T), generator=torch.Generator().manual_seed(seed))
        m(idx, idx.roll(-1, 1)).sum().backward()
    micro(0), opt.step(), opt.zero_grad(set_to_none=True), micro(1)
    with TensorMemory() as mem:
        micro(2)
    held = [*m.parameters(), *(p.grad for p in m.parameters()),
            *(v for st in opt.state.values() for v in st.values() if torch.is_tensor(v))]
    measured = sum(t.numel() * t.element_size() for t in held) + mem.peak
    c = {"optimizer": "adamw_bf16", "dtype": "bfloat16", "compiled": False, "world": 1, "gpu": "H100",
         "ckpt_blocks": len(range(0, L, every)) if every else 0}
    work = {"micro_max": T, "micro_mean": T, "micro_steps": 2, "padded": T, "tokens": T, "attn_sq": T * T,
            "useful_flops": 1.0}
    plan = bench.step_plan(PLAN_ARGS, c, work)
    assert abs(plan["memory"]["peak"] / measured - 1) < 0.05, (plan["memory"], measured)
    # SDPA's math backend (its matmuls are what the counter counts), which computes causal attention in full: twice
    # what a causal kernel computes
    with FlopCounterMode(display=False) as flops, sdpa_kernel(SDPBackend.MATH):
        micro(3)
    assert flops.get_total_flops() == pytest.approx(plan["flops"]["matmul"] + 2 * plan["flops"]["attention"],
                                                    rel=0.005)


def test_padding_of_packed_rows_on_alpaca_records():
    # bench.py's padding mode on the first 2,000 Stanford Alpaca records, LLaMA tokenizer, global batch 128: cutting
    # the length-sorted batch at a token budget pads a fifth or more; packing pads under 1% (bench --mode=padding on
    # all 52,002 records: docs/benchmarks.md)
    from conftest import LLAMA_TOKENIZER, require
    from types import SimpleNamespace
    s = SimpleNamespace(dataset=str(SAMPLE), tokenizer=str(require(LLAMA_TOKENIZER)), seq_len=512, seed=0,
                        batch_size=4, grad_accum=32, budgets="4096,8192")
    splits = bench.bench_padding(s)["splits"]
    assert splits["pack4096"]["padding"] <= 0.05 and splits["pack8192"]["padding"] <= 0.05, splits
    assert splits["tokens4096"]["padding"] > 0.1 and splits["tokens8192"]["padding"] > 0.2, splits
    assert splits["rows"]["micro_steps"] == 32 and splits["pack8192"]["micro_steps"] <= 3
