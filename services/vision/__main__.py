"""Deployable entry of the vision encoder service.

    python services/vision MODEL [flags]      (the same as: vlmserve serve vision MODEL [flags])

The server itself lives in the package (vlmserve.services.vision_server) so that it is
importable and tested; this launcher is what a container or a process manager runs."""
import sys

from vlmserve.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "vision", *sys.argv[1:]]))
