"""Training: AdamW with warm-up and cosine decay, gradient clipping, periodic validation,
checkpoints that a killed run resumes from exactly, and DDP across processes.

A run folder holds ``config.json``, ``metrics.jsonl`` (one JSON object per line: training steps
with ``"loss"``, validations with ``"val_loss"`` and per-task metrics), ``checkpoints/step-N.pt``
(weights, optimizers and schedules, with ``ema`` > 0 the averaged weights too; loaded with
``weights_only=True``), ``model.pt`` (final weights: the averaged ones when ``ema`` > 0) and
``curves.png``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
import numpy as np
import torch
from torch import nn

from tributary_core.corpus import check_stores, raise_open_file_limit
from tributary_core.errors import TributaryError
from tributary_core.memory import HeapTrimmer
from tributary_core.registry import get_registry
from tributary_core.sampler import HashSplit, Sampler, TemporalSplit, prefetch
from tributary_core.sampler.batch import Batch
from tributary_core.sampler.loader import LoadedOnUse
from tributary_core.store import Store, open_store
from tributary_core.train.model import ATTENTION_KERNELS, RelationalTransformer

__all__ = ["TrainConfig", "train", "load_run", "Run", "batch_loss", "latest_checkpoint", "read_config",
           "load_weights", "claim_run_folder"]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MODEL = "model.pt"
#: ``TrainConfig.optimizer`` values.
OPTIMIZERS = ("adamw", "muon")
#: ``TrainConfig.numeric_encoding`` values.
NUMERIC_ENCODINGS = ("linear", "periodic")
#: The settings that shape the model's weights or what they compute: an ``--init`` run must
#: share them (and ``tributary run train --init`` takes them from that run).
ARCHITECTURE = ("d_model", "n_layers", "n_heads", "qk_norm", "log_scale_attention",
                "full_attention", "numeric_encoding", "example_pointer")


@attrs.define(kw_only=True)
class TrainConfig:
    """Everything a run depends on; saved as the run's ``config.json``."""

    stores: list[str]
    tasks: list[str] | None = None
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 256
    width: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 100
    clip: float = 1.0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.0
    null_weight: float = 0.1
    val_every: int = 100
    val_batches: int = 4
    ckpt_every: int = 100
    seed: int = 0
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    #: Temporal split cut-offs (epoch µs); when set they replace the hash split.
    val_start: int | None = None
    test_start: int | None = None
    sampler_threads: int = 1
    #: Add a cell-masking task for every column that can be a target (self-supervised).
    pretrain: bool = False
    #: Start from this run's weights (same architecture and embedder identity).
    init: str | None = None
    #: With ``init``: train only the heads.
    freeze_backbone: bool = False
    #: The semantic types the model was built with (one value encoder each), recorded when the
    #: run starts so that installing or removing a plugin later does not change the model.
    #: ``None`` (runs from before it was recorded): the installed types.
    stypes: list[str] | None = None
    # -- the training recipe (docs/training.md "Training recipe"). Each default is the
    # behaviour from before the option existed, so an older config.json loads unchanged; a
    # new default belongs on the command-line option, not here.
    #: RMSNorm of each head's queries and keys before attention (architecture).
    qk_norm: bool = False
    #: Zero-initialise each block's residual output projections.
    zero_init: bool = False
    #: Scale each query's logits by log(its key count) / log(256) (model.log_scales).
    log_scale_attention: bool = False
    #: A fourth head group attending to every real cell (architecture; needs n_heads >= 4).
    full_attention: bool = False
    #: The attention kernel, ``"sdpa"`` or ``"flex"`` (FlexAttention block masks; for a GPU,
    #: with ``torch.compile``): same weights, same results; see model.set_attention.
    attention: str = "sdpa"
    #: ``"adamw"``, or ``"muon"``: Muon (``muon_lr``) for the 2-d weights inside the blocks,
    #: AdamW (``lr``) for every other parameter.
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    #: Decay of an exponential moving average of the weights (0: off); when on, validation
    #: and ``model.pt`` use the averaged weights.
    ema: float = 0.0
    #: The numerical value encoder: ``"linear"`` or ``"periodic"`` (architecture).
    numeric_encoding: str = "linear"
    #: The share of each context's cells kept for labelled examples of the same task (other
    #: training-split seeds with their labels, once known; ``sampler/examples.py``). 0: none.
    icl_share: float = 0.0
    #: The target's attention over the labelled examples' label cells, mixed into its
    #: prediction by a learned gate (``model.ExamplePointer``; architecture).
    example_pointer: bool = False
    #: ``p_max`` of masked cells: each training context hides a share ``p ~ U(0, p_max)`` of its
    #: other eligible cells, predicted by their types' heads (docs/training.md "Masked cells").
    #: Validation and evaluation never mask. 0: none.
    mask_share: float = 0.0
    #: The weight of the masked cells' loss beside the target's.
    mask_weight: float = 1.0
    #: Hold at most this many stores' sampler graphs and embeddings in memory (the least
    #: recently used are dropped and loaded again on use); ``None``: all. For corpora.
    max_graphs: int | None = None
    #: Validate on these stores' validation splits instead of the training stores' (e.g.
    #: held-out synthetic databases when pre-training on a corpus); ``None``: the training stores.
    val_stores: list[str] | None = None

    def check(self) -> None:
        """Refuse settings that cannot train: raises :class:`TributaryError` naming the setting
        (and its command-line option) and the bad value. Called by :func:`train` before the run
        folder is touched, so a refused run leaves nothing behind."""
        def bad(field: str, option: str, rule: str) -> TributaryError:
            return TributaryError(f"{option} {getattr(self, field)!r}: {rule}")

        positive = {"lr": "--lr", "clip": "--clip"}
        for field, option in positive.items():
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise bad(field, option, "must be a positive finite number")
        for field, option in {"weight_decay": "--weight-decay", "dropout": "dropout",
                              "null_weight": "null_weight"}.items():
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise bad(field, option, "must be a finite number >= 0")
        if self.dropout >= 1:
            raise bad("dropout", "dropout", "must be below 1")
        for field, option, low in (("steps", "--steps", 1), ("batch_size", "--batch-size", 1),
                                   ("seq_len", "--seq-len", 1), ("width", "--width", 0),
                                   ("warmup", "--warmup", 0), ("d_model", "--d-model", 3),
                                   ("n_layers", "--layers", 1), ("n_heads", "--heads", 1),
                                   ("val_every", "--val-every", 1),
                                   ("val_batches", "--val-batches", 1),
                                   ("ckpt_every", "--ckpt-every", 1),
                                   ("sampler_threads", "--sampler-threads", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(field, option, f"must be an integer >= {low}")
        if self.d_model % self.n_heads:
            raise TributaryError(f"--d-model {self.d_model} must be a multiple of --heads "
                                 f"{self.n_heads}")
        for field in ("qk_norm", "zero_init", "log_scale_attention", "full_attention",
                      "example_pointer"):
            if not isinstance(getattr(self, field), bool):
                raise bad(field, "--" + field.replace("_", "-"), "must be true or false")
        if self.full_attention and self.n_heads < 4:
            raise TributaryError(f"--heads {self.n_heads}: --full-attention needs at least 4 "
                                 f"heads (one group per attention pattern: column, outbound, "
                                 f"inbound, full)")
        if self.attention not in ATTENTION_KERNELS:
            raise bad("attention", "--attention", f"must be one of {', '.join(ATTENTION_KERNELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", "--optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        value = self.muon_lr
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and value > 0):
            raise bad("muon_lr", "--muon-lr", "must be a positive finite number")
        value = self.ema
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and 0 <= value < 1):
            raise bad("ema", "--ema", "must be a decay in [0, 1) (0: no averaging)")
        if not (isinstance(self.icl_share, (int, float)) and not isinstance(self.icl_share, bool)
                and 0 <= self.icl_share < 1):
            raise bad("icl_share", "--icl-share", "must be a share of the context in [0, 1)")
        if not (isinstance(self.mask_share, (int, float)) and not isinstance(self.mask_share, bool)
                and 0 <= self.mask_share < 1):
            raise bad("mask_share", "--mask-share", "must be a share of the cells in [0, 1)")
        if not (isinstance(self.mask_weight, (int, float)) and not isinstance(self.mask_weight, bool)
                and math.isfinite(self.mask_weight) and self.mask_weight >= 0):
            raise bad("mask_weight", "--mask-weight", "must be a finite number >= 0")
        if self.numeric_encoding not in NUMERIC_ENCODINGS:
            raise bad("numeric_encoding", "--numeric-encoding",
                      f"must be one of {', '.join(NUMERIC_ENCODINGS)}")
        ratios = tuple(self.split_ratios)
        if (len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios)
                or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6)):
            raise TributaryError(f"split_ratios {list(ratios)}: three shares >= 0 that add up to 1")
        if (self.val_start is None) != (self.test_start is None):
            raise TributaryError("--val-start and --test-start go together")
        if self.val_start is not None and self.test_start < self.val_start:
            raise TributaryError("--test-start must not be before --val-start")
        if self.freeze_backbone and not self.init:
            raise TributaryError("--freeze-backbone needs --init")
        if not self.stores:
            raise TributaryError("no store to train on (pass --db or --corpus)")
        if self.max_graphs is not None and (isinstance(self.max_graphs, bool)
                                            or not isinstance(self.max_graphs, int)
                                            or self.max_graphs < 1):
            raise bad("max_graphs", "--max-graphs", "must be an integer >= 1")
        if self.val_stores is not None and not self.val_stores:
            raise TributaryError("--val-corpus names no store")
        if self.tasks is not None and not self.tasks and not self.pretrain:
            raise TributaryError("--tasks '' selects no task; add --pretrain to train on cell "
                                 "masking only, or name tasks")

    def splitter(self) -> HashSplit | TemporalSplit:
        hashed = HashSplit(ratios=tuple(self.split_ratios), seed=self.split_seed)
        if self.val_start is not None and self.test_start is not None:
            return TemporalSplit(self.val_start, self.test_start, fallback=hashed)
        return hashed

    def to_json(self) -> dict[str, Any]:
        return cattrs.unstructure(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        data = dict(data)
        data["split_ratios"] = tuple(data.get("split_ratios", (0.8, 0.1, 0.1)))
        return cattrs.structure(data, cls)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Run:
    """A model with its stores, ready to predict: what :func:`load_run` returns."""

    def __init__(self, config: TrainConfig, model: RelationalTransformer, stores: list[Store],
                 device: torch.device) -> None:
        self.config, self.model, self.stores, self.device = config, model, stores, device
        self.embeddings = StoreEmbeddings(stores, device, config.max_graphs)

    def sampler(self, split: str, **kw: Any) -> Sampler:
        """A sampler with the run's settings; keywords override them (``stores``, ``tasks``,
        ``pretrain``, ``batch_size``, ...). It never masks cells (``mask_share`` is training's)."""
        c = self.config
        kw = {"batch_size": c.batch_size, "tasks": c.tasks, "pretrain": c.pretrain,
              "max_graphs": c.max_graphs, **kw}
        return Sampler(kw.pop("stores", self.stores), split=split, splitter=c.splitter(),
                       context_len=c.seq_len, width=c.width, seed=c.seed,
                       n_threads=c.sampler_threads, icl_share=c.icl_share, **kw)


def store_embeddings(store: Store, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    col = torch.from_numpy(np.asarray(store.column_embeddings, dtype=np.float32)).to(device)
    voc = torch.from_numpy(np.asarray(store.vocab_embeddings, dtype=np.float32)).to(device)
    return col, voc


class StoreEmbeddings(LoadedOnUse):
    """Each store's frozen column and value embeddings on ``device``, by database name, loaded
    on first use; with ``limit``, at most that many stores' are held (least recently used
    dropped), so a corpus of many stores does not hold them all."""

    def __init__(self, stores: Sequence[Store], device: torch.device, limit: int | None = None) -> None:
        super().__init__(stores, lambda store: store_embeddings(store, device), limit)
        self.device = device

    def extended(self, stores: Sequence[Store]) -> StoreEmbeddings:
        """These stores' embeddings and ``stores``' (which win where names clash)."""
        return StoreEmbeddings([*self.stores.values(), *stores], self.device, self.limit)


def build_model(config: TrainConfig, d_text: int) -> RelationalTransformer:
    """The run's model, with a value encoder for each of ``config.stypes`` that is installed.

    Batches number semantic types by the *installed* types (``stype_names()``), which change
    when a plugin is installed or removed; ``model.code_map`` translates those codes into the
    model's own order (-1: a type the model was built without), applied by :func:`batch_loss`.
    Types of the run whose plugin is no longer installed are left out of the model (their
    weights are skipped when loading) and listed in ``model.missing_stypes``."""
    from tributary_core.sampler import stype_names

    registry = get_registry()
    installed = stype_names()
    recorded = list(config.stypes) if config.stypes is not None else installed
    names = [n for n in recorded if n in registry.semantic_types]
    model = RelationalTransformer(names, d_text, d_model=config.d_model, n_layers=config.n_layers,
                                  n_heads=config.n_heads, dropout=config.dropout,
                                  qk_norm=config.qk_norm, zero_init=config.zero_init,
                                  log_scale_attention=config.log_scale_attention,
                                  full_attention=config.full_attention,
                                  numeric_encoding=config.numeric_encoding,
                                  example_pointer=config.example_pointer)
    try:
        model.set_attention(config.attention)
    except ValueError as exc:  # flex on a torch without FlexAttention
        raise TributaryError(f"--attention: {exc}") from None
    # a buffer, so it moves with the model to its device; not persistent: not in checkpoints
    model.register_buffer("code_map", torch.tensor(
        [names.index(n) if n in names else -1 for n in installed], dtype=torch.long),
        persistent=False)
    model.installed_stypes = installed
    model.missing_stypes = [n for n in recorded if n not in names]
    return model


def _recode(model: nn.Module, stype: torch.Tensor) -> torch.Tensor:
    """Batch stype codes (installed order) -> the model's codes; padding (-1) stays -1."""
    core = getattr(model, "module", model)
    code_map = getattr(core, "code_map", None)
    if code_map is None:
        return stype
    real = stype >= 0
    out = torch.where(real, code_map[stype.clamp(min=0).long()], stype.long()).to(stype.dtype)
    unknown = real & (out < 0)
    if bool(unknown.any()):
        name = core.installed_stypes[int(stype[unknown][0])]
        raise TributaryError(f"the model was trained without semantic type {name!r}; train or "
                             f"fine-tune a run on data with that type")
    return out


def labelled(target: torch.Tensor, is_null: torch.Tensor) -> torch.Tensor:
    """Which targets carry a label: not null, and for class indices (InfoNCE) one of the
    candidates (index >= 0)."""
    keep = ~is_null
    if target.dim() == 1 and target.dtype == torch.long:
        keep = keep & (target >= 0)
    return keep


def batch_loss(model: nn.Module, batch: Batch, embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               device: torch.device, null_weight: float,
               mask_weight: float = 1.0, *,
               targets_only: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The training loss of one batch: the target head's loss on labelled targets plus
    ``null_weight`` times the null head's loss, plus, when the batch has masked cells,
    ``mask_weight`` times their loss (:func:`masked_loss`). Returns (loss, outputs); with a
    prediction the outputs also hold the head's ``target`` and the ``labelled`` mask, with
    masked cells ``mask_loss`` (the unweighted masked part, detached). ``targets_only``
    (inference) is handed to the model: only the outputs the predictions read are computed."""
    registry = get_registry()
    tensors = batch.to_torch(device)
    tensors["stype"] = _recode(model, tensors["stype"])
    col, voc = embeddings[batch.database]
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        out = (model(tensors, col, voc, targets_only=True) if targets_only
               else model(tensors, col, voc))
    null_head = registry.loss_head("null")
    loss = null_weight * null_head.loss(out["null_logit"].float(), null_head.target(tensors))
    core = getattr(model, "module", model)
    if "prediction" in out:
        head = registry.loss_head(core.loss_of[batch.target_stype])
        target = head.target(tensors)
        keep = labelled(target, tensors["target_is_null"])
        out["target"], out["labelled"] = target, keep
        if bool(keep.any()):
            loss = loss + head.loss(out["prediction"][keep].float(), target[keep])
        else:
            loss = loss + 0.0 * out["prediction"].float().sum()
    if out.get("masked"):
        part = masked_loss(core, out["masked"], tensors)
        out["mask_loss"] = part.detach()
        loss = loss + mask_weight * part
    return loss, out


def masked_targets(tensors: Mapping[str, Any], stype: str, where: torch.Tensor,
                   candidates: torch.Tensor | None = None) -> dict[str, Any]:
    """The masked cells ``where`` (B, S) of type ``stype`` as a batch of targets: the cells'
    values in the ``target_*`` fields a loss head's :meth:`~tributary_core.loss.LossHead.target`
    reads (a cell's value is stored as a target of its column would be), ``target_stype`` and
    ``candidates``; none of them is null."""
    n = int(where.sum())
    return {"target_stype": stype, "target_number": tensors["number"][where],
            "target_timestamp": tensors["timestamp"][where],
            "target_boolean": tensors["boolean"][where], "target_vocab": tensors["vocab"][where],
            "target_is_null": torch.zeros(n, dtype=torch.bool, device=where.device),
            "candidates": candidates}


def masked_loss(core: RelationalTransformer, masked: Mapping[str, Mapping[str, torch.Tensor]],
                tensors: Mapping[str, Any]) -> torch.Tensor:
    """The masked cells' loss: each type's head loss, averaged over that type's masked cells,
    then averaged over the types present (so a type with few cells in the batch counts as much
    as a common one). ``masked`` is the model's ``out["masked"]``. A categorical cell whose
    column shows a single category in the batch is left out: its one candidate is a certain
    answer, a zero loss that would only dilute the mean."""
    registry = get_registry()
    parts = []
    for stype, got in masked.items():
        head = registry.loss_head(core.loss_of[stype])
        target = head.target(masked_targets(tensors, stype, got["where"], got.get("candidates")))
        keep = labelled(target, torch.zeros(len(target), dtype=torch.bool, device=target.device))
        if "candidates" in got:  # a column with one category in the batch teaches nothing
            keep &= torch.isfinite(got["prediction"]).sum(-1) >= 2
        if bool(keep.any()):
            parts.append(head.loss(got["prediction"][keep].float(), target[keep]))
    if not parts:
        # a zero that keeps the graph (-inf scores of left-out categories would make NaN)
        return sum(got["prediction"].float().nan_to_num(0.0, 0.0, 0.0).sum()
                   for got in masked.values()) * 0.0
    return torch.stack(parts).mean()


def latest_checkpoint(run: Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def checkpoints(run: Path) -> list[Path]:
    """The run's kept checkpoints, oldest first."""
    return sorted((Path(run) / CHECKPOINTS).glob("step-*.pt"))


def read_config(run: str | Path, *, option: str = "") -> TrainConfig:
    """The :class:`TrainConfig` saved in a run folder; a one-line error when the folder is not
    a run or its ``config.json`` is damaged (``option`` prefixes the message, e.g. ``--init``)."""
    path = Path(run) / CONFIG
    where = f"{option} {run}" if option else str(run)
    if not path.exists():
        raise TributaryError(f"{where}: not a training run (no {CONFIG})")
    try:
        return TrainConfig.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError, cattrs.BaseValidationError):
        raise TributaryError(f"{path}: not a training run's {CONFIG} (damaged or written by "
                             f"another program)") from None


def load_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint or ``model.pt`` (loaded with ``weights_only=True``); a one-line error when
    the file is truncated, damaged or not one of ours."""
    import pickle
    import zipfile

    if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise TributaryError(f"{path}: not a Tributary checkpoint (not a torch archive: empty, "
                             f"truncated or written by another program)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as exc:
        if exc.filename is not None:  # the file itself could not be opened: said as it is
            raise
        raise TributaryError(f"{path}: not a readable Tributary checkpoint (truncated or damaged: "
                             f"{exc.strerror or exc})") from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TributaryError(f"{path}: not a readable Tributary checkpoint (truncated, damaged or "
                             f"written by another program: {first[:160]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise TributaryError(f"{path}: not a Tributary checkpoint (it holds no model weights)")
    return state


def load_into(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """Load ``state["model"]`` into ``model``; a one-line error when the weights were made for
    another architecture."""
    weights = state["model"]
    missing = getattr(model, "missing_stypes", ())
    if missing:  # types whose plugin is gone: their encoders and heads are not in the model
        drop = tuple(f"{part}.{n}." for n in missing for part in ("value", "heads"))
        weights = {k: v for k, v in weights.items() if not k.startswith(drop)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise TributaryError(f"{path}: its weights do not fit this model ("
                             f"{detail[1].strip() if len(detail) > 1 else detail[0][:160]})") from None


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / max(config.warmup, 1)
        span = max(config.steps - config.warmup, 1)
        progress = min((step - config.warmup) / span, 1.0)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class _Optimizers:
    """The run's optimizers, stepped together, each with a ``LambdaLR`` on the same schedule
    (:func:`_schedule`): AdamW (``lr``, ``weight_decay``) alone for ``optimizer="adamw"``; for
    ``"muon"``, ``torch.optim.Muon`` (``muon_lr``, ``weight_decay``) on the 2-d weights inside
    the transformer blocks (``blocks.*``) and AdamW on every other trainable parameter
    (embeddings and projections outside the blocks, norms, biases, value encoders, heads).

    :meth:`state_dict` gives ``({"adamw": ..., "muon": ...}, {"adamw": ..., "muon": ...})``,
    the optimizers' and the schedules' states by name (``"muon"`` only when used); a checkpoint
    written before there were several holds one AdamW state and one schedule state, which load
    as ``"adamw"``."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        muon = ([p for n, p in named if n.startswith("blocks.") and p.dim() == 2]
                if config.optimizer == "muon" else [])
        chosen = {id(p) for p in muon}
        rest = [p for _, p in named if id(p) not in chosen]
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "adamw": torch.optim.AdamW(rest, lr=config.lr, weight_decay=config.weight_decay)}
        if muon:  # none with --freeze-backbone: the blocks do not train
            self.optimizers["muon"] = torch.optim.Muon(muon, lr=config.muon_lr,
                                                       weight_decay=config.weight_decay)
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, _schedule(config))
                           for k, o in self.optimizers.items()}

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One update of every optimizer, then one step of every schedule."""
        for optimizer in self.optimizers.values():
            optimizer.step()
        for scheduler in self.schedulers.values():
            scheduler.step()

    def lrs(self) -> dict[str, float]:
        """The learning rates for the metrics row: ``lr`` (AdamW), ``muon_lr`` with Muon."""
        return {("lr" if k == "adamw" else f"{k}_lr"): o.param_groups[0]["lr"]
                for k, o in self.optimizers.items()}

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({k: o.state_dict() for k, o in self.optimizers.items()},
                {k: s.state_dict() for k, s in self.schedulers.items()})

    def load_state_dict(self, optimizers: Mapping[str, Any], schedulers: Mapping[str, Any],
                        path: Path) -> None:
        if "param_groups" in optimizers:  # one AdamW state: a checkpoint from before Muon
            optimizers = {"adamw": optimizers}
        if "last_epoch" in schedulers:
            schedulers = {"adamw": schedulers}
        for kind, saved in (("optimizer", optimizers), ("schedule", schedulers)):
            if set(saved) != set(self.optimizers):
                raise TributaryError(f"{path}: its {kind} state ({', '.join(sorted(saved))}) does "
                                     f"not fit this run's ({', '.join(sorted(self.optimizers))})")
        for k, optimizer in self.optimizers.items():
            optimizer.load_state_dict(optimizers[k])
            self.schedulers[k].load_state_dict(schedulers[k])


class _Average:
    """An exponential moving average of the model's weights (``ema`` > 0): a copy of the model
    whose parameters follow ``avg += (1 - d) * (w - avg)`` after every optimizer step, with
    ``d = min(ema, (1 + step) / (10 + step))`` so that the random initial weights are forgotten
    within the first steps of a short run. Buffers are copied. It serves validation, is written
    as ``model.pt`` and is kept in checkpoints (``"ema"``), so a resumed run is exact."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        for avg, new in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(new.detach(), weight)
        for avg, new in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(new)


