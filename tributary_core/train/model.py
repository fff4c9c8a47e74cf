"""The relational transformer (DESIGN §6).

A cell's input is the projected embedding of its column's name plus a value embedding from its
semantic type's encoder; a learned null vector replaces the value of a null cell and a learned
mask vector the value of the target cell. Each block attends with three patterns at once, each
on its own group of heads (head h of H uses pattern ``3h // H``):

- column: cells of the same column;
- outbound: cells of the same row and of the rows that row references;
- inbound: cells of the same row and of the rows that reference it;
- full (only with ``full_attention``, then head h uses pattern ``4h // H``): every real cell of
  the context.

Padding is never attended and every position attends at least to itself. The target cell's
final state goes to the head of the target type's loss and to the null head.

Masked cells (``is_masked``, ``mask_share`` > 0 in training; docs/training.md "Masked cells")
have their values replaced by the mask vector like the target, and their final states go to
the heads of their own types (:meth:`RelationalTransformer.masked_predictions`).

Training-recipe options (all off by default, i.e. the model as it was before them):
``qk_norm`` (RMSNorm of each head's queries and keys), ``zero_init`` (residual output
projections start at zero), ``log_scale_attention`` (see :func:`log_scales`),
``full_attention`` (the fourth pattern) and ``numeric_encoding`` (handed to the value encoders
that take ``options``; see :func:`value_encoder`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tributary_core.registry import Registry, get_registry
from tributary_core.semantic_type import SemanticType

__all__ = ["RelationalTransformer", "attention_masks", "log_scales", "value_encoder", "PATTERNS",
           "FULL_PATTERN", "LOG_SCALE_BASE"]

PATTERNS = ("column", "outbound", "inbound")
#: The fourth pattern, added by ``full_attention``: every real cell of the context.
FULL_PATTERN = "full"
#: ``log_scale_attention``: a query that may attend to this many keys keeps its scale (1).
LOG_SCALE_BASE = 256


def _patterns(row: torch.Tensor, row_parents: torch.Tensor, column_id: torch.Tensor,
              is_padding: torch.Tensor, full: bool = False) -> tuple[torch.Tensor, ...]:
    B, S = row.shape
    R = row_parents.shape[1]
    device = row.device
    refs = torch.zeros(B, R + 1, R + 1, dtype=torch.bool, device=device)  # refs[b, i, j]: i -> j
    parents = torch.where(row_parents < 0, R, row_parents).long()  # (B, R, P), R = no parent
    refs[:, :R].scatter_(2, parents, True)
    batch_idx = torch.arange(B, device=device)[:, None, None]
    r = row.long()
    out_rows = refs[batch_idx, r[:, :, None], r[:, None, :]]  # (B, S, S): row(i) -> row(j)
    same_row = r[:, :, None] == r[:, None, :]  # (B, S, S)
    real = ~is_padding
    # real cells see real cells; a padding position sees only itself
    keep = (real[:, :, None] & real[:, None, :]) | torch.eye(S, dtype=torch.bool, device=device)
    same_row &= keep  # (the diagonal stays: every position sees itself)
    column = (column_id[:, :, None] == column_id[:, None, :]) & keep
    outbound = same_row | (out_rows & keep)
    inbound = same_row | (out_rows.transpose(1, 2) & keep)
    if full:  # every real cell sees every real cell; padding only itself
        return column, outbound, inbound, keep
    return column, outbound, inbound


def attention_masks(row: torch.Tensor, row_parents: torch.Tensor, column_id: torch.Tensor,
                    is_padding: torch.Tensor, *, full: bool = False) -> torch.Tensor:
    """The three patterns as a ``(B, 3, S, S)`` bool tensor (True: may attend); with ``full``
    the fourth, :data:`FULL_PATTERN`, too: ``(B, 4, S, S)``.

    ``row`` (B, S) is each cell's context row, ``row_parents`` (B, R, P) the context rows each
    row references (-1 none).
    """
    return torch.stack(_patterns(row, row_parents, column_id, is_padding, full), 1)


def log_scales(masks: Sequence[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """``log_scale_attention``: for each pattern's bool mask ``(B, S, S)`` the factor
    ``log(n_i) / log(LOG_SCALE_BASE)`` of every query i, as ``(B, 1, S, 1)`` to multiply that
    pattern's queries with, where ``n_i`` is the number of keys query i may attend to under the
    pattern (at least 2). The attention logits of a query thus grow with the log of how many
    keys compete for it (a query with :data:`LOG_SCALE_BASE` keys is unchanged, one with 16 keys
    is scaled by 0.5), which keeps attention from flattening out as a pattern's key set grows.
    One sum over each mask per batch, shared by all blocks."""
    base = math.log(LOG_SCALE_BASE)
    return [(m.sum(-1).clamp(min=2).float().log() / base).to(dtype)[:, None, :, None]
            for m in masks]


def value_encoder(stype: SemanticType, d_model: int, d_text: int,
                  options: Mapping[str, Any]) -> nn.Module:
    """``stype.value_encoder(d_model, d_text)``, with ``options=options`` (model-wide encoder
    settings such as ``numeric_encoding``) when the type's ``value_encoder`` takes a keyword
    named ``options``; a type written without it (a third-party plugin's) is called as before."""
    try:
        takes = "options" in inspect.signature(stype.value_encoder).parameters
    except (TypeError, ValueError):  # no signature to read: call it the plain way
        takes = False
    if takes:
        return stype.value_encoder(d_model, d_text, options=options)
    return stype.value_encoder(d_model, d_text)


#: Attention kernels a model can run (:meth:`RelationalTransformer.set_attention`).
ATTENTION_KERNELS = ("sdpa", "flex")


def _flex() -> tuple[Any, Any]:
    """``(flex_attention, create_block_mask)`` from torch (2.5 and later)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return flex_attention, create_block_mask


def block_masks(allowed: Sequence[torch.Tensor], block_size: int = 128) -> list[Any]:
    """FlexAttention block masks of the ``(B, S, S)`` bool patterns ``allowed`` (True: may
    attend): blocks of ``block_size`` queries by keys that a pattern masks whole are skipped
    by the kernel, the rest masked cell by cell as the dense mask does."""
    _, create = _flex()
    out = []
    for m in allowed:
        B, S, _ = m.shape

        def mask_mod(b, h, q_idx, kv_idx, m=m):
            return m[b, q_idx, kv_idx]

        out.append(create(mask_mod, B, None, S, S, device=m.device, BLOCK_SIZE=block_size))
    return out


class _Block(nn.Module):
    """A pre-LayerNorm block: attention with one head group per pattern, then a GELU
    feed-forward. ``qk_norm``: RMSNorm (learned gain, over the head dimension) of each head's
    queries and keys before attention; no parameters are added without it, so older weights
    load. ``zero_init``: the residual output projections (``proj`` and the feed-forward's last
    Linear) start at zero, so each block starts as the identity."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, *,
                 n_patterns: int = len(PATTERNS), qk_norm: bool = False,
                 zero_init: bool = False) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.dropout = dropout
        dh = d_model // n_heads
        self.qk_norm = qk_norm
        self.q_norm = nn.RMSNorm(dh, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dh, eps=1e-6) if qk_norm else nn.Identity()
        if zero_init:
            for layer in (self.proj, self.ff[-1]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        # heads [start, stop) of each pattern: contiguous groups, every pattern at least one head
        if n_heads < n_patterns:
            raise ValueError(f"n_heads must be at least {n_patterns}, one per attention pattern")
        bounds = [(p * n_heads + n_patterns - 1) // n_patterns for p in range(n_patterns + 1)]
        self.groups = list(zip(bounds[:-1], bounds[1:], strict=True))

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None,
                scales: list[torch.Tensor] | None = None,
                rows: torch.Tensor | None = None, keys: torch.Tensor | None = None,
                key_valid: torch.Tensor | None = None,
                block_masks: list[Any] | None = None) -> torch.Tensor:
        """``masks``: one additive ``(B, 1, S, S)`` mask per head group; ``scales`` (optional,
        :func:`log_scales`): one ``(B, 1, S, 1)`` factor per group for its queries.
        ``block_masks`` (optional, without ``rows``): the same patterns as FlexAttention block
        masks; each group then runs ``flex_attention``, which skips the blocks a pattern
        masks whole, instead of the dense masked SDPA, and ``masks`` may be None.

        ``rows`` (B, Q), optional: compute the outputs of these positions only, ``(B, Q, d)``;
        ``keys`` (B, N), optional with ``rows``: attend only to these positions (they must hold
        every key the queries may attend to; ``key_valid`` (B, N) marks the padding slots of a
        shorter set False). A block whose other outputs nobody reads then costs about Q/S and
        N/S of the work, and the kept outputs equal the full block's."""
        B, S, d = x.shape
        dh = d // self.n_heads
        h = self.norm1(x)
        if rows is None:
            q, k, v = self.qkv(h).view(B, S, 3, self.n_heads, dh).unbind(2)
            x_q = x
        else:
            w_q, w_kv = self.qkv.weight.split([d, 2 * d])
            b_q, b_kv = self.qkv.bias.split([d, 2 * d])
            h_kv = h if keys is None else h.gather(1, keys[:, :, None].expand(-1, -1, d))
            k, v = nn.functional.linear(h_kv, w_kv, b_kv).view(B, -1, 2, self.n_heads, dh).unbind(2)
            at = rows[:, :, None].expand(-1, -1, d)
            x_q = x.gather(1, at)  # (B, Q, d)
            q = nn.functional.linear(h.gather(1, at), w_q, b_q).view(B, -1, self.n_heads, dh)
            Q = rows.shape[1]
            masks = [m.gather(2, rows[:, None, :, None].expand(-1, 1, -1, S)) for m in masks]
            if keys is not None:
                masks = [m.gather(3, keys[:, None, None, :].expand(-1, 1, Q, -1)) for m in masks]
                if key_valid is not None:
                    masks = [m.masked_fill(~key_valid[:, None, None, :], float("-inf"))
                             for m in masks]
            if scales is not None:
                scales = [sc.gather(2, rows[:, None, :, None]) for sc in scales]
        if self.qk_norm:  # per head, over dh; in float32 (bf16 autocast included)
            q, k = self.q_norm(q.float()).to(v.dtype), self.k_norm(k.float()).to(v.dtype)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S or Q, dh)
        p_drop = self.dropout if self.training else 0.0
        parts = []
        for g, (lo, hi) in enumerate(self.groups):
            qg = q[:, lo:hi] if scales is None else q[:, lo:hi] * scales[g]
            if block_masks is not None and rows is None:
                parts.append(_flex()[0](qg, k[:, lo:hi], v[:, lo:hi],
                                        block_mask=block_masks[g]))  # (B, h, S, dh)
                continue
            parts.append(nn.functional.scaled_dot_product_attention(
                qg, k[:, lo:hi], v[:, lo:hi], attn_mask=masks[g].to(qg.dtype),
                dropout_p=p_drop))  # (B, h, S or Q, dh); mask (B, 1, S or Q, S) additive
        a = torch.cat(parts, 1)  # (B, H, S or Q, dh)
        x = x_q + self.proj(a.transpose(1, 2).reshape(B, x_q.shape[1], d))  # (B, S or Q, d)
        return x + self.ff(self.norm2(x))  # (B, S or Q, d)


