"""landsurf catalog: the database, collections, storage layout, publication and the ASGI app."""

__version__ = "0.1.0"
