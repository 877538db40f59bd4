"""Switchyard placement behind the interfaces of other systems (vLLM's EPLB policy).

Imported only by those systems, which bring their own dependencies; may import `switchyard.placement`.
"""