class ExamplePointer(nn.Module):
    """``example_pointer``: the target cell's attention over the context's label cells (the
    labelled examples), and a gate saying how much of their labels to mix into the target
    head's prediction (:meth:`~tributary_core.loss.LossHead.mix_examples`).

    A copy path, as in pointer-generator networks: the transformer may already carry what the
    examples say to the target cell, but this gives the model a direct, cheap way to predict
    "like the examples most similar to me", which holds on a database it was never trained on.
    Contexts without label cells get weights 0 and gate 0 (the head's prediction as it is)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(d_model, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # starts at an even mix
        self.scale = d_model ** -0.5

    def forward(self, target: torch.Tensor, x: torch.Tensor,
                usable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``target`` (B, d), the final states ``x`` (B, S, d), ``usable`` (B, S) the label
        cells; returns weights (B, S), summing to 1 over each context's label cells, and the
        gate (B,)."""
        scores = torch.einsum("bd,bsd->bs", self.query(target).float(),
                              self.key(x).float()) * self.scale  # in float32 under autocast too
        has = usable.any(1)  # (B,)
        # contexts without label cells: any finite scores (their weights are zeroed below)
        scores = torch.where(usable | ~has[:, None], scores, float("-inf"))
        weights = torch.softmax(scores, -1) * has[:, None]  # (B, S)
        gate = torch.sigmoid(self.gate(target).float()).squeeze(-1) * has  # (B,)
        return weights, gate


