"""The HTTP API (v1): one module per resource, problem+json errors, OpenAPI from the models."""
