"""The EmoSet label vocabulary: emotion order, valence and the attribute keys.

The order is the one in EmoSet's official ``info.json`` (positive emotions first). A dataset's
own ``info.json`` wins when present; these constants are the fallback and the public API.
"""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = (
    "amusement",
    "awe",
    "contentment",
    "excitement",  # positive valence
    "anger",
    "disgust",
    "fear",
    "sadness",  # negative valence
)
POSITIVE_EMOTIONS = frozenset(EMOTIONS[:4])
VALENCES: tuple[str, ...] = ("positive", "negative")

# Keys of info.json besides "emotion", in the order the official file lists them.
ATTRIBUTES: tuple[str, ...] = (
    "brightness",
    "colorfulness",
    "scene",
    "object",
    "facial_expression",
    "human_action",
)


def valence_of(emotion: str) -> int:
    """0 for a positive emotion, 1 for a negative one (the 2-class task)."""
    return 0 if emotion in POSITIVE_EMOTIONS else 1
