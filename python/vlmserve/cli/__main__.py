import sys

from vlmserve.cli import main

# Guarded: worker processes started with "spawn" (image preprocessing) import the main module again.
if __name__ == "__main__":
    sys.exit(main())
