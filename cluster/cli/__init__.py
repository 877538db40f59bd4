"""The `switchyard` command: one module per command group, formatting, and the `make run` demo.

Imports the rest of the package lazily (Ray, gRPC and Redis only for the commands that use them).
"""
