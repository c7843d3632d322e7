"""
LLaMA 1, 2 and 3 and Mixtral in one readable file: the network and generation, nothing else (checkpoint.py reads and
writes HF checkpoints). Mixtral is LLaMA with a sparse mixture of SwiGLU experts in place of each block's feed-forward
(MoEFeedForward, chosen when config.json's architecture is MixtralForCausalLM).

    model = load_model("path/to/Llama-2-7b-hf", device="cuda", dtype=torch.bfloat16)   # from checkpoint.py
    logits = model(idx)                                   # (B, T, vocab)
    ce = model(idx, targets)                              # (B, T) per-token cross-entropy, fp32, never (B, T, vocab) fp32
    out = model.generate(prompts, max_new_tokens=64, eos_id=2)
    out = model.generate(prompts, 512, eos_id=2, num_beams=4, early_stopping=True, repetition_penalty=1.2)  # PandaLM's

Module and parameter names follow HF's, without the "model." prefix, so a checkpoint key is one string
operation away from ours. The architecture numbers come from config.json only.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.checkpoint
import torch.nn.functional as F

try:  # FlexAttention (torch >= 2.5): packed rows' document-causal attention, skipping the blocks no example reaches
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:
    BlockMask = create_block_mask = flex_attention = None


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32              # < n_heads: grouped-query attention (LLaMA-2-70B, LLaMA 3)
    head_dim: int = 128
    hidden_dim: int = 11008           # SwiGLU width, HF's intermediate_size
    vocab_size: int = 32000
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # None, {"rope_type": "linear", "factor"} or {"rope_type": "llama3", ...}
    max_seq_len: int = 4096           # HF's max_position_embeddings: the length of the RoPE tables
    tie_word_embeddings: bool = False
    bos_id: int | None = 1
    eos_id: int | list | None = 2
    dropout: float = 0.0              # training only (attention and residual dropout); not saved in config.json
    n_experts: int = 0                # > 0: Mixtral, a sparse mixture of this many SwiGLU experts in every block
    n_experts_per_tok: int = 2        # Mixtral: the experts each token goes through (top-2 of 8)
    sliding_window: int | None = None # Mixtral's config.json field, kept for saving (max_seq_len never exceeds it)

# -----------------------------------------------------------------------------
# building blocks

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 and cast back before the weight, as LLaMA and HF do (matters in bf16)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


def rope_frequencies(args):
    """Inverse frequencies (head_dim/2,) of the rotary embedding, with linear or llama3 scaling applied."""
    hd = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    s = args.rope_scaling
    if s is None:
        return inv_freq
    if s["rope_type"] == "linear":  # position interpolation: positions are divided by the factor
        return inv_freq / s["factor"]
    # llama3: long wavelengths are slowed by `factor`, short ones kept, a smooth blend in between
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(medium, blended, scaled)


def rope_tables(args, device=None):
    inv_freq = rope_frequencies(args).to(device)
    t = torch.arange(args.max_seq_len, device=device, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)               # (max_seq_len, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)        # (max_seq_len, head_dim): HF's half-split layout, not interleaved
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    # x (B, H, T, hd); cos, sin (T, hd) or (B, 1, T, hd). HF checkpoints store q/k rows permuted for this
    # half-split rotation (rotate_half), which is why it is not Meta's interleaved complex multiply.
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.dropout = args.dropout
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, mask=None, cache=None, pos=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # the one KV-cache path: each row writes its keys/values at its own positions pos (B, T) of the static
            # cache, then attends to the first S cache positions, through the mask (B, 1, T, S) when there is one,
            # else causally from position 0 (a prefill)
            k_cache, v_cache = cache
            at = pos[:, None, :, None].expand_as(k)                                    # (B, nkv, T, hd)
            k_cache.scatter_(2, at, k)
            v_cache.scatter_(2, at, v)
            S = T if mask is None else mask.shape[-1]
            k, v = k_cache[:, :, :S], v_cache[:, :, :S]                                # (B, nkv, S, hd)
        gqa = self.n_kv_heads != self.n_heads
        if BlockMask is not None and isinstance(mask, BlockMask):  # packed rows, compiled on CUDA (Transformer.doc_mask)
            y = flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)                # (B, nh, T, hd)
        else:
            # a plain Python bool: `T > 1` on a dynamic (symbolic) length would be a guard or a graph break when compiled
            causal = mask is None
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=gqa,
            )                                                                           # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return F.dropout(self.o_proj(y), self.dropout, self.training)


class FeedForward(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.dropout = args.dropout
        self.gate_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def forward(self, x):
        return F.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)), self.dropout, self.training)


class Expert(nn.Module):
    """One Mixtral expert: the SwiGLU of FeedForward under HF's Mixtral names (w1 gate, w3 up, w2 down)."""
    def __init__(self, args):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoEFeedForward(nn.Module):
    """Mixtral's sparse mixture of experts: a linear router scores the experts per token; softmax over all experts in
    fp32, keep the top k, renormalise their weights to sum to 1 (HF's MixtralSparseMoeBlock order), and sum the k
    experts' outputs with those weights. Each expert runs only on the tokens routed to it."""
    def __init__(self, args):
        super().__init__()
        self.k = args.n_experts_per_tok
        self.gate = nn.Linear(args.dim, args.n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(args) for _ in range(args.n_experts))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                                    # (N, dim)
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float)                     # (N, E)
        weights, chosen = torch.topk(probs, self.k, dim=-1)                            # (N, k)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)           # (N, k) summing to 1
        out = torch.zeros_like(x)                                                      # (N, dim)
        for e in chosen.unique().tolist():  # the experts some token chose (one host sync)
            tok, slot = torch.where(chosen == e)                                       # (n_e,) its tokens
            out.index_add_(0, tok, self.experts[e](x[tok]) * weights[tok, slot, None])
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.moe = args.n_experts > 0
        if self.moe:  # Mixtral: the feed-forward is sparse, under HF's name for it
            self.block_sparse_moe = MoEFeedForward(args)
        else:
            self.mlp = FeedForward(args)
        self.compiled = None  # Transformer.compile_blocks(): the compiled self.block, used when there is no KV cache

    def forward(self, x, cos, sin, mask=None, cache=None, pos=None):
        if self.compiled is not None and cache is None:
            # the batch and length dims are dynamic from the first call on (a size of 1 is still specialised); only
            # these: under FSDP2 a dynamic=True compile would also turn the head counts into symbols
            dense = torch.is_tensor(mask)  # a packed row's (B, 1, T, T) mask; a BlockMask's sizes follow T by itself
            for t, dims in ((x, (0, 1)), (cos, (-2,)), (sin, (-2,))) + (((mask, (-2, -1)),) if dense else ()):
                for d in dims:
                    torch._dynamo.maybe_mark_dynamic(t, d % t.dim())
            return self.compiled(x, cos, sin, mask)
        return self.block(x, cos, sin, mask, cache, pos)

    def block(self, x, cos, sin, mask=None, cache=None, pos=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, pos)
        ffn = self.block_sparse_moe if self.moe else self.mlp
        return x + ffn(self.post_attention_layernorm(x))


