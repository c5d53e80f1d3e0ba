"""The Pulumi program that provisions a lab topology (CockroachDB + Kafka, and on Kubernetes the
load generators and allocation consumers). ``__main__.py`` is the program; each other module
holds one component or one pure helper, so tests can import them without running the program.
"""
