"""The state store: routing statistics windows, versioned plans with an epoch, rebalance events.

Owns the `StateStore` protocol and `open_state_store` (`store`), the Redis store, and the statistics
publisher and writer of the engines. May import `switchyard.placement` (and Ray in `publisher`).
"""
