"""Videos as data: frames sampled evenly, faces cropped one way for training and inference, bad videos listed,
leaks between splits refused, video-level scores."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tune.core import UserError
from tune.data.builtin_video import generate_face_videos, write_mp4
from tune.data.faces import FaceSettings, crop_face
from tune.data.frames import Preprocess, model_inputs
from tune.data.images import DataError, check_video_leaks, load_split
from tune.data.video import frame_indices, read_frames
from tune.metrics.classification import metric_description, search_metrics
from tune.metrics.video import aggregate, by_video, video_row
from tune.search.space import parse_space

PREP = Preprocess.parse({"frames": 4}, {"detector": "mtcnn", "margin": 1.3, "size": 96})


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 clips per class (2 train, 1 valid, 1 test), 8 frames of 96 px."""
    return generate_face_videos(tmp_path_factory.mktemp("clips") / "data", n_per_class=4, frames=8, size=96)


def copy_of(src: Path, tmp: Path) -> Path:
    dst = tmp / "data"
    shutil.copytree(src, dst)
    return dst


def test_k_frames_spaced_evenly_are_the_frames_decoded(tmp_path: Path) -> None:
    levels = [20 + 10 * i for i in range(20)]  # frame i is a flat grey of its own level
    write_mp4(tmp_path / "ramp.mp4", [np.full((48, 64, 3), v, np.uint8) for v in levels], fps=10)
    fr = read_frames(tmp_path / "ramp.mp4", 4)
    assert fr.indices == [2, 7, 12, 17] == frame_indices(20, 4)
    assert fr.n_frames == 20 and fr.fps == 10 and fr.times_s == [0.2, 0.7, 1.2, 1.7]
    for i, img in zip(fr.indices, fr.images, strict=True):
        assert img.shape == (48, 64, 3) and abs(float(img.mean()) - levels[i]) < 3, (i, img.mean())
    assert read_frames(tmp_path / "ramp.mp4", 50).indices == list(range(20))  # fewer frames than asked: all
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(ValueError, match="cannot be opened|no decodable"):
        read_frames(tmp_path / "bad.mp4", 4)


def test_training_crops_and_inference_crops_are_bit_identical(clips: Path, tmp_path: Path) -> None:
    """The decoded cache's rows of each valid video (cropped once, stored, decoded, resized) are exactly what
    inference makes of the video file (tune.inference.LoadedModel.inputs goes through model_inputs)."""
    valid = load_split(clips, "valid", 64, prep=PREP, cache_dir=tmp_path / "cache" / "decoded")
    assert valid.videos is not None and set(valid.videos) == {"Fake/clip0004.mp4", "Real/clip0005.mp4"}
    for key in set(valid.videos):
        rows = np.asarray([valid.x[i] for i, v in enumerate(valid.videos) if v == key])
        x, crops = model_inputs(clips / "valid" / key, PREP, 64)
        assert len(crops) == len(rows) == 4 and all(c.box is not None for c in crops)
        assert np.array_equal(x, rows), key  # bit for bit
    again = load_split(clips, "valid", 64, prep=PREP, cache_dir=tmp_path / "cache" / "decoded")  # from the cache
    assert again.fingerprint == valid.fingerprint and np.array_equal(np.asarray(again.x), np.asarray(valid.x))
    other = load_split(clips, "valid", 64, prep=Preprocess.parse({"frames": 4}, {"margin": 2.0, "size": 96}),
                       cache_dir=tmp_path / "cache" / "decoded")
    assert other.fingerprint != valid.fingerprint  # other crop settings: other inputs, never mixed up


def test_a_face_is_cropped_square_with_its_margin_and_resized() -> None:
    import skimage.data

    photo = skimage.data.astronaut()
    c = crop_face(photo, FaceSettings(margin=1.5, size=80))
    assert c is not None and c.crop.shape == (80, 80, 3)
    x, y, w, h = c.box
    assert 150 < x < 210 and 30 < y < 90 and 70 < w < 110  # the astronaut's face (MTCNN: 179, 60, 89, 113)
    assert c.square[2] == c.square[3] == round(max(w, h) * 1.5)
    assert crop_face(np.full((120, 120, 3), 128, np.uint8), FaceSettings()) is None  # no face: None
    haar = crop_face(photo, FaceSettings(detector="haar", margin=1.5, size=80))  # the other offline detector
    assert haar is not None and abs(haar.box[0] + haar.box[2] / 2 - (x + w / 2)) < 20  # the same face


