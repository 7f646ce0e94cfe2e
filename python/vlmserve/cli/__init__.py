"""`vlmserve` command line. Each subcommand lives in its own module with a
register(subparsers) function."""
from __future__ import annotations

import argparse
import sys

from vlmserve.errors import VlmError

COMMANDS = ("generate", "lite", "eval", "serve", "chat", "info", "demo")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="vlmserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vlmserve.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VlmError as e:
        print(f"vlmserve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
