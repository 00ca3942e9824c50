"""Kinetics-722 merge (docs/recipes/video.md#kinetics-722) on hand-made lists with leaks, duplicates and
class-name variants; the stage-2 head starts from the K-722 rows of its classes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]

# 11-character YouTube ids
A, B, C, D, E, F, G, H = (f"{c * 10}{i}" for i, c in enumerate("abcdefgh"))
V1, V2 = "val________", "val-2______"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def lists(tmp_path):
    """K-400 as a ``path label`` list with index labels, K-600 / K-700 as official csvs."""
    k400_classes = write(tmp_path / "k400_classes.txt", "Abseiling\nplaying_guitar\n")
    k400_train = write(tmp_path / "k400_train.txt",
                       f"train/abseiling/{A}_000010_000020.mp4 0\n"
                       f"train/guitar/{B}_000001_000011.mp4 1\n"
                       f"train/guitar/{V1}_000000_000010.mp4 1\n")          # a K-600 validation video: leak
    k400_val = write(tmp_path / "k400_val.txt", f"val/abseiling/{C}_000000_000010.mp4 abseiling\n")
    header = "label,youtube_id,time_start,time_end,split\n"
    k600_train = write(tmp_path / "k600_train.csv", header +
                       f"abseiling,{A},10,20,train\n"                        # duplicate of K-400's A
                       f'"Playing Guitar",{D},5,15,train\n'                 # name variant of K-400's class
                       f"dancing ballet,{C},30,40,train\n"                  # a K-400 validation video: leak
                       f"dancing ballet,{E},0,10,train\n")
    k600_val = write(tmp_path / "k600_val.csv", header + f"abseiling,{V1},0,10,validate\n")
    k700_train = write(tmp_path / "k700_train.csv", header +
                       f"abseiling,{B},40,50,train\n"                       # same video, other time range
                       f"Tasting_Beer,{F},0,10,train\n"
                       f"dancing ballet,{G},0,10,train\n"
                       f"dancing ballet,{V2},0,10,train\n")                 # a K-700 validation video: leak
    k700_val = write(tmp_path / "k700_val.csv", header + f"tasting beer,{V2},0,10,validate\n"
                     f"abseiling,{H},0,10,train\n")  # train rows of a val file are ignored
    return dict(k400_classes=k400_classes, k400_train=k400_train, k400_val=k400_val, k600_train=k600_train,
                k600_val=k600_val, k700_train=k700_train, k700_val=k700_val)


def merge(lists):
    from video.data import kinetics722 as k

    classes = {"k400": k.read_class_list(lists["k400_classes"])}
    train = {"k400": k.read_clips(lists["k400_train"], "k400", "train", classes["k400"]),
             "k600": k.read_clips(lists["k600_train"], "k600", "train"),
             "k700": k.read_clips(lists["k700_train"], "k700", "train")}
    val = {name: k.read_clips(lists[f"{name}_val"], name, "validate", classes.get(name))
           for name in ("k400", "k600", "k700")}
    return k.merge_kinetics722(train, val, classes)


def test_validation_videos_of_any_dataset_are_removed_from_training(lists):
    result = merge(lists)
    kept = {c.youtube_id for c in result.train}
    assert not kept & {C, V1, V2}
    assert sorted(c.youtube_id for c in result.removed_leaks) == sorted([V1, C, V2])
    # the val file's own train rows do not count as validation videos
    assert H not in {c.youtube_id for c in result.removed_leaks}


def test_duplicates_by_youtube_id_keep_the_first_listing(lists):
    result = merge(lists)
    ids = [c.youtube_id for c in result.train]
    assert len(ids) == len(set(ids)) == 6  # A B (K-400), D E (K-600), F G (K-700)
    assert sorted(ids) == sorted([A, B, D, E, F, G])
    dups = {(c.youtube_id, c.dataset) for c in result.removed_duplicates}
    assert dups == {(A, "k600"), (B, "k700")}  # same time range and another time range
    first_a = next(c for c in result.train if c.youtube_id == A)
    assert first_a.dataset == "k400" and first_a.path == f"train/abseiling/{A}_000010_000020.mp4"


def test_class_name_variants_merge_and_head_rows_map_each_target_class(lists):
    result = merge(lists)
    assert result.classes == ["abseiling", "dancing ballet", "playing guitar", "tasting beer"]
    assert result.head_rows["k400"] == [0, 2]           # the given class order: Abseiling, playing_guitar
    assert result.head_rows["k600"] == [0, 1, 2]        # sorted training labels
    assert result.head_rows["k700"] == [0, 1, 3]
    d = next(c for c in result.train if c.youtube_id == D)
    assert result.label_of(d) == 2  # '"Playing Guitar"' is K-400's playing_guitar


def test_head_initialised_from_the_k722_rows_of_its_classes():
    from video.data.kinetics722 import head_rows, init_head_from_k722

    k722 = nn.Linear(6, 4)
    rows = head_rows(["abseiling", "dancing ballet", "playing guitar", "tasting beer"],
                     ["Tasting_Beer", "abseiling"])
    assert rows == [3, 0]
    head = init_head_from_k722(k722, rows)
    x = torch.randn(5, 6)
    torch.testing.assert_close(head(x), k722(x)[:, [3, 0]])
    head2 = init_head_from_k722(k722.state_dict(), rows)
    torch.testing.assert_close(head2.weight, head.weight)
    with pytest.raises(ValueError, match=r"\['surfing'\] are not among the 4 K-722 classes"):
        head_rows(["abseiling", "dancing ballet", "playing guitar", "tasting beer"], ["surfing"])
    with pytest.raises(ValueError, match="outside the K-722 head of 4 classes"):
        init_head_from_k722(k722, [4])


@pytest.mark.parametrize("name, text, where", [
    ("bad.txt", f"ok/{A}_000000_000010.mp4 0\nno_label_here\n", "bad.txt:2: expected 'path label'"),
    ("bad.txt", "clip_without_id.mp4 0\n", "bad.txt:1: cannot read a YouTube id"),
    ("bad.txt", f"ok/{A}_000000_000010.mp4 7\n", "bad.txt:1: label 7 out of range for 2 k400 classes"),
    ("bad.csv", f"label,youtube_id,time_start,time_end,split\nx,{A},zero,10,train\n",
     "bad.csv:2: time_start / time_end must be numbers"),
    ("bad.csv", "label,youtube_id,time_start,time_end,split\nx,short,0,10,train\n",
     "bad.csv:2: youtube_id 'short' is not an 11-character YouTube id"),
    ("bad.csv", "label,youtube_id,time_start\nx,y,0\n", "bad.csv:1: missing column"),
])
def test_malformed_lines_fail_naming_the_file_and_line(tmp_path, name, text, where):
    from video.data.kinetics722 import read_clips

    path = write(tmp_path / name, text)
    with pytest.raises(ValueError, match=where.replace("(", r"\(").replace(")", r"\)")):
        read_clips(path, "k400", "train", ["abseiling", "playing guitar"])


def test_tool_writes_lists_class_map_and_row_mappings(lists, tmp_path):
    out = tmp_path / "k722"
    args = [sys.executable, str(REPO / "tools" / "make_kinetics722.py"), "--out", str(out),
            "--classes", f"k400={lists['k400_classes']}",
            "--train", f"k400={lists['k400_train']}", "--train", f"k600={lists['k600_train']}",
            "--train", f"k700={lists['k700_train']}",
            "--val", f"k400={lists['k400_val']}", "--val", f"k600={lists['k600_val']}",
            "--val", f"k700={lists['k700_val']}"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"train_clips": 6, "classes": 4, "removed_validation_leaks": 3, "removed_duplicates": 2}
    assert (out / "k722_classes.txt").read_text().splitlines()[2] == "playing guitar"
    lines = (out / "k722_train.txt").read_text().splitlines()
    assert lines[0] == f"train/abseiling/{A}_000010_000020.mp4 0" and f"{D}_000005_000015.mp4 2" in lines
    assert json.loads((out / "k722_to_k700.json").read_text()) == [0, 1, 3]
    assert (out / "removed.txt").read_text().count("leak ") == 3
    # a malformed list stops the tool with the file and line
    bad = write(tmp_path / "bad.txt", "oops\n")
    proc = subprocess.run(args[:4] + ["--train", f"k400={bad}"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode != 0 and f"{bad}:1: expected 'path label'" in proc.stderr
