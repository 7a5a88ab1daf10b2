"""Observability: Prometheus metrics (`tollway.observability.metrics`)."""