def _save(path: Path, payload: dict[str, Any]) -> None:
    from tributary_core.atomic import atomic_write

    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp), durable=True)
    except RuntimeError as exc:  # torch's writer reports a full disk as a RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TributaryError(f"{path}: cannot write it (is the disk full? {first[:160]})") from None


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from tributary_core.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = Path(run) / METRICS
    if not path.exists():
        return []
    text = path.read_text()
    # a line is whole once its newline is written: a reader racing a live run skips the
    # line being appended instead of failing on half of it
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def train(config: TrainConfig, out: str | Path, *, progress: Callable[[dict[str, Any]], None] | None = None,
          force: bool = False) -> RelationalTransformer:
    """Train (or resume) the run in ``out``; returns the trained model. In a process group
    (torchrun or ``--nproc``) every rank calls this; rank 0 writes the run folder.

    The stages: the settings are checked (:meth:`TrainConfig.check`); the stores, samplers and
    model are built (:func:`_plan`); only then is the run folder claimed or resumed
    (:func:`_prepare_folder`), so a mistake leaves nothing behind; then :class:`_Loop` runs
    the steps. ``progress`` is called on rank 0 with each step's metrics row. With ``ema`` > 0
    the returned model holds the averaged weights (those written as ``model.pt``)."""
    out = Path(out)
    config.check()
    if config.stypes is None:
        config = attrs.evolve(config, stypes=_initial_stypes(config, out, force))
    place = _Place.here()
    plan = _plan(config, place)
    latest = _prepare_folder(out, config, force, place.rank, place.distributed)
    optimizers = _Optimizers(plan.model, config)
    average = _Average(plan.model, config.ema) if config.ema > 0 else None
    start, resumed = _resume(out, plan.model, optimizers, average, place.device, latest)
    loop = _Loop(config, place, plan, out, optimizers, average, progress, last_ckpt=resumed)
    if place.rank == 0 and resumed is not None:  # drop what the killed run logged after it
        _write_jsonl(loop.log, [r for r in read_metrics(out) if r.get("step", 0) <= start])
    loop.run(start)
    return average.model if average is not None else plan.model


