"""helicone-scorer: receive → verify → store → score → deliver."""

from webhook.app import create_app
from webhook.settings import Settings, load_settings

__all__ = ["Settings", "create_app", "load_settings"]
