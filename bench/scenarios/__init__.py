"""One module per `distinfer bench` scenario; each returns a JSON-ready document of its run."""

__all__: list[str] = []
