"""Rank helpers: which process this is, and what rank 0 decided.

Under ``accelerate launch`` / ``torchrun`` the N processes of one run share one output folder.
Rank 0 decides everything about it (refuse, create, clean, resume from which checkpoint) and
sends the decision, or its one-line error, to the others (:func:`decide_on_main`); no rank works
it out on its own or polls the file system. Code without an Accelerator at hand asks
:func:`is_main_process` (never the ``RANK`` environment variable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from emoset_peft.errors import EmoSetError

T = TypeVar("T")


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


def decide_on_main(accelerator, decide: Callable[[], T]) -> T:
    """Run ``decide()`` on rank 0 only; every rank returns its result (a collective).

    When it raises, rank 0 re-raises its exception and every other rank raises too (the same
    one-line EmoSetError for a user error, RuntimeError otherwise), so no rank waits for a
    decision that never comes. The result must pickle.
    """
    outcome, error = None, None
    if accelerator.is_main_process:
        try:
            outcome = ("ok", decide())
        except Exception as err:  # noqa: BLE001 (re-raised below, once the others know)
            error = err
            outcome = ("user" if isinstance(err, EmoSetError) else "failed", str(err))
    status, value = broadcast_from_main(accelerator, outcome)
    if error is not None:
        raise error
    if status == "user":
        raise EmoSetError(value)
    if status == "failed":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


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
