"""The generated gRPC code is current: regenerating from the `.proto` files changes nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from switchyard.protos.generated import serving_pb2, serving_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def _load_generate_script():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path: Path) -> None:
    written = _load_generate_script().generate(tmp_path)
    assert {path.name for path in written} == {"serving_pb2.py", "serving_pb2.pyi", "serving_pb2_grpc.py"}
    for path in written:
        committed = ROOT / "protos" / "generated" / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `make protos` (python protos/generate.py)")


def test_generated_code_imports_inside_the_package() -> None:
    assert serving_pb2.DESCRIPTOR.package == "switchyard.v1"
    assert serving_pb2_grpc.SwitchyardStub.__module__ == "switchyard.protos.generated.serving_pb2_grpc"
    service = serving_pb2.DESCRIPTOR.services_by_name["Switchyard"]
    assert [method.name for method in service.methods] == [
        "Generate", "GenerateBatch", "GetPlacement", "GetStats", "ClusterInfo", "GetEvents", "GetRequestMetrics",
        "Rebalance", "Rollback"]
