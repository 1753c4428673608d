"""An app that counts what the garbage collector would find: no request may leave a
reference cycle behind (each one makes the collector run more often; measured, a cycle per
request cost a tenth of a small request). The collector is off, so /gc sees everything."""

import gc

gc.disable()


def app(environ, start_response):
    if environ["PATH_INFO"] == "/gc":
        body = str(gc.collect()).encode()
    else:
        body = environ["wsgi.input"].read() or b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
