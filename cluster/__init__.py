"""The serving cluster: engines, gateway, state store, rebalancer, CLI (Ray and I/O live here)."""