@attrs.define(frozen=True)
class _Place:
    """Where this process trains: its rank in the process group (if any) and its device."""

    distributed: bool
    rank: int
    world: int
    device: torch.device

    @classmethod
    def here(cls) -> _Place:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        world = dist.get_world_size() if distributed else 1
        device = _device()
        if device.type == "cuda" and distributed:
            local = int(os.environ.get("LOCAL_RANK", rank))
            device = torch.device("cuda", local % torch.cuda.device_count())
        return cls(distributed, rank, world, device)


@attrs.define
class _Plan:
    """What a run trains: its stores, the training and validation samplers, the model (with
    ``--init`` weights and ``--freeze-backbone`` applied) and the frozen text embeddings."""

    stores: list[Store]
    train: Sampler
    val: Sampler
    model: RelationalTransformer
    embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]]


def _plan(config: TrainConfig, place: _Place) -> _Plan:
    """Build everything a run needs, refusing settings that cannot train, before any file is
    written."""
    if len(config.stores) + len(config.val_stores or ()) > 64:
        raise_open_file_limit()
    stores = [open_store(p) for p in config.stores]
    val_stores = [open_store(p) for p in config.val_stores] if config.val_stores else []
    check_stores(stores, val_stores)
    val_stores = val_stores or stores
    torch.manual_seed(config.seed)
    samplers = [Sampler(stores if split == "train" else val_stores,
                        tasks=config.tasks if split == "train" or not config.val_stores else None,
                        split=split, splitter=config.splitter(),
                        batch_size=config.batch_size, context_len=config.seq_len,
                        width=config.width, seed=config.seed, rank=place.rank,
                        world_size=place.world, n_threads=config.sampler_threads,
                        pretrain=config.pretrain, icl_share=config.icl_share,
                        max_graphs=config.max_graphs,
                        # validation never masks: its loss stays comparable across settings
                        mask_share=config.mask_share if split == "train" else 0.0)
                for split in ("train", "val")]
    if not any(len(t.seeds) for t in samplers[0].tasks):
        listing = ", ".join(f"{t.key} ({len(t.view):,} seeds in all)" for t in samplers[0].tasks)
        of_rank = f" of rank {place.rank}" if place.distributed else ""
        raise TributaryError(f"nothing to train on: no task has seeds in the train split{of_rank} "
                             f"({listing or 'no tasks'})")
    model = build_model(config, stores[0].embedder.dimension).to(place.device)
    if model.missing_stypes:
        raise TributaryError(f"the run's semantic types {', '.join(model.missing_stypes)} come from "
                             f"plugins that are no longer installed: install them to train on "
                             f"(evaluate and predict work without them)")
    if config.init:  # a resumed run's checkpoint replaces these weights later
        _initialise(model, config, stores, place.device)
    if config.freeze_backbone:
        for pname, param in model.named_parameters():
            param.requires_grad_(pname.startswith(("heads.", "null_head.")))
    extra = [s for s in val_stores if s not in stores]
    embeddings = StoreEmbeddings([*stores, *extra], place.device, config.max_graphs)
    return _Plan(stores, samplers[0], samplers[1], model, embeddings)


