"""What every figure of the pipeline is drawn and saved with (the figures stage and the
free-features figures): matplotlib's own defaults, an Agg canvas, and PNG/PDF bytes with no
version or time stamp, carrying the provenance record in their metadata."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.infra import provenance

FORMATS = ("png", "pdf")
# Keys matplotlib writes by default that hold a version or a time: dropped for equal bytes.
SAVE_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (PDF output switches to the PDF canvas when saving)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style() -> dict:
    """matplotlib's defaults (not the user's matplotlibrc), less the backend setting."""
    return {k: v for k, v in mpl.rcParamsDefault.items() if k != "backend"}


def save_figure(
    fig: Figure, directory: Path, stem: str, dpi: int, record: dict | None = None
) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf with no version or time stamp in the bytes, and
    the provenance ``record`` (pipeline.infra.provenance) in their metadata."""
    paths = []
    with mpl.rc_context(style()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=provenance.PDF_CUSTOM_KEY_WARNING)
        for fmt in FORMATS:
            path = Path(directory) / f"{stem}.{fmt}"
            metadata = SAVE_METADATA[fmt] | provenance.savefig_metadata(record)
            fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata)
            paths.append(path)
            # One layout for both formats: the constrained layout the first save computed
            # (on the Agg canvas) is kept for the next, so the PDF shows the PNG's layout and
            # the solve (a draw of its own, a third of a figure's time) runs once, not twice.
            # No engine at all, not "none": savefig draws once more, with rendering off,
            # before saving whenever a figure has an engine, a placeholder one included.
            fig.set_layout_engine(None)  # under style(): neither autolayout nor constrained
    fig.clear()  # OO figures are not registered with pyplot; clearing frees the artists
    return paths
