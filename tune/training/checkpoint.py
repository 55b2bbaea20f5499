"""What a training checkpoint holds: only what training changes, and a hash of what it does not.

A search writes a checkpoint every epoch of every trial (tune/search/driver.py). The frozen prefix
(`Detector.frozen`) never changes while training, and `make_model(cfg)` rebuilds it from the weights
source, so a checkpoint stores the trained part (the body and the head, live and at the kept epoch), the
optimizer (its per-group `base_lr` is the schedule's state), the history and the kept epoch's bookkeeping,
plus a content hash of the frozen prefix: on resume the rebuilt prefix must hash the same, or the trial
would go on with other weights under it. No RNG state is stored: each epoch reseeds from (seed, epoch).

Checkpoints of earlier versions (the whole model under "model" and "best_state") still resume. A
*finished* trial's checkpoint (`finished`) keeps only the kept epoch's weights, what reading a search
back needs; nothing resumes from it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from tune.core import UserError
from tune.models.detector import Detector

FROZEN = "frozen."  # the frozen prefix's keys in a Detector's state_dict
Weights = dict[str, torch.Tensor]


def frozen_hash(model: Detector) -> str:
    """A content hash of the frozen prefix's tensors (names, dtypes, shapes, bytes): the same weights give the
    same hash whatever their memory format or device. Lite0's whole backbone hashes in tens of milliseconds."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.frozen.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def trained_part(weights: Weights) -> Weights:
    """A Detector state_dict without its frozen prefix (the same tensors, not copies)."""
    return {k: v for k, v in weights.items() if not k.startswith(FROZEN)}


def full_weights(model: Detector, trained: Weights) -> Weights:
    """`trained` completed with the model's own frozen prefix: a whole state_dict for load_state_dict."""
    return {**{k: v for k, v in model.state_dict().items() if k.startswith(FROZEN)}, **trained}


def load_trained(model: Detector, trained: Weights) -> None:
    """Load a trained part into `model`, strictly: a missing or unexpected key is an error, never a half load."""
    model.load_state_dict(full_weights(model, trained))


def make_state(model: Detector, digest: str, live: Weights, kept: Weights, **rest: Any) -> dict[str, Any]:
    """A checkpoint's state. When the kept epoch is the epoch just run, pass the same tensors as `live` and
    `kept`: torch.save stores tensors it is handed twice once."""
    return {"trained": live, "best_trained": kept,
            "frozen": {"hash": digest, "weights_source": model.weights_source}, **rest}


def is_compact(state: dict[str, Any]) -> bool:
    return "best_trained" in state  # earlier versions stored the whole model under "model" and "best_state"


def resume_weights(model: Detector, state: dict[str, Any], arch: str) -> Weights:
    """Load a checkpoint's live weights into `model`; return the kept epoch's trained part. Refuses in one line a
    finished trial's checkpoint and a frozen prefix that no longer matches the one the checkpoint trained on."""
    if state.get("finished"):
        raise UserError(f"{arch}: this checkpoint is a finished trial's (only its kept weights were kept): there is "
                        "nothing to resume")
    if not is_compact(state):
        model.load_state_dict(state["model"])  # its own frozen prefix too: the one it trained on
        return trained_part(state["best_state"])
    was = state["frozen"]
    if was["hash"] != frozen_hash(model):
        raise UserError(f"{arch}: cannot resume: the frozen layers rebuilt from the weights source differ from those "
                        f"the checkpoint trained on (source then: {was['weights_source']}; now: "
                        f"{model.weights_source}); restore those weights or start the trial afresh")
    load_trained(model, state["trained"])
    return state["best_trained"]


def kept_weights(model: Detector, state: dict[str, Any]) -> Weights:
    """The kept epoch's whole state_dict from a checkpoint of any version (for a model built by make_model with
    the checkpoint's config; a compact checkpoint's frozen prefix is the model's)."""
    return full_weights(model, state["best_trained"]) if is_compact(state) else state["best_state"]


def finished(state: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's checkpoint: the kept epoch's weights, history and config, without what only a resume
    needs (the live weights, the optimizer and fp16's loss scaler): the demo's Lite0 trials' 36-57 MB become
    12-14 MB."""
    if not is_compact(state) or state.get("finished"):
        return state
    return {**{k: v for k, v in state.items() if k not in ("trained", "optimizer", "scaler")}, "finished": True}
