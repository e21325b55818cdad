"""A small Flask app for the worker tests (skipped when Flask is not installed)."""
import hashlib

from flask import Flask, Response, jsonify, request, stream_with_context

app = Flask(__name__)


@app.get("/json")
def json_view():
    return jsonify(ok=True, args=request.args.to_dict(), scheme=request.scheme,
                   host=request.host, path=request.path)


@app.post("/upload")
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(name=f.filename, size=len(data), sha=hashlib.sha256(data).hexdigest(),
                   field=request.form.get("field"))


@app.post("/echo")
def echo():
    return Response(request.get_data(), mimetype="application/octet-stream")


@app.get("/stream")
def stream():
    def gen():
        for i in range(5):
            yield "part %d\n" % i
    return Response(stream_with_context(gen()), mimetype="text/plain")


@app.get("/boom")
def boom():
    raise ZeroDivisionError("flask view failed")
