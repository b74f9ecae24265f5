#!/usr/bin/env python3
"""A gRPC client of safepoint-gateway that knows nothing but the server's address.

It discovers `safepoint.gateway.v1.IncidentGateway` (and gRPC health) through server
reflection alone -- no .proto file, no generated code -- then checks health, creates an
incident, follows WatchUpdates until that incident's CLOSE, and reads it back with
GetIncident. This is what a stock tool (grpcurl, grpcui, Postman) relies on.

Usage: grpc_client.py [--address HOST:PORT] [--key API_KEY] [--integration NAME]
Defaults come from GATEWAY_GRPC_ADDR, GATEWAY_API_KEY and GATEWAY_INTEGRATION.
Exit 0 when everything checked out, 1 (with the reason) otherwise.
"""

import argparse
import os
import sys
import time
import uuid

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "safepoint.gateway.v1.IncidentGateway"
HEALTH = "grpc.health.v1.Health"


class Reflected:
    """Callables for a service's unary and server-streaming methods, from reflection."""

    def __init__(self, channel, pool, service_name):
        self.service = pool.FindServiceByName(service_name)
        self.channel = channel

    def message(self, type_name):
        """The message class for a method's request type (by method name)."""
        return message_factory.GetMessageClass(self.service.methods_by_name[type_name].input_type)

    def _codec(self, name):
        m = self.service.methods_by_name[name]
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        path = f"/{self.service.full_name}/{name}"
        return m, path, req.SerializeToString, resp.FromString

    def unary(self, name):
        m, path, ser, de = self._codec(name)
        assert not m.client_streaming and not m.server_streaming, name
        return self.channel.unary_unary(path, request_serializer=ser, response_deserializer=de)

    def server_stream(self, name):
        m, path, ser, de = self._codec(name)
        assert m.server_streaming and not m.client_streaming, name
        return self.channel.unary_stream(path, request_serializer=ser, response_deserializer=de)


def enum_name(msg, field):
    """The symbolic name of an enum field's value (e.g. UPDATE_KIND_CLOSE)."""
    fd = msg.DESCRIPTOR.fields_by_name[field]
    return fd.enum_type.values_by_number[getattr(msg, field)].name


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=os.environ.get("GATEWAY_GRPC_ADDR", "127.0.0.1:50051"))
    ap.add_argument("--key", default=os.environ.get("GATEWAY_API_KEY"))
    ap.add_argument("--integration", default=os.environ.get("GATEWAY_INTEGRATION", "internal"))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for CLOSE")
    args = ap.parse_args()
    if not args.key:
        fail("no API key: pass --key or set GATEWAY_API_KEY")

    channel = grpc.insecure_channel(args.address)
    grpc.channel_ready_future(channel).result(timeout=30)

    # Discovery: reflection only.
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    for s in (SERVICE, HEALTH):
        if s not in services:
            fail(f"{s} not listed by reflection: {services}")
    pool = descriptor_pool.DescriptorPool(db)
    gw = Reflected(channel, pool, SERVICE)
    health = Reflected(channel, pool, HEALTH)
    print(f"reflection: {', '.join(sorted(services))}")

    # Health needs no key.
    check = health.unary("Check")
    hc = check(health.message("Check")(service=SERVICE), timeout=10)
    if enum_name(hc, "status") != "SERVING":
        fail(f"health of {SERVICE}: {enum_name(hc, 'status')}")
    print("health: SERVING")

    auth = [("authorization", f"Bearer {args.key}")]
    reference = f"PY-{uuid.uuid4().hex[:12].upper()}"
    create_req = gw.message("CreateIncident")(integration=args.integration)
    create_req.fields.update(
        {
            "reference": reference,
            "device": "UG1234",
            "contact.name": "Jane Doe",
            "contact.phone": "+1 555 0100",
            "subject": "Safe door does not open",
            "description": "Created by tests/python/grpc_client.py",
            "fault_code": "AC12",
            "fault_time": "2021-01-16T15:17:48Z",
        }
    )

    # Unauthenticated calls are refused.
    try:
        gw.unary("CreateIncident")(create_req, timeout=10)
        fail("CreateIncident without a key was accepted")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAUTHENTICATED:
            fail(f"CreateIncident without a key: {e.code()} {e.details()}")

    # Invalid fields come back as INVALID_ARGUMENT naming each field.
    bad = gw.message("CreateIncident")(integration=args.integration)
    bad.fields.update({"reference": reference + "-BAD", "device": " "})
    try:
        gw.unary("CreateIncident")(bad, metadata=auth, timeout=10)
        fail("an invalid incident was accepted")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT or "DeviceId" not in e.details():
            fail(f"invalid incident: {e.code()} {e.details()}")

    created = gw.unary("CreateIncident")(create_req, metadata=auth, timeout=30)
    if not created.created or created.incident_reference != reference:
        fail(f"unexpected CreateIncident answer: {created}")
    print(f"created {reference}: {enum_name(created, 'state')}")

    # Follow the integration's updates until this incident closes.
    watch_req = gw.message("WatchUpdates")(integration=args.integration, after_sequence=0)
    stream = gw.server_stream("WatchUpdates")(watch_req, metadata=auth, timeout=args.timeout)
    kinds, last_seq, incident_id = [], 0, ""
    deadline = time.monotonic() + args.timeout
    try:
        for u in stream:
            if u.sequence <= last_seq:
                fail(f"sequence went from {last_seq} to {u.sequence}")
            if last_seq and u.sequence != last_seq + 1:
                fail(f"gap: {last_seq} then {u.sequence}")
            last_seq = u.sequence
            if u.incident_reference != reference:
                continue
            kind = enum_name(u, "kind")
            kinds.append(kind)
            incident_id = u.incident_id or incident_id
            print(f"  #{u.sequence} {kind} -> {enum_name(u, 'state')} {u.incident_id}")
            if kind == "UPDATE_KIND_CLOSE":
                stream.cancel()
                break
            if time.monotonic() > deadline:
                fail(f"no CLOSE within {args.timeout} s (saw {kinds})")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            fail(f"WatchUpdates: {e.code()} {e.details()} (saw {kinds})")
    if kinds != ["UPDATE_KIND_ACK", "UPDATE_KIND_ACCEPT", "UPDATE_KIND_CLOSE"]:
        fail(f"unexpected updates for {reference}: {kinds}")

    get_req = gw.message("GetIncident")(integration=args.integration, incident_reference=reference)
    inc = gw.unary("GetIncident")(get_req, metadata=auth, timeout=10)
    if enum_name(inc, "state") != "INCIDENT_STATE_CLOSED" or inc.incident_id != incident_id:
        fail(f"GetIncident: {enum_name(inc, 'state')} {inc.incident_id!r}")
    if not inc.HasField("sla_time") or len(inc.timeline) < 4:
        fail(f"GetIncident lacks SLA time or timeline: {inc}")
    print(f"{reference} closed as Loomis {incident_id}; timeline of {len(inc.timeline)} entries")
    print("OK")


if __name__ == "__main__":
    main()
