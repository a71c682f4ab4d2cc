"""`make chaos`: fault injection under load on the local stack (`python -m scripts.chaos`)."""
