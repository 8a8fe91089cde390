"""The demo: a deterministic synthetic image-caption dataset that needs action understanding.

Each scene shows two actors (a noun drawn as a simple glyph, with a colour and a size) and one
action from a fixed vocabulary, drawn as a bold pictogram that shows who does what to whom.
Images come in groups of four twins sharing the same two actors: the base scene (A acts on B),
its role swap (B acts on A), an action swap (A does another action to B) and the action swap's
role swap. Twins share their caption plan (templates, synonyms, mentioned attributes), so role
swaps' captions are word permutations of each other and action swaps' differ only in the verb
phrase: a bag-of-words model cannot tell the twins apart. Passive captions ("a cat is chased by a
dog") are optional: they name the patient first, which a small LLM turns into swapped roles.
An optional colour cast (per-channel gains, e.g. warm indoor light) sets a data set's photos apart from the
backbone's corpus, which is drawn without one: the domain gap between CLIP's web images and a target data set
that prompt tuning closes in the paper. Everything is a pure function of the seed.

Modules: scenes (vocabulary, scenes, twin groups, splits, captions), glyphs (the actors' drawings),
drawing (actions as pictograms, the finished image), generate (generate_demo).
"""
from tasks.ingest.demo.generate import generate_demo
from tasks.ingest.demo.scenes import (
    ACTIONS,
    CAPTIONS_PER_IMAGE,
    GROUP_SIZE,
    NO_CAST,
    NOUNS,
    SPLITS,
    true_state,
    twin_group_index,
)

__all__ = [
    "ACTIONS",
    "CAPTIONS_PER_IMAGE",
    "GROUP_SIZE",
    "NOUNS",
    "NO_CAST",
    "SPLITS",
    "generate_demo",
    "true_state",
    "twin_group_index",
]
