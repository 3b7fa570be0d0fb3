"""Which process am I, and what rank 0 decided: the toolkit's only rank checks.

Under ``accelerate launch`` / ``torchrun`` the N processes of one run share one output folder.
Rank 0 decides everything about it (create, clean, resume from which checkpoint) and sends the
decision to the others (:func:`broadcast_from_main`); no rank works it out on its own or polls
the file system.
"""

from __future__ import annotations

from typing import Any


def is_main_process() -> bool:
    """True on global rank 0, and in a plain one-process run.

    Valid after ``Accelerator.end_training`` too (which destroys the process group): accelerate's
    PartialState keeps the rank it was started with.
    """
    from accelerate import PartialState

    return PartialState().is_main_process


def broadcast_from_main(accelerator, value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank (a collective: every rank must call it).

    ``value`` must pickle; with one process it is returned as is.
    """
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def fresh_accelerator_state() -> None:
    """Forget the settings of this process's previous ``Accelerator`` (keeping its process group).

    Accelerate keeps one global state per process and refuses a second Accelerator with other
    settings (say bf16 after fp32). Runs in one process (tests, notebooks, research code, study
    cells) each get their own. Accelerate has no public call for this; its own test suite uses
    the same private ``_reset_state`` methods, so this is the one place that touches them
    (tests/test_engine_hygiene.py checks that a second Accelerator gets the new settings).
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
