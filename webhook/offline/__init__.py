"""The offline tools: what runs from the command line, never in the server.

The score statistics query (:mod:`.query`, :mod:`.types`), their charts (:mod:`.evals`,
:mod:`.plot`) and the backfill of past requests (:mod:`.backfill`, which lists them with the
server's :mod:`webhook.logged`). They
may import the server's modules (the scoring stage, the store); the server never imports them.
"""
