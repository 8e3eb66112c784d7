"""Routers: the JSON API (``api``) and the HTML pages (``pages``)."""
