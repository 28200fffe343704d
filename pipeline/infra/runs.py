"""One training run's identity as one type: the nine values that name a run in the grid's
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
    imbalance_ratio: float  # rho = N_max / N_min of the training split; 1: as the dataset is
    model: str
    augmentation: str
    temperature: float  # tau of supcon
    batch_size: int  # b, samples per SGD step
    iterations: int  # T, SGD steps; the learning-rate schedule spans exactly these
    noise_fraction: float
    seed: int

    def __post_init__(self) -> None:
        # From a job's text ("0.2", "1") or a YAML int (noise 0): always the typed values.
        for name, kind in COLUMN_TYPES.items():
            object.__setattr__(self, name, kind(getattr(self, name)))

    @classmethod
    def of(cls, values: Mapping[str, object]) -> Run:
        """From a grid job (wildcard -> text), CLI wildcards or a runs-table row."""
        return cls(**{name: values[name] for name in COLUMNS})

    @classmethod
    def of_train_config(cls, cfg: Mapping) -> Run:
        """The run a training config belongs to (``train.TrainConfig.to_dict``, stored in
        every checkpoint, training log and embeddings file); a balanced run's config leaves
        its ratio out."""
        return cls(cfg["dataset"], cfg.get("imbalance_ratio", 1.0), cfg["model"]["model"],
                   cfg["augmentation"], cfg["temperature"], cfg["batch_size"],
                   cfg["iterations"], cfg["noise_fraction"], cfg["seed"])

    @property
    def name(self) -> str:
        """How logs and error messages name the run."""
        return (f"{self.dataset}/rho{self.imbalance_ratio:g}/{self.model}/{self.augmentation}/"
                f"tau{self.temperature:g}-b{self.batch_size}-T{self.iterations}/"
                f"noise{self.noise_fraction}-seed{self.seed}")

    def columns(self) -> dict[str, object]:
        """The runs table's identity columns, in order."""
        return dict(zip(COLUMNS, astuple(self), strict=True))


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Run))
# the annotations are text here (postponed evaluation): each named type, by its name
COLUMN_TYPES: dict[str, type] = {f.name: {"str": str, "float": float, "int": int}[f.type]
                                 for f in fields(Run)}

# The axes the paper's protocol holds fixed and an extension sweeps (pipeline/infra/grid.py):
# one value of each is a run's "setting". Results that compare models (growth fits, claims,
# figures) compare them within one setting.
SETTING: tuple[str, ...] = ("imbalance_ratio", "temperature", "batch_size", "iterations")
STRING_COLUMNS: tuple[str, ...] = tuple(n for n in COLUMNS if COLUMN_TYPES[n] is str)


# How a setting name spells each axis's value: the one spelling of paths' settings, claims'
# setting columns and sweep figures' stems.
SETTING_SPELLING = {"imbalance_ratio": lambda v: f"rho{float(v):g}",
                    "temperature": lambda v: f"tau{float(v):g}",
                    "batch_size": lambda v: f"b{int(v)}",
                    "iterations": lambda v: f"T{int(v)}"}


def setting_name(values: Mapping[str, object], left_out: tuple[str, ...] = ()) -> str:
    """A setting as one key, e.g. "rho1-tau0.1-b256-T3000": of a Run's columns or a table row;
    the ``left_out`` axes (a sweep's) not named, e.g. "rho1-b256-T3000" for a sweep of tau."""
    return "-".join(SETTING_SPELLING[axis](values[axis]) for axis in SETTING
                    if axis not in left_out)


def with_setting(frame):
    """A pandas ``frame`` of runs (or of grid points) with a ``setting`` column: each row's
    :func:`setting_name`, the key every per-setting table, figure and fit groups by."""
    return frame.assign(setting=[setting_name(r) for r in frame[list(SETTING)].to_dict("records")])
