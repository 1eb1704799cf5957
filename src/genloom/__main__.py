"""``python -m genloom …`` is ``genloom …`` (for torchrun and environments without the console script)."""
import sys

from genloom.cli import main

sys.exit(main())
