from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return "flask ok"


@app.post("/json")
def echo_json():
    return jsonify(got=request.get_json(), addresses=request.environ["greenfork.server_addresses"])


@app.get("/stream")
def stream():
    return app.response_class((f"line {i}\n" for i in range(3)), mimetype="text/plain")


@app.post("/upload")
def upload():
    return jsonify(size=len(request.get_data()))


@app.get("/missing")
def missing():
    return "nope", 404


from wsgiref.validate import validator  # noqa: E402

_validated = validator(app)


def validated(environ, start_response):
    # wsgiref's validator forbids read() without a size, which frameworks use when the
    # server sets wsgi.input_terminated (PEP 3333 allows it): validate what reads no body.
    chosen = _validated if environ["REQUEST_METHOD"] in ("GET", "HEAD") else app
    return chosen(environ, start_response)
