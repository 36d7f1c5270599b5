"""The task-based web UI: a small server of static files that signs a developer in and
reverse-proxies the four services' public APIs under one origin."""
