"""
AdamW on bf16 weights: the memory plan for full fine-tuning of a 7B model on one 80 GB GPU (train.py
optimizer=adamw_bf16). Weights, gradients and both moments in bf16, the update computed in fp32 and written back
with stochastic rounding, so that updates far below bf16's spacing still move the weights on average.
"""
import torch


def stochastic_round_bf16(x):
    """fp32 -> bf16 rounding up or down at random, with probability by distance, so E[result] = x: an update far
    below bf16's spacing (2e-5 on a weight of 1e-2, whose spacing is 6e-5) still moves the weight on average,
    where round-to-nearest would drop it every time. Adds 16 random bits below bf16's mantissa, then truncates."""
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


class AdamWBF16(torch.optim.Optimizer):
    """AdamW (torch.optim.AdamW's update, decoupled weight decay) for bf16 parameters: the moments are kept in
    bf16 too, and each step is computed in fp32 and written back with stochastic rounding. Weights, gradients and
    both moments take 2 bytes per parameter each, 8 in all (LLaMA-2-7B: 54 GB), against 16 with fp32 master
    weights (108 GB). train.py's tests measure what it costs in accuracy."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, stochastic_rounding=True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        # round-to-nearest is there to measure what stochastic rounding buys (README: the 7B memory plan)
        self.round = stochastic_round_bf16 if stochastic_rounding else (lambda x: x.to(torch.bfloat16))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
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
                g = p.grad.float()
                m = state["exp_avg"].float().lerp_(g, 1 - beta1)                   # fp32 math, bf16 storage
                v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
                w = p.float().mul_(1 - group["lr"] * group["weight_decay"])
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                w.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))
                p.copy_(self.round(w))
                state["exp_avg"].copy_(self.round(m))
                state["exp_avg_sq"].copy_(self.round(v))
