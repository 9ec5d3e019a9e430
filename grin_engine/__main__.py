"""python -m grin_engine {run,score,compare,sweep,tofu,attack} ...: the command line (cli/, docs/CLI.md)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
