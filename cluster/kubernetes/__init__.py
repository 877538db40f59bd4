"""Kubernetes: read the placement topology of a Switchyard cluster from the API server.

`topology` derives the topology from API objects (pure: v1 Pod and Node JSON in, no client), `reader`
makes the API calls with the `kubernetes` client, `errors` names what went wrong. Used by
`switchyard cluster topology` (`cluster/cli/cluster.py`) and by the chart's rebalance job.
"""
