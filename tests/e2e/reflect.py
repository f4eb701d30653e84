"""A gRPC client that knows nothing of SPM's protos: it learns them through server
reflection (grpc.reflection.v1alpha, as grpcio-reflection's client asks) and calls a
method from JSON. Prints one JSON object: the services the port lists and, when a method
is given, its response as proto3 JSON.

    python3 reflect.py HOST:PORT API_KEY [SERVICE/METHOD REQUEST_JSON]
"""

import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    addr, key = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(addr)
    db = ProtoReflectionDescriptorDatabase(channel)
    out = {"services": sorted(db.get_services())}
    if len(sys.argv) > 3:
        service, method = sys.argv[3].rsplit("/", 1)
        pool = DescriptorPool(db)
        m = pool.FindServiceByName(service).FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        request = json_format.Parse(sys.argv[4], req_cls())
        call = channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        try:
            resp = call(request, metadata=[("authorization", f"Bearer {key}")], timeout=10)
            out["response"] = json_format.MessageToDict(resp)
        except grpc.RpcError as e:
            out["error"] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
