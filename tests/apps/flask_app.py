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


@app.get("/missing")
def missing():
    return "nope", 404
