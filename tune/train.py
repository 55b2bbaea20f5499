"""One training run: train_one_epoch / evaluate / fit, with early stopping on validation loss.

`fit` is what both `python -m tune train` and every Ray Tune trial call: it knows nothing of
the command line or of Ray, and talks to its caller through a per-epoch `report` hook.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tune.archs import build_model
from tune.cache import Inputs
from tune.config import TrainConfig
from tune.data import ImageSet, draw_plan
from tune.metrics import METRICS, binary_metrics
from tune.models import Detector, count_params
from tune.utils import (
    seed_everything,
)

# report(metrics, checkpoint_state) is called after every epoch; checkpoint_state() builds the
# resumable state lazily, so callers that do not checkpoint pay nothing for it.
ReportHook = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


@dataclass
class FitResult:
    model: Detector
    history: list[dict[str, Any]]
    best_epoch: int
    ended: str  # "completed", "early_stopped" or "diverged"
    cache_mode: str
    val_probs: np.ndarray = field(repr=False)
    trainable_params: int = 0
    frozen_params: int = 0

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1] if self.history else {}


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's randomness depends only on (seed, epoch): a resumed run continues identically."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


def train_one_epoch(model: Detector, inputs: Inputs, y: np.ndarray, optimizer: torch.optim.Optimizer,
                    loss_fn: nn.Module, cfg: TrainConfig, epoch: int) -> float:
    model.train()
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    torch.manual_seed(epoch_seed(cfg.seed, epoch) + 1)  # dropout
    order = torch.randperm(len(y), generator=gen).numpy()
    total, seen = 0.0, 0
    for i in range(0, len(order), cfg.batch_size):
        idx = np.sort(order[i:i + cfg.batch_size])  # sorted: memmap reads stay sequential
        plan = draw_plan(len(idx), hflip=cfg.hflip, blur_prob=cfg.blur_prob, jpeg_prob=cfg.jpeg_prob, gen=gen)
        z = inputs.train_batch(idx, plan)
        target = torch.from_numpy(y[idx]).to(z.device)
        loss = loss_fn(model.forward_cached(z), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def evaluate(model: Detector, batches: Any, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean BCE loss, P(fake) per image) over pre-encoded batches, in inference mode."""
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model.forward_cached(z).cpu() for z in batches])
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y)))
    return loss, torch.sigmoid(logits).numpy().astype(np.float64)


def make_model(cfg: TrainConfig) -> Detector:
    seed_everything(cfg.seed)  # model init depends on the seed only
    # CUDA when present (a Ray trial sees only the GPU share it was given); else the CPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return build_model(cfg.arch, **cfg.hparams).to(device=device, memory_format=torch.channels_last)


def fit(cfg: TrainConfig, train: ImageSet, valid: ImageSet, *, report: ReportHook | None = None,
        resume: dict[str, Any] | None = None, cache_dir: Path | None = None,
        log: Callable[[str], None] | None = print, stop_after: int | None = None) -> FitResult:
    """Train with Adam + BCEWithLogitsLoss; stop after `patience` epochs without a lower val loss.

    Returns the model with its best epoch's weights restored. `resume` is a state from a
    checkpoint (see `state()` below); `stop_after` caps the epochs run (used by reproduce).
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model = make_model(cfg)
    trainable, frozen = count_params(model)
    inputs = Inputs(model, cfg, train, valid, cache_dir)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    history: list[dict[str, Any]] = []
    best_loss, best_epoch, bad_epochs = math.inf, 0, 0
    best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
    best_probs = np.zeros(len(valid))
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        history, best_state = resume["history"], resume["best_state"]
        best_loss, best_epoch, bad_epochs = resume["best_loss"], resume["best_epoch"], resume["bad_epochs"]
        best_probs = np.asarray(resume["best_probs"])

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                "best_state": best_state, "best_loss": best_loss, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "best_probs": best_probs.tolist(), "config": cfg.to_dict()}

    ended = "completed"
    last = min(cfg.epochs, stop_after or cfg.epochs)
    for epoch in range(len(history) + 1, last + 1):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(model, inputs, train.y, optimizer, loss_fn, cfg, epoch)
        val_loss, probs = evaluate(model, inputs.valid_batches(256), valid.y)
        diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
        m = binary_metrics(valid.y, np.nan_to_num(probs, nan=0.5)) if not diverged else {}
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               **{f"val_{k}": m.get(k, math.nan) for k in METRICS},
               "epoch_time": time.perf_counter() - t0}
        if not diverged and val_loss < best_loss:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state, best_probs = copy.deepcopy(model.state_dict()), probs
        else:
            bad_epochs += 1
        row["best_epoch"] = best_epoch
        history.append(row)
        if log:
            log(f"[{cfg.arch}] epoch {epoch:3d}/{cfg.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                f"val_acc {row['val_accuracy']:.4f}  val_auc {row['val_auc']:.4f}  {row['epoch_time']:.1f}s")
        if diverged:
            ended = "diverged"
        elif bad_epochs >= cfg.patience:
            ended = "early_stopped"
        row["ended"] = ended if ended != "completed" or epoch == cfg.epochs else ""
        if report is not None:
            report(dict(row), state)
        if ended != "completed":
            break
    model.load_state_dict(best_state)
    return FitResult(model, history, best_epoch, ended, inputs.mode, best_probs, trainable, frozen)
