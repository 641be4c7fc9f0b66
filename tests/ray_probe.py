"""A bare gRPC client for a Ray cluster's GCS: does the cluster accept a request with this token?

Why a bare client: it is what anyone on the network can write (no Ray installed, no retries), and
it answers in milliseconds, where ``ray.init`` retries for 20 s before giving up. The request is
``NodeInfoGcsService.GetClusterId``, the first thing every Ray client asks.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

TOKEN_RE = re.compile(rb"[0-9a-f]{64}")


def gcs_answer(address: str, token: str | None) -> str:
    """"OK" when the GCS at ``address`` (host:port) answers, else the gRPC status name."""
    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=20)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    data = needle.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and data in p.read_bytes()]
