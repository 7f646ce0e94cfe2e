"""The serving benchmark's parts: the stack under test (stack.py), the load generator (load.py)
and the report (report.py). bench/serve.py puts them together."""
