"""The offline tools: what runs from the command line, never in the server.

The query half of Helicone's API (:mod:`.query`, :mod:`.types`), the score statistics and their
charts (:mod:`.evals`, :mod:`.plot`) and the backfill of past requests (:mod:`.backfill`). They
may import the server's modules (the scoring stage, the store); the server never imports them.
"""
