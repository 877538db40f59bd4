"""Regenerate the Python code of the `.proto` files: `python protos/generate.py` (or `make protos`).

protoc writes `switchyard/v1/serving_pb2.py` and friends; this script puts them flat in
`protos/generated/` (the package `switchyard.protos.generated`) and turns the one absolute import the
gRPC plugin writes (`from switchyard.v1 import serving_pb2`) into a relative one, so the code imports
inside this package. The descriptors keep the proto file name `switchyard/v1/serving.proto`, which is
what reflection shows. Never edit the generated files by hand; `tests/test_protos.py` fails when they
are stale.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
GENERATED_DIR = PROTOS_DIR / "generated"
PROTO_FILES = ("switchyard/v1/serving.proto",)
_ABSOLUTE_IMPORT = re.compile(r"^from switchyard\.v1 import (\w+_pb2)", re.MULTILINE)


def generate(out_dir: Path = GENERATED_DIR) -> list[Path]:
    """Run protoc on `PROTO_FILES` and write the flattened, import-fixed modules into `out_dir`."""
    from grpc_tools import protoc  # a build tool: only this script needs it

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as staging:
        include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
        status = protoc.main(["grpc_tools.protoc", f"-I{PROTOS_DIR}", f"-I{include}",
                              f"--python_out={staging}", f"--pyi_out={staging}",
                              f"--grpc_python_out={staging}", *PROTO_FILES])
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status} (its message is above)")
        for path in sorted(Path(staging).rglob("*.py*")):
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1", path.read_text())
            target = out_dir / path.name
            target.write_text(text)
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GENERATED_DIR, help="Output directory.")
    for path in generate(parser.parse_args().out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
