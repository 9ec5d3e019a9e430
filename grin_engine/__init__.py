"""GRIN engine: find the weights that hold a forget set, unlearn them, and measure the cost. No module imports gradio.

The public API, in the order a run uses it (docs/ARCHITECTURE.md has every module):

    import grin_engine as ge
    base = ge.load_model(ge.ModelSpec("default"))                    # models.py
    forget, retain = ge.load_items("harry_potter"), ge.load_items("general_knowledge")   # data.py
    result = ge.run(base, forget, retain, ge.GrinConfig(p=0.01))      # runs/pipeline.py: a RunResult
    comparison = ge.compare(base, forget, retain, ge.GrinConfig(), ["grin", "random", "full"])   # runs/compare.py
    swept = ge.sweep(base, forget, retain, ge.GrinConfig(), ge.SweepGrid(methods=["grin"], p=[0.005, 0.01]))

Long calls take `progress=ge.Progress(callback, should_stop)` (events.py); a Stop ends them with what was finished.
The configs: ModelSpec (which model, where), DataSpec (which sets), GrinConfig (everything a run does).
"""

from .config import DataSpec, GrinConfig, ModelSpec
from .data import QAItem, load_items
from .errors import GrinError
from .events import Progress, Stopped
from .models import load_model
from .runs.compare import compare
from .runs.methods import METHODS
from .runs.pipeline import RunResult, run
from .runs.sweep import SweepGrid, sweep

__all__ = ["DataSpec", "GrinConfig", "GrinError", "METHODS", "ModelSpec", "Progress", "QAItem", "RunResult",
           "Stopped", "SweepGrid", "compare", "load_items", "load_model", "run", "sweep"]
