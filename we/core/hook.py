"""The training hook of Weight Evolution: `WeightEvolution` steps a model every `interval`
epochs or iterations, with the paper's equations (Sec. 3, hparams we.core.hparams) or the
authors' public script (we.core.authors_step), and saves its state for an exact resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from we.core.checks import KINDS, VARIANTS, check_choice, check_index, check_keys
from we.core.hparams import PAPER_STEP_DEFAULTS, check_hparam, names
from we.core.layers import model_sources
from we.core.authors_step import AuthorsStep
from we.core.paper_step import evolve
from we.core.rate import selection_rate

SCHEDULE_KEYS: tuple[str, ...] = names("schedule")


def paper_step_hparams(given: Mapping[str, Any]) -> dict[str, Any]:
    """Validated paper hparams: defaults updated with `given` (each checked by its row of HPARAMS)."""
    check_keys(given, PAPER_STEP_DEFAULTS, "paper")
    merged = {**PAPER_STEP_DEFAULTS, **given}
    return {key: check_hparam(key, value) for key, value in merged.items()}


STATE_KINDS: dict[str, tuple[type, str]] = {"variant": (str, "a string"), "hparams": (Mapping, "a mapping"),
                                           "steps": (int, "an integer"), "evolved": (Mapping, "a mapping")}


def check_state(state: Any) -> None:
    """A WeightEvolution.state_dict(): every entry present and of its kind (ValueError naming it)."""
    where = "WeightEvolution.load_state_dict"
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: a state must be a mapping from state_dict(), got {type(state).__name__}")
    missing = [k for k in STATE_KINDS if k not in state] + (
        ["official"] if state.get("variant") == "official" and "official" not in state else [])
    if missing:
        raise ValueError(f"{where}: the state lacks {', '.join(map(repr, missing))} (has {sorted(map(str, state))})")
    for key, (kind, name) in STATE_KINDS.items():
        if isinstance(state[key], bool) or not isinstance(state[key], kind):
            raise ValueError(f"{where}: state[{key!r}] must be {name}, got "
                             f"{type(state[key]).__name__} {state[key]!r:.60}")
    if state["variant"] == "official" and not isinstance((state["official"] or {}).get("counters"), Mapping):
        raise ValueError(f"{where}: state['official'] must hold a 'counters' mapping, got {state['official']!r:.60}")


class WeightEvolution:
    """Applies weight evolution to `model` every `interval` epochs or iterations.

    variant "paper": the paper's equations (hparams: see we.core.hparams.HPARAMS).
    variant "official": the authors' public script (see we.core.authors_step.AUTHORS_STEP_DEFAULTS).
    A model with no layer to evolve (see we.core.layers) or a weight that cannot be written is a
    ValueError here, not a silent no-op later.
    """

    def __init__(self, model: nn.Module, variant: str = "paper", **hparams: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"WeightEvolution needs a torch.nn.Module, got {type(model).__name__} {model!r:.60}")
        self.model = model
        self._configure(check_choice("variant", variant, VARIANTS), hparams)
        self.steps = 0
        self.evolved = {kind: 0 for kind in KINDS}

    def _configure(self, variant: str, hparams: Mapping[str, Any]) -> None:
        self.variant = variant
        if variant == "paper":
            self.hparams = paper_step_hparams(hparams)
            self.authors_step = None
        else:
            schedule = {k: check_hparam(k, hparams.get(k, PAPER_STEP_DEFAULTS[k])) for k in SCHEDULE_KEYS}
            self.authors_step = AuthorsStep(
                self.model, **{k: v for k, v in hparams.items() if k not in SCHEDULE_KEYS})
            self.hparams = {**self.authors_step.hparams, **schedule}
        model_sources(self.model, conv=self.hparams["conv"], bn=self.hparams["bn"])  # nothing to evolve: ValueError

    def rate(self, epoch: int) -> float:
        """Global selection rate of the paper variant at a 0-based epoch (Eq. 2)."""
        return selection_rate(epoch, **{k: self.hparams[k] for k in names("rate")})

    def evolve_now(self, epoch: int, sync: bool = True) -> dict[str, int]:
        """One step regardless of the interval, at the rate of `epoch` (sync: see `evolve`)."""
        if self.authors_step is not None:
            counts = self.authors_step.step(epoch, sync=sync)
        else:
            step = {k: self.hparams[k] for k in names("step")}
            counts = evolve(self.model, self.rate(epoch), **step, sync=sync)
        self.steps += 1
        for kind, n in counts.items():
            self.evolved[kind] += n
        return counts

    def step(self, epoch: int, sync: bool = True) -> dict[str, int] | None:
        """Epoch hook, after epoch `epoch` (0-based); acts when (epoch + 1) % interval == 0."""
        epoch = check_index("epoch", epoch)
        if self.hparams["interval_unit"] != "epoch" or (epoch + 1) % self.hparams["interval"]:
            return None
        return self.evolve_now(epoch, sync)

    def step_iteration(self, iteration: int, epoch: int, sync: bool = True) -> dict[str, int] | None:
        """Iteration hook, after global iteration `iteration` (0-based) during `epoch`."""
        iteration, epoch = check_index("iteration", iteration), check_index("epoch", epoch)
        if self.hparams["interval_unit"] != "iter" or (iteration + 1) % self.hparams["interval"]:
            return None
        return self.evolve_now(epoch, sync)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: variant, hparams and counters."""
        hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()}
        state: dict[str, Any] = {"variant": self.variant, "hparams": hparams,
                                 "steps": self.steps, "evolved": {k: int(v) for k, v in self.evolved.items()}}
        if self.authors_step is not None:
            state["official"] = self.authors_step.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict(); its variant and hparams replace the current ones. A state that lacks
        an entry, or holds one of the wrong kind, is a ValueError naming it (nothing changed)."""
        check_state(state)
        self._configure(state["variant"], state["hparams"])
        self.steps = int(state["steps"])
        self.evolved = {kind: int(state["evolved"].get(kind, 0)) for kind in KINDS}
        if self.authors_step is not None:
            self.authors_step.load_state_dict(state["official"])
