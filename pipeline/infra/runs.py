"""One training run's identity as one type: the five values that name a run in the grid's
jobs, the CLI, its training config, the runs table's identity columns and the figures.

Paths keep the grid's own spelling of each value (a job's text, e.g. noise ``0.2`` as the
params list wrote it), so they come from the job (``stage_table.fill(pattern, **job)``);
``Run`` is the typed identity those jobs stand for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields


@dataclass(frozen=True)
class Run:
    dataset: str
    model: str
    augmentation: str
    noise_fraction: float
    seed: int

    def __post_init__(self) -> None:
        # From a job's text ("0.2", "1") or a YAML int noise (0): always the typed values.
        object.__setattr__(self, "noise_fraction", float(self.noise_fraction))
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def of(cls, values: Mapping[str, object]) -> Run:
        """From a grid job (wildcard -> text), CLI wildcards or a runs-table row."""
        return cls(**{name: values[name] for name in COLUMNS})

    @property
    def name(self) -> str:
        """How logs and error messages name the run."""
        return (f"{self.dataset}/{self.model}/{self.augmentation}/"
                f"noise{self.noise_fraction}-seed{self.seed}")

    def columns(self) -> dict[str, object]:
        """The runs table's identity columns, in order."""
        return dict(zip(COLUMNS, astuple(self), strict=True))


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Run))
