from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from levee.billing.pages import price_table


def home(request: HttpRequest) -> HttpResponse:
    # chat_quota, the allowance of the current mode: levee.chat.context (every page states the same)
    return render(request, "home.html", price_table())