class _Loop:
    """The training steps of one rank: forward, loss check, backward, clip, update; every
    ``val_every`` steps a validation; every ``ckpt_every`` steps a checkpoint (rank 0 writes,
    the last two are kept); at the end ``model.pt`` and ``curves.png``."""

    def __init__(self, config: TrainConfig, place: _Place, plan: _Plan, out: Path,
                 optimizers: _Optimizers, average: _Average | None,
                 progress: Callable[[dict[str, Any]], None] | None, *,
                 last_ckpt: Path | None) -> None:
        self.config, self.place, self.plan, self.out = config, place, plan, out
        self.optimizers, self.average, self.progress = optimizers, average, progress
        self.last_ckpt = last_ckpt
        self.log = out / METRICS
        self.net: nn.Module = plan.model
        if place.distributed:
            self.net = nn.parallel.DistributedDataParallel(plan.model, find_unused_parameters=True)
        self.trainable = [p for p in plan.model.parameters() if p.requires_grad]
        self.trim = HeapTrimmer()  # a flat heap over hours of steps (tributary_core.memory)

    def run(self, start: int) -> None:
        c = self.config
        # sampled (and, for a GPU, pinned) in a background thread, a few batches ahead
        pin = self.place.device.type == "cuda"
        batches: Iterator[Batch] = prefetch(
            (b.pin() if pin else b) for b in (self.plan.train.batch_at(s)
                                                for s in range(start + 1, c.steps + 1)))
        try:
            tick = time.perf_counter()
            for step in range(start + 1, c.steps + 1):
                row = self.step(step, next(batches))
                now = time.perf_counter()
                row["seeds_per_s"] = c.batch_size * self.place.world / max(now - tick, 1e-9)
                if step % c.val_every == 0 or step == c.steps:
                    net = self.average.model if self.average is not None else self.net
                    row.update(validate(net, self.plan.val, self.plan.embeddings,
                                        self.place.device, c))
                    now = time.perf_counter()
                tick = now
                self.record(row)
                if step % c.ckpt_every == 0 or step == c.steps:
                    self.checkpoint(step)
                self.trim(step)
        finally:
            batches.close()
        if self.place.rank == 0:  # the final weights: the averaged ones with --ema
            if self.average is not None:
                _save(self.out / MODEL, {"model": self.average.model.state_dict(),
                                         "step": c.steps, "ema": c.ema})
            else:
                _save(self.out / MODEL, {"model": self.plan.model.state_dict(), "step": c.steps})
            plot_curves(self.out)

    def step(self, step: int, batch: Batch) -> dict[str, Any]:
        """One optimizer step; returns the step's metrics row."""
        import torch.distributed as dist

        self.net.train()
        loss, result = batch_loss(self.net, batch, self.plan.embeddings, self.place.device,
                                  self.config.null_weight, self.config.mask_weight)
        value = loss.detach()
        if self.place.distributed:
            dist.all_reduce(value)
            value /= self.place.world
        if not bool(torch.isfinite(value)):
            where = (f"; the last checkpoint is {self.last_ckpt}" if self.last_ckpt
                     else "; no checkpoint was written")
            raise TributaryError(f"step {step}: the loss is {float(value)} on task "
                                 f"{batch.database}/{batch.task}; training stopped{where}. "
                                 f"Lower --lr or check the data.")
        self.optimizers.zero_grad()
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(self.trainable, self.config.clip))
        self.optimizers.step()
        if self.average is not None:
            self.average.update(self.plan.model, step)
        row = {"step": step, "loss": float(value), "task": f"{batch.database}/{batch.task}",
               **self.optimizers.lrs(), "grad_norm": grad_norm}
        if "mask_loss" in result:  # this rank's masked-cell loss, before mask_weight
            row["mask_loss"] = float(result["mask_loss"])
        return row

    def record(self, row: dict[str, Any]) -> None:
        """Append the row to metrics.jsonl (strict JSON: no NaN or Infinity) and report it."""
        if self.place.rank != 0:
            return
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                 for k, v in row.items()}
        try:
            with open(self.log, "a") as f:
                f.write(json.dumps(clean) + "\n")
        except OSError as exc:
            raise TributaryError(f"{self.log}: cannot write it ({exc.strerror or exc})") from None
        if self.progress is not None:
            self.progress(row)

    def checkpoint(self, step: int) -> None:
        import torch.distributed as dist

        if self.place.rank == 0:
            path = self.out / CHECKPOINTS / f"step-{step:08d}.pt"
            optimizers, schedulers = self.optimizers.state_dict()
            payload = {"step": step, "model": self.plan.model.state_dict(),
                       "optimizer": optimizers, "scheduler": schedulers}
            if self.average is not None:
                payload["ema"] = self.average.model.state_dict()
            _save(path, payload)
            for old in checkpoints(self.out)[:-2]:
                old.unlink()
            self.last_ckpt = path
        if self.place.distributed:
            dist.barrier()


