"""LayerSync Studio's web server: REST API, pages, SQLite store, run scheduler and SSE.

Never imports torch or diffusers (the server starts fast and never holds a GPU); it validates run
configs with the torch-free schema in ``trainer.config`` and runs training in worker processes.
"""
