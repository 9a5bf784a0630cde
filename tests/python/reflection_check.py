"""What grpcurl does, with grpcio's reflection client (grpc.reflection.v1alpha): list the
broker's services, resolve a method's types from the served descriptors alone, and call it.

Usage: python3 reflection_check.py HOST:PORT
Prints one line per step; exits non-zero (with the reason) on any failure.
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(address: str) -> None:
    channel = grpc.insecure_channel(address)
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    print("services:", " ".join(sorted(services)))
    for wanted in ("sluice.v1.Log", "sluice.v1.Admin", "sluice.v1.Groups", "grpc.health.v1.Health"):
        if wanted not in services:
            sys.exit(f"{wanted} is not listed by reflection")

    pool = descriptor_pool.DescriptorPool(database)
    log = pool.FindServiceByName("sluice.v1.Log")
    methods = sorted(method.name for method in log.methods)
    print("sluice.v1.Log methods:", " ".join(methods))
    if "Produce" not in methods or "Fetch" not in methods:
        sys.exit("Log lacks Produce or Fetch")

    # A call built only from the reflected descriptors, as grpcurl makes one.
    method = pool.FindServiceByName("sluice.v1.Admin").FindMethodByName("ListTopics")
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/sluice.v1.Admin/ListTopics",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = call(request_type(), timeout=10)
    names = sorted(topic.name for topic in response.topics)
    print("topics:", " ".join(names))
    if "reflected" not in names:
        sys.exit("ListTopics through reflected types did not list the topic")


if __name__ == "__main__":
    main(sys.argv[1])
