"""The BentoML serving side: the API service's job flow, its job stores, the optimizer service's stream, the
request and response models, the settings and the HTTP middleware. The library core (``clipdlut``) does not
import it (the CLI's ``import-model`` command aside, which puts weights into BentoML's model store)."""
