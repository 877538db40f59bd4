"""The Ray Serve application: the whole stack as one Serve application (`app.build`).

`ExpertPool` (one replica) starts the expert workers on their nodes, re-creates a dead one with its
experts, and is the registry every other part reads: workers, plan and epoch, engines. `EngineReplica`
replicas (Serve health-checks and restarts them) each run one engine on their own node.
`GatewayReplica` replicas run Switchyard's own gRPC gateway and dashboard over the engines the replicas
registered. `switchyard.cluster.serve_app:app` is the import path Serve configs name. May import
every `cluster` sub-package but `cli`.
"""
