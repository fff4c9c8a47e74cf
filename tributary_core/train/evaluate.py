"""Evaluation and prediction with a trained run."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tributary_core.errors import TributaryError
from tributary_core.registry import get_registry
from tributary_core.sampler import SampledTask
from tributary_core.sampler.batch import target_arrays
from tributary_core.store import Store, open_store
from tributary_core.train.trainer import Run, batch_loss, labelled, load_run

__all__ = ["evaluate", "evenly_spaced", "target_tensors", "check_ensemble",
           "bootstrap_intervals", "inference_batch_size", "score", "DEFAULT_MAX_SEEDS", "DEFAULT_BOOTSTRAP"]

#: ``evaluate``'s default cap on each task's evaluated seeds (an evenly spaced subset).
DEFAULT_MAX_SEEDS = 2000
#: ``evaluate``'s default number of bootstrap resamples for the confidence intervals.
DEFAULT_BOOTSTRAP = 200
#: Cells per inference batch: the batch size is this over the context length (at least 1).
#: Small batches are faster on a CPU: a batch's attention masks (B x S x S per pattern) then
#: stay in cache; 32 contexts of 256 cells ran 1.2x as fast as 256 (docs/benchmarks.md).
_INFERENCE_CELLS = 1 << 13


def target_tensors(view: Any, seeds: np.ndarray) -> dict[str, Any]:
    """The ``target_*`` fields (and ``candidates``) a batch would hold for ``seeds`` of a task
    view, straight from the task file (no sampling): what :meth:`LossHead.target` reads."""
    number, ts, boolean, vocab, valid = target_arrays(view, seeds)
    return {"target_number": torch.from_numpy(number), "target_timestamp": torch.from_numpy(ts),
            "target_boolean": torch.from_numpy(boolean), "target_vocab": torch.from_numpy(vocab),
            "target_is_null": torch.from_numpy(~valid), "target_stype": view.stype,
            "candidates": (torch.from_numpy(view.candidates)
                           if view.candidates is not None else None)}


def _labels(head: Any, task: SampledTask, seeds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of ``seeds`` straight from the task file (no sampling), and which are not null."""
    tensors = target_tensors(task.view, seeds)
    target = head.target(tensors)
    return target, labelled(target, tensors["target_is_null"])


