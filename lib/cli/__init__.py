"""`cs`, the command line of CareerShaper Jobs: submit and follow jobs, mint dev tokens, work the
broker's dead-letter queue, and check a deployment's configuration and dependencies.

It reads the same environment and `.env` as the services (`lib.config`). `main.py` parses the
command line; each command lives in the module named for what it works on.
"""
