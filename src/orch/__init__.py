"""orch: tracker tickets in, reviewed, merged and deployed changes out."""

__version__ = "0.1.0"
