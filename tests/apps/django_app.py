"""A one-file Django project: `greenfork django_app:application`."""

import django
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="test-only",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()


def index(request):
    return HttpResponse("django ok")


@csrf_exempt
def upload(request):
    return JsonResponse({"size": len(request.body), "method": request.method,
                         "host": request.get_host()})


urlpatterns = [path("", index), path("upload", upload)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

from wsgiref.validate import validator  # noqa: E402

_validated = validator(application)


def validated(environ, start_response):
    # wsgiref's validator forbids read() without a size, which frameworks use when the
    # server sets wsgi.input_terminated (PEP 3333 allows it): validate what reads no body.
    chosen = _validated if environ["REQUEST_METHOD"] in ("GET", "HEAD") else application
    return chosen(environ, start_response)
