"""The baseline: bare Starlette that reads the body and answers 202, under the same uvicorn."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    await request.body()
    return Response(b'{"status":"queued"}', 202, media_type="application/json")


app = Starlette(routes=[Route("/webhook", receive, methods=["POST"])])
