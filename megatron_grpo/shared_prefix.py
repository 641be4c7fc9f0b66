"""Shared-prefix layout: a GRPO group as ONE row ``[prefix | rest_1 | ... | rest_G]``.

Why: the G samples of a prompt share their prompt token for token (with the Workplace tools that
is ~4,100 tokens against a few hundred of the agent's own). Forwarding the prompt G times is most
of a step's compute. Laid out once, with each rest attending to the prefix and causally to itself
only, and each rest's RoPE positions continuing from the prefix length, every token sees exactly
the context it has in its own row: logprobs are the same numbers (up to float summation order)
and so are the gradients (the prefix's gradient is the sum of the G copies').

Pieces (the policy wires them in; the model is unchanged):
  plan / Pack      which rows form a pack (consecutive rows of one group, split into several packs
                   when prefix + rests would exceed a token budget: still exact), the packed token
                   row, its positions, and the index maps back to the per-row layout.
  attention        the core attention of a packed row, called by ``models.qwen3.SDPAttention`` when
                   its ``attention_mask`` is a layout descriptor (an int64 vector, see ``Pack``):
                   the prefix attends causally to itself; each rest attends to [prefix K/V ; own
                   K/V] with a bottom-right causal mask (torch's ``causal_lower_right``: the
                   flash kernel on GPU, an [r, P + r] bool mask on CPU). No (prefix + G x rest)^2
                   mask exists. Memory: per layer, each rest's [prefix ; own] K/V copy
                   (G x (P + r) x 2 x kv_dim, kept for backward); every other activation of the
                   prefix is stored once.
  rope positions   a forward hook on the model's ``rotary_pos_emb`` gathers the table at the packed
                   positions while ``packed_forward`` runs, so RoPE gets each token's true position
                   (megatron's GPTModel derives RoPE from the sequence length, not position_ids).
                   The descriptor and the gathered RoPE are forward arguments of the transformer
                   layers, so activation recompute and the pipeline schedule see the right ones.
  token_logprobs   vocab-parallel logprobs of a packed row, returned in the per-row layout
                   ``[rows, W]`` (0 where there is no logprob), so loss functions are unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

_state = threading.local()


@dataclass
class Pack:
    """One packed row: ``rows`` of the batch sharing ``prefix_len`` leading tokens.

    ids / positions: [L] int64, the packed tokens and their true positions (padding: id 0, pos 0).
    layout: [1 + k] int64 descriptor ``[P, end_1, ..., end_k]``: rest i spans [end_{i-1}, end_i)
        (end_0 = P); a padding tail is one more span. It is what the core attention receives.
    src / dest: [n] int64: logprob n of the per-row layout ``[rows, width]`` (flat index ``dest``)
        is entry ``src`` of ``cat(packed main logprobs [L], first-token logprobs [len(rows)])``.
    width: the per-row width (longest row of the pack).
    """

    rows: list[int]
    prefix_len: int
    rest_lens: list[int]
    ids: torch.Tensor
    positions: torch.Tensor
    layout: torch.Tensor
    src: torch.Tensor
    dest: torch.Tensor
    width: int

    @property
    def tokens(self) -> int:
        """Tokens the model processes for this pack (without padding)."""
        return self.prefix_len + sum(self.rest_lens)


def common_prefix_len(input_ids: torch.Tensor, lengths: torch.Tensor, rows: list[int]) -> int:
    """Longest common token prefix of ``rows``, capped so that every row keeps >= 1 own token."""
    n = min(int(lengths[r]) for r in rows)
    cap = n - 1
    if len(rows) == 1:
        return cap
    first = input_ids[rows[0], :cap]
    same = (input_ids[rows[1:], :cap] == first[None]).all(dim=0)
    differ = (~same).nonzero()
    return int(differ[0]) if differ.numel() else cap


def plan(input_ids: torch.Tensor, lengths: torch.Tensor, group_size: int, max_tokens: int) -> list[list[int]]:
    """The batch's rows in packs (lists of consecutive row indices, in order).

    Groups are runs of ``group_size`` consecutive rows (the last may be shorter); a group whose
    prefix + rests exceed ``max_tokens`` is split into several packs (each repeats the prefix).
    """
    b = input_ids.shape[0]
    out: list[list[int]] = []
    for g0 in range(0, b, max(1, group_size)):
        rows = list(range(g0, min(b, g0 + max(1, group_size))))
        p = common_prefix_len(input_ids, lengths, rows)
        chunk: list[int] = []
        tokens = p
        for r in rows:
            rest = int(lengths[r]) - p
            if chunk and tokens + rest > max_tokens:
                out.append(chunk)
                chunk, tokens = [], p
            chunk.append(r)
            tokens += rest
        out.append(chunk)
    return out


def split_for_ranks(packs: list[list[int]], lengths: torch.Tensor, ranks: int) -> list[list[list[int]]]:
    """Contiguous runs of packs per data-parallel rank, balanced by tokens; packs are halved (by
    rows) until there are at least ``ranks`` of them, so no rank is idle. Needs >= ranks rows."""
    packs = [list(p) for p in packs]
    while len(packs) < ranks:
        i = max(range(len(packs)), key=lambda j: len(packs[j]))
        if len(packs[i]) < 2:
            raise ValueError(f"{sum(map(len, packs))} rows cannot be split over {ranks} data-parallel ranks")
        half = len(packs[i]) // 2
        packs[i : i + 1] = [packs[i][:half], packs[i][half:]]
    cost = [float(sum(int(lengths[r]) for r in p)) for p in packs]
    total = sum(cost)
    out: list[list[list[int]]] = []
    i, acc = 0, 0.0
    for rank in range(ranks):
        target = total * (rank + 1) / ranks
        mine: list[list[int]] = []
        while i < len(packs) - (ranks - rank - 1):  # leave one pack at least for each later rank
            if mine and rank < ranks - 1 and acc + cost[i] / 2 > target:
                break
            mine.append(packs[i])
            acc += cost[i]
            i += 1
        out.append(mine)
    return out


def build_pack(input_ids: torch.Tensor, lengths: torch.Tensor, rows: list[int], pad_to: int) -> Pack:
    """The packed row of ``rows`` (see ``Pack``), right-padded to ``pad_to`` >= its token count."""
    p = common_prefix_len(input_ids, lengths, rows)
    lens = [int(lengths[r]) for r in rows]
    width = max(lens)
    ids = [input_ids[rows[0], :p]]
    pos = [torch.arange(p)]
    ends, src, dest = [], [], []
    start = p
    total = p + sum(n - p for n in lens)
    t_prefix = torch.arange(1, max(p, 1))
    for k, (r, n) in enumerate(zip(rows, lens, strict=True)):
        ids.append(input_ids[r, p:n])
        pos.append(torch.arange(p, n))
        # logprob of token t sits at the logits of its predecessor: in the prefix (t < p), the
        # prefix's last position for t == p (row-specific label: the k-th first-token entry), else
        # this rest's own position
        t_rest = torch.arange(p + 1, n)
        src += [t_prefix - 1, torch.tensor([pad_to + k] if p >= 1 else [], dtype=torch.long), start + t_rest - 1 - p]
        dest += [k * width + t_prefix, torch.tensor([k * width + p] if p >= 1 else [], dtype=torch.long),
                 k * width + t_rest]
        start += n - p
        ends.append(start)
    if pad_to < total:
        raise ValueError(f"pack of {total} tokens cannot be padded to {pad_to}")
    if pad_to > total:
        ids.append(torch.zeros(pad_to - total, dtype=torch.long))
        pos.append(torch.zeros(pad_to - total, dtype=torch.long))
        ends.append(pad_to)
    return Pack(
        rows=list(rows), prefix_len=p, rest_lens=[n - p for n in lens],
        ids=torch.cat(ids).long(), positions=torch.cat(pos).long(),
        layout=torch.tensor([p, *ends], dtype=torch.long),
        src=torch.cat(src).long(), dest=torch.cat(dest).long(), width=width,
    )


def pack_tokens(input_ids: torch.Tensor, lengths: torch.Tensor, rows: list[int]) -> int:
    """Tokens of the packed row of ``rows`` before padding (prefix once + every rest)."""
    p = common_prefix_len(input_ids, lengths, rows)
    return p + sum(int(lengths[r]) - p for r in rows)


# ---------------------------------------------------------------------- model side


def is_layout(attention_mask: object) -> bool:
    """True when ``attention_mask`` is a shared-prefix layout descriptor (1-D int64)."""
    return torch.is_tensor(attention_mask) and attention_mask.dim() == 1 and attention_mask.dtype == torch.long


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: torch.Tensor,
              scale: float | None, dropout: float) -> torch.Tensor:
    """Core attention of one packed row: query [s, 1, heads, d], key/value [s, 1, groups, d]
    (megatron's layout, heads of this TP rank) -> [s, 1, heads * d]. ``layout``: see ``Pack``."""
    if query.shape[1] != 1:
        raise ValueError(f"shared-prefix attention takes one packed row per micro-batch, got {query.shape[1]}")
    bounds = layout.tolist()
    p, ends = bounds[0], bounds[1:]
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [1, n, s, d]
    sdpa = lambda qq, kk, vv, **kw: F.scaled_dot_product_attention(  # noqa: E731
        qq, kk, vv, scale=scale, enable_gqa=True, dropout_p=dropout, **kw)
    outs = []
    if p:
        outs.append(sdpa(q[:, :, :p], k[:, :, :p], v[:, :, :p], is_causal=True))
    start = p
    for end in ends:
        r = end - start
        if r <= 0:
            continue
        if p:
            kk = torch.cat([k[:, :, :p], k[:, :, start:end]], dim=2)
            vv = torch.cat([v[:, :, :p], v[:, :, start:end]], dim=2)
            # bottom-right aligned causal: row j sees keys [0, p + j]; flash kernel on GPU, a
            # materialised [r, p + r] bool mask elsewhere
            outs.append(sdpa(q[:, :, start:end], kk, vv, attn_mask=causal_lower_right(r, p + r)))
        else:
            outs.append(sdpa(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], is_causal=True))
        start = end
    out = torch.cat(outs, dim=2)  # [1, n, s, d]
    _, n, s, d = out.shape
    return out.permute(2, 0, 1, 3).reshape(s, 1, n * d)


