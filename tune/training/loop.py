"""One training run: train_one_epoch / evaluate / fit, with one rule for the epoch that is kept.

`fit` is what `python -m tune train`, every Ray Tune trial, finalize and reproduce call: it knows
nothing of the command line or of Ray, and talks to its caller through a per-epoch `report` hook.

The rule: `cfg.monitor` (val_loss, the notebook's, or a validation metric such as val_auc) decides
which epoch's weights are kept, stops training after `patience` epochs without a better value, and in a
search a trial's score is the search metric at that kept epoch (tune/search/driver.py), so the number a
trial is ranked by is the number of the weights finalize keeps.

Held-out validation sources (`extra`, tune/data/heldout.py) are scored after valid every epoch, in inference
mode and never augmented; they never reach a gradient step. Their numbers (xval_*) join the epoch's row,
so a monitor or search metric may be held-out or combined (mean_auc, min_auc: tune/metrics/classification.py), and the
time they take counts in the epoch's time.
A trial trains until its time budget's deadline (tune/training/deadline.py): past it, the epoch under way is dropped.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tune.core import UserError, seed_everything
from tune.data.images import ImageSet
from tune.metrics.classification import (
    HELDOUT,
    METRICS,
    better,
    binary_metrics,
    heldout_row,
    metric_value,
    mode_of,
    needs_heldout,
)
from tune.metrics.costs import COSTS, MEASURE_S
from tune.metrics.video import video_row
from tune.models.detector import Detector, count_params
from tune.models.inputs import with_input
from tune.models.registry import build_model
from tune.training.cache import Inputs, model_device
from tune.training.checkpoint import frozen_hash, load_trained, make_state, resume_weights, trained_part
from tune.training.config import TrainConfig
from tune.training.deadline import OUT_OF_TIME, OutOfTime, check, checked
from tune.training.loader import prefetched
from tune.training.precision import autocast, grad_scaler, resolve

# report(metrics, checkpoint_state) is called after every epoch; checkpoint_state() builds the
# resumable state lazily, so callers that do not checkpoint pay nothing for it.
ReportHook = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}  # the names of config's `optimizer`


@dataclass
class FitResult:
    model: Detector
    history: list[dict[str, Any]]
    best_epoch: int  # the kept epoch: the best `monitor` value (0 when no epoch was usable)
    ended: str  # "completed", "early_stopped", "diverged" or OUT_OF_TIME (the deadline passed mid-epoch)
    cache_mode: str
    val_probs: np.ndarray = field(repr=False)
    trainable_params: int = 0
    frozen_params: int = 0
    monitor: str = "val_loss"
    precision: str = "fp32"  # the one that ran (config's auto resolved)
    cut_s: float = 0.0  # OUT_OF_TIME: the seconds spent on the epoch (or set-up) the deadline cut short, thrown away

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1] if self.history and self.best_epoch else {}


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's randomness depends only on (seed, epoch): a resumed run continues identically."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


def param_groups(model: Detector, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The head at lr; the trainable units before it (the body) at lr x backbone_lr_mult. Each group keeps
    its `base_lr`, which the schedule scales at every step (and which a checkpoint carries)."""
    groups = []
    for name, module, lr in (("head", model.head, cfg.lr), ("body", model.body, cfg.lr * cfg.backbone_lr_mult)):
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr, "base_lr": lr, "name": name})
    return groups


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule at optimizer step `step` (0-based, counted over epochs): a linear warm-up over
    `warmup_epochs`, then constant or a cosine down to 0 at the end of the max epochs."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        t = (step - warm) / max(1.0, cfg.epochs * steps_per_epoch - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return 1.0


