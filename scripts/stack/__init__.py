"""The local stack: the dev supervisor, its cloud profile, embedded servers, demo, dev tokens."""