def install_rope_positions(model: torch.nn.Module) -> None:
    """Let ``packed_forward`` give RoPE the packed positions (idempotent; no-op without RoPE)."""
    rope = getattr(model, "rotary_pos_emb", None)
    if rope is None or getattr(rope, "_shared_prefix_hook", False):
        return

    def hook(module, args, output):
        positions = getattr(_state, "positions", None)
        if positions is None:
            return output
        return output[positions.to(output.device)]  # [L, 1, 1, dim]: row t = angles of position t

    rope.register_forward_hook(hook)
    rope._shared_prefix_hook = True


@contextlib.contextmanager
def _positions(positions: torch.Tensor) -> Iterator[None]:
    old = getattr(_state, "positions", None)
    _state.positions = positions
    try:
        yield
    finally:
        _state.positions = old


def packed_forward(model: torch.nn.Module, pack: Pack, device: torch.device | None) -> torch.Tensor:
    """Forward one packed row: logits [1, L, vocab / tp] on the last PP stage, hidden otherwise."""
    ids = pack.ids[None].to(device) if device is not None else pack.ids[None]
    with _positions(pack.positions):
        return model(ids, None, pack.layout)


def token_logprobs(logits: torch.Tensor, pack: Pack, temperature: float = 1.0) -> torch.Tensor:
    """Per-row logprobs of a packed row: logits [1, L, vocab / tp] -> [len(rows), width] float32.

    Every token's logprob is read at its predecessor's packed position; the prefix's last position
    predicts each rest's first token (a different label per row, evaluated on a copy of that one
    logits row). The logits are overwritten (as ``policy.token_logprobs(overwrite_logits=True)``).
    """
    from megatron.core import tensor_parallel

    p, n_rows = pack.prefix_len, len(pack.rows)
    dev = logits.device
    ids = pack.ids.to(dev)
    extra = torch.zeros(n_rows, dtype=torch.float32, device=dev)
    if p >= 1:
        firsts = ids[torch.tensor(pack.layout.tolist()[:n_rows], device=dev)]  # each rest's first token
        x = logits[:, p - 1 : p].float().repeat(1, n_rows, 1)  # a copy: the CE below works in place
        if temperature != 1.0:
            x = x / temperature
        extra = -tensor_parallel.vocab_parallel_cross_entropy(x, firsts[None])[0]
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature if x is logits else x.div_(temperature)
    labels = torch.zeros_like(ids)
    labels[:-1] = ids[1:]
    main = -tensor_parallel.vocab_parallel_cross_entropy(x, labels[None])[0]  # [L]
    values = torch.cat([main, extra])[pack.src.to(dev)]
    out = torch.zeros(n_rows * pack.width, dtype=torch.float32, device=dev)
    out = out.index_put((pack.dest.to(dev),), values)
    return out.view(n_rows, pack.width)
