"""Words for facial cues: FACS action units, valence/arousal qualifiers, head motion, occluders.

Shared by the caption generator (sample-level training text) and the built-in class
descriptions, so that both speak of the same cues. Each cue has several phrasings; captions
draw among them, so the text tower sees synonyms. The first phrasing of each AU is the one the
built-in class descriptions use; ``PARAPHRASE_ONLY`` lists words the captions never use.
"""
from __future__ import annotations

from affaccel.tasks import ACTION_UNITS

# AU -> phrasings (FACS names: AU1 inner brow raiser, AU2 outer brow raiser, AU4 brow lowerer,
# AU6 cheek raiser, AU7 lid tightener, AU10 upper lip raiser, AU12 lip corner puller, AU15 lip
# corner depressor, AU23 lip tightener, AU24 lip pressor, AU25 lips part, AU26 jaw drop)
AU_PHRASES: dict[str, tuple[str, ...]] = {
    "AU1": ("raised inner brows", "the inner brows lifted", "inner eyebrows pulled up"),
    "AU2": ("raised outer brows", "the outer brows lifted", "arched eyebrows"),
    "AU4": ("lowered brows", "brows drawn together", "a furrowed brow"),
    "AU6": ("raised cheeks", "cheeks pushed up", "crinkled eye corners"),
    "AU7": ("tightened eyelids", "narrowed eyes", "tense lower lids"),
    "AU10": ("a raised upper lip", "the upper lip pulled up", "a curled upper lip"),
    "AU12": ("lip corners pulled up", "a smile", "upturned mouth corners"),
    "AU15": ("lip corners pulled down", "a downturned mouth", "drooping mouth corners"),
    "AU23": ("tightened lips", "lips tensed", "thin hard lips"),
    "AU24": ("pressed lips", "lips pressed together", "a firmly shut mouth"),
    "AU25": ("parted lips", "lips apart", "a slightly open mouth"),
    "AU26": ("a dropped jaw", "the jaw hanging open", "a wide open mouth"),
}
assert tuple(AU_PHRASES) == ACTION_UNITS

NO_ACTION = ("a relaxed face", "no facial movement", "a face at rest")

# (threshold test, phrasings); valence v and arousal a are in [-1, 1]
VALENCE_WORDS = {"negative": ("an unpleasant feeling", "a negative mood", "displeasure"),
                 "positive": ("a pleasant feeling", "a positive mood", "pleasure"),
                 "neutral": ("a neutral mood", "neither pleasure nor displeasure", "an even mood")}
AROUSAL_WORDS = {"high": ("high arousal", "an agitated state", "strong excitement"),
                 "low": ("low arousal", "a calm state", "a subdued state"),
                 "mid": ("moderate arousal", "a steady state", "mild alertness")}
HEAD_WORDS = {"fast": ("the head shakes quickly", "rapid head movements", "a restless head"),
              "slow": ("the head stays still", "a steady head", "little head movement")}
OCCLUDER_WORDS = {"hand": ("a hand passes over the face", "a hand covers part of the face"),
                  "bar": ("an object passes in front of the face", "something briefly blocks the face")}


def valence_word(v: float) -> str:
    return "negative" if v < -0.25 else "positive" if v > 0.25 else "neutral"


def arousal_word(a: float) -> str:
    return "high" if a > 0.35 else "low" if a < -0.1 else "mid"


__all__ = ["AU_PHRASES", "NO_ACTION", "VALENCE_WORDS", "AROUSAL_WORDS", "HEAD_WORDS",
           "OCCLUDER_WORDS", "valence_word", "arousal_word"]
