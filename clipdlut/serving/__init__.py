"""The BentoML serving side: the API service's job flow, its job stores, the optimizer service's stream, the
request and response models, the settings and the HTTP middleware. The library core (``clipdlut``) never
imports it."""
