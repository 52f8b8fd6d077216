"""Sample-level captions from clip labels, and the synthetic generator's head motion / occluders."""
import numpy as np

from affaccel.data.synthetic import ensure_synthetic
from affaccel.emoclip.captions import ADJECTIVES, ClipFacts, clip_facts, make_caption, synthetic_extras
from affaccel.emoclip.facs import AU_PHRASES


def test_caption_names_each_active_au_and_only_those():
    facts = ClipFacts(aus=("AU1", "AU26"), valence=-0.6, arousal=0.7, expression="Surprise", head="fast")
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = make_caption(facts, rng).lower()
        for au in ("AU1", "AU26"):
            assert any(p.lower() in c for p in AU_PHRASES[au]), c
        for au in ("AU12", "AU15", "AU24"):
            assert not any(p.lower() in c for p in AU_PHRASES[au]), c


def test_a_share_never_names_the_class():
    facts = ClipFacts(aus=("AU6", "AU12"), expression="Happiness")
    rng = np.random.default_rng(1)
    caps = [make_caption(facts, rng, name_share=0.4) for _ in range(400)]
    named = np.mean([ADJECTIVES["Happiness"] in c for c in caps])
    assert 0.3 < named < 0.5
    assert not any("happy" in make_caption(facts, rng, name_share=0.0) for _ in range(100))


def test_facts_from_labels_and_synthetic_extras():
    root = ensure_synthetic("tiny", progress=False)
    ex = synthetic_extras(root)
    from affaccel.data.affwild2 import load_affwild2

    r = next(r for r in load_affwild2(root).videos if {"au", "va", "expr"} <= set(r.labels))
    assert set(ex) >= {r.video_id} and len(ex[r.video_id]["head_speed"]) == r.n_frames
    f = clip_facts(r.labels, r.label_mask, np.arange(r.n_frames), ex[r.video_id])
    on = (r.labels["au"][r.label_mask["au"]] == 1).mean(0)
    assert set(f.aus) == {a for a, s in zip(AU_PHRASES, on) if s >= 0.3}
    assert f.head in ("fast", "slow", None) and -1 <= f.valence <= 1
