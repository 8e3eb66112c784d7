"""LayerSync Studio's training program.

This package knows nothing of HTTP, HTML or databases; it can be run alone with
``python -m trainer --config run.json``. Importing ``trainer`` or ``trainer.config`` does not
import torch, so the web server can validate run configs with the same schema.
"""