def _initial_stypes(config: TrainConfig, out: Path, force: bool) -> list[str]:
    """The semantic types the model gets: those of the run it resumes, else of the run it
    starts from (``--init``), else the installed ones."""
    from tributary_core.sampler import stype_names

    mine = None
    if not force and (out / CONFIG).exists():
        try:
            mine = read_config(out)
        except TributaryError:  # not a run: claim_run_folder refuses it later, in one line
            mine = None
    if mine is not None and mine.stypes is not None:
        return list(mine.stypes)
    if config.init:
        theirs = read_config(config.init, option="--init")
        if theirs.stypes is not None:
            return list(theirs.stypes)
    return stype_names()


def _initialise(model: RelationalTransformer, config: TrainConfig, stores: list[Store],
                device: torch.device) -> None:
    """Load the weights of the run ``config.init`` into ``model``."""
    init = Path(config.init)
    theirs = read_config(init, option="--init")
    for key in ARCHITECTURE:
        if getattr(theirs, key) != getattr(config, key):
            raise TributaryError(f"--init {init}: its {key} is {getattr(theirs, key)}, this run's "
                                 f"{getattr(config, key)}")
    mine = stores[0].embedder
    other = open_store(theirs.stores[0], verify=False).embedder
    if other != mine:
        raise TributaryError(f"--init {init}: trained on embeddings from {other.describe()}, these "
                             f"stores have {mine.describe()}")
    weights = init / MODEL if (init / MODEL).exists() else latest_checkpoint(init)
    if weights is None:
        raise TributaryError(f"--init {init}: the run has no weights yet")
    load_into(model, load_weights(weights, device), weights)


