import hashlib
import os
import sys

from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt


def health(request):
    return HttpResponse("ok", content_type="text/plain")


def index(request):
    return render(request, "index.html", {
        "path": request.path,
        "script_name": request.META.get("SCRIPT_NAME", ""),
        "form_url": reverse("form"),
        "python": sys.version.split()[0],
    })


def form(request):
    if request.method == "GET":
        return render(request, "form.html", {})
    if request.method == "POST":
        return render(request, "thanks.html", {"name": request.POST.get("name", ""),
                                               "colours": request.POST.getlist("colour")})
    return HttpResponseNotAllowed(["GET", "POST"])


def session_counter(request):
    count = request.session.get("count", 0) + 1
    request.session["count"] = count
    return JsonResponse({"count": count, "pid": os.getpid()})


def cookie(request):
    resp = JsonResponse({"seen": request.COOKIES.get("djtaste")})
    if "set" in request.GET:
        resp.set_cookie("djtaste", request.GET["set"], httponly=True)
    return resp


def upload(request):
    if request.method == "GET":
        return render(request, "upload.html", {})
    f = request.FILES["file"]
    h = hashlib.sha256()
    size = 0
    for chunk in f.chunks():
        h.update(chunk)
        size += len(chunk)
    return JsonResponse({"name": f.name, "size": size, "sha256": h.hexdigest(),
                         "note": request.POST.get("note", ""),
                         "handler": type(f).__name__})


@csrf_exempt
def body(request):
    """What Django makes of a request body: request.body is all an app reads."""
    data = request.body
    return JsonResponse({"read": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "content_length": request.META.get("CONTENT_LENGTH")})


def boom(request):
    raise KeyError("view failure " + request.GET.get("tag", ""))


async def async_view(request):
    """An async view (served natively under the ASGI handler): awaits, then answers."""
    import asyncio

    await asyncio.sleep(0.01)
    return JsonResponse({"async": True, "path": request.path, "script_name": request.META.get("SCRIPT_NAME", ""),
                         "method": request.method, "q": request.GET.get("q", "")})
