"""
AdamW on bf16 weights: the memory plan for full fine-tuning of a 7B model on one 80 GB GPU (train.py
optimizer=adamw_bf16). Weights, gradients and both moments in bf16, the update computed in fp32 and written back
with stochastic rounding, so that updates far below bf16's spacing still move the weights on average.

Two implementations of the same update: the eager loop (one parameter at a time, a dozen kernels and fp32
temporaries of the parameter's size each), and AdamWBF16(fused=True) / opt.compile(): one compiled kernel per
parameter that reads the bf16 weight, gradient and moments once and writes the three back, the fp32 math in
registers and the rounding noise drawn inside the kernel. Given the same random bits they compute the same update
(tests/test_train.py: bit-for-bit on the CPU); the in-kernel generator draws a different stream from torch.randint.
"""
import torch


def stochastic_round_bf16(x, noise=None):
    """fp32 -> bf16 rounding up or down at random, with probability by distance, so E[result] = x: an update far
    below bf16's spacing (2e-5 on a weight of 1e-2, whose spacing is 6e-5) still moves the weight on average,
    where round-to-nearest would drop it every time. Adds 16 random bits below bf16's mantissa, then truncates.
    noise: int32 in [0, 2^16) of x's shape; None draws it with torch.randint."""
    bits = x.view(torch.int32)
    if noise is None:
        noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


def adamw_bf16_update(p, g, m, v, hyper, noise_p=None, noise_m=None, noise_v=None):
    """One AdamW step of bf16 p (weight), m, v (moments) in place, from bf16 gradient g, in fp32 math: torch.optim.
    AdamW's update (decoupled weight decay), each result stochastically rounded to bf16. hyper: fp32 (7,) tensor
    (1 - beta1, beta2, 1 - beta2, 1 - lr * weight_decay, bias correction 1 - beta2^t, eps, -lr / (1 - beta1^t)) -- a
    tensor, so a compiled update is not recompiled when the learning rate or the step changes. noise_*: the random
    bits of the three roundings, or None to draw them."""
    # the eager loop's operations in its order of evaluation (addcmul is self + value * t1 * t2, addcdiv
    # self + value * t1 / t2), so that both round alike
    g = g.float()
    m32 = torch.lerp(m.float(), g, hyper[0])
    v32 = v.float() * hyper[1] + hyper[2] * g * g
    w = p.float() * hyper[3]
    denom = torch.sqrt(v32 / hyper[4]) + hyper[5]
    w = w + hyper[6] * m32 / denom
    p.copy_(stochastic_round_bf16(w, noise_p))
    m.copy_(stochastic_round_bf16(m32, noise_m))
    v.copy_(stochastic_round_bf16(v32, noise_v))


_compiled_update = None


def compiled_update():
    """adamw_bf16_update compiled with dynamic sizes: one fused kernel per parameter, one graph per parameter rank
    (flat views would not save it: dynamo guards a view's base too)"""
    global _compiled_update
    if _compiled_update is None:
        _compiled_update = torch.compile(adamw_bf16_update, dynamic=True, fullgraph=True)
    return _compiled_update


class AdamWBF16(torch.optim.Optimizer):
    """AdamW (torch.optim.AdamW's update, decoupled weight decay) for bf16 parameters: the moments are kept in
    bf16 too, and each step is computed in fp32 and written back with stochastic rounding. Weights, gradients and
    both moments take 2 bytes per parameter each, 8 in all (LLaMA-2-7B: 54 GB), against 16 with fp32 master
    weights (108 GB). train.py's tests measure what it costs in accuracy.

    fused=True (or .compile()): the update of each parameter is one compiled kernel (adamw_bf16_update under
    torch.compile), its rounding noise drawn in the kernel; `noise_from_torch=True` draws the noise with
    torch.randint instead, in the eager loop's order, so that both give the same bits (for tests)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, stochastic_rounding=True,
                 fused=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        # round-to-nearest is there to measure what stochastic rounding buys (README: the 7B memory plan)
        self.round = stochastic_round_bf16 if stochastic_rounding else (lambda x: x.to(torch.bfloat16))
        self.stochastic_rounding, self.fused, self.noise_from_torch = stochastic_rounding, fused, False

    def compile(self):
        self.fused = True
        return self

    @torch.no_grad()
    def step(self, closure=None):  # closure: torch.optim's signature (unused; DCP's state set-up passes None)
        fused = self.fused and self.stochastic_rounding
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            hypers = {}  # (step, device) -> the fused update's hyper-parameter tensor, made once per group
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16)
                state["step"] += 1
                t = state["step"]
                if fused and p.is_contiguous() and p.grad.is_contiguous():
                    key = (t, p.device)
                    if key not in hypers:  # pinned and non-blocking: no wait for the kernels already queued
                        h = torch.tensor([1 - beta1, beta2, 1 - beta2, 1 - group["lr"] * group["weight_decay"],
                                          1 - beta2 ** t, group["eps"], -group["lr"] / (1 - beta1 ** t)],
                                         dtype=torch.float32)
                        hypers[key] = h.pin_memory().to(p.device, non_blocking=True) if p.is_cuda else h
                    noise = (tuple(torch.randint(0, 1 << 16, p.shape, dtype=torch.int32, device=p.device)
                                   for _ in range(3)) if self.noise_from_torch else ())
                    # p.data: dynamo gives nn.Parameters static shapes (a graph per size); the plain tensor shares
                    # the storage, so the in-place update lands in the parameter
                    compiled_update()(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], hypers[key], *noise)
                    continue
                g = p.grad.float()
                m = state["exp_avg"].float().lerp_(g, 1 - beta1)                   # fp32 math, bf16 storage
                v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
                w = p.float().mul_(1 - group["lr"] * group["weight_decay"])
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                w.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))
                p.copy_(self.round(w))
                state["exp_avg"].copy_(self.round(m))
                state["exp_avg_sq"].copy_(self.round(v))