def draw_flips(n: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    # Five numbers per image (a flip, then blur and JPEG choices), the draws of runs trained before augmentation
    # had its own, so a run without augmentation reproduces those; only the first decides the flip.
    return (torch.rand(n, 5, generator=gen)[:, 0] < 0.5) & hflip


def batch_plan(cfg: TrainConfig, n: int, epoch: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The epoch's batches as (sorted image indices, flips), and the dropout seed set: every random draw of
    the epoch, made here in the training thread in the order the inline loop always made them, before any
    loader thread starts, so that what the threads compute is a pure function of this plan."""
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    torch.manual_seed(epoch_seed(cfg.seed, epoch) + 1)  # dropout
    order = torch.randperm(n, generator=gen).numpy()
    plan = []
    for i in range(0, len(order), cfg.batch_size):
        idx = np.sort(order[i:i + cfg.batch_size])  # sorted: memmap reads stay sequential
        plan.append((idx, draw_flips(len(idx), cfg.hflip, gen)))
    return plan


def train_one_epoch(model: Detector, inputs: Inputs, y: np.ndarray, optimizer: torch.optim.Optimizer,
                    cfg: TrainConfig, epoch: int, precision: str = "fp32",
                    scaler: torch.amp.GradScaler | None = None) -> float:
    model.train()
    inputs.start_epoch(epoch)  # the epoch's augmented view (built now if it is the first to need it)
    plan = batch_plan(cfg, len(y), epoch)
    jobs = (functools.partial(inputs.train_host, idx, flip, None if inputs.workers == 0 else 1)
            for idx, flip in plan)
    # The loss is summed on the device in float64 and read once: loss.item() at every step would wait for
    # the GPU each time; float64 makes the sum the very number the per-step Python sum was.
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    # checked: a search's deadline, between two steps (no step is half-taken)
    for k, ((idx, _), batch) in enumerate(checked(zip(plan, prefetched(jobs, inputs.workers)))):
        factor = lr_factor(cfg, (epoch - 1) * len(plan) + k, len(plan))
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        target = torch.from_numpy(y[idx]).to(inputs.device, non_blocking=True)
        if cfg.label_smoothing:
            target = target * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
        with autocast(precision, inputs.device.type):
            logits = model.forward_cached(inputs.on_device(batch))
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # fp16: the loss scaled so small gradients do not underflow; steps with inf/NaN are skipped
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        total += loss.detach().double() * len(idx)
    return float(total) / max(len(y), 1)


def evaluate(model: Detector, batches: Any, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean BCE loss, P(fake) per image) over pre-encoded batches, in inference mode."""
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model.forward_cached(z).float().cpu() for z in checked(batches)])  # checked: the deadline
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y)))
    return loss, torch.sigmoid(logits).numpy().astype(np.float64)


def scored(result: tuple[float, np.ndarray]) -> tuple[np.ndarray, float]:
    """evaluate's (loss, P(fake)) as (P(fake) with NaN read as 0.5, loss): what metrics' heldout_row takes."""
    loss, probs = result
    return np.nan_to_num(probs, nan=0.5), loss


def make_model(cfg: TrainConfig) -> Detector:
    seed_everything(cfg.seed)  # model init depends on the seed only
    # CUDA when present (a Ray trial sees only the GPU share it was given); else the CPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = with_input(build_model(cfg.arch, **cfg.hparams), cfg.input)  # its input transform is part of it
    return model.to(device=device, memory_format=torch.channels_last)


