"""`.proto` files (package `switchyard.v1`) and their generated Python code."""
