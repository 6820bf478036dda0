"""Keeps an existing `/api/inference` working on top of the cluster (CONTRACT §2).

`LegacyInferenceMiddleware` arrives with the auth/streaming/rollout issue; this package exists now
so that the layering contracts (nothing imports `compat` but the user's app) hold from day one.
"""

__all__: list[str] = []