def fit(cfg: TrainConfig, train: ImageSet, valid: ImageSet, *, extra: Sequence[ImageSet] = (),
        report: ReportHook | None = None, resume: dict[str, Any] | None = None, cache_dir: Path | None = None,
        log: Callable[[str], None] | None = print, stop_after: int | None = None,
        measure: Callable[[Detector], dict[str, Any]] | None = None) -> FitResult:
    """Train with BCEWithLogitsLoss; keep the epoch with the best `cfg.monitor`, and stop after `patience`
    epochs without a better one. `extra`: held-out validation sources, scored every epoch, never trained on.

    Returns the model with the kept epoch's weights restored. `resume` is a state from a checkpoint
    (see `state()` below); `stop_after` caps the epochs run (used by reproduce). `measure(model)`, when given, is
    called once, when the first kept epoch is chosen (the model then holds the kept weights): what it returns (the
    serving costs, tune/training/latency.py) joins that epoch's row and every later one.

    Inside `tune.training.deadline.until(t)` (a search's trial) it ends OUT_OF_TIME once t passes: the epoch under way
    (or the set-up, building feature caches) is dropped and never reported, and the kept epoch is the best completed.
    """
    if needs_heldout(cfg.monitor) and not extra:
        raise UserError(f"monitor {cfg.monitor} needs held-out validation sources (--valid-extra DIR), and none "
                        "were given")
    wrong = [s.split for s in (train, valid, *extra) if s.resize != cfg.resize]
    if wrong:  # a bug, not a user's mistake: the caller loaded the images for another resize mode
        raise UserError(f"resize {cfg.resize}: {', '.join(wrong)} images were prepared for resize "
                        f"{'crop' if cfg.resize == 'bilinear' else 'bilinear'} (load them with resize={cfg.resize!r})")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model = make_model(cfg)
    device = model_device(model).type
    precision = resolve(cfg.precision, device)
    scaler = grad_scaler(precision, device)
    trainable, frozen = count_params(model)
    optimizer = OPTIMIZERS[cfg.optimizer](param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    mode = mode_of(cfg.monitor)
    history: list[dict[str, Any]] = []
    best_value, best_epoch, bad_epochs = math.nan, 0, 0  # NaN: any number is better
    # The kept epoch's trained part: the frozen prefix stays the model's own (tune/training/checkpoint.py).
    best_state = copy.deepcopy(trained_part(model.state_dict()))
    best_probs = np.zeros(len(valid))
    if resume is not None:
        best_state = resume_weights(model, resume, cfg.arch)
        optimizer.load_state_dict(resume["optimizer"])
        if scaler is not None and "scaler" in resume:  # fp16: the loss scale it had reached, not a fresh 2**16
            scaler.load_state_dict(resume["scaler"])
        history = resume["history"]
        # "best_loss": a checkpoint of an earlier version, which always monitored val_loss
        best_value = resume.get("best_value", resume.get("best_loss", math.nan))
        best_epoch, bad_epochs = resume["best_epoch"], resume["bad_epochs"]
        best_probs = np.asarray(resume["best_probs"])
    # Once: the prefix never changes while training. After the resume, which an earlier version's checkpoint
    # resumes with the prefix it stored.
    digest = frozen_hash(model)
    costs = {k: v for k, v in (history[-1] if history else {}).items() if k in COSTS or k == MEASURE_S}

    def state() -> dict[str, Any]:
        live = trained_part(model.state_dict())
        # When the epoch just run is the kept one, its weights are the model's: handing torch.save the same
        # tensors twice stores them once (written every epoch of every trial).
        kept = live if history and best_epoch == history[-1]["epoch"] else best_state
        return make_state(model, digest, live, kept, optimizer=optimizer.state_dict(), history=history,
                          best_value=best_value, best_epoch=best_epoch, bad_epochs=bad_epochs,
                          best_probs=best_probs.tolist(), config=cfg.to_dict(),
                          **({"scaler": scaler.state_dict()} if scaler is not None else {}))

    ended, cut_s, t0 = "completed", 0.0, time.perf_counter()
    last = min(cfg.epochs, stop_after or cfg.epochs)
    try:
        check()  # a trial that starts past its deadline builds nothing
        inputs = Inputs(model, cfg, train, valid, cache_dir, extra)  # a feature cache it builds checks by chunk
    except OutOfTime:
        ended, cut_s, last = OUT_OF_TIME, time.perf_counter() - t0, 0  # no epoch runs, `inputs` stays unbound
    for epoch in range(len(history) + 1, last + 1):
        t0 = time.perf_counter()
        try:  # the deadline is checked only in these three, before anything of the epoch is kept
            train_loss = train_one_epoch(model, inputs, train.y, optimizer, cfg, epoch, precision, scaler)
            # 256 images a batch: when the frozen prefix's outputs are cached, these activations are a retraining's
            # largest transient (about 170 MB at 96 px, Lite0 with 13 unfrozen blocks), so its memory grows with valid
            # up to 256 images and is flat beyond (benchmarks/scale.py). Kept: another batch size can change the
            # last bits of the logits, and with them every trial's and finalize's numbers.
            with autocast(precision, device):
                val_loss, probs = evaluate(model, inputs.valid_batches(256), valid.y)
            diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
            with autocast(precision, device):
                held = {} if diverged or not extra else heldout_row(
                    {s.split: (s.y, *scored(evaluate(model, inputs.eval_batches(k, 256), s.y)))
                     for k, s in enumerate(extra, 1)})
        except OutOfTime:
            ended, cut_s = OUT_OF_TIME, time.perf_counter() - t0
            break
        m = binary_metrics(valid.y, np.nan_to_num(probs, nan=0.5)) if not diverged else {}
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               **{f"val_{k}": m.get(k, math.nan) for k in METRICS}, **held,
               **({} if diverged else video_row(valid.y, probs, valid.videos, cfg.video_agg, cfg.video_topk)),
               "lr": optimizer.param_groups[0]["lr"],  # the head's, at the epoch's last step (the schedule)
               "epoch_time": time.perf_counter() - t0}  # the held-out sources' scoring included
        value = metric_value(row, cfg.monitor)
        if not diverged and better(value, best_value, mode):
            best_value, best_epoch, bad_epochs = value, epoch, 0
            best_state, best_probs = copy.deepcopy(trained_part(model.state_dict())), probs
            if measure is not None and not costs:
                costs = measure(model)
                row["epoch_time"] += costs.get(MEASURE_S, 0.0)  # the wall time between this report and the last
        else:
            bad_epochs += 1
        row["best_epoch"] = best_epoch
        row.update(costs)
        history.append(row)
        if log:
            xval = f"  {HELDOUT}_auc {row[f'{HELDOUT}_auc']:.4f}" if held else ""
            log(f"[{cfg.arch}] epoch {epoch:3d}/{cfg.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                f"val_acc {row['val_accuracy']:.4f}  val_auc {row['val_auc']:.4f}{xval}  {row['epoch_time']:.1f}s"
                f"{'  *' if best_epoch == epoch else ''}")
        if diverged:
            ended = "diverged"
        elif bad_epochs >= cfg.patience:
            ended = "early_stopped"
        row["ended"] = ended if ended != "completed" or epoch == cfg.epochs else ""
        if report is not None:
            report(dict(row), state)
        if ended != "completed":
            break
    load_trained(model, best_state)  # also after OUT_OF_TIME: the live weights are the dropped epoch's
    cache_mode = inputs.mode if last else "none (out of time before the first epoch)"
    return FitResult(model, history, best_epoch, ended, cache_mode, best_probs, trainable, frozen, cfg.monitor,
                     precision, cut_s)
