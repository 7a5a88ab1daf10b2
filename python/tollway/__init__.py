"""tollway: an AI gateway. One endpoint for every model provider, with exact limits, usage and
explanations. See README.md and docs/ for the whole picture."""

__version__ = "0.1.0"
