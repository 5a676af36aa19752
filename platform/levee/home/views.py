from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from levee.billing.pages import price_table
from levee.chat.services import daily_quota


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {**price_table(), "chat_quota": daily_quota()})
