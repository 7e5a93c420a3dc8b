"""helicone-scorer: receive → verify → store → score → deliver.

The server's request path, one module per step: :mod:`.receive` (with :mod:`.guard` and
:mod:`.budget`), :mod:`.verify`, :mod:`.store`, :mod:`.score`, :mod:`.relay`, :mod:`.deliver`,
:mod:`.limit`; :mod:`.wiring` builds them from :mod:`.settings` and :mod:`.app` serves them.
The command line is :mod:`.cli`, the offline tools :mod:`.offline`. Nothing is imported here, so
each command loads only what it runs.
"""