#: What a run folder holds; ``--force`` removes these and nothing else.
RUN_ENTRIES = (CONFIG, METRICS, CHECKPOINTS, MODEL, "curves.png")


def claim_run_folder(out: Path, force: bool) -> None:
    """Check that ``out`` may hold this run, and with ``force`` empty it of an earlier run.

    A run is written only into a new folder, an empty one, or one that already holds a run.
    ``force`` replaces a run folder only, never the working directory or a folder above it;
    it removes the run's own files (:data:`RUN_ENTRIES`) and leaves anything else there alone.
    """
    import shutil

    from tributary_core.folders import check_output_folder

    def ours(path: Path) -> bool:
        if not (path / CONFIG).exists():
            return False
        read_config(path, option="--out")  # a damaged or foreign config.json: one line
        return True

    if not check_output_folder(out, force=force, is_ours=ours, kind="training run"):
        return
    if force:
        for name in RUN_ENTRIES:
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()


def _prepare_folder(out: Path, config: TrainConfig, force: bool, rank: int, distributed: bool) -> Path | None:
    """Create the run folder, or find the checkpoint to resume from."""
    import torch.distributed as dist

    from tributary_core.atomic import atomic_write_text

    if rank == 0:
        claim_run_folder(out, force)
        saved = out / CONFIG
        if saved.exists():
            old = read_config(out).to_json()
            new = json.loads(json.dumps(config.to_json()))
            old = json.loads(json.dumps(old))
            # the step count may grow; the recorded types are not a setting the user chose
            # nor is the attention kernel, which changes no result
            diff = sorted(k for k in new if k not in ("steps", "stypes", "attention")
                          and old.get(k) != new[k])
            if diff:
                raise TributaryError(f"{out} holds a run with other settings ({', '.join(diff)}); "
                                     f"use another --out, or --force to start over")
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG, json.dumps(config.to_json(), indent=1))
    if distributed:
        dist.barrier()
    latest = latest_checkpoint(out)
    if distributed:
        # ranks on other machines read --out too when resuming: all must see rank 0's checkpoint
        # (a rank that does not would start over from step 0 beside the others)
        seen: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(seen, None if latest is None else latest.name)
        odd = next((r for r, name in enumerate(seen) if name != seen[0]), None)
        if odd is not None:  # every rank stops, so none waits for the others forever
            raise TributaryError(f"{out}: rank {odd} sees checkpoint {seen[odd] or 'none'}, rank "
                                 f"0 {seen[0] or 'none'}: put --out on storage every machine sees "
                                 f"at the same path to resume a run across machines")
    return latest


