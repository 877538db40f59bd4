"""The engine: one batched forward per step, its MoE layers dispatched to expert workers.

Owns the step loop (`engine`), the non-expert model (`model`), expert dispatch and its transports
(`dispatch`, `transport`, `batch`), sampling, the routing recorder and traffic counters. May import
`switchyard.placement` and `switchyard.workers`; of `switchyard.cluster` only `errors` and `settings`.
"""
