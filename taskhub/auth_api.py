"""The REST sign-up endpoint (JWTs come from simplejwt's views, wired in taskhub/urls.py)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from taskhub import accounts


class RegisterInputSerializer(serializers.Serializer):
    """Shapes the input only; taskhub.accounts.user_create validates it."""

    username = serializers.CharField(max_length=150, trim_whitespace=False)
    password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)


class RegisterOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class RegisterThrottle(AnonRateThrottle):
    rate = "30/min"


class RegisterApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [RegisterThrottle]

    @extend_schema(request=RegisterInputSerializer, responses={201: RegisterOutputSerializer})
    def post(self, request: Request) -> Response:
        payload = RegisterInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        user = accounts.user_create(**payload.validated_data)
        return Response(RegisterOutputSerializer(user).data, status=status.HTTP_201_CREATED)
