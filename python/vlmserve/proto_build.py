"""Generates the Python modules of protos/vlm/v1/*.proto into python/vlmserve/_proto/.

Run by `make proto` (part of `make setup`) as a plain script, so it needs only
grpcio-tools, not an importable vlmserve:

    python python/vlmserve/proto_build.py

protoc writes `from vlm.v1 import common_pb2`; the copies in _proto/ import
their siblings package-relatively (`from . import common_pb2`) so that the
generated code needs no sys.path entry. The folder is rebuilt whole on every
run and is not committed (.gitignore)."""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
OUT_DIR = PACKAGE_DIR / "_proto"
PROTO_PACKAGE = "vlm/v1"

_SIBLING_IMPORT = re.compile(r"^from vlm\.v1 import ", re.MULTILINE)


def generate(proto_root: Path = PROTO_ROOT, out_dir: Path = OUT_DIR) -> list[Path]:
    """Runs protoc on every .proto under proto_root/vlm/v1; returns the written modules."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("grpcio-tools is not installed: pip install grpcio-tools (or run `make setup`)") from None
    import grpc_tools

    protos = sorted((proto_root / PROTO_PACKAGE).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root / PROTO_PACKAGE}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        args += [str(p.relative_to(proto_root)) for p in protos]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {[p.name for p in protos]}")
        staging = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        written = []
        for src in sorted((Path(tmp) / PROTO_PACKAGE).iterdir()):
            text = _SIBLING_IMPORT.sub("from . import ", src.read_text())
            (staging / src.name).write_text(text)
            written.append(out_dir / src.name)
        # Written last: make uses it as the sign that generation finished.
        (staging / "__init__.py").write_text(
            '"""Generated from protos/vlm/v1 by python/vlmserve/proto_build.py. Do not edit."""\n')
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    return written


def main() -> int:
    written = generate()
    print(f"generated {len(written)} files in {OUT_DIR.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
