"""The runtime: the Ray actors (engines and expert workers) of one served model, and live migration.

Owns `Runtime` (start, generate, statistics, traffic), `resolve_plan`, `local_cluster` and
`migration.migrate` (a new plan moved in while requests run). May import `cluster.engine`,
`switchyard.placement` and `switchyard.workers`.
"""
