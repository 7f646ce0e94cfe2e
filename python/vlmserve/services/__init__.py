"""gRPC services (vision encoder; LM to come) and what they share: generated
protos, the exception → status mapping, interceptors, metrics, logs, and the
server lifecycle (health, reflection, TLS, graceful shutdown)."""
