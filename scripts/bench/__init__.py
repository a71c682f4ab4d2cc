"""`make bench` (`python -m scripts.bench`): latency and cost per job, ours against the original."""
