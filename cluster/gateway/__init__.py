"""The gRPC front door: server, servicer, status mapping and auth, the backend it serves from, the client.

May import `cluster.runtime`, `cluster.state`, `cluster.rebalance`, `cluster.engine.sampling` and
`switchyard.placement`; only the CLI imports it (and `client` needs only the generated protos).
"""