def _resume(out: Path, model: nn.Module, optimizers: _Optimizers, average: _Average | None,
            device: torch.device, latest: Path | None) -> tuple[int, Path | None]:
    """Load the newest usable checkpoint (weights, optimizers, schedules, averaged weights);
    returns its step and path, or (0, None) for a fresh run. A damaged checkpoint (a run killed
    while the disk was full, say) is reported and the earlier kept one is used; when none is
    usable the run stops with one line rather than silently starting over."""
    import warnings

    if latest is None:
        return 0, None
    damaged = []
    for path in reversed(checkpoints(out)):
        try:
            state = load_weights(path, device)
            if not all(k in state for k in ("step", "optimizer", "scheduler")):
                raise TributaryError(f"{path}: not a training checkpoint (no optimizer state)")
            load_into(model, state, path)
            optimizers.load_state_dict(state["optimizer"], state["scheduler"], path)
            if average is not None:  # a checkpoint without averaged weights starts them here
                load_into(average.model, {"model": state.get("ema", state["model"])}, path)
        except (TributaryError, ValueError, KeyError) as exc:
            damaged.append(str(exc))
            continue
        for message in damaged:
            warnings.warn(f"{message}; resuming from {path.name} instead", stacklevel=2)
        return int(state["step"]), path
    raise TributaryError(f"{out}: no usable checkpoint to resume from ({damaged[0]}); use --force "
                         f"to start the run over")


