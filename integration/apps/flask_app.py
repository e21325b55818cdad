"""The Flask application of the end-to-end suite."""
import hashlib
import os
import sys

from flask import Flask, Response, jsonify, make_response, request, stream_with_context

app = Flask(__name__)


@app.route("/health")
def health():
    return "ok"


@app.route("/")
def index():
    return "hello from flask\n"


@app.route("/echo", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
def echo():
    # get_data caches the body, so form and JSON parsing can read it again
    body = request.get_data(cache=True)
    return jsonify(
        method=request.method,
        path=request.path,
        script_root=request.script_root,
        full_path=request.full_path,
        args={k: request.args.getlist(k) for k in request.args},
        form={k: request.form.getlist(k) for k in request.form} if request.form else {},
        json=request.get_json(silent=True) if request.is_json else None,
        headers={k: v for k, v in request.headers.items()},
        cookies=dict(request.cookies),
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_len=len(body),
        content_length=request.environ.get("CONTENT_LENGTH"),
        remote_addr=request.remote_addr,
        scheme=request.scheme,
        pid=os.getpid(),
        python=sys.version,
    )


@app.route("/form", methods=["POST"])
def form():
    return jsonify(form={k: request.form.getlist(k) for k in request.form},
                   files={k: f.filename for k, f in request.files.items()})


@app.route("/unicode/<name>")
def unicode_name(name):
    return jsonify(name=name, path=request.path)


@app.route("/cookies/set")
def cookies_set():
    resp = make_response("cookies set\n")
    resp.set_cookie("flavour", "oatmeal")
    resp.set_cookie("colour", "blue", httponly=True)
    return resp


@app.route("/cookies/get")
def cookies_get():
    return jsonify(dict(request.cookies))


@app.route("/upload", methods=["POST", "PUT"])
def upload():
    h = hashlib.sha256()
    n = 0
    stream = request.stream
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    return jsonify(size=n, sha256=h.hexdigest())


@app.route("/stream")
def stream():
    def gen():
        for i in range(5):
            yield "line %d\n" % i
    return Response(stream_with_context(gen()), mimetype="text/plain")


@app.route("/boom")
def boom():
    tag = request.args.get("tag", "")
    raise ValueError("flask boom " + tag)


@app.route("/n/<int:i>")
def numbered(i):
    return jsonify(i=i, pid=os.getpid())


application = app
