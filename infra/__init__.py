"""Local infrastructure: the real Kafka broker and PostgreSQL as processes of this project.

`infra.stack.LocalStack` is the API (tests, CLI); `python -m infra up|down|ps|logs|kafka-jars`
is the CLI behind `make up` etc. See infra/README.md.
"""
