"""``python -m genloom …`` — the same as the ``genloom`` command (what ``torchrun -m genloom train …`` runs)."""
import sys

from genloom.cli import main

if __name__ == "__main__":
    sys.exit(main())
