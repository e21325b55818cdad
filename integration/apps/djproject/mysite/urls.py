from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("health/", views.health, name="health"),
    path("form/", views.form, name="form"),
    path("session/", views.session_counter, name="session"),
    path("cookie/", views.cookie, name="cookie"),
    path("upload/", views.upload, name="upload"),
    path("boom/", views.boom, name="boom"),
    path("body/", views.body, name="body"),
    path("async/", views.async_view, name="async"),
]
