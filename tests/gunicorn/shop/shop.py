"""The shop's WSGI application, built by a PasteDeploy factory as Pyramid's `main` is."""

import json
import logging
import os

log = logging.getLogger(__name__)


def main(global_config, **settings):
    title = settings["shop.title"]
    items = int(settings["shop.items"])

    def app(environ, start_response):
        log.info("shop request %s", environ["PATH_INFO"])
        body = json.dumps({
            "title": title, "items": items, "env": os.environ.get("SHOP_ENV"),
            "currency": os.environ.get("SHOP_CURRENCY"), "uid": os.getuid(), "gid": os.getgid(),
            "ini": os.path.basename(global_config["__file__"]),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app
