"""The gRPC transport: ``signingkeys.v1.SigningKeys`` on grpclib, with health and reflection.

``generated/`` is produced from ``protos/`` by ``scripts/gen_proto.sh``; never edit it.
"""
