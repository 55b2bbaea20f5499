"""`serve` takes a video: /predict/video answers the clip's verdict and each frame's score (the same numbers as
`predict`), refuses clips over the duration and size limits, and the web page plots the score over time in a real
headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from browser import chromium, console_errors, network_requests
from PIL import Image
from test_serve import Server, end, launch

import tune.cli
from tune import inference
from tune.data.builtin_video import generate_face_videos, write_mp4
from tune.serving.predict import predict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def video_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A custom CNN trained for real on face clips (faces cropped by MTCNN), served with a 1.5 s clip limit."""
    root = tmp_path_factory.mktemp("serve_video")
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test cache fixture does not apply yet
        mp.setenv("TUNE_CACHE_DIR", str(root / "cache"))
        data = generate_face_videos(root / "data", n_per_class=6, frames=8, size=96)  # 8 frames at 8 fps: 1 s
        assert tune.cli.main(["train", "--data", str(data), "--arch", "custom_cnn", "--epochs", "1",
                              "--image-size", "32", "--conv-blocks", "1", "--base-width", "4", "--head-sizes", "8",
                              "--video-frames", "4", "--faces", "mtcnn", "--face-size", "64",
                              "--out", str(root / "model")]) == 0
    clips = sorted((data / "test").rglob("*.mp4"))
    srv = launch(root / "model" / "best.pth", clips, root / "cache", "--max-video-s", "1.5", "--max-bytes", "400000")
    try:
        yield srv
    finally:
        end(srv)


def test_predict_video_answers_the_clip_and_its_frames_like_predict(video_server: Server, tmp_path: Path) -> None:
    clip = video_server.images[0]
    loaded = inference.load(video_server.model)
    assert loaded.record.preprocess == {"video": {"frames": 4}, "faces": {"detector": "mtcnn", "margin": 1.3,
                                                                          "size": 64}}
    (want,) = predict(loaded, [clip])
    r = requests.post(video_server.url + "/predict/video", files={"file": (clip.name, clip.read_bytes())}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["p_fake"] == pytest.approx(want.p_fake, abs=1e-6) and out["label"] == want.label
    frames = [f for f, _, _ in want.frames]  # those of frames 1, 3, 5, 7 where MTCNN found the face
    assert [f["frame"] for f in out["frames"]] == frames and frames and set(frames) <= {1, 3, 5, 7}
    assert [f["p_fake"] for f in out["frames"]] == pytest.approx([p for _, _, p in want.frames], abs=1e-6)
    assert all(len(f["box"]) == 4 for f in out["frames"]) and out["duration_s"] == pytest.approx(1.0)
    face = Image.open(io.BytesIO(base64.b64decode(out["face_png"])))  # the first scored frame, its face box drawn
    assert face.size == (320, 320) and out["face_frame"] == frames[0]
    x, y, w, h = (round(v * 320 / 96) for v in out["frames"][0]["box"])  # the box's left edge is drawn yellow
    assert np.asarray(face.convert("RGB"))[y + h // 2, x].tolist() == [255, 214, 0]
    raw = requests.post(video_server.url + "/predict/video", data=clip.read_bytes(),
                        headers={"content-type": "video/mp4"}, timeout=60)
    assert raw.status_code == 200 and raw.json()["p_fake"] == pytest.approx(out["p_fake"], abs=1e-9)
    limits = requests.get(video_server.url + "/model", timeout=10).json()["limits"]
    assert limits["max_video_s"] == 1.5 and limits["video_frames"] == 4

    long = tmp_path / "long.mp4"  # 3 s at 8 fps: over the 1.5 s limit, refused before any frame is decoded
    write_mp4(long, [np.full((64, 64, 3), 100, np.uint8)] * 24, fps=8)
    r = requests.post(video_server.url + "/predict/video", files={"file": ("long.mp4", long.read_bytes())}, timeout=60)
    assert r.status_code == 413 and "3.0 s is over the limit of 1.5 s" in r.json()["error"]
    r = requests.post(video_server.url + "/predict/video", files={"file": ("x.mp4", b"\x00" * 5000)}, timeout=60)
    assert r.status_code == 400 and "not a usable video" in r.json()["error"]
    r = requests.post(video_server.url + "/predict/video", files={"file": ("big.mp4", b"\x00" * 500_000)}, timeout=60)
    assert r.status_code == 413 and "over the limit of 400000 bytes" in r.json()["error"]
    r = requests.post(video_server.url + "/predict/video", data=b"{}", headers={"content-type": "text/plain"},
                      timeout=60)
    assert r.status_code == 415
    assert requests.get(video_server.url + "/healthz", timeout=10).status_code == 200  # still up


def test_web_page_plots_a_clips_score_over_time(video_server: Server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = video_server.images[-1]
    loaded = inference.load(video_server.model)
    (want,) = predict(loaded, [clip])
    with chromium(1100, 1250) as driver:
        driver.get(video_server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "threshold" in d.find_element(By.ID, "model-line").text)
        driver.find_element(By.ID, "file").send_keys(str(clip))
        wait.until(lambda d: d.find_element(By.ID, "verdict").text in ("Fake", "Real"))
        verdict = driver.find_element(By.ID, "verdict")
        assert verdict.text == want.label
        assert abs(float(verdict.get_attribute("data-p-fake")) - want.p_fake) <= 1e-6
        assert driver.find_element(By.ID, "timeline-card").is_displayed()
        points = driver.find_elements(By.CSS_SELECTOR, "#score-plot circle.frame-point")
        assert len(points) == len(want.frames) > 1
        # drawn left to right in time, each at its frame's P(fake): higher P(fake) is higher on the plot
        xy = [(float(p.get_attribute("cx")), float(p.get_attribute("cy"))) for p in points]
        assert [x for x, _ in xy] == sorted(x for x, _ in xy)
        ps = [p for _, _, p in want.frames]
        assert np.argsort([-y for _, y in xy], kind="stable").tolist() == np.argsort(ps, kind="stable").tolist()
        assert driver.execute_script("const i = document.getElementById('face'); return i.complete && "
                                     "i.naturalWidth") == 320 and driver.find_element(By.ID, "face").is_displayed()
        box = driver.find_element(By.ID, "score-plot").rect
        assert box["width"] > 300 and box["height"] > 50
        assert f"{len(want.frames)} frames with a face of 8" in driver.find_element(By.ID, "timeline-note").text
        driver.save_screenshot(str(tmp_path / "serve_video.png"))
        if os.environ.get("TUNE_DOCS_SCREENSHOT_VIDEO"):  # how docs/serve_video.png is made (docs/video.md)
            shutil.copy(tmp_path / "serve_video.png", os.environ["TUNE_DOCS_SCREENSHOT_VIDEO"])
        assert console_errors(driver) == []
        assert all(u.startswith(video_server.url) or u.startswith(("blob:", "data:")) for u in
                   network_requests(driver))
