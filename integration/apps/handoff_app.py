"""The Flask app behind the file hand-off tests (test_sendfile.py): hands files off with
X-Sendfile, X-Sendfile2 and X-Accel-Redirect along with headers of its own, and serves
downloads with Flask's send_file (which goes through wsgi.file_wrapper)."""
import os

from flask import Flask, Response, request, send_file

app = Flask(__name__)
FILES = os.environ.get("HANDOFF_FILES_DIR", "/nonexistent")

# Headers a download keeps whoever sends the body.
OWN = [("Content-Disposition", 'attachment; filename="report.bin"'), ("Cache-Control", "private, max-age=60"),
       ("Set-Cookie", "seen=1; Path=/"), ("X-App", "handoff")]


def handed_off(header, value):
    headers = [(header, value), ("Content-Length", "12"), ("ETag", '"app-etag"')] + OWN
    if "nginx-keeps" in request.args:
        # only headers nginx passes on with X-Accel-Redirect
        headers = [h for h in headers if h[0] != "X-App"]
    if "ctype" in request.args:
        headers.append(("Content-Type", request.args["ctype"]))
    file_length = request.args.get("file-length")
    resp = Response(b"" if file_length else b"not the file", status=int(request.args.get("status", "200")),
                    headers=headers)
    if file_length:
        resp.headers["Content-Length"] = file_length  # as Flask's send_file(use_x_sendfile=True): no body
    if "ctype" not in request.args:
        del resp.headers["Content-Type"]  # Flask adds text/html otherwise
    return resp


@app.route("/health")
def health():
    return "ok"


@app.route("/xs")
def xs():
    return handed_off("X-Sendfile", request.args["path"])


@app.route("/xs2")
def xs2():
    return handed_off("X-Sendfile2", request.args["v"])


@app.route("/accel")
def accel():
    return handed_off("X-Accel-Redirect", request.args["uri"])


@app.route("/download/<name>")
def download(name):
    # conditional=False: the app itself answers no Range request with 206; only the bridge can.
    return send_file(os.path.join(FILES, name), conditional=False, as_attachment=True,
                     download_name="download-" + name)


@app.route("/download-cors/<name>")
def download_cors(name):
    # Headers nginx drops when it follows X-Accel-Redirect: the bridge must keep them.
    resp = send_file(os.path.join(FILES, name), conditional=False, as_attachment=True, download_name="dl-" + name)
    resp.headers["Access-Control-Allow-Origin"] = "https://app.example"
    resp.headers["Content-Security-Policy"] = "sandbox"
    return resp


@app.route("/download-seeked/<name>")
def download_seeked(name):
    # A file object not at position 0: the rest of it is streamed, never handed off.
    f = open(os.path.join(FILES, name), "rb")
    f.seek(2)
    return Response(request.environ["wsgi.file_wrapper"](f), mimetype="application/octet-stream",
                    direct_passthrough=True)


@app.route("/env-keys")
def env_keys():
    return ",".join(sorted(k for k in request.environ if k.startswith("FCGIBRIDGE")))


@app.route("/local")
def local():
    # A CGI local redirect to a path the bridge has no route for (Apache follows it).
    return Response(b"", status=200, headers={"Location": request.args["to"]})


application = app
