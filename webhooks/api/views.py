"""The webhook REST API: thin views over webhooks.services and webhooks.selectors."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks import selectors as task_selectors
from webhooks import selectors, services
from webhooks.api.serializers import (
    WebhookDeliveryOutputSerializer,
    WebhookSettingsInputSerializer,
    WebhookSettingsOutputSerializer,
)

# The newest deliveries of a task the list shows (redeliveries add one each).
DELIVERY_LIST_LIMIT = 100


class WebhookSettingsApi(APIView):
    @extend_schema(responses=WebhookSettingsOutputSerializer)
    def get(self, request: Request) -> Response:
        found = services.webhook_settings_get_or_create(user_id=request.user.pk)
        return Response(WebhookSettingsOutputSerializer(found).data)

    @extend_schema(
        request=WebhookSettingsInputSerializer, responses=WebhookSettingsOutputSerializer
    )
    def put(self, request: Request) -> Response:
        payload = WebhookSettingsInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        found = services.webhook_settings_update(user=request.user, **payload.validated_data)
        return Response(WebhookSettingsOutputSerializer(found).data)


class WebhookSecretRotateApi(APIView):
    @extend_schema(request=None, responses=WebhookSettingsOutputSerializer)
    def post(self, request: Request) -> Response:
        found = services.webhook_secret_rotate(user=request.user)
        return Response(WebhookSettingsOutputSerializer(found).data)


class TaskWebhookListApi(APIView):
    @extend_schema(responses=WebhookDeliveryOutputSerializer(many=True))
    def get(self, request: Request, task_id: str) -> Response:
        task = task_selectors.task_get_for(user=request.user, task_id=task_id)
        deliveries = selectors.deliveries_for_task(user=request.user, task_id=task.pk)
        return Response(
            WebhookDeliveryOutputSerializer(deliveries[:DELIVERY_LIST_LIMIT], many=True).data
        )


class TaskWebhookRedeliverApi(APIView):
    @extend_schema(request=None, responses={202: WebhookDeliveryOutputSerializer})
    def post(self, request: Request, task_id: str, delivery_id: str) -> Response:
        delivery = selectors.delivery_get_for(
            user=request.user, task_id=task_id, delivery_id=delivery_id
        )
        again = services.delivery_redeliver(delivery=delivery)
        return Response(
            WebhookDeliveryOutputSerializer(again).data, status=status.HTTP_202_ACCEPTED
        )
