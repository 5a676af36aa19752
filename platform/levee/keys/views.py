from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, render
from rest_framework import status
from rest_framework.decorators import api_view, authentication_classes
from rest_framework.response import Response

from levee.core.errors import ApiError
from levee.core.middleware import sessionless
from levee.keys import services
from levee.keys.authentication import ApiKeyAuthentication
from levee.keys.models import ApiKey
from levee.keys.serializers import ApiKeySerializer, CreateApiKeySerializer


@api_view(["GET", "POST"])
def keys_collection(request):
    """The owner's keys (session-authenticated, CSRF-checked). POST returns the secret once."""
    if request.method == "GET":
        keys = ApiKey.objects.filter(user=request.user)
        return Response({"object": "list", "data": ApiKeySerializer(keys, many=True).data})
    form = CreateApiKeySerializer(data=request.data)
    form.is_valid(raise_exception=True)
    try:
        key, raw = services.create_api_key(request.user, **form.validated_data)
    except services.KeyRefused as exc:
        raise ApiError(403 if exc.code in {"email_not_verified", "account_inactive"} else 422,
                       exc.message, code=exc.code) from None
    return Response({**ApiKeySerializer(key).data, "key": raw}, status=status.HTTP_201_CREATED)


@api_view(["POST"])
def revoke_key(request, key_id: int):
    key = get_object_or_404(ApiKey, pk=key_id, user=request.user)
    services.revoke_api_key(key, by=request.user)
    return Response(ApiKeySerializer(key).data)


@sessionless
@api_view(["GET"])
@authentication_classes([ApiKeyAuthentication])
def whoami(request):
    """The smallest key-authenticated endpoint: who does this key belong to."""
    key = request.auth
    return Response({"object": "account", "email": request.user.email,
                     "key": {"prefix": key.prefix, "name": key.name}})


@login_required
def keys_page(request):
    return render(request, "keys/keys.html", {"keys": ApiKey.objects.filter(user=request.user)})