def test_bad_and_faceless_videos_are_listed_then_skipped(clips: Path, tmp_path: Path) -> None:
    data = copy_of(clips, tmp_path)
    (data / "train" / "Fake" / "broken.mp4").write_bytes(b"\x00" * 2048)
    write_mp4(data / "train" / "Real" / "wall.mp4", [np.full((64, 64, 3), 90, np.uint8)] * 6, fps=5)
    with pytest.raises(DataError) as e:
        load_split(data, "train", 64, prep=PREP)
    msg = str(e.value)
    assert "\n" not in msg and "2 bad video(s)" in msg and "broken.mp4" in msg and "wall.mp4" in msg
    assert "no face found" in msg and "--skip-bad-images" in msg
    s = load_split(data, "train", 64, prep=PREP, skip_bad=True)
    assert sorted(Path(p).name for p in s.skipped) == ["broken.mp4", "wall.mp4"]
    assert len(set(s.videos or [])) == 4 and len(s) == 16


def test_a_video_in_two_splits_is_refused_in_one_line(clips: Path, tmp_path: Path) -> None:
    data = copy_of(clips, tmp_path)
    check_video_leaks(data)  # as generated: no leak
    shutil.copy(data / "valid" / "Fake" / "clip0004.mp4", data / "train" / "Fake" / "renamed.mp4")
    with pytest.raises(UserError, match=r"video leak: .*renamed.mp4 \(train\) and .*clip0004.mp4 \(valid\) are the "
                                       "same bytes") as e:
        check_video_leaks(data)
    assert "\n" not in str(e.value)
    (data / "train" / "Fake" / "renamed.mp4").unlink()
    write_mp4(data / "test" / "Real" / "clip0004.mp4", [np.full((32, 32, 3), 50, np.uint8)] * 3, fps=5)
    with pytest.raises(UserError, match=r"clip0004.mp4 \(test\) and .*clip0004.mp4 \(valid\) are the same id"):
        check_video_leaks(data)


def test_video_scores_aggregate_frames_and_are_search_metrics() -> None:
    p = np.array([0.1, 0.2, 0.9, 0.6, 0.7, 0.8])
    assert aggregate(p[:3], "mean") == pytest.approx(0.4) and aggregate(p[:3], "max") == 0.9
    assert aggregate(p[:3], "topk", 2) == pytest.approx(0.55)
    y = np.array([0, 0, 0, 1, 1, 1])
    v = by_video(y, p, ["a", "a", "a", "b", "b", ""], "mean")  # "": a still image, not a video
    assert v.ids == ["a", "b"] and list(v.y) == [0, 1] and list(v.frames) == [3, 2]
    assert v.p == pytest.approx([0.4, 0.65])
    y = np.array([0, 0, 0, 0, 1, 1])
    row = video_row(y, p, ["a", "a", "b", "b", "c", "c"], "max")  # reals a: 0.2, b: 0.9; fake c: 0.8
    assert row["val_video_auc"] == 0.5 and row["val_video_accuracy"] == pytest.approx(2 / 3)
    assert video_row(y, p, ["a", "a", "b", "b", "c", "c"], "mean")["val_video_auc"] == 0.75  # b: 0.75, a tie
    assert video_row(y, p, None) == {}
    assert search_metrics()["val_video_auc"] == "max" and search_metrics()["val_video_eer"] == "min"
    assert "videos" in metric_description("val_video_auc")


def test_the_space_takes_video_and_faces(tmp_path: Path) -> None:
    doc = {"metric": "val_video_auc", "video": {"frames": 6}, "faces": {"detector": "haar", "margin": 1.2,
                                                                          "size": 128},
           "architectures": {"custom_cnn": {"video_agg": {"type": "categorical", "choices": ["mean", "max", "topk"]}}}}
    space = parse_space(doc, "s.yaml")
    assert space.prep.video.frames == 6 and space.prep.faces == FaceSettings("haar", 1.2, 128)
    assert space.metric == "val_video_auc" and space.mode == "max"
    for bad, where in (({"faces": {"detector": "dlib"}}, "detector must be one of mtcnn, haar"),
                       ({"video": {"frames": 0}}, "frames must be an integer"),
                       ({"faces": {"margin": 9}}, "margin must be")):
        with pytest.raises(UserError, match=where) as e:
            parse_space({**doc, **bad}, "s.yaml")
        assert str(e.value).startswith(f"s.yaml: key '{next(iter(bad))}'")


def test_search_refuses_a_leaked_video_in_one_line_before_any_trial(clips: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from tune.cli import main

    data = copy_of(clips, tmp_path)
    shutil.copy(data / "valid" / "Real" / "clip0005.mp4", data / "train" / "Real" / "again.mp4")
    (tmp_path / "s.yaml").write_text("metric: val_video_auc\nvideo: {frames: 2}\narchitectures: {custom_cnn: {}}\n")
    code = main(["search", "--data", str(data), "--space", str(tmp_path / "s.yaml"), "--name", "leak",
                 "--storage", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("error: video leak: ") and "again.mp4 (train)" in err and "same bytes" in err
