"""Apps for the command lines of gunicorn's own documentation (tests/test_gunicorn_configs.py):
`app`, a factory `create_app(...)`, and `application`, the name gunicorn looks for by default."""

import json
import os


def _reply(start_response, payload):
    body = json.dumps(payload).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    return _reply(start_response, {"app": "app", "pid": os.getpid(),
                                   "settings": os.environ.get("DJANGO_SETTINGS_MODULE"),
                                   "spam": os.environ.get("SPAM"),
                                   "scheme": environ["wsgi.url_scheme"],
                                   "remote": environ.get("REMOTE_ADDR")})


application = app


def create_app(env="development", debug=False, **options):
    def configured(environ, start_response):
        return _reply(start_response, {"app": "factory", "env": env, "debug": debug, "options": options})

    return configured
