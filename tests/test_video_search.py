"""End to end on a folder of face videos: a search through Ray selects by val_video_auc, finalize retrains and
tests with video-level AUC in the comparison and the report, and predict and evaluate take an mp4, cropping faces
exactly as training did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tiny_search

from tune import inference
from tune.cli import main
from tune.data.builtin_video import generate_face_videos
from tune.data.images import load_split
from tune.runs.leaderboard import load_leaderboard
from tune.serving.predict import predict, render_csv

pytestmark = pytest.mark.slow

VIDEO_SPACE = """
metric: val_video_auc
mode: max
seed: 0
image_size: 48
video: {frames: 4}
faces: {detector: mtcnn, margin: 1.3, size: 64}
budget: {trials: 2, max_epochs: 2, grace_period: 1, reduction_factor: 2, patience: 3}
resources: {cpus_per_trial: 1}
fixed: {batch_size: 16}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
    conv_blocks: 1
    base_width: 8
    video_agg: {type: categorical, choices: [mean, max, topk]}
"""


def test_a_video_search_finalizes_with_video_auc_and_predicts_an_mp4(ray_session, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = generate_face_videos(tmp_path / "data", n_per_class=12, frames=8, size=96)  # 8/2/2 clips per class
    run = run_tiny_search(tmp_path, name="video", space=VIDEO_SPACE, data=data)
    board = load_leaderboard(run)
    assert len(board) == 2 and board["score"].notna().all() and "video_agg" in board
    assert ((board["score"] >= 0) & (board["score"] <= 1)).all()
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["space"]["prep"] == {"video": {"frames": 4},
                                         "faces": {"detector": "mtcnn", "margin": 1.3, "size": 64}}
    assert recorded["data"]["n_train"] == 16 * 4  # 16 training clips, 4 face crops each

    assert main(["finalize", str(run), "--seeds", "1"]) == 0
    cmp = json.loads((run / "comparison.json").read_text())
    video = cmp["video"]
    assert video["n_videos"] == 4 and video["n_frames"] == 16 and cmp["n_test"] == 16
    auc = video["rows"][0]["at_0.5"]["auc"]
    assert 0 <= auc["value"] <= 1 and video["rows"][0]["aggregation"] in ("mean", "max", "top 3 mean")
    assert "### Per video (4 test videos, 16 frames)" in (run / "comparison.md").read_text()
    assert "Per video (4 test videos)" in (run / "report.html").read_text()
    assert ",video,at_0.5,auc," in (run / "comparison.csv").read_text()

    # The shipped model crops as training did: its record carries the settings, and predict's rows of a test clip
    # are the finalize test split's rows of that clip, bit for bit (so are the scores)
    loaded = inference.load(run / "models" / "custom_cnn.pth")
    assert loaded.record.preprocess == recorded["space"]["prep"]
    test = load_split(data, "test", 48, prep=loaded.prep, cache_dir=tmp_path / "cache" / "decoded")
    clip = data / "test" / "Fake" / "clip0020.mp4"
    x, crops = loaded.inputs(clip)
    rows = [i for i, v in enumerate(test.videos or []) if v == "Fake/clip0020.mp4"]
    assert len(rows) == len(crops) == 4 and np.array_equal(x, np.asarray(test.x[rows]))
    (row,) = predict(loaded, [clip])
    frame_p = loaded.probabilities(np.asarray(test.x[rows]))
    assert [p for _, _, p in row.frames] == pytest.approx(frame_p.tolist(), abs=1e-7)
    assert row.p_fake == pytest.approx(loaded.video_score(frame_p)) and row.label in ("Fake", "Real")
    assert [t for _, t, _ in row.frames] == sorted(t for _, t, _ in row.frames) and all(row.boxes)
    assert render_csv([row]).count("#frame=") == 4

    # evaluate takes the folder of clips: one row per video, and the same tables per frame
    assert main(["evaluate", "--run", str(run), str(data / "test"), "--out", str(tmp_path / "eval")]) == 0
    ev = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert [(s["n_fake"], s["n_real"]) for s in ev["sources"]] == [(2, 2)]
    assert [(s["n_fake"], s["n_real"]) for s in ev["frames"]["sources"]] == [(8, 8)]
    by_video = next(r for r in ev["rows"] if r["source"] == "test")["at_0.5"]["auc"]["value"]
    assert by_video == pytest.approx(auc["value"])  # evaluate's video AUC is finalize's (one seed)
    assert "Per frame" in (tmp_path / "eval" / "evaluation.md").read_text()

    capsys.readouterr()
    assert main(["predict", "--model", str(run / "models" / "custom_cnn.pth"), str(clip)]) == 0
    out = capsys.readouterr().out
    assert "clip0020.mp4" in out and "frames: " in out and "1 image(s) scored" in out
    # Grad-CAM on each face crop the model scored
    assert main(["predict", "--model", str(run / "models" / "custom_cnn.pth"), str(clip), "--explain",
                 str(tmp_path / "cam")]) == 0
    assert len(list((tmp_path / "cam").glob("clip0020-f*.cam.png"))) == len(crops)

    # finalize, the one reader of the test split, refuses a clip of train found in test, in one line
    shutil.copy(data / "train" / "Real" / "clip0008.mp4", data / "test" / "Real" / "copied.mp4")
    capsys.readouterr()
    assert main(["finalize", str(run), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: video leak: ") and "copied.mp4 (test)" in err
