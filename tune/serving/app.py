"""The HTTP API behind `python -m tune serve`: one Ray Serve deployment with a FastAPI ingress.

Requests are parsed and decoded concurrently on the replica's event loop (big images in threads);
the forward pass goes through `serve.batch` on one dedicated thread. Images that arrive while it
runs go into the next pass together (see `DetectorApp.verdict`). `/predict?explain=1` is scored the
same way, then its Grad-CAM pass (forward and backward, tune/models/explain.py) runs on that thread on its
own, outside any batch.
Every bad input is answered with a 4xx and one line of JSON, `{"error": "..."}`, never a 500 or
a traceback: the body is size-checked from Content-Length and again while it streams in, the
content type is checked before reading, and decoding refuses non-images and decompression bombs.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time
(a `Request` parameter is recognised by its type), and Ray Serve's class-based view wraps them.
"""

import asyncio
import base64
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve._private import replica as serve_replica  # `from ray import serve` loads it already
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from tune import inference
from tune.data.images import MAX_PIXELS
from tune.inference import LoadedModel
from tune.metrics.classification import METRICS
from tune.models import explain
from tune.serving.clips import MAX_VIDEO_S, VIDEO_TYPES, ClipRefused, clip_answer, prepare_clip
from tune.serving.modelcard import model_card
from tune.serving.shutdown import drain_direct_ingress

MAX_FILES = 256  # files in one /predict/batch request
INLINE_DECODE = 256_000  # bytes: bodies up to this size are decoded without a thread hand-off
RAW_TYPES = ("application/octet-stream",)  # accepted besides image/*
EXPLAIN = {"1": True, "true": True, "0": False, "false": False, "": False}  # ?explain= values
# The page is self-contained; the policy makes the browser refuse anything from elsewhere.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'")

# No /docs or /redoc: FastAPI's docs pages load their scripts from a CDN.
app = FastAPI(title="deepfake-tune detector", docs_url=None, redoc_url=None, openapi_url=None)


