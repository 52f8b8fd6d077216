"""Readers of MAFW / DFEW / FERV39k / AFEW on tiny fake trees in each set's layout as shipped."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affaccel.emoclip.datasets import DFEW_CLASSES, MAFW_CLASSES, clips_from_args, load_clip_dataset, read_text_lines

CAPTION_ZH = "她皱着眉头，嘴角向下。"     # encodable in GBK
CAPTION_EN = "She frowns and the corners of her mouth turn down."


def _frames(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):   # numbered so that a plain string sort would misorder 10 before 2
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(folder / f"{i * 5 + 1}.jpg")


def _mafw(root: Path, fold: int = 1, kind: str = "single", rows=None, encoding: str = "gbk") -> Path:
    lists = root / "Train & Test Set" / kind / "with_caption" / f"set_{fold}"
    lists.mkdir(parents=True, exist_ok=True)
    rows = rows or {"train": [("00001.mp4", "sadness"), ("00002.mp4", "anger")],
                    "test": [("00003.mp4", "contempt")]}
    for split, entries in rows.items():
        text = "".join(f"{clip}\t{lab}\t{CAPTION_ZH}\t{CAPTION_EN} ({clip})\r\n" for clip, lab in entries)
        (lists / f"{split}.txt").write_bytes(text.encode(encoding))
        for clip, _ in entries:
            _frames(root / "data" / "faces" / clip.split(".")[0])
    return lists


def test_mafw_gbk_captions_folds_and_classes(tmp_path):
    lists = _mafw(tmp_path)
    _mafw(tmp_path, fold=2, rows={"train": [("00004.mp4", "helplessness")], "test": [("00005.mp4", "fear")]})
    cs = load_clip_dataset("mafw", tmp_path, fold=1)
    assert cs.encodings[str(lists / "train.txt")] == "gb18030"
    assert [(it.video_id, it.expression) for it in cs.items["train"]] == [("mafw_00001", "sadness"),
                                                                          ("mafw_00002", "anger")]
    assert [it.expression for it in cs.items["val"]] == ["contempt"]
    assert cs.items["train"][0].caption == f"{CAPTION_EN} (00001.mp4)"      # the English column, decoded
    assert cs.labels.names[7] == "contempt" and len(cs.labels) == 11
    rec = cs.records[0]
    assert [p.name for p in rec.frame_paths] == ["1.jpg", "6.jpg", "11.jpg"]   # natural order
    assert cs.items["train"][0].end == rec.n_frames == 3
    cs2 = load_clip_dataset("mafw", tmp_path, fold=2)
    assert [it.expression for it in cs2.items["train"]] == ["helplessness"]
    assert [it.video_id for it in cs2.items["val"]] == ["mafw_00005"]
    with pytest.raises(ValueError, match="fold must be in 1..5"):
        load_clip_dataset("mafw", tmp_path, fold=6)
    with pytest.raises(ValueError, match="needs --fold"):
        load_clip_dataset("mafw", tmp_path)


def test_mafw_utf8_list_reads_too(tmp_path):
    lists = _mafw(tmp_path, encoding="utf-8")
    cs = load_clip_dataset("mafw", tmp_path, fold=1)
    assert cs.encodings[str(lists / "test.txt")] == "utf-8-sig"
    assert cs.items["val"][0].caption.startswith(CAPTION_EN)


def test_mafw_wrong_encoding_names_file_line_and_entry(tmp_path):
    lists = _mafw(tmp_path)
    good = (lists / "train.txt").read_bytes().split(b"\r\n")[0]
    # a Latin-1 caption: 0xe9 opens a two-byte GBK character that the tab after it cannot finish
    (lists / "train.txt").write_bytes(good + b"\r\n00002.mp4\tanger\tcaf\xe9\tA tired face.\r\n")
    with pytest.raises(ValueError) as e:
        load_clip_dataset("mafw", tmp_path, fold=1)
    msg = str(e.value)
    assert f"{lists / 'train.txt'}:2: entry '00002.mp4'" in msg and "neither UTF-8 nor GBK" in msg
    (lists / "train.txt").write_bytes("00001.mp4\tsadness\tx\n".encode("utf-16"))
    with pytest.raises(ValueError, match="UTF-16"):
        load_clip_dataset("mafw", tmp_path, fold=1)


def test_mafw_captions_from_another_file(tmp_path):
    _mafw(tmp_path)
    en = tmp_path / "captions_en.txt"
    en.write_bytes("00001.mp4\tA sad face, brows raised inside.\n00003\tA sneer.\n".encode("gbk"))
    cs = load_clip_dataset("mafw", tmp_path, fold=1, caption_file=en)
    assert [it.caption for it in cs.items["train"]] == ["A sad face, brows raised inside.",
                                                        f"{CAPTION_EN} (00002.mp4)"]
    assert cs.items["val"][0].caption == "A sneer."
    en.write_bytes(b"00001.mp4\tA sad face.\n00002.mp4\tcaf\xe9\n")
    with pytest.raises(ValueError, match=r"captions_en.txt:2: entry '00002.mp4': text is neither UTF-8 nor GBK"):
        load_clip_dataset("mafw", tmp_path, fold=1, caption_file=en)
    en.write_text("00001.mp4\n")
    with pytest.raises(ValueError, match=r"captions_en.txt:1: entry '00001.mp4': expected"):
        load_clip_dataset("mafw", tmp_path, fold=1, caption_file=en)


def test_mafw_bad_rows(tmp_path):
    lists = _mafw(tmp_path, rows={"train": [("00001.mp4", "sadness"), ("00002.mp4", "boredom")],
                                  "test": [("00003.mp4", "fear")]})
    with pytest.raises(ValueError, match=r"train.txt:2: entry '00002.mp4': unknown class 'boredom'"):
        load_clip_dataset("mafw", tmp_path, fold=1)
    _mafw(tmp_path, rows={"train": [("00001.mp4", "sadness"), ("00001.mp4", "sadness")],
                          "test": [("00003.mp4", "fear")]})
    with pytest.raises(ValueError, match="train.txt:2: entry '00001.mp4': clip listed twice"):
        load_clip_dataset("mafw", tmp_path, fold=1)
    _mafw(tmp_path, rows={"train": [("00001.mp4", "anger_sadness")], "test": [("00003.mp4", "fear")]})
    with pytest.raises(ValueError, match="2 labels"):
        load_clip_dataset("mafw", tmp_path, fold=1)
    (lists / "train.txt").write_text("00009.mp4\tfear\t-\tA scared face.\n")
    with pytest.raises(FileNotFoundError, match=r"train.txt:1: entry '00009.mp4': frame folder .*00009"):
        load_clip_dataset("mafw", tmp_path, fold=1)


def test_mafw_compound_and_no_caption(tmp_path):
    _mafw(tmp_path, kind="compound", rows={"train": [("00001.mp4", "anger_disgust"), ("00002.mp4", "fear_surprise")],
                                           "test": [("00003.mp4", "anger_disgust")]})
    cs = load_clip_dataset("mafw", tmp_path, fold=1, label_type="compound")
    assert [it.expression for it in cs.items["train"]] == ["anger_disgust", "fear_surprise"]
    names = cs.labels.names
    assert tuple(names[:11]) == MAFW_CLASSES and len(names) == 13
    k = names.index("anger_disgust")
    assert [names[i] for i in cs.labels.compounds[k]] == ["anger", "disgust"] and cs.labels.descriptions[k] == []
    _mafw(tmp_path, kind="compound", rows={"train": [("00001.mp4", "anger")], "test": [("00003.mp4", "fear")]})
    with pytest.raises(ValueError, match="one label"):
        load_clip_dataset("mafw", tmp_path, fold=1, label_type="compound")
    nc = tmp_path / "Train & Test Set" / "single" / "no_caption" / "set_1"
    nc.mkdir(parents=True)
    (nc / "train.txt").write_text("00001.mp4 sadness\n00002.mp4 anger\n")
    (nc / "test.txt").write_text("00003.mp4 fear\n")
    cs = load_clip_dataset("mafw", tmp_path, fold=1, captions=False)
    assert [it.expression for it in cs.items["train"]] == ["sadness", "anger"]
    assert not cs.has_captions


def _dfew(root: Path, votes: bool = True) -> None:
    for split, fold_rows in (("train", {1: [(1, 1), (2, 7)], 2: [(3, 4)]}), ("test", {1: [(3, 4)], 2: [(1, 1)]})):
        d = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
        d.mkdir(parents=True, exist_ok=True)
        for fold, rows in fold_rows.items():
            (d / f"set_{fold}.csv").write_text("video_name,label\n" + "".join(f"{v},{lab}\n" for v, lab in rows))
    for v in (1, 2, 3):
        _frames(root / "Clip" / "clip_224x224" / f"{v:05d}", n=2 + v)
    if votes:
        (root / "Annotation").mkdir(exist_ok=True)
        (root / "Annotation" / "annotation.csv").write_text(
            "order,1happy,2sad,3neutral,4angry,5surprise,6disgust,7fear,label\n"
            "1,9,0,1,0,0,0,0,1\n2,0,0,1,0,0,2,7,7\n3,0,0,0,10,0,0,0,4\n")


def test_dfew_folds_labels_and_votes(tmp_path):
    _dfew(tmp_path)
    cs = load_clip_dataset("dfew", tmp_path, fold=1)
    assert [(it.video_id, it.expression) for it in cs.items["train"]] == [("dfew_00001", "happiness"),
                                                                          ("dfew_00002", "fear")]
    assert [it.expression for it in cs.items["val"]] == ["anger"]
    assert cs.labels.names == list(DFEW_CLASSES) and cs.labels.source == "dfew"
    assert cs.votes["dfew_00002"].tolist() == [0, 0, 1, 0, 0, 2, 7]
    assert [r.n_frames for r in cs.records] == [3, 4, 5]
    cs2 = load_clip_dataset("dfew", tmp_path, fold=2)
    assert [it.video_id for it in cs2.items["train"]] == ["dfew_00003"]
    assert [it.video_id for it in cs2.items["val"]] == ["dfew_00001"]


def test_dfew_bad_input(tmp_path):
    _dfew(tmp_path)
    f = tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"
    f.write_text("video_name,label\n1,1\n2,0\n")
    with pytest.raises(ValueError, match=r"set_1.csv:3: entry '2': label 0 is not a single label 1..7"):
        load_clip_dataset("dfew", tmp_path, fold=1)
    f.write_text("video_name,label\n1,2\n")
    with pytest.raises(ValueError, match=r"set_1.csv:2: entry '1': label 2 \(sadness\) is not the most voted"):
        load_clip_dataset("dfew", tmp_path, fold=1)
    f.write_text("name,label\n1,2\n")
    with pytest.raises(ValueError, match="set_1.csv:1: expected columns video_name,label"):
        load_clip_dataset("dfew", tmp_path, fold=1)
    f.write_text("video_name,label\n9,2\n")
    with pytest.raises(FileNotFoundError, match=r"set_1.csv:2: entry '9': frame folder .*00009"):
        load_clip_dataset("dfew", tmp_path, fold=1)
    f.write_text("video_name,label\n1,1\n")
    (tmp_path / "Annotation" / "annotation.csv").write_text("order,1happy\n1,3\n")
    with pytest.raises(ValueError, match=r"annotation.csv:1: missing columns"):
        load_clip_dataset("dfew", tmp_path, fold=1)


def _ferv(root: Path, train_rows=("Action/Angry/0001 Angry", "Crime/Happy/0002 Happy")) -> None:
    d = root / "4_setups" / "All_scenes"
    d.mkdir(parents=True, exist_ok=True)
    (d / "train_All.csv").write_text("\n".join(train_rows) + "\n")
    (d / "test_All.csv").write_text("War/Sad/0003 Sad\n")
    for rel in ("Action/Angry/0001", "Crime/Happy/0002", "War/Sad/0003"):
        _frames(root / "2_ClipsforFaceCrop" / rel)


def test_ferv39k_lists_and_class_mapping(tmp_path):
    _ferv(tmp_path)
    cs = load_clip_dataset("ferv39k", tmp_path)
    assert [(it.video_id, it.expression) for it in cs.items["train"]] == [("ferv39k_Action_Angry_0001", "anger"),
                                                                          ("ferv39k_Crime_Happy_0002", "happiness")]
    assert [it.expression for it in cs.items["val"]] == ["sadness"]
    assert set(it.expression for its in cs.items.values() for it in its) <= set(cs.labels.names)
    with pytest.raises(ValueError, match="no folds"):
        load_clip_dataset("ferv39k", tmp_path, fold=1)
    _ferv(tmp_path, ("Action/Angry/0001 Angry", "Crime/Happy/0002 Sad"))
    with pytest.raises(ValueError, match=r"train_All.csv:2: entry 'Crime/Happy/0002': label 'Sad' disagrees"):
        load_clip_dataset("ferv39k", tmp_path)
    _ferv(tmp_path, ("Action/Angry/0001 Bored",))
    with pytest.raises(ValueError, match=r"train_All.csv:1: entry 'Action/Angry/0001': unknown class 'Bored'"):
        load_clip_dataset("ferv39k", tmp_path)


def test_afew_class_folders(tmp_path):
    for split, cls, clip in (("Train", "Angry", "000146"), ("Train", "Happy", "000201"), ("Val", "Sad", "011603")):
        _frames(tmp_path / split / cls / clip)
    cs = load_clip_dataset("afew", tmp_path)
    assert [(it.video_id, it.expression) for it in cs.items["train"]] == [("afew_train_Angry_000146", "anger"),
                                                                          ("afew_train_Happy_000201", "happiness")]
    assert [it.expression for it in cs.items["val"]] == ["sadness"]
    (tmp_path / "Val" / "Bored").mkdir()
    with pytest.raises(ValueError, match=r"Val/Bored: unknown AFEW class folder 'Bored'"):
        load_clip_dataset("afew", tmp_path)
    (tmp_path / "Val" / "Bored").rmdir()
    (tmp_path / "Val" / "Fear").mkdir()
    (tmp_path / "Val" / "Fear" / "012345.avi").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"Val/Fear: no clip folders.*012345.avi"):
        load_clip_dataset("afew", tmp_path)
    (tmp_path / "Val" / "Fear" / "012345").mkdir()
    with pytest.raises(ValueError, match=r"clip '012345': no frame images"):
        load_clip_dataset("afew", tmp_path)


def test_arguments_and_read_text_lines(tmp_path):
    import argparse

    from affaccel.emoclip.datasets import add_dataset_arguments

    p = argparse.ArgumentParser()
    p.add_argument("--data-root")
    add_dataset_arguments(p)
    assert clips_from_args(p.parse_args([])) is None
    with pytest.raises(ValueError, match="--fold needs --dataset"):
        clips_from_args(p.parse_args(["--fold", "1"]))
    with pytest.raises(ValueError, match="needs --data-root"):
        clips_from_args(p.parse_args(["--dataset", "afew"]))
    f = tmp_path / "x.txt"
    f.write_bytes(b"\xef\xbb\xbfa\tb\n\n c\n")
    lines, enc = read_text_lines(f)
    assert enc == "utf-8-sig" and [(n, t) for n, _, t in lines] == [(1, "a\tb"), (3, " c")]


@pytest.mark.slow
def test_commands_on_mafw_and_dfew_trees(tmp_path, capsys):
    """train --dataset mafw (sample-level, its GBK captions) -> zeroshot --dataset dfew (its own 7
    classes); class-level training on DFEW; sample-level training on DFEW (no captions) refused."""
    import json

    from affaccel.emoclip import train, zeroshot

    rows = {"train": [(f"{i:05d}.mp4", c) for i, c in enumerate(["sadness", "anger", "fear", "happiness"] * 2, 1)],
            "test": [("00020.mp4", "contempt"), ("00021.mp4", "anger")]}
    _mafw(tmp_path / "mafw", rows=rows)
    _dfew(tmp_path / "dfew")
    cache = str(tmp_path / "cache")
    common = ["--preset", "tiny", "--cache", cache, "--no-progress", "--batch-size", "4"]
    run = tmp_path / "run"
    assert train.main(["--out", str(run), "--dataset", "mafw", "--data-root", str(tmp_path / "mafw"), "--fold", "1",
                       *common]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_clips"] == 8 and metrics["val_clips"] == 2
    assert metrics["retrieval"]["n_clips"] == 2                     # MAFW's own test captions
    assert metrics["zero_shot"]["classes"][7] == "contempt" and len(metrics["zero_shot"]["classes"]) == 11
    assert zeroshot.main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "zs"), "--dataset", "dfew",
                          "--data-root", str(tmp_path / "dfew"), "--fold", "1", "--split", "all", "--cache", cache,
                          "--no-progress"]) == 0
    rep = json.loads((tmp_path / "zs" / "zeroshot.json").read_text())
    assert rep["classes"] == list(DFEW_CLASSES) and rep["n_clips"] == 3 and rep["labels"] == "dfew"
    run2 = tmp_path / "run2"
    assert train.main(["--out", str(run2), "--dataset", "dfew", "--data-root", str(tmp_path / "dfew"), "--fold", "1",
                       "--supervision", "class", *common]) == 0
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert "retrieval" not in metrics and metrics["zero_shot"]["classes"] == list(DFEW_CLASSES)
    capsys.readouterr()
    assert train.main(["--out", str(tmp_path / "run3"), "--dataset", "dfew", "--data-root", str(tmp_path / "dfew"),
                       "--fold", "1", "--supervision", "sample", *common]) == 2
    assert "set_1.csv: 2 of 2 training clips have no caption" in capsys.readouterr().err