def evenly_spaced(seeds: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` of ``seeds``, evenly spaced (the same subset every time)."""
    if limit is None or len(seeds) <= limit:
        return seeds
    return seeds[np.linspace(0, len(seeds) - 1, limit).astype(np.int64)]


def inference_batch_size(run: Run) -> int:
    """Contexts per forward pass at inference: about 8,192 cells."""
    return max(1, _INFERENCE_CELLS // max(run.config.seq_len, 1))


def bootstrap_intervals(head: Any, prediction: torch.Tensor, target: torch.Tensor,
                        stats: Any, resamples: int, level: float = 0.95,
                        seed: int = 0) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals of ``head.compute_metrics``: the metrics of
    ``resamples`` resamples (with replacement, a fixed random stream, so the same inputs give
    the same intervals) of the evaluated seeds; per metric ``[low, high]`` at ``level``, or
    None where fewer than half of the resamples give the metric (an AUROC of a resample with
    one class)."""
    n = len(target)
    if resamples < 1 or n == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        idx = torch.from_numpy(rng.integers(0, n, n))
        for name, value in head.compute_metrics(prediction[idx], target[idx], stats).items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                draws.setdefault(name, []).append(float(value))
            else:
                draws.setdefault(name, [])
    tail = (1.0 - level) / 2 * 100
    return {name: ([float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
                   if len(v) >= resamples / 2 else None)
            for name, v in draws.items()}


@torch.inference_mode()
def evaluate(run: str | Path | Run, *, split: str = "test", batch_size: int | None = None,
             max_seeds: int | None = DEFAULT_MAX_SEEDS,
             stores: Sequence[Store | str | Path] | None = None,
             tasks: Sequence[str] | None = None, ensemble: int = 1,
             bootstrap: int = DEFAULT_BOOTSTRAP) -> dict[str, Any]:
    """Per task: the model's metrics on ``split`` beside those of the majority/mean of the
    training split's labels, each with a 95% bootstrap confidence interval (``bootstrap``
    resamples of the evaluated seeds; 0: none) in ``"ci"`` and ``"baseline_ci"``.

    ``max_seeds`` caps each task's evaluated seeds (default 2,000; an evenly spaced subset of
    the split, the same every time; None: every seed). Inference computes only the outputs the
    predictions read, ``batch_size`` contexts at a time (default: about 8,192 cells).

    ``ensemble=K`` predicts each seed from K contexts, sampled with draws 0 to K-1 (draw 0 is
    the one ``ensemble=1`` uses), and merges the K predictions with the loss head's
    :meth:`~tributary_core.loss.LossHead.combine` (the null head's for the null logit); the
    metrics and the loss are those of the merged prediction. It costs K times the time. Each
    task's entry records it as ``"ensemble"``.

    By default the run's own stores and tasks. ``stores`` (and ``tasks``, default all of their
    SQL tasks) evaluate it elsewhere: on another database, or on tasks it never trained on
    (zero-shot). Those stores need the run's embedder identity; splits and context settings are
    the run's."""
    ensemble = check_ensemble(ensemble)
    run = run if isinstance(run, Run) else load_run(run)
    registry = get_registry()
    null_head = registry.loss_head("null")
    batch_size = batch_size or inference_batch_size(run)
    if stores is None and tasks is None:
        sampler, train = run.sampler(split, batch_size=batch_size), run.sampler("train")
        embeddings = run.embeddings
    else:
        opened = [s if isinstance(s, Store) else open_store(s) for s in (stores or run.stores)]
        mine = run.stores[0].embedder
        for store in opened:
            if store.embedder != mine:
                raise TributaryError(f"store {store.path} was embedded with "
                                     f"{store.embedder.describe()}, the run with {mine.describe()}")
        sampler, train = (run.sampler(name, batch_size=batch_size, stores=opened, tasks=tasks,
                                      pretrain=False) for name in (split, "train"))
        embeddings = run.embeddings.extended(opened)
    results: dict[str, Any] = {}
    for task in sampler.tasks:
        loss_name = run.model.loss_of.get(task.view.stype)
        if loss_name is None:
            continue
        task.seeds = evenly_spaced(task.seeds, max_seeds)
        head = registry.loss_head(loss_name)
        preds, targets, losses = [], [], []
        for batch in sampler.evaluation(task.key):
            loss, out = batch_loss(run.model, batch, embeddings, run.device, run.config.null_weight,
                                   targets_only=True)
            prediction = out["prediction"]
            if ensemble > 1:  # the same seeds with draws 1..K-1, merged with draw 0
                outs = [out] + [batch_loss(run.model, sampler.batch(task, batch.seed, draw=k),
                                           embeddings, run.device, run.config.null_weight,
                                           targets_only=True)[1]
                                for k in range(1, ensemble)]
                prediction = _combined(head, [o["prediction"] for o in outs])
                null_logit = _combined(null_head, [o["null_logit"] for o in outs])
                loss = _merged_loss(head, null_head, prediction, null_logit, out, batch,
                                    run.config.null_weight)
            losses.append(float(loss) * len(batch))
            keep = out["labelled"]
            preds.append(prediction[keep].float().cpu())
            targets.append(out["target"][keep].cpu())
        n = sum(len(t) for t in targets)
        entry: dict[str, Any] = {"split": split, "seeds": int(len(task.seeds)), "labelled": n,
                                 "loss": (sum(losses) / len(task.seeds)) if len(task.seeds) else None,
                                 "loss_head": loss_name, "ensemble": ensemble, "metrics": {},
                                 "baseline": {}, "ci": {}, "baseline_ci": {},
                                 "ci_level": 0.95, "bootstrap": int(bootstrap)}
        if n:
            train_task = next(t for t in train.tasks if t.key == task.key)
            entry.update(score(head, torch.cat(preds), torch.cat(targets), task.stats,
                               _labels(head, train_task, train_task.seeds), bootstrap))
        results[task.key] = entry
    return results


def score(head: Any, pred: torch.Tensor, target: torch.Tensor, stats: Any,
          train_labels: tuple[torch.Tensor, torch.Tensor], bootstrap: int) -> dict[str, Any]:
    """``metrics`` of predictions ``pred`` of labelled targets ``target``, and the
    ``baseline`` metrics of the majority/mean of the training labels (``train_labels``: the
    targets and which are labelled, as :func:`_labels` gives them), each with its bootstrap
    intervals (``ci``, ``baseline_ci``)."""
    n = len(target)
    train_target, keep = train_labels
    base = head.baseline(train_target[keep], n)
    if base.dim() == 2 and pred.dim() == 2 and base.shape[1] != pred.shape[1]:
        wide = torch.zeros(n, pred.shape[1])  # categories unseen in training: never picked
        wide[:, : min(base.shape[1], pred.shape[1])] = base[:, : pred.shape[1]]
        base = wide
    return {"metrics": _clean(head.compute_metrics(pred, target, stats)),
            "ci": bootstrap_intervals(head, pred, target, stats, bootstrap),
            "baseline": _clean(head.compute_metrics(base, target, stats)),
            "baseline_ci": bootstrap_intervals(head, base, target, stats, bootstrap)}


def check_ensemble(ensemble: Any) -> int:
    """``ensemble`` as an int, or a one-line error unless it is a whole number >= 1."""
    if isinstance(ensemble, bool) or not isinstance(ensemble, numbers.Integral) or ensemble < 1:
        raise TributaryError(f"ensemble must be a whole number of contexts per seed, >= 1; "
                             f"got {ensemble!r}")
    return int(ensemble)


def _combined(head: Any, predictions: list[torch.Tensor]) -> torch.Tensor:
    """``head.combine`` of K >= 2 predictions (cast to float), checked to keep their shape."""
    merged = head.combine([p.float() for p in predictions])
    if not isinstance(merged, torch.Tensor) or merged.shape != predictions[0].shape:
        got = tuple(merged.shape) if isinstance(merged, torch.Tensor) else type(merged).__name__
        raise TributaryError(f"loss head {head.name!r} combined {len(predictions)} predictions of "
                             f"shape {tuple(predictions[0].shape)} into {got} in combine()")
    return merged


def _merged_loss(head: Any, null_head: Any, prediction: torch.Tensor, null_logit: torch.Tensor,
                 out: dict[str, Any], batch: Any, null_weight: float) -> torch.Tensor:
    """The loss :func:`batch_loss` gives, of merged predictions: the target head's loss on the
    labelled targets plus ``null_weight`` times the null head's loss."""
    null_target = null_head.target({"target_is_null": torch.as_tensor(
        batch.target_is_null, device=null_logit.device)})
    loss = null_weight * null_head.loss(null_logit, null_target)
    keep = out["labelled"]
    if bool(keep.any()):
        loss = loss + head.loss(prediction[keep], out["target"][keep])
    return loss


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
            for k, v in metrics.items()}
