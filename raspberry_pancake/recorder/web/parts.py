"""What every page has: the head's links and the tab bar with Log out, written once for all of them."""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.escape import xhtml_escape

__all__ = ["UI_MODULES", "LogoutButton", "PageHead", "PageTabs"]

# The pages in the tab bar, in order: (key, label, path).
TABS = (("live", "Live", "/"), ("events", "Events", "/events"),
        ("recordings", "Recordings", "/recordings"), ("faces", "Faces", "/faces"))


class PageHead(tornado.web.UIModule):
    """`{% module PageHead("Events · Pancake", "review.css") %}`: the meta tags, the icon, the
    common style sheet and the page's own ones."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        title, *sheets = (str(a) for a in args)
        links = "".join(f'\n  <link rel="stylesheet" href="{xhtml_escape(self.handler.static_url(s))}">'
                        for s in ("style.css", *sheets))
        return ('<meta charset="utf-8">\n'
                '  <meta name="viewport" content="width=device-width, initial-scale=1, '
                'viewport-fit=cover">\n'
                '  <meta name="color-scheme" content="dark">\n'
                f"  <title>{xhtml_escape(title)}</title>\n"
                f'  <link rel="icon" href="{xhtml_escape(self.handler.static_url("favicon.svg"))}" '
                f'type="image/svg+xml">{links}')


class PageTabs(tornado.web.UIModule):
    """`{% module PageTabs("events") %}`: the tab bar with the current page marked; `live`
    gives the Live tab's link (a camera's)."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        current = str(args[0]) if args else ""
        live = str(kwargs.get("live") or "/")
        links = []
        for key, label, path in TABS:
            mark = ' aria-current="page"' if key == current else ""
            href = xhtml_escape(live if key == "live" else path)
            links.append(f'<a href="{href}"{mark}>{label}</a>')
        return f'<nav class="tabs" aria-label="pages">\n      {"".join(links)}\n    </nav>'


class LogoutButton(tornado.web.UIModule):
    """`{% module LogoutButton(login) %}`: the Log out form (with its XSRF field) when a
    login is set, else nothing."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        if not (args and args[0]):
            return ""
        return ('<form method="post" action="/logout" class="logout">\n      '
                f"{self.handler.xsrf_form_html()}\n"
                '      <button type="submit" id="logout">Log out</button>\n    </form>')


UI_MODULES: dict[str, type[tornado.web.UIModule]] = {"PageHead": PageHead, "PageTabs": PageTabs,
                                                      "LogoutButton": LogoutButton}
