"""`python -m webui`: serve the UI, or `generate` / `models` from the command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
