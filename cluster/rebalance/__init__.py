"""Rebalancing: plan on the statistics window, apply live one at a time, record the outcome.

Owns the applier (lock, commit with the epoch, events), the startup plan choice, auto-rebalance and the
balance feedback's memory of the plans it priced.
May import `cluster.runtime`, `cluster.state` and `switchyard.placement`; not the gateway.
"""