class RelationalTransformer(nn.Module):
    """Cells in, the target cell's predictions out.

    Args:
        stype_names: the semantic types cells may have, in the order of ``Batch.stype`` codes.
        d_text: width of the store's frozen text embeddings (the embedder's D).
    """

    def __init__(self, stype_names: Sequence[str], d_text: int, *, d_model: int = 128,
                 n_layers: int = 4, n_heads: int = 4, d_ff: int | None = None,
                 dropout: float = 0.0, registry: Registry | None = None, qk_norm: bool = False,
                 zero_init: bool = False, log_scale_attention: bool = False,
                 full_attention: bool = False, numeric_encoding: str = "linear",
                 example_pointer: bool = False) -> None:
        super().__init__()
        registry = registry or get_registry()
        self.stype_names = list(stype_names)
        self.slots = [registry.semantic_type(n).batch_slot for n in self.stype_names]
        self.d_model, self.d_text = d_model, d_text
        self.full_attention, self.log_scale_attention = full_attention, log_scale_attention
        self.dropout = dropout
        #: The attention kernel (:meth:`set_attention`): not part of the weights or the config
        #: of the architecture; the same weights give the same outputs with either.
        self.attention = "sdpa"
        self.col_proj = nn.Linear(d_text, d_model)
        options = {"numeric_encoding": numeric_encoding}
        self.value = nn.ModuleDict({n: value_encoder(registry.semantic_type(n), d_model, d_text,
                                                     options)
                                    for n in self.stype_names})
        self.null_vector = nn.Parameter(torch.randn(d_model) * 0.02)
        self.mask_vector = nn.Parameter(torch.randn(d_model) * 0.02)
        n_patterns = len(PATTERNS) + int(full_attention)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_ff or 4 * d_model, dropout,
                                           n_patterns=n_patterns, qk_norm=qk_norm,
                                           zero_init=zero_init)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.loss_of: dict[str, str] = {}
        heads = {}
        for n in self.stype_names:
            cls = registry.semantic_types[n]
            if cls.target_losses:
                loss = cls.target_losses[0]
                self.loss_of[n] = loss
                heads[n] = registry.loss_head(loss).build_head(d_model, d_text, n)
        self.heads = nn.ModuleDict(heads)
        self.null_head = registry.loss_head("null").build_head(d_model, d_text, "boolean")
        self.pointer = ExamplePointer(d_model) if example_pointer else None

    def encode(self, batch: Mapping[str, Any], column_emb: torch.Tensor,
               vocab_emb: torch.Tensor) -> torch.Tensor:
        """Input vectors of every cell: ``(B, S, d_model)``."""
        column_id = batch["column_id"].long()  # (B, S)
        stype = batch["stype"].long()  # (B, S)
        x = self.col_proj(column_emb[column_id.clamp(min=0)])  # (B, S, d)
        value = torch.zeros_like(x)  # (B, S, d)
        for code, (name, slot) in enumerate(zip(self.stype_names, self.slots, strict=True)):
            where = stype == code  # (B, S)
            if not bool(where.any()):
                continue
            if slot == "number":
                inputs = batch["number"][where][:, None]  # (N, 1)
            elif slot == "timestamp":
                inputs = batch["timestamp"][where]  # (N, 15)
            elif slot == "boolean":
                inputs = batch["boolean"][where].to(x.dtype)[:, None]  # (N, 1)
            elif slot == "vocab":
                inputs = vocab_emb[batch["vocab"][where].long()]  # (N, d_text)
            else:
                inputs = x.new_zeros(int(where.sum()), 0)  # (N, 0)
            value[where] = self.value[name](inputs.to(x.dtype)).to(value.dtype)
        value = torch.where(batch["is_null"][..., None], self.null_vector, value)
        hide = batch["is_target"]  # (B, S)
        if batch.get("is_masked") is not None:  # masked cells: hidden like the target
            hide = hide | batch["is_masked"]
        value = torch.where(hide[..., None], self.mask_vector, value)
        x = x + value
        return x.masked_fill(batch["is_padding"][..., None], 0.0)  # (B, S, d)

    def set_attention(self, kernel: str) -> None:
        """Run attention with ``kernel``: ``"sdpa"`` (the default: PyTorch's scaled dot-product
        attention with each pattern as a dense additive mask) or ``"flex"`` (FlexAttention
        with block masks built once per batch, skipping the blocks a pattern masks whole;
        fast only under ``torch.compile`` and meant for a GPU; on the CPU, uncompiled, it
        computes the same outputs slowly). Flex is used where it applies: not for inference
        pruned to the target cells (``targets_only``), not for training with dropout, which
        FlexAttention lacks, and on the CPU only without gradients (torch has no CPU backward
        for it); those keep SDPA."""
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}, "
                             f"not {kernel!r}")
        if kernel == "flex":
            try:
                _flex()
            except ImportError as exc:
                raise ValueError(f"attention kernel 'flex' needs torch >= 2.5 with "
                                 f"FlexAttention (torch {torch.__version__}: {exc})") from None
        self.attention = kernel

    def forward(self, batch: Mapping[str, Any], column_emb: torch.Tensor,
                vocab_emb: torch.Tensor, *, targets_only: bool = False,
                cells: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``prediction`` of the batch's target type's head, ``null_logit`` (B,), ``hidden``
        (B, S, d_model); with masked cells (``is_masked`` any True) also ``masked``, see
        :meth:`masked_predictions`.

        ``targets_only`` (inference): compute only what the predictions read. The last block
        computes the outputs of the target cell (and of the label cells, for the example
        pointer) alone; each block before it only those of the cells the next block's may
        attend to, as long as that is well under all of them. The predictions are the same;
        ``hidden`` is final at those cells only. Ignored with masked cells.

        ``cells``: the input vectors :meth:`encode` gives, when the caller made them (e.g. to
        take gradients with respect to them)."""
        x = self.encode(batch, column_emb, vocab_emb) if cells is None else cells  # (B, S, d)
        allowed = _patterns(batch["row"], batch["row_parents"], batch["column_id"],
                            batch["is_padding"], self.full_attention)
        scales = log_scales(allowed, x.dtype) if self.log_scale_attention else None
        pos = batch["target_pos"].long()  # (B,)
        masked = batch.get("is_masked")
        plan = None
        if targets_only and not (masked is not None and bool(masked.any())):
            plan = self._needed(batch, pos, allowed)
        flex, masks = None, None
        if (self.attention == "flex" and plan is None and not (self.training and self.dropout)
                and (x.device.type != "cpu" or not torch.is_grad_enabled())):
            flex = block_masks(allowed)  # once per batch, shared by every block
        else:  # additive masks, built once for all blocks: kernels take them as fast as none
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            blocked = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
            masks = [torch.where(m, zero, blocked).unsqueeze(1)  # 3 (or 4) x (B, 1, S, S)
                     for m in allowed]
        for i, block in enumerate(self.blocks):
            if plan is None or plan[i] is None:
                x = block(x, masks, scales, block_masks=flex)
                continue
            rows, keys, key_valid = plan[i]
            kept = block(x, masks, scales, rows, keys, key_valid)  # (B, Q, d)
            x = x.scatter(1, rows[:, :, None].expand_as(kept), kept)
        x = self.norm(x)  # (B, S, d)
        target = x[torch.arange(x.shape[0], device=x.device), pos]  # (B, d)
        out = {"hidden": x, "null_logit": self.null_head(target)}
        stype = batch["target_stype"]
        if stype in self.heads:
            candidates = None
            if batch.get("candidates") is not None:
                candidates = vocab_emb[batch["candidates"].long()]  # (K, d_text)
            out["prediction"] = self.heads[stype](target, candidates)
            if self.pointer is not None and batch.get("is_label") is not None:
                usable = batch["is_label"]  # label cells whose values the model sees
                if batch.get("is_masked") is not None:
                    usable = usable & ~batch["is_masked"]
                if bool(usable.any()):
                    weights, gate = self.pointer(target, x, usable)
                    head = get_registry().loss_head(self.loss_of[stype])
                    out["prediction"] = head.mix_examples(out["prediction"], weights, gate, batch)
                    out["example_gate"] = gate
        masked = batch.get("is_masked")
        if masked is not None and bool(masked.any()):
            out["masked"] = self.masked_predictions(x, batch, vocab_emb)
        return out

    def _needed(self, batch: Mapping[str, Any], pos: torch.Tensor,
                allowed: Sequence[torch.Tensor]) -> list[Any]:
        """Per block, what ``targets_only`` computes: None (everything) or (query positions
        (B, Q), key positions (B, N), which key slots are real (B, N)). The last block's
        queries are the cells the predictions read; a block's keys are the cells its queries
        may attend to under any pattern, and those are the queries of the block before. A
        block is computed whole once its queries are most of the context (then so are all
        before it)."""
        need = torch.zeros_like(batch["is_padding"])  # (B, S)
        if self.pointer is not None and batch.get("is_label") is not None:
            need = batch["is_label"].clone()
        B, S = need.shape
        need[torch.arange(B, device=need.device), pos] = True
        reach = allowed[0].clone()
        for m in allowed[1:]:
            reach |= m  # (B, S, S): query -> key under some pattern
        plan: list[Any] = [None] * len(self.blocks)
        for i in reversed(range(len(self.blocks))):
            keys = need | (reach & need[:, :, None]).any(1)  # (B, S)
            n_q, n_k = int(need.sum(1).max()), int(keys.sum(1).max())
            if n_q > 0.75 * S:
                break
            rows, _ = _positions(need, n_q, pos)
            if n_k > 0.75 * S:
                plan[i] = (rows, None, None)
            else:
                plan[i] = (rows, *_positions(keys, n_k, pos))
            need = keys
        return plan

    def masked_predictions(self, x: torch.Tensor, batch: Mapping[str, Any],
                           vocab_emb: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """The predictions for the masked cells, by semantic type: ``{name: {"where": (B, S)
        bool, the type's masked cells, "prediction": its head's output for them in row-major
        order (N, ...)}}``; for a type in the ``vocab`` slot also ``"candidates"`` (K,), vocab ids.

        ``x`` is the final hidden state (B, S, d). Only types with a head (a target loss) are
        predicted. Categorical cells are scored against the categories of their own column: the
        candidates are the distinct vocab ids of every non-null, non-target cell of the masked
        cells' columns in the batch (so they include each masked cell's true value); the head
        scores every cell against all K of them at once (one call, ``(N, K)``) and a cell's
        scores for categories that do not occur in its column are set to -inf. A ``vocab`` head
        that does not return ``(N, K)`` scores cannot be restricted that way and is skipped
        (its masked cells stay hidden but add no loss)."""
        stype = batch["stype"].long()  # (B, S)
        is_masked = batch["is_masked"]
        out: dict[str, dict[str, torch.Tensor]] = {}
        for code, (name, slot) in enumerate(zip(self.stype_names, self.slots, strict=True)):
            if name not in self.heads:
                continue
            where = is_masked & (stype == code)  # (B, S)
            if not bool(where.any()):
                continue
            hidden = x[where]  # (N, d)
            if slot != "vocab":
                out[name] = {"where": where, "prediction": self.heads[name](hidden, None)}
                continue
            ids, allowed = _column_candidates(batch, where, stype == code)  # (K,), (N, K)
            scores = self.heads[name](hidden, vocab_emb[ids])
            if scores.shape != allowed.shape:
                continue
            scores = scores.float().masked_fill(~allowed, float("-inf"))  # (N, K)
            out[name] = {"where": where, "prediction": scores, "candidates": ids}
        return out


def _positions(chosen: torch.Tensor, n: int, fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions where ``chosen`` (B, S) holds, in order, as ``(B, n)`` (a row with fewer
    padded with ``fill`` (B,)), and which slots are real."""
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :n]  # chosen first
    real = torch.arange(n, device=chosen.device)[None, :] < chosen.sum(1, keepdim=True)
    return torch.where(real, order, fill[:, None]), real


def _column_candidates(batch: Mapping[str, Any], where: torch.Tensor,
                       of_type: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-batch candidates of the masked cells ``where`` (B, S): ``ids`` (K,), the sorted
    distinct vocab ids of the non-null, non-target, non-padding cells of this type (``of_type``)
    in the masked cells' columns, and ``allowed`` (N, K): does category k occur in the column
    of masked cell n. A masked cell's own value is one of its column's candidates."""
    column, vocab = batch["column_id"].long(), batch["vocab"].long()  # (B, S)
    cols = column[where]  # (N,)
    pool = of_type & ~batch["is_null"] & ~batch["is_target"] & ~batch["is_padding"]
    pool &= torch.isin(column, cols)
    pairs = torch.unique(torch.stack([column[pool], vocab[pool]]), dim=1)  # (2, P) (column, id)
    ids, k_of = torch.unique(pairs[1], return_inverse=True)  # (K,), (P,)
    ucols, c_of = torch.unique(pairs[0], return_inverse=True)  # (C,), (P,)
    table = torch.zeros(len(ucols), len(ids), dtype=torch.bool, device=cols.device)  # (C, K)
    table[c_of, k_of] = True
    return ids, table[torch.searchsorted(ucols, cols)]  # (K,), (N, K)
