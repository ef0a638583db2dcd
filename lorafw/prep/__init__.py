"""Dataset preparation before training — what the guide does in three desktop programs:

    dedupe    exact and near-duplicate images moved aside (dupeGuru's picture mode)
    autotag   booru-tag captions from a WD v3 tagger (onnxruntime; the model folder as published)
    tags      frequencies, a trigger tag first, pruning (`*_hair`, `*_eyes`), replacing, renumbering

From Python each step is planned, shown, then applied; `plan_undo` reverts the last applied one:

    from lorafw import prep
    cs = prep.plan_add(["~/data/hsr_kafka"], "kafka")
    print("\\n".join(cs.lines()))
    cs.apply()
    prep.plan_undo(["~/data/hsr_kafka"]).apply()

No torch here: these commands start fast.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "plan_dedupe": "lorafw.prep.dedupe",
    "plan_autotag": "lorafw.prep.autotag",
    "Tagger": "lorafw.prep.autotag",
    "plan_add": "lorafw.prep.tags",
    "plan_remove": "lorafw.prep.tags",
    "plan_replace": "lorafw.prep.tags",
    "tag_frequencies": "lorafw.prep.tags",
    "plan_rename": "lorafw.prep.rename",
    "plan_undo": "lorafw.prep.journal",
    "ChangeSet": "lorafw.prep.journal",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:  # lazy: `lorafw --help` does not load PIL or onnxruntime
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
