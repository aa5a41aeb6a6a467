"""A gRPC client that is not ours: it has no arbor proto files and learns
the services through server reflection alone (grpcio-reflection), then
checks health and runs a compare between two agents.

usage: reflection_client.py AGENT PEER EXPECTED_MISSING_LEFT EXPECTED_MISSING_RIGHT EXPECTED_CHANGED
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def call(channel, pool, method, request_fields):
    service_name, method_name = method.rsplit("/", 1)
    service = pool.FindServiceByName(service_name)
    m = service.FindMethodByName(method_name)
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    stub = channel.unary_unary(
        f"/{service_name}/{method_name}",
        request_serializer=lambda r: r.SerializeToString(),
        response_deserializer=resp_cls.FromString,
    )
    return stub(req_cls(**request_fields), timeout=120)


def main():
    agent, peer = sys.argv[1], sys.argv[2]
    want = tuple(int(x) for x in sys.argv[3:6])
    checks = []
    with grpc.insecure_channel(agent) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        for s in ("arbor.v1.AgentService", "arbor.v1.AuditService", "arbor.v1.AdminService", "grpc.health.v1.Health"):
            checks.append((f"reflection lists {s}", s in services))
        pool = descriptor_pool.DescriptorPool(db)
        health = call(channel, pool, "grpc.health.v1.Health/Check", {"service": ""})
        checks.append(("health is SERVING", health.status == 1))
        summary = call(
            channel,
            pool,
            "arbor.v1.AuditService/Compare",
            {"dataset": "customers", "peer": "http://" + peer},
        )
        got = (summary.missing_left, summary.missing_right, summary.changed)
        checks.append((f"compare completed ({summary.status})", summary.status == "completed"))
        checks.append((f"drift {got} equals the seeded {want}", got == want))
        status = call(channel, pool, "arbor.v1.AdminService/GetIndexStatus", {"dataset": "customers"})
        checks.append((f"index status names {status.count} records", status.count > 0))
        try:
            call(channel, pool, "arbor.v1.AgentService/GetNodes", {"dataset": "customers", "level": 2, "parents": [0x100]})
            checks.append(("malformed GetNodes is refused", False))
        except grpc.RpcError as e:
            checks.append(("malformed GetNodes is refused with INVALID_ARGUMENT", e.code() == grpc.StatusCode.INVALID_ARGUMENT))
    failed = [name for name, ok in checks if not ok]
    for name, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"reflection client: {len(checks) - len(failed)} checks ok, {len(failed)} failing")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
