#!/usr/bin/env python3
"""Generates leases_client/_proto/ from proto/leases/v1/leases.proto with grpcio-tools.

    python clients/python/generate_stubs.py            # rewrite the committed stubs
    python clients/python/generate_stubs.py --check    # exit 1 if they are out of date

Needs grpcio-tools (its own protoc and the well-known types; no system protoc). The
stubs are committed so that `pip install clients/python` needs neither; the test suite
runs `--check`, so a change to the .proto without regenerating fails it.

grpcio-tools writes `from leases.v1 import leases_pb2` into the service module; inside
this package the import is made relative, the one change made to protoc's output.
"""

import argparse
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROTO_ROOT = REPO / "proto"
PROTO = "leases/v1/leases.proto"
TARGET = HERE / "leases_client" / "_proto"
FILES = ["leases_pb2.py", "leases_pb2.pyi", "leases_pb2_grpc.py"]

ABSOLUTE_IMPORT = "from leases.v1 import leases_pb2 as"
RELATIVE_IMPORT = "from . import leases_pb2 as"


def generate() -> dict[str, str]:
    """The stub files' names and contents, generated afresh."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(PROTO_ROOT / PROTO),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        generated = pathlib.Path(out) / "leases" / "v1"
        files = {name: (generated / name).read_text() for name in FILES}
    grpc_file = files["leases_pb2_grpc.py"]
    if ABSOLUTE_IMPORT not in grpc_file:
        raise SystemExit(f"leases_pb2_grpc.py has no `{ABSOLUTE_IMPORT}` to rewrite")
    files["leases_pb2_grpc.py"] = grpc_file.replace(ABSOLUTE_IMPORT, RELATIVE_IMPORT)
    return files


def differences() -> list[str]:
    """The committed stub files that differ from freshly generated ones."""
    return [
        name
        for name, text in generate().items()
        if not (TARGET / name).exists() or (TARGET / name).read_text() != text
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare")
    args = parser.parse_args()
    if args.check:
        stale = differences()
        for name in stale:
            print(f"{TARGET / name} differs from what {PROTO} generates", file=sys.stderr)
        return 1 if stale else 0
    for name, text in generate().items():
        (TARGET / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