# -----------------------------------------------------------------------------
# cross-entropy over the vocabulary without holding (N, vocab) fp32 logits

class ChunkedCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of (h @ weight.T) against targets, `chunk` rows at a time.

    Only one chunk's logits exist at once, in forward and in backward (which recomputes them: one extra
    head matmul, ~1-2% of a LLaMA step, for not storing N x vocab activations). When all N rows fit in one
    chunk, that chunk's softmax is kept for backward instead, at no cost in peak memory: this loss is the last
    op of the forward and its backward the first of the backward (it matters for small models, whose head is
    most of the FLOPs). Targets < 0 are ignored (loss 0, no gradient). Label smoothing is PyTorch's:
    (1-eps) * nll + eps * mean over the vocab of -log p.

    Under autocast the head's matmuls run in the autocast dtype in backward as in forward (autograd runs a Function's
    backward without autocast, so this casts explicitly): the recomputed logits must be the forward's, or
    exp(logits - lse) is no softmax. Recomputed in fp32 against a bf16 lse, gradients were 4-9% off (the max
    relative error; tests/test_model.py), and the head's backward ran at fp32/TF32 speed.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, label_smoothing, chunk):
        N = h.shape[0]
        dev = h.device.type
        ctx.dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None  # None: h's own
        wm = weight if ctx.dtype is None else weight.to(ctx.dtype)                 # cast once, not once a chunk
        ce = torch.empty(N, dtype=torch.float32, device=h.device)
        lse = torch.empty(N, dtype=torch.float32, device=h.device)  # kept: backward's softmax is exp(logits - lse)
        # eager only: a compiled backward would not see the kept buffer being handed over (ctx.probs = None)
        keep = N <= chunk and any(ctx.needs_input_grad[:2]) and not torch.compiler.is_compiling()
        ctx.probs = None
        for s in range(0, N, chunk):
            hm = h[s:s + chunk] if ctx.dtype is None else h[s:s + chunk].to(ctx.dtype)
            logits = (hm @ wm.T).float()                                           # (n, V)
            t = targets[s:s + chunk]
            picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)         # (n,) the target's logit
            mean = logits.mean(dim=-1) if label_smoothing > 0 else None
            # logsumexp in place: no second (n, V) buffer, so one chunk's logits is all the memory this takes
            m = logits.amax(dim=-1, keepdim=True)                                  # (n, 1)
            e = logits.sub_(m).exp_()                                              # (n, V) exp(logit - max)
            total = e.sum(dim=-1)                                                  # (n,)
            lse_c = total.log().add_(m.squeeze(1))                                 # (n,)
            loss = lse_c - picked                                                  # -log p(target)
            if label_smoothing > 0:
                loss = (1 - label_smoothing) * loss + label_smoothing * (lse_c - mean)
            ce[s:s + chunk] = torch.where(t >= 0, loss, 0.0)
            lse[s:s + chunk] = lse_c
            if keep:
                ctx.probs = e.div_(total[:, None])                                 # (N, V) softmax, the only chunk
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.label_smoothing, ctx.chunk = label_smoothing, chunk
        return ce

    @staticmethod
    def backward(ctx, grad_ce):
        h, weight, targets, lse = ctx.saved_tensors
        eps, chunk = ctx.label_smoothing, ctx.chunk
        probs, ctx.probs = ctx.probs, None  # used up in place below: a second backward (retain_graph) recomputes
        V = weight.shape[0]
        dtype = ctx.dtype or h.dtype                                               # the matmuls' dtype
        wm = weight.to(dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # fp32: summed over chunks
        for s in range(0, h.shape[0], chunk):
            hc, t = h[s:s + chunk].to(dtype), targets[s:s + chunk]
            g = torch.where(t >= 0, grad_ce[s:s + chunk], 0.0)                     # (n,)
            # d loss / d logits = p - (1-eps) onehot - eps/V, built in place in the softmax's buffer: the kept
            # one, or the recomputed logits
            if probs is not None:
                dlogits = probs                                                    # (n, V) p = softmax
            else:
                dlogits = (hc @ wm.T).float().sub_(lse[s:s + chunk, None]).exp_()  # (n, V) p = softmax
            if eps > 0:
                dlogits -= eps / V
            dlogits[torch.arange(len(t), device=t.device), t.clamp(min=0)] -= 1 - eps
            dlogits = dlogits.mul_(g[:, None]).to(dtype)
            if dtype == h.dtype:
                torch.mm(dlogits, wm, out=grad_h[s:s + chunk])
            else:
                grad_h[s:s + chunk] = dlogits @ wm
            if dlogits.dtype == torch.float32:
                grad_w.addmm_(dlogits.T, hc)  # (V, dim) accumulated in place
            else:
                grad_w += (dlogits.T @ hc).float()  # each chunk's product in the model dtype, the sum in fp32
        return grad_h, grad_w.to(weight.dtype), None, None, None


# -----------------------------------------------------------------------------
# the model

class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_rope()
        # training: keep only each block's input and recompute its activations in the backward pass (about a third
        # more of that block's compute for a fraction of its activation memory; train.py's activation_checkpointing),
        # in every checkpoint_every-th block (blocks 0, k, 2k, ...): 1 = all, 4 = a quarter of them (selective)
        self.activation_checkpointing = False
        self.checkpoint_every = 1
        # packed rows' attention: None = FlexAttention where it is fast (compiled blocks on CUDA, no attention
        # dropout), else SDPA with a dense (B, 1, T, T) mask; True / False force one (tests)
        self.flex = None
        self.apply(self._init_weights)  # a no-op on the meta device, where load_model builds the model

    def compile_blocks(self, **options):
        """torch.compile each block (torchtitan's per-block compile), for training and evaluation without a KV cache.

        Only the block's own computation is compiled, not the module call: hooks around it (FSDP2's all-gather and
        reduce-scatter, activation checkpointing, DDP) stay eager and compose as they do without compile. Everything
        data-dependent stays outside: the padding skip (a host sync) and the chunked cross-entropy (a custom autograd
        Function with a Python loop over chunks) run eagerly after the last block. fullgraph=True: a graph break is
        an error, not a slowdown. Lengths and micro-batch sizes are dynamic: one graph serves every shape with B, T >= 2
        (identical blocks share it), a micro-batch of one row (or one token) adds one more (sizes 0 and 1 are always
        specialised). Generation (with a cache) runs the blocks eagerly."""
        options = {"fullgraph": True, **options}
        for layer in self.layers:
            layer.compiled = torch.compile(layer.block, **options)
        return self

    def doc_mask(self, doc):
        """The attention mask of packed rows: doc (B, T) says which example each token belongs to, and a token attends
        to the earlier tokens of its own example only (document-causal). FlexAttention's BlockMask where it runs fast
        (see self.flex): its kernel skips the blocks no example reaches, so a row costs what its examples cost alone;
        elsewhere a dense boolean (B, 1, T, T) mask for SDPA, exact but O(T^2) (FlexAttention has no CPU backward and
        is slow uncompiled). No host sync either way."""
        B, T = doc.shape
        flex = self.flex
        if flex is None:
            compiled = self.layers[0].compiled is not None
            flex = compiled and doc.is_cuda and not (self.training and self.args.dropout > 0)
        if flex and create_block_mask is not None:
            def document_causal(b, h, q, kv):
                return (doc[b, q] == doc[b, kv]) & (q >= kv)
            return create_block_mask(document_causal, B, None, T, T, device=doc.device)
        causal = torch.ones(T, T, dtype=torch.bool, device=doc.device).tril()         # (T, T)
        return (doc[:, None, :, None] == doc[:, None, None, :]) & causal             # (B, 1, T, T)

    def _init_weights(self, module):
        # HF's LLaMA initialisation (initializer_range 0.02): for training from scratch and random-weight benchmarks
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def reset_rope(self, device=None):
        # RoPE tables are buffers computed in fp32 (not saved): model.to(bf16) casts them just as HF casts its cos/sin
        device = device or self.embed_tokens.weight.device
        cos, sin = rope_tables(self.args, device=device)
        dtype = self.embed_tokens.weight.dtype
        self.register_buffer("rope_cos", cos.to(dtype), persistent=False)
        self.register_buffer("rope_sin", sin.to(dtype), persistent=False)

    def forward(self, idx, targets=None, *, input_pos=None, mask=None, doc=None, keep=None, cache=None, start_pos=0,
                label_smoothing=0.0, return_hidden=False, ce_chunk=None):
        """idx (B, T) token ids.
        Returns logits (B, T, vocab) in the model's dtype; or, with targets (B, T) (-1 = ignore), the per-token
        cross-entropy (B, T) in fp32, computed in chunks; or, with return_hidden, the final-norm hidden states.
        input_pos (T,) or (B, T): RoPE positions (default 0..T-1; for packed sequences); mask: a boolean SDPA mask,
        True = attend (default causal); doc (B, T): packed rows, the example each token belongs to (attention stays
        within it: doc_mask; give input_pos restarting per example too); keep (n,): the indices into
        targets.view(-1) of the targets >= 0, found by the caller where the targets live on the host (None: found
        here, a host sync on a GPU); cache / start_pos: a KV cache from make_cache() and where this chunk starts,
        an int, or a LongTensor (B,) of per-row starts (rows at different positions; then mask (B, 1, T, S) is
        required and says which of the first S cache positions each query sees).
        """
        B, T = idx.shape
        pos = None
        if doc is not None:
            mask = self.doc_mask(doc)
        if cache is not None and torch.is_tensor(start_pos):
            if mask is None:
                raise ValueError("per-row start positions need a mask over the cache")
            pos = input_pos = start_pos[:, None] + torch.arange(T, device=idx.device)  # (B, T) each row's positions
        elif cache is not None:
            input_pos = torch.arange(start_pos, start_pos + T, device=idx.device)      # (T,)
            pos = input_pos.expand(B, T)                                               # (B, T)
            if start_pos > 0 and mask is None:  # after a prefix: causal, offset by start_pos, over S = start_pos + T
                mask = torch.arange(start_pos + T, device=idx.device) <= input_pos[:, None]   # (T, S)
        if input_pos is None:
            if T > self.rope_cos.shape[0]:
                raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {self.args.max_seq_len}")
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]                          # (T, hd)
        else:
            cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]            # (T, hd) or (B, T, hd)
            if input_pos.dim() == 2:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                        # (B, 1, T, hd)
        x = self.embed_tokens(idx)                                                   # (B, T, dim)
        for i, layer in enumerate(self.layers):
            if (self.activation_checkpointing and i % self.checkpoint_every == 0 and self.training
                    and torch.is_grad_enabled()):
                # non-reentrant checkpointing restores the RNG state for the recompute: the same dropout masks
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, None if cache is None else cache[i], pos)
        x = self.norm(x)                                                             # (B, T, dim)
        if return_hidden:
            return x
        if targets is None:
            return self.lm_head(x)                                                   # (B, T, vocab)
        chunk = ce_chunk or max(1, 2 ** 26 // self.args.vocab_size)  # ~256 MB of fp32 logits per chunk
        h, targets = x.reshape(B * T, -1), targets.reshape(B * T)                  # (N, dim), (N,)
        if not torch.compiler.is_compiling():
            # ignored targets (padding) skip the vocabulary head, the largest matmul of a small model: eager
            # only, as the row count is data-dependent (a host sync unless the caller found the rows on the host)
            keep = (targets >= 0).nonzero().squeeze(1) if keep is None else keep        # (n,)
            if len(keep) < B * T:
                ce = ChunkedCrossEntropy.apply(h[keep], self.lm_head.weight, targets[keep], float(label_smoothing),
                                               chunk)                               # (n,)
                return h.new_zeros(B * T, dtype=torch.float32).index_copy(0, keep, ce).view(B, T)
        ce = ChunkedCrossEntropy.apply(h, self.lm_head.weight, targets, float(label_smoothing), chunk)
        return ce.view(B, T)

    # -------------------------------------------------------------------------
    # generation

    def make_cache(self, batch_size, max_len, device=None, dtype=None):
        """A static KV cache: one (k, v) pair of (B, n_kv_heads, max_len, head_dim) per layer, allocated once.
        Zeroed, not empty: a masked-out key must still be a finite number (0 * NaN would poison the output)."""
        p = self.lm_head.weight
        shape = (batch_size, self.args.n_kv_heads, max_len, self.args.head_dim)
        return [(torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype),
                 torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)) for _ in self.layers]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None, eos_id=None, generator=None,
                 repetition_penalty=1.0, num_beams=1, length_penalty=1.0, early_stopping=False, beam_scorer="4.57"):
        """Batched generation with a static KV cache; temperature 0 is greedy (argmax, as HF's do_sample=False).

        idx: a LongTensor (B, T), or a list of token-id lists of different lengths. Returns prompt + new tokens:
        a (B, T + n) tensor padded after a row's EOS with the EOS id (as HF does), or, for list input, a list of
        lists, each ending at its EOS (included) or after max_new_tokens new tokens.
        eos_id: an id or a list of ids that end a row; None never stops early.
        repetition_penalty: HF's: the score of every token already in the row (prompt included) is multiplied by it
        when negative, divided by it when positive (on the logits here; on the log-probabilities in beam search).
        num_beams > 1: beam search (see beam_search), with length_penalty, early_stopping and beam_scorer ("4.57":
        transformers 4.57's rules; "4.28": 4.28.1's, which PandaLM ran).

        Rows of different lengths: all prompts are prefilled in one right-padded forward (causal, so no prompt
        token sees the padding after it), then every row decodes from its own position, writing its keys and
        values at its own place in the static cache and attending through a mask to its own tokens only. No row
        ever attends to padding, so each row's result is exactly what it would be alone. Without eos_id the
        loop never waits on the device; with it, one host sync per new token checks whether all rows are done.
        """
        as_list = not torch.is_tensor(idx)
        device = self.lm_head.weight.device
        prompts = [list(map(int, p)) for p in idx] if as_list else idx.tolist()
        if not prompts or min(map(len, prompts)) == 0:
            raise ValueError("generate needs at least one prompt and every prompt needs at least one token")
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be positive, got {repetition_penalty}")
        if num_beams > 1:
            if temperature != 0.0:
                raise ValueError(f"beam search is deterministic here: temperature must be 0, got {temperature}")
            out = self.beam_search(prompts, max_new_tokens, num_beams, eos_id, length_penalty, early_stopping,
                                   repetition_penalty, beam_scorer)
            if as_list:
                return out
            fill = eos_id if isinstance(eos_id, int) else eos_id[0] if eos_id else 0
            width = max(map(len, out))
            return torch.tensor([o + [fill] * (width - len(o)) for o in out], device=device)
        B = len(prompts)
        lens = torch.tensor([len(p) for p in prompts], device=device)
        max_len = max(map(len, prompts))
        total = max_len + max_new_tokens
        if total > self.args.max_seq_len:
            raise ValueError(f"prompt ({max_len}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                             f"{self.args.max_seq_len}")
        eos = torch.tensor([] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id),
                           device=device, dtype=torch.long)
        fill = int(eos[0]) if len(eos) else 0
        tokens = torch.full((B, total), fill, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            tokens[b, :len(p)] = torch.tensor(p, device=device)
        rows, ar = torch.arange(B, device=device), torch.arange(total, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        end = lens + max_new_tokens                                                  # (B,) a row's length
        cache = self.make_cache(B, total)
        pos = lens.clone()                                                           # (B,) where each next token goes
        seen = None if repetition_penalty == 1.0 else seen_tokens(prompts, self.args.vocab_size, device)  # (B, V)
        for i in range(max_new_tokens):
            if i == 0:  # prefill: the hidden state of each row's last prompt token
                h = self(tokens[:, :max_len], cache=cache, return_hidden=True)[rows, lens - 1]      # (B, dim)
            else:       # feed each row's previous token at its own position pos - 1; keys up to there
                mask = (ar[:max_len + i] < pos[:, None])[:, None, None]                        # (B, 1, 1, S)
                h = self(nxt[:, None], cache=cache, start_pos=pos - 1, mask=mask, return_hidden=True)[:, 0]
            # (B, V) logits; on CPU, MKL computes this skinny product ~1.5x faster as (V, dim) @ (dim, B)
            logits = self.lm_head.weight.mm(h.T).T if h.device.type == "cpu" else self.lm_head(h)
            if seen is not None:
                logits = penalize(logits.float(), seen, repetition_penalty)  # in fp32, as HF processes scores
            nxt = sample(logits, temperature, top_k, top_p, generator)                          # (B,)
            nxt = torch.where(done, fill, nxt)
            if seen is not None:
                seen[rows, nxt] = True
            tokens[rows, pos] = nxt
            finished = ~done & torch.isin(nxt, eos)
            end = torch.where(finished, pos + 1, end)
            done |= finished
            pos += 1
            if len(eos) and done.all():  # the only host sync: stop once every row has ended
                break
        if as_list:
            return [tokens[b, :int(end[b])].tolist() for b in range(B)]
        return tokens[:, :int(end.max())]

    @torch.no_grad()
    def beam_search(self, prompts, max_new_tokens, num_beams, eos_id=None, length_penalty=1.0, early_stopping=False,
                    repetition_penalty=1.0, beam_scorer="4.57"):
        """Beam search over token-id lists of different lengths, each prompt as transformers 4.57's
        generate(num_beams=K, do_sample=False) runs it alone: returns one list per prompt, prompt + the best finished
        hypothesis (ending at its EOS, included, or after max_new_tokens).

        HF's rules, step for step (GenerationMixin._beam_search): the next-token log-softmax in fp32, the repetition
        penalty applied to it, plus each beam's running score; the top max(2, 1 + n_eos) * K of the K * V candidates;
        those ending in EOS (or reaching max_new_tokens) among the first K become finished hypotheses scored
        sum(log p) / new_tokens ** length_penalty, the best K unfinished ones run on. A prompt is done when
        early_stopping is True and it holds K finished hypotheses, or when no running beam could beat its worst
        finished one (early_stopping False: judged at the current length; "never": at max_new_tokens when
        length_penalty > 0). The K beams of a prompt share its prefill; each step the cache rows follow their beams
        (only the positions written so far are copied), and a done prompt leaves the batch.

        beam_scorer="4.28": transformers 4.28.1's BeamSearchScorer instead (PandaLM pinned that version): the top 2K
        candidates; a finished hypothesis is scored in float64 by sum(log p) / len ** length_penalty with len the
        whole sequence before its EOS, prompt included; a prompt is done once it holds K hypotheses and (unless
        early_stopping is True) the best candidate, divided by the current whole length (early_stopping "never" and
        length_penalty > 0: the whole maximum length), cannot beat the worst; at max_new_tokens the running beams of
        a prompt not done join its hypotheses.
        """
        device = self.lm_head.weight.device
        K, B, V = num_beams, len(prompts), self.args.vocab_size
        lens = torch.tensor([len(p) for p in prompts], device=device)
        max_len = max(map(len, prompts))
        if max_len + max_new_tokens > self.args.max_seq_len:
            raise ValueError(f"prompt ({max_len}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                             f"{self.args.max_seq_len}")
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        if beam_scorer not in ("4.57", "4.28"):
            raise ValueError(f"beam_scorer must be '4.57' or '4.28' (transformers' versions), got {beam_scorer!r}")
        legacy = beam_scorer == "4.28"
        eos = torch.tensor([] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id),
                           device=device, dtype=torch.long)
        fill = int(eos[0]) if len(eos) else 0
        keep = (2 if legacy else max(2, 1 + len(eos))) * K    # candidates kept per prompt: enough to continue K beams
        first_k = torch.arange(keep, device=device) < K       # only these may become finished hypotheses
        NEG = -1.0e9                                          # HF's "impossible" score

        tokens = torch.full((B, max_len), fill, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            tokens[b, :len(p)] = torch.tensor(p, device=device)
        cache = self.make_cache(B, max_len + max_new_tokens)
        h = self(tokens, cache=cache, return_hidden=True)[torch.arange(B, device=device), lens - 1]   # (B, dim)
        # (B*K, V), every beam alike; 4.57 casts to fp32 first, 4.28 took the log-softmax in the model's dtype
        logits = self.lm_head(h).repeat_interleave(K, 0)
        cache = [(k.repeat_interleave(K, 0), v.repeat_interleave(K, 0)) for k, v in cache]
        seen = None
        if repetition_penalty != 1.0:
            seen = seen_tokens(prompts, V, device).repeat_interleave(K, 0)           # (B*K, V)
        pos = lens.repeat_interleave(K)                                               # (B*K,) where the next token goes
        ar = torch.arange(max_len + max_new_tokens, device=device)

        # per live prompt (n of them): K running beams and K finished hypotheses, as HF keeps them
        run_seq = torch.full((B, K, max_new_tokens), fill, dtype=torch.long, device=device)
        run_score = torch.zeros(B, K, device=device)
        run_score[:, 1:] = NEG                                # all beams start alike: only the first one counts
        fin_seq, fin_len = run_seq.clone(), torch.zeros(B, K, dtype=torch.long, device=device)
        fin_score = torch.full((B, K), -math.inf, dtype=torch.float64, device=device) if legacy else \
            torch.full((B, K), NEG, device=device)
        fin_flag = torch.zeros(B, K, dtype=torch.bool, device=device)
        improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
        live = torch.arange(B, device=device)                 # which prompt each state row is
        out = [None] * B

        def pick(t, i):  # t (n, m, ...) gathered along dim 1 by i (n, k)
            return t.gather(1, i.view(*i.shape, *[1] * (t.dim() - 2)).expand(*i.shape, *t.shape[2:]))

        for i in range(max_new_tokens):
            if i > 0:  # each beam's last token at its own position; keys up to there
                mask = (ar[:max_len + i] < pos[:, None])[:, None, None]                # (N, 1, 1, S)
                h = self(nxt[:, None], cache=cache, start_pos=pos - 1, mask=mask, return_hidden=True)[:, 0]
                logits = self.lm_head(h)                                               # (N, V)
            n = len(live)
            logp = F.log_softmax(logits if legacy else logits.float(), dim=-1)        # (N, V)
            if seen is not None:
                logp = penalize(logp, seen, repetition_penalty)
            total = (logp.view(n, K, V) + run_score[:, :, None]).view(n, K * V)     # fp32 (run_score is)
            top_score, top_idx = torch.topk(total, keep)                                # (n, keep)
            parent, tok = top_idx // V, top_idx % V
            cand = pick(run_seq, parent)                                               # (n, keep, max_new_tokens)
            cand[:, :, i] = tok
            last = i == max_new_tokens - 1
            hits = torch.isin(tok, eos) | (last and not legacy)                        # (n, keep) the row stops here

            # the K best candidates that did not stop run on
            run_cand = top_score + hits.to(torch.float32) * NEG
            nxt_idx = torch.topk(run_cand, K)[1]                                       # (n, K)
            run_seq, run_score, run_parent = pick(cand, nxt_idx), pick(run_cand, nxt_idx), pick(parent, nxt_idx)

            # stopped candidates among the first K join the finished hypotheses if they beat the worst of them
            just = hits & first_k

            def merge(seqs, scores, n_new):  # keep the K best of the finished hypotheses and (seqs, scores)
                idx = torch.topk(torch.cat((fin_score, scores), 1), K)[1]             # (n, K)
                return (pick(torch.cat((fin_seq, seqs), 1), idx), pick(torch.cat((fin_score, scores), 1), idx),
                        pick(torch.cat((fin_len, torch.full_like(scores, n_new, dtype=torch.long)), 1), idx), idx)

            if legacy:
                whole = lens[live].double()[:, None]                                   # (n, 1) prompt lengths
                fin_cand = torch.where(just, top_score.double() / (whole + i) ** length_penalty, -math.inf)
                fin_seq, fin_score, fin_len, _ = merge(cand, fin_cand, i + 1)
                full = (fin_score > -math.inf).all(-1)                                 # (n,) K hypotheses
                if early_stopping is True:
                    done = full
                else:
                    best_len = whole + max_new_tokens if early_stopping == "never" and length_penalty > 0 \
                        else whole + i + 1
                    best = top_score[:, :1].double() / best_len ** length_penalty
                    done = full & (fin_score.min(dim=1, keepdim=True)[0] >= best)[:, 0]
                if last:  # finalize: a prompt not done adds its running beams, with all max_new_tokens tokens
                    fin_run = torch.where(done[:, None], -math.inf,
                                          run_score.double() / (whole + max_new_tokens) ** length_penalty)
                    fin_seq, fin_score, fin_len, _ = merge(run_seq, fin_run, max_new_tokens)
                    done = torch.ones_like(done)
                done = done.tolist()
            else:  # 4.57: new-token lengths, and stop when no running beam could beat the worst hypothesis
                fin_cand = top_score / ((i + 1) ** length_penalty)
                fin_cand += (fin_flag.all(-1, keepdim=True) & (early_stopping is True)).to(torch.float32) * NEG
                fin_cand += (~improvable).to(torch.float32) * NEG
                fin_cand += (~just) * NEG
                fin_seq, fin_score, fin_len, merged = merge(cand, fin_cand, i + 1)
                fin_flag = pick(torch.cat((fin_flag, just), 1), merged)
                best_len = max_new_tokens if early_stopping == "never" and length_penalty > 0.0 else i + 1
                best_running = run_score[:, :1] / (best_len ** length_penalty)
                worst = torch.where(fin_flag, fin_score.min(dim=1, keepdim=True)[0], NEG)
                improvable = improvable & (best_running > worst).any(-1, keepdim=True)
                done = ~improvable[:, 0] | (fin_flag.all(-1) & (early_stopping is True)) | hits.all(-1)
                done = done.tolist()  # the host sync of the step
            for j in (j for j in range(n) if done[j]):
                b = int(live[j])
                out[b] = prompts[b] + fin_seq[j, 0, :fin_len[j, 0]].tolist()
            if all(done):
                break
            # the next step's beams: cache rows and state follow their parents; done prompts leave
            go = torch.tensor([not d for d in done], device=device)
            rows = (torch.arange(n, device=device)[:, None] * K + run_parent)[go].view(-1)   # (N',)
            live, run_seq, run_score, fin_seq, fin_score, fin_len, fin_flag, improvable = (
                t[go] for t in (live, run_seq, run_score, fin_seq, fin_score, fin_len, fin_flag, improvable))
            S = max_len + i + 1  # the positions written so far
            if len(rows) < n * K:  # a prompt left: smaller tensors
                cache = [(k[rows], v[rows]) for k, v in cache]
            else:
                for k, v in cache:
                    k[:, :, :S], v[:, :, :S] = k[rows, :, :S], v[rows, :, :S]
            nxt = run_seq[:, :, i].reshape(-1)                                         # (N',)
            pos = pos[rows] + 1
            if seen is not None:
                seen = seen[rows]
                seen[torch.arange(len(rows), device=device), nxt] = True
        return out

    def num_params(self, exclude_embedding=True):
        # the embedding lookup costs no FLOPs; a tied head is counted once, as the head
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding and not self.args.tie_word_embeddings:
            n -= self.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6N for the matmuls (forward + backward) + 12·L·H·Q·T for attention."""
        a = self.args
        return 6 * self.num_params() + 12 * a.n_layers * a.n_heads * a.head_dim * seq_len


def seen_tokens(prompts, vocab_size, device=None):
    """(B, V) bool: which tokens each prompt holds (the repetition penalty's memory)."""
    seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        seen[b, torch.tensor(p, device=device)] = True
    return seen


def penalize(scores, seen, penalty):
    """HF's RepetitionPenaltyLogitsProcessor: scores (B, V) of tokens already seen are multiplied by the penalty
    when negative and divided by it otherwise (less likely either way)."""
    return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)


def sample(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) -> next token ids (B,): argmax at temperature 0, else temperature, top-k, top-p (HF's order)."""
    if temperature == 0.0:
        return logits.max(dim=-1).indices  # argmax, the first index on ties, as documented; ~3x faster on CPU
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest prefix reaching top_p (at least one)
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