@torch.no_grad()
def validate(net: nn.Module, val: Sampler, embeddings: Mapping[str, Any], device: torch.device,
             config: TrainConfig) -> dict[str, Any]:
    """Validation loss and each task's headline metric on the first ``val_batches`` batches."""
    net.eval()
    losses, out = [], {}
    for task in val.tasks:
        preds, targets, task_losses = [], [], []
        for batch, _ in zip(val.evaluation(task.key), range(config.val_batches), strict=False):
            loss, result = batch_loss(net, batch, embeddings, device, config.null_weight)
            task_losses.append(float(loss))
            if "prediction" in result:
                head = get_registry().loss_head(getattr(net, "module", net).loss_of[batch.target_stype])
                keep = result["labelled"]
                preds.append(result["prediction"][keep].float().cpu())
                targets.append(result["target"][keep].cpu())
        if task_losses:
            losses.extend(task_losses)
            if preds and sum(len(p) for p in preds):
                metrics = head.compute_metrics(torch.cat(preds), torch.cat(targets), task.stats)
                value = metrics[head.metrics[0]]
                # undefined (one class only in the validation batches): null, as JSON has no NaN
                out[f"val/{task.key}/{head.metrics[0]}"] = None if value != value else value
    if losses:
        out["val_loss"] = float(np.mean(losses))
    net.train()
    return out


def load_run(run: str | Path, *, device: torch.device | None = None) -> Run:
    """A trained run's model and stores (the final weights, else the latest checkpoint)."""
    run = Path(run)
    config = read_config(run)
    device = device or _device()
    if len(config.stores) > 64:
        raise_open_file_limit()
    stores = [open_store(p) for p in config.stores]
    model = build_model(config, stores[0].embedder.dimension).to(device)
    weights = run / MODEL if (run / MODEL).exists() else latest_checkpoint(run)
    if weights is None:
        raise TributaryError(f"{run} has no weights yet (no {MODEL} and no checkpoint)")
    load_into(model, load_weights(weights, device), weights)
    model.eval()
    return Run(config, model, stores, device)


def plot_curves(run: Path) -> Path | None:
    """``curves.png``: training loss (and its moving average) and validation loss by step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(run)
    steps = [r["step"] for r in rows if "loss" in r]
    loss = [r["loss"] for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label="train loss")
    if len(loss) >= 10:
        k = max(len(loss) // 20, 2)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"train loss ({k}-step mean)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", lw=1.5, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run.name)
    ax.legend()
    fig.tight_layout()
    path = run / "curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path
