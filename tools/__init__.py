"""Development tools (not shipped with the ``webui`` package); run from the repository root as modules,
e.g. ``python -m tools.demo_model.train``."""
