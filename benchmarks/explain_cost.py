"""What an explanation costs: POST /predict?explain=1 against a plain POST /predict, side by side.

    python benchmarks/explain_cost.py [--model PATH] [--rounds 200] [--screenshot docs/serve_explain.png]

Starts the real server (its own loopback Ray) on the model, then sends, round by round from one
keep-alive connection, the same image once plain and once with explain=1 (which goes first alternates
by round), so both sides of each ratio share the machine's state of that moment. The images are the
built-in dataset's validation JPEGs. Reported: median and p90 latency of each, the median of the
per-round ratios, the response sizes, and, in this process on one torch thread as the replica uses for
a lone image, one image's forward against its Grad-CAM pass + overlay + PNG. Without --model it trains
the model the numbers in docs/explanations.md were measured on (efficientnet_lite0, 128 px, 2 epochs, built-in data).
--screenshot also saves the web page with an explained image (headless Chromium), for docs/explanations.md.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from procs import kill_marked  # noqa: E402
from serve_load import start_server  # noqa: E402

import tune.cli  # noqa: E402
from tune import inference  # noqa: E402
from tune.data.images import scan_split  # noqa: E402
from tune.models import explain  # noqa: E402


def small_winner(work: Path) -> Path:
    out = work / "model"
    assert tune.cli.main(["train", "--arch", "efficientnet_lite0", "--image-size", "128", "--epochs", "2",
                          "--out", str(out)]) == 0
    return out / "best.pth"


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[float, int]:
    """(seconds, response bytes) of one request; a non-200 answer stops the benchmark."""
    t0 = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit(f"{path}: HTTP {r.status}: {data[:300]!r}")
    return time.perf_counter() - t0, len(data)


def in_process(loaded: inference.LoadedModel, x, rounds: int) -> tuple[float, float]:
    """Median seconds of one image's forward, and of its Grad-CAM pass + overlay + PNG, one torch thread,
    alternating."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    plain, explained = [], []
    for i in range(rounds):
        image = x[i % len(x)]
        t0 = time.perf_counter()
        p = float(loaded.probabilities(image[None], 1)[0])
        t1 = time.perf_counter()
        cam = explain.gradcam(loaded.model, loaded.arch, image[None]).cam[0]
        explain.png(explain.overlay(image, cam, explain.caption(p, loaded.label(p))))
        t2 = time.perf_counter()
        plain.append(t1 - t0)
        explained.append(t2 - t1)
    return float(np.median(plain)), float(np.median(explained))


def screenshot(port: int, image: Path, path: Path) -> None:
    from browser import chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium(1100, 760) as driver:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "threshold" in d.find_element(By.ID, "model-line").text)
        driver.find_element(By.ID, "explain").click()
        driver.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.ID, "overlay").is_displayed() and d.execute_script(
            "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth > 0"))
        time.sleep(0.5)  # the P(fake) bar's 0.3 s transition
        driver.save_screenshot(str(path))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="a model file (default: train the small efficientnet_lite0)")
    ap.add_argument("--rounds", type=int, default=200, help="plain + explained pairs (default: %(default)s)")
    ap.add_argument("--port", type=int, default=8932)
    ap.add_argument("--screenshot", type=Path, help="also save the page with an explained image here")
    a = ap.parse_args()
    os.environ.setdefault("TUNE_OFFLINE", "1")
    tune.cli.fast_allocator()
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    model = a.model or small_winner(work)
    loaded = inference.load(model)
    valid = scan_split(tune.cli.builtin_data(), "valid")
    files = valid.paths[:32]
    bodies = [f.read_bytes() for f in files]
    x = np.stack([loaded.decode(f) for f in files])
    threads = os.cpu_count() or 1
    print(f"model {loaded.arch} at {loaded.image_size} px ({model}); {len(bodies)} JPEG bodies; layer "
          f"{explain.gradcam(loaded.model, loaded.arch, x[:1]).layer}; load average {os.getloadavg()[0]:.1f} on "
          f"{threads} CPUs", flush=True)
    proc, mark = start_server(model, a.port, threads, 10)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=120)
        for i in range(10):  # warm-up: the connection, both paths' first calls
            post(conn, "/predict", bodies[i % len(bodies)])
            post(conn, "/predict?explain=1", bodies[i % len(bodies)])
        plain, explained, sizes = [], [], {"plain": 0, "explained": 0}
        for i in range(a.rounds):
            body = bodies[i % len(bodies)]
            order = ("plain", "explained") if i % 2 == 0 else ("explained", "plain")
            for kind in order:
                seconds, n = post(conn, "/predict" + ("?explain=1" if kind == "explained" else ""), body)
                (plain if kind == "plain" else explained).append(seconds)
                sizes[kind] = n
        conn.close()
        if a.screenshot:
            fakes = [f for f, label in zip(valid.paths[:64], valid.labels[:64]) if label == 1]
            p = loaded.probabilities(np.stack([loaded.decode(f) for f in fakes]))
            screenshot(a.port, fakes[int(np.argmax(p))], a.screenshot)  # the fake it is surest of
    finally:
        proc.send_signal(2)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        kill_marked(mark)
    one, cam = in_process(loaded, x, 100)
    pm, em = np.median(plain) * 1000, np.median(explained) * 1000
    ratio = float(np.median(np.array(explained) / np.array(plain)))
    print("\n| request | median ms | p90 ms | response bytes |\n|---|---|---|---|")
    print(f"| POST /predict | {pm:.1f} | {np.percentile(plain, 90) * 1000:.1f} | {sizes['plain']} |")
    print(f"| POST /predict?explain=1 | {em:.1f} | {np.percentile(explained, 90) * 1000:.1f} | {sizes['explained']} |")
    print(f"\n{a.rounds} rounds: explained / plain = {em / pm:.2f}x (medians), {ratio:.2f}x (median of per-round "
          "ratios)")
    print(f"in process, one torch thread, {len(x)} images x 100: forward {one * 1000:.1f} ms, Grad-CAM + overlay + PNG "
          f"{cam * 1000:.1f} ms ({cam / one:.2f}x the forward); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
