"""Label sets: built-ins, label files (YAML / JSON), description and compound averaging, errors."""
import json

import pytest
import torch
from torch.nn import functional as F

from affaccel.emoclip.descriptions import (
    BUILTIN_SETS,
    builtin_label_set,
    label_set_from_mapping,
    load_label_set,
    read_label_file,
)


def fake_encoder(dim=6):
    """Deterministic pseudo-random embedding per text (independent of the code under test)."""
    def enc(texts):
        return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(hash(t) % 2**31))
                            for t in texts]) * 3
    return enc


def test_description_and_compound_averaging():
    ls = label_set_from_mapping({"happy": ["a smile", "raised cheeks"], "surprise": "a dropped jaw",
                                 "happily_surprised": {"compound": ["happy", "surprise"]}})
    enc = fake_encoder()
    got = ls.class_embeddings(enc)
    n = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    e = {t: n(enc([t])[0]) for t in ("a smile", "raised cheeks", "a dropped jaw")}
    happy = n((e["a smile"] + e["raised cheeks"]) / 2)
    surprise = e["a dropped jaw"]
    torch.testing.assert_close(got[0], happy)
    torch.testing.assert_close(got[1], surprise)
    torch.testing.assert_close(got[2], n((happy + surprise) / 2))
    assert ls.compounds == [[], [], [0, 1]]


def test_yaml_and_json_files(tmp_path):
    y = tmp_path / "labels.yaml"
    y.write_text("calm: A relaxed face.\nupset:\n  - Lowered brows.\n  - Pressed lips.\n"
                 "mixed: {compound: [calm, upset]}\n", encoding="utf-8")
    ls = read_label_file(y)
    assert ls.names == ["calm", "upset", "mixed"] and ls.descriptions[1] == ["Lowered brows.", "Pressed lips."]
    j = tmp_path / "labels.json"
    j.write_text(json.dumps({"calm": "A relaxed face.", "upset": {"descriptions": ["Pressed lips."]}}))
    assert load_label_set(j).names == ["calm", "upset"]


@pytest.mark.parametrize("text,match", [
    ("calm: ''\n", r"labels.yaml: entry 'calm': description 1 is empty"),
    ("calm: ['ok', '  ']\n", r"entry 'calm': description 2 is empty"),
    ("calm: []\n", r"entry 'calm'"),
    ("calm: a\nmix: {compound: [calm, happy]}\n", r"entry 'mix': compound part 'happy' is not a label"),
    ("a: x\nb: y\nm: {compound: [a, b]}\nn: {compound: [m, a]}\n", r"entry 'n': compound part 'm' is itself"),
    ("calm: 3\n", r"entry 'calm'"),
    ("- a\n- b\n", r"expected a non-empty mapping"),
    ("calm: [unclosed\n", r"labels.yaml:\d+: not valid YAML"),
])
def test_bad_label_files_name_file_and_entry(tmp_path, text, match):
    p = tmp_path / "labels.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        read_label_file(p)


def test_wrong_encoding_names_file_and_line(tmp_path):
    p = tmp_path / "labels.yaml"
    p.write_bytes("calm: A relaxed face.\nsad: ".encode() + "眉头紧锁".encode("gbk") + b"\n")
    with pytest.raises(ValueError, match=r"labels.yaml:2: not UTF-8"):
        read_label_file(p)


@pytest.mark.parametrize("name", BUILTIN_SETS)
def test_builtin_sets_are_complete(name):
    ls = builtin_label_set(name)
    assert len(ls) == {"affaccel": 8, "affaccel-paraphrase": 8, "mafw": 11}.get(name, 7)
    assert all(d and all(s.strip() for s in d) for d in ls.descriptions)


def test_paraphrases_differ_from_the_descriptions():
    a, b = builtin_label_set("affaccel"), builtin_label_set("affaccel-paraphrase")
    assert a.names == b.names
    assert not set(a.all_texts()) & set(b.all_texts())
    with pytest.raises(ValueError, match="unknown built-in"):
        load_label_set("nope")
