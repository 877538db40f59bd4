"""Rebalancing: plan on the statistics window, apply live one at a time, record the outcome.

Owns the applier (lock, commit with the epoch, events), the startup plan choice and auto-rebalance.
May import `cluster.runtime`, `cluster.state` and `switchyard.placement`; not the gateway.
"""