class BadInput(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@app.exception_handler(BadInput)
async def _bad_input(_: Request, e: BadInput) -> JSONResponse:
    return error(e.status, e.message)


@app.exception_handler(HTTPException)
async def _http(_: Request, e: HTTPException) -> JSONResponse:  # 404, 405, starlette's form errors
    return error(e.status_code, str(e.detail))


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
    return error(400, f"bad request: {e.errors()[0].get('msg', 'invalid') if e.errors() else 'invalid'}")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes: up front from Content-Length, and again while
    counting the stream (a client can lie about, or omit, Content-Length with chunked encoding)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadInput(400, f"bad Content-Length header {declared[:40]!r}")
        if int(declared) > limit:
            raise BadInput(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BadInput(413, f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def form_files(request: Request, body: bytes) -> list[tuple[str, bytes]]:
    """(filename, bytes) of every file part of an already size-checked multipart body, in order."""
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_FILES, max_fields=MAX_FILES)
    except HTTPException as e:  # starlette's own multipart errors (too many files, malformed)
        raise BadInput(400, f"bad multipart body: {e.detail}") from None
    except (ValueError, AssertionError, KeyError) as e:  # python-multipart on a broken body
        raise BadInput(400, f"bad multipart body: {str(e)[:200] or type(e).__name__}") from None
    files = []
    for _, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((value.filename or "upload", await value.read()))
    await form.close()
    return files


async def images_in(request: Request, limit: int) -> list[tuple[str, bytes]]:
    """The uploaded images of a request: a raw image body, or the file parts of a multipart form."""
    kind = media_type(request)
    multipart = kind == "multipart/form-data"
    if not (multipart or kind.startswith("image/") or kind in RAW_TYPES):
        raise BadInput(415, f"unsupported content type {kind or '(none)'!r}: send the image as the body with an "
                       "image/* content type, or as a multipart/form-data file")
    body = await read_body(request, limit)
    if not multipart:
        return [("body", body)]
    files = await form_files(request, body)
    if not files:
        raise BadInput(400, "the multipart form has no file part (expected a file field, e.g. file=@image.png)")
    return files


def explain_wanted(request: Request) -> bool:
    value = request.query_params.get("explain", "").strip().lower()
    if value not in EXPLAIN:
        raise BadInput(400, f"bad explain={value[:20]!r}: expected explain=1 (add the class-activation map) or 0")
    return EXPLAIN[value]


def explain_status(loaded: LoadedModel) -> dict[str, Any]:
    """Whether this model's requests can have ?explain=1 (else they get 422 and this "why"); /model says it,
    and the page shows its toggle by it."""
    try:
        maps = explain.check(loaded.model, loaded.arch, loaded.image_size)
    except explain.NoTargetLayer as e:
        return {"available": False, "why": str(e)}
    return {"available": True, "method": explain.METHOD, "layer": maps.layer, "grid": list(maps.grid)}


def replica_grpc_on_loopback() -> bool:
    """Ray Serve 2.60 starts every replica's inter-deployment gRPC server on [::]:0, all interfaces, with
    no setting to change it (ray-project/ray#64544). On a loopback-only local Ray, rewrite that address
    to 127.0.0.1 in this replica's process (its peers reach it at the node IP, 127.0.0.1). Called in the
    replica's __init__, which Serve runs before it starts that server. False if Serve's code changed."""
    original = getattr(serve_replica, "add_port_to_grpc_server", None)
    if original is None:
        return False

    def loopback(server: Any, address: str) -> int:
        return original(server, "127.0.0.1:" + address[5:] if address.startswith("[::]:") else address)

    serve_replica.add_port_to_grpc_server = loopback
    return True


# Every registered metric, name -> label, in the registry's order: the web page's metrics table has these columns.
METRIC_LABELS = {m.name: m.label for m in METRICS.values()}


# Ray Serve still shows the deployment as "Detector"; the class name keeps it apart from tune.models.detector.Detector.
@serve.deployment(name="Detector")
@serve.ingress(app)
class DetectorApp:
    """One replica: the model, its description, and the batched forward pass."""

    def __init__(self, model_path: str, max_batch: int, batch_wait_s: float, max_bytes: int, threads: int,
                 loopback: bool, max_video_s: float = MAX_VIDEO_S) -> None:
        if loopback and not replica_grpc_on_loopback():
            warnings.warn("could not keep the replica's gRPC server on 127.0.0.1 (Ray Serve changed)", stacklevel=1)

        self.threads = max(1, threads)
        torch.set_num_threads(self.threads)
        # Every forward pass runs on this one thread: torch's OpenMP keeps a team of worker threads per
        # calling thread, and asyncio's default pool would spread passes over several threads and teams
        # that then compete for the same cores.
        self.forward_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.loaded = inference.load(Path(model_path))
        self.description = model_card(self.loaded)
        self.explain = explain_status(self.loaded)
        self.max_bytes = max_bytes
        self.max_video_s = max_video_s
        self.limits = {"max_bytes": max_bytes, "max_pixels": MAX_PIXELS, "max_files": MAX_FILES,
                       "max_video_s": max_video_s, "video_frames": self.loaded.prep.video.frames}
        self.page = (resources.files("tune.serving") / "web" / "index.html").read_text(encoding="utf-8")
        self.score.set_max_batch_size(max_batch)
        self.batch_wait_s = batch_wait_s
        self.arriving = 0  # requests being read and decoded: what a batch may wait for (see verdict)
        self.idle = asyncio.Event()  # set while no forward pass runs (see verdict)
        self.idle.set()
        self.batches = self.scored = 0  # this replica's forward passes and the images they scored
        self.forward_s = 0.0  # and their wall time
        ident = self.loaded.identity()
        self.identity = {k: ident[k] for k in ("arch", "run", "trial", "seed", "sha256")}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def score(self, images: list[np.ndarray]) -> list[float]:
        self.idle.clear()
        t0 = time.perf_counter()
        try:
            # In a thread: the event loop keeps reading and decoding the next requests meanwhile.
            p = await asyncio.get_running_loop().run_in_executor(self.forward_thread, self.forward, np.stack(images))
        finally:
            self.idle.set()
        self.batches, self.scored = self.batches + 1, self.scored + len(images)
        self.forward_s += time.perf_counter() - t0
        return [float(v) for v in p]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """P(fake) of a batch, on the forward thread. One image runs on one torch thread: as fast as two
        for a single small image, and steady when the other core is busy with the next requests, where
        two threads wait on each other (the single-image forward varied 30-fold with two)."""
        torch.set_num_threads(1 if len(x) == 1 else self.threads)  # only forward passes run torch here
        return self.loaded.probabilities(x, len(x))

    def explained(self, x: np.ndarray, p: float) -> dict[str, Any]:
        """The Grad-CAM overlay of one image, on the forward thread (so it never runs beside a batch).
        One torch thread, as a lone image's forward: the other core keeps serving requests."""
        t0 = time.perf_counter()
        torch.set_num_threads(1)
        maps = explain.gradcam(self.loaded.model, self.loaded.arch, x[None])
        picture = explain.png(explain.overlay(x, maps.cam[0], explain.caption(p, self.loaded.label(p))))
        return {"overlay_png": base64.b64encode(picture).decode("ascii"), "method": explain.METHOD,
                "layer": maps.layer, "grid": list(maps.grid), "ms": (time.perf_counter() - t0) * 1000}

    async def decode(self, data: bytes) -> np.ndarray:
        """The model's input for one upload, or BadInput (400 not an image, 413 too many pixels)."""
        try:
            # Small files decode in well under a millisecond: in the event loop; big ones in a thread.
            return self.loaded.decode(data) if len(data) <= INLINE_DECODE else await asyncio.to_thread(
                self.loaded.decode, data)
        except ValueError as e:
            reason = str(e).splitlines()[0] if str(e) else "unreadable"
            reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", reason)  # PIL names the buffer
            raise BadInput(413 if "bomb" in reason else 400, f"not a usable image: {reason}") from None

    async def verdict(self, x: np.ndarray) -> dict[str, Any]:
        """p_fake/label/threshold of one decoded image, scored in a batch with whatever else is waiting."""
        # Images that arrive while the model is busy wait here, and all go into the next batch together
        # when it is free. Handing them to serve.batch at once would not do: it cuts a new batch every
        # `batch_wait_timeout_s` even while the previous one still runs, so under load it queued many
        # small batches behind the running one (0.27x the raw batched rate at concurrency 32).
        await self.idle.wait()
        # A batch waits to fill only for requests this replica is still reading or decoding: a lone
        # request, or a group that all arrived during the last forward pass, goes at once.
        self.score.set_batch_wait_timeout_s(self.batch_wait_s if self.arriving else 0.0)
        p = await self.score(x)
        return {"p_fake": p, "label": self.loaded.label(p), "threshold": self.loaded.threshold}

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        explain = explain_wanted(request)
        self.arriving += 1
        try:
            files = await images_in(request, self.max_bytes)
            if len(files) > 1:
                raise BadInput(400, f"{len(files)} files sent to /predict; send one, or use /predict/batch")
            x = await self.decode(files[0][1])
        finally:
            self.arriving -= 1
        if explain and not self.explain["available"]:
            raise BadInput(422, self.explain["why"])
        out = await self.verdict(x)  # p_fake as without explain: the same batched forward
        if explain:
            out["explain"] = await asyncio.get_running_loop().run_in_executor(self.forward_thread, self.explained, x,
                                                                              out["p_fake"])
        return JSONResponse({**out, "model": self.identity, "latency_ms": (time.perf_counter() - t0) * 1000})

    @app.post("/predict/video")
    async def predict_video(self, request: Request) -> JSONResponse:
        """One clip (a video/* or octet-stream body, or one multipart file): its verdict and each frame's score."""
        t0 = time.perf_counter()
        kind = media_type(request)
        if not (kind == "multipart/form-data" or kind.startswith("video/") or kind in VIDEO_TYPES):
            raise BadInput(415, f"unsupported content type {kind or '(none)'!r}: send the clip as the body with a "
                           "video/* content type, or as one multipart/form-data file")
        body = await read_body(request, self.max_bytes)
        files = await form_files(request, body) if kind == "multipart/form-data" else [("body.mp4", body)]
        if len(files) != 1:
            raise BadInput(400, f"{len(files)} files sent to /predict/video; send one clip")
        try:
            clip = await asyncio.to_thread(prepare_clip, self.loaded, files[0][1], files[0][0], self.max_video_s)
        except ClipRefused as e:
            raise BadInput(e.status, e.message) from None
        p = await asyncio.get_running_loop().run_in_executor(self.forward_thread, self.forward, clip.x)
        return JSONResponse({**clip_answer(self.loaded, clip, p), "model": self.identity,
                             "latency_ms": (time.perf_counter() - t0) * 1000})

    @app.post("/predict/batch")
    async def predict_batch(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        if explain_wanted(request):
            raise BadInput(400, "explain=1 is answered by /predict, one image per request")
        if media_type(request) != "multipart/form-data":
            raise BadInput(415, f"unsupported content type {media_type(request) or '(none)'!r}: /predict/batch "
                           "takes multipart/form-data with one file part per image")

        async def decoded(data: bytes) -> np.ndarray | BadInput:
            try:
                return await self.decode(data)
            except BadInput as e:  # one bad file is reported in its row; the others are scored
                return e

        self.arriving += 1
        try:
            files = await images_in(request, self.max_bytes)
            inputs = await asyncio.gather(*(decoded(d) for _, d in files))
        finally:
            self.arriving -= 1

        async def row(name: str, x: np.ndarray | BadInput) -> dict[str, Any]:
            if isinstance(x, BadInput):
                return {"file": name, "p_fake": None, "label": None, "error": x.message, "status": x.status}
            return {"file": name, **await self.verdict(x)}

        results = await asyncio.gather(*(row(n, x) for (n, _), x in zip(files, inputs, strict=True)))
        return JSONResponse({"results": results, "model": self.identity, "threshold": self.loaded.threshold,
                             "latency_ms": (time.perf_counter() - t0) * 1000})

    async def ready(self) -> bool:
        """For `serve`'s own handle, called once at start (not an HTTP route)."""
        return True

    async def drain(self, wait_s: float) -> dict[str, Any]:
        """Called by `serve` through its handle when stopping (not an HTTP route, so no client can): stop
        accepting and let requests in flight finish (tune/serving/shutdown.py)."""
        return await drain_direct_ingress(wait_s)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.identity,
                "replica": {"batches": self.batches, "images": self.scored, "forward_s": round(self.forward_s, 3)}}

    @app.get("/model")
    async def model(self) -> dict[str, Any]:
        return {**self.description, "limits": self.limits, "explain": self.explain, "metrics": METRIC_LABELS}

    @app.get("/")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers={"Content-Security-Policy": PAGE_CSP})


def build(model_path: Path, *, replicas: int, max_batch: int, batch_wait_ms: float, max_bytes: int,
          threads: int, cpus_per_replica: float, loopback: bool, max_video_s: float = MAX_VIDEO_S) -> Any:
    """The Serve application: `replicas` copies of the deployment, each with its own torch threads."""
    # Serve's default of 5 ongoing requests per replica would cap every batch at 5 and queue the rest in
    # the proxy, which backs off between retries: allow a few batches' worth.
    return DetectorApp.options(num_replicas=replicas, max_ongoing_requests=max(4 * max_batch, 16),
                            ray_actor_options={"num_cpus": cpus_per_replica}).bind(
        str(Path(model_path).absolute()), max_batch, batch_wait_ms / 1000.0, max_bytes, threads, loopback, max_video_s)
