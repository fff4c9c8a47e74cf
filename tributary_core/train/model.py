"""The relational transformer (DESIGN §6).

A cell's input is the projected embedding of its column's name plus a value embedding from its
semantic type's encoder; a learned null vector replaces the value of a null cell and a learned
mask vector the value of the target cell. Each block attends with three patterns at once, each
on its own group of heads (head h of H uses pattern ``3h // H``):

- column: cells of the same column;
- outbound: cells of the same row and of the rows that row references;
- inbound: cells of the same row and of the rows that reference it.

Padding is never attended and every position attends at least to itself. The target cell's
final state goes to the head of the target type's loss and to the null head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tributary_core.registry import Registry, get_registry

__all__ = ["RelationalTransformer", "attention_masks", "PATTERNS"]

PATTERNS = ("column", "outbound", "inbound")


def _patterns(row: torch.Tensor, row_parents: torch.Tensor, column_id: torch.Tensor,
              is_padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    return column, outbound, inbound


def attention_masks(row: torch.Tensor, row_parents: torch.Tensor, column_id: torch.Tensor,
                    is_padding: torch.Tensor) -> torch.Tensor:
    """The three patterns as a ``(B, 3, S, S)`` bool tensor (True: may attend).

    ``row`` (B, S) is each cell's context row, ``row_parents`` (B, R, P) the context rows each
    row references (-1 none).
    """
    return torch.stack(_patterns(row, row_parents, column_id, is_padding), 1)


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
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
        # heads [start, stop) of each pattern: contiguous groups, every pattern at least one head
        if n_heads < len(PATTERNS):
            raise ValueError(f"n_heads must be at least {len(PATTERNS)}, one per attention pattern")
        bounds = [(p * n_heads + len(PATTERNS) - 1) // len(PATTERNS) for p in range(len(PATTERNS) + 1)]
        self.groups = list(zip(bounds[:-1], bounds[1:], strict=True))

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        B, S, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, S, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, dh)
        p_drop = self.dropout if self.training else 0.0
        parts = []
        for (lo, hi), mask in zip(self.groups, masks, strict=True):
            parts.append(nn.functional.scaled_dot_product_attention(
                q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], attn_mask=mask.to(q.dtype),
                dropout_p=p_drop))  # (B, h, S, dh); mask (B, 1, S, S) additive
        a = torch.cat(parts, 1)  # (B, H, S, dh)
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, d))  # (B, S, d)
        return x + self.ff(self.norm2(x))  # (B, S, d)


class RelationalTransformer(nn.Module):
    """Cells in, the target cell's predictions out.

    Args:
        stype_names: the semantic types cells may have, in the order of ``Batch.stype`` codes.
        d_text: width of the store's frozen text embeddings (the embedder's D).
    """

    def __init__(self, stype_names: Sequence[str], d_text: int, *, d_model: int = 128,
                 n_layers: int = 4, n_heads: int = 4, d_ff: int | None = None,
                 dropout: float = 0.0, registry: Registry | None = None) -> None:
        super().__init__()
        registry = registry or get_registry()
        self.stype_names = list(stype_names)
        self.slots = [registry.semantic_type(n).batch_slot for n in self.stype_names]
        self.d_model, self.d_text = d_model, d_text
        self.col_proj = nn.Linear(d_text, d_model)
        self.value = nn.ModuleDict({n: registry.semantic_type(n).value_encoder(d_model, d_text)
                                    for n in self.stype_names})
        self.null_vector = nn.Parameter(torch.randn(d_model) * 0.02)
        self.mask_vector = nn.Parameter(torch.randn(d_model) * 0.02)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_ff or 4 * d_model, dropout)
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
        value = torch.where(batch["is_target"][..., None], self.mask_vector, value)
        x = x + value
        return x.masked_fill(batch["is_padding"][..., None], 0.0)  # (B, S, d)

    def forward(self, batch: Mapping[str, Any], column_emb: torch.Tensor,
                vocab_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """``prediction`` of the batch's target type's head, ``null_logit`` (B,), ``hidden``
        (B, S, d_model)."""
        x = self.encode(batch, column_emb, vocab_emb)  # (B, S, d)
        # additive masks, built once for all blocks: CPU and GPU kernels take them as fast as none
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        blocked = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
        masks = [torch.where(m, zero, blocked).unsqueeze(1)  # 3 x (B, 1, S, S)
                 for m in _patterns(batch["row"], batch["row_parents"], batch["column_id"],
                                    batch["is_padding"])]
        for block in self.blocks:
            x = block(x, masks)
        x = self.norm(x)  # (B, S, d)
        pos = batch["target_pos"].long()  # (B,)
        target = x[torch.arange(x.shape[0], device=x.device), pos]  # (B, d)
        out = {"hidden": x, "null_logit": self.null_head(target)}
        stype = batch["target_stype"]
        if stype in self.heads:
            candidates = None
            if batch.get("candidates") is not None:
                candidates = vocab_emb[batch["candidates"].long()]  # (K, d_text)
            out["prediction"] = self.heads[stype](target, candidates)
        return out
