"""The chat REST API: thin views over chat.services and chat.selectors.

Live messages travel over the WebSocket; REST serves rooms, membership, older history
pages and read marks. A private room the user is not in is a 404 everywhere here.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import selectors, services
from chat.api.serializers import (
    InviteOutputSerializer,
    MarkReadInputSerializer,
    MessageOutputSerializer,
    MessagePageInputSerializer,
    MessagePageOutputSerializer,
    RoomCreateInputSerializer,
    RoomOutputSerializer,
    UnreadOutputSerializer,
    UsernameInputSerializer,
)
from chat.models import ChatParticipant
from taskhub.pagination import CappedPageNumberPagination


def _room_response(request: Request, slug: str, *, code: int = status.HTTP_200_OK) -> Response:
    room = selectors.chat_room_get_for(user=request.user, slug=slug)
    return Response(RoomOutputSerializer(room).data, status=code)


class RoomListCreateApi(APIView):
    # For the schema only: GET pages its list with this class (drf-spectacular then
    # documents the page object, not a bare array).
    pagination_class = CappedPageNumberPagination

    @extend_schema(responses=RoomOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        rooms = selectors.chat_room_list_for(user=request.user)
        paginator = CappedPageNumberPagination()
        page = paginator.paginate_queryset(rooms, request, view=self)
        return paginator.get_paginated_response(RoomOutputSerializer(page, many=True).data)

    @extend_schema(request=RoomCreateInputSerializer, responses={201: RoomOutputSerializer})
    def post(self, request: Request) -> Response:
        payload = RoomCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        room = services.chat_room_create(creator=request.user, **payload.validated_data)
        return _room_response(request, room.slug, code=status.HTTP_201_CREATED)


class RoomDetailApi(APIView):
    @extend_schema(responses=RoomOutputSerializer)
    def get(self, request: Request, slug: str) -> Response:
        return _room_response(request, slug)


class RoomJoinApi(APIView):
    @extend_schema(request=None, responses=RoomOutputSerializer)
    def post(self, request: Request, slug: str) -> Response:
        room = selectors.chat_room_get_for(user=request.user, slug=slug)
        services.chat_room_join(room=room, user=request.user)
        return _room_response(request, slug)


class RoomLeaveApi(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request, slug: str) -> Response:
        room = selectors.chat_room_get_for(user=request.user, slug=slug)
        services.chat_room_leave(room=room, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RoomInviteApi(APIView):
    @extend_schema(
        request=UsernameInputSerializer,
        responses={201: InviteOutputSerializer, 200: InviteOutputSerializer},
    )
    def post(self, request: Request, slug: str) -> Response:
        room = selectors.chat_room_get_for(user=request.user, slug=slug)
        payload = UsernameInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        participant, added = services.chat_room_invite(
            room=room, by=request.user, username=payload.validated_data["username"]
        )
        data = {
            "room": room.slug,
            "user": services.chat_user_data(participant.user),
            "role": participant.role,
            "added": added,
        }
        return Response(data, status=status.HTTP_201_CREATED if added else status.HTTP_200_OK)


class DirectRoomApi(APIView):
    @extend_schema(
        request=UsernameInputSerializer,
        responses={
            201: RoomOutputSerializer,
            200: RoomOutputSerializer,
            404: OpenApiResponse(OpenApiTypes.OBJECT, description="No active user of that name."),
        },
    )
    def post(self, request: Request) -> Response:
        payload = UsernameInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        room, created = services.chat_direct_open(
            user=request.user, username=payload.validated_data["username"]
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return _room_response(request, room.slug, code=code)


class MessageDetailApi(APIView):
    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, message_id: int) -> Response:
        message = selectors.chat_message_get_for(user=request.user, message_id=message_id)
        services.chat_message_delete_own(message=message, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RoomMessagesApi(APIView):
    @extend_schema(parameters=[MessagePageInputSerializer], responses=MessagePageOutputSerializer)
    def get(self, request: Request, slug: str) -> Response:
        room = selectors.chat_room_get_for(user=request.user, slug=slug)
        query = MessagePageInputSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        messages, has_more = selectors.chat_message_page(room=room, **query.validated_data)
        results = MessageOutputSerializer(messages, many=True, context={"room_slug": room.slug})
        return Response({"results": results.data, "has_more": has_more})


class RoomUnreadApi(APIView):
    @extend_schema(responses=UnreadOutputSerializer)
    def get(self, request: Request, slug: str) -> Response:
        room = selectors.chat_room_get_for(user=request.user, slug=slug)
        participant = selectors.chat_participant_get(room=room, user=request.user)
        if participant is None:
            # Unread is relative to a read mark only participants have.
            raise PermissionDenied("Join the room first.")
        return Response(_unread_data(room.slug, participant))


class RoomMarkReadApi(APIView):
    @extend_schema(request=MarkReadInputSerializer, responses=UnreadOutputSerializer)
    def post(self, request: Request, slug: str) -> Response:
        room = selectors.chat_room_get_for(user=request.user, slug=slug)
        payload = MarkReadInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        participant = services.chat_room_mark_read(
            room=room, user=request.user, message_id=payload.validated_data["message_id"]
        )
        return Response(_unread_data(room.slug, participant))


def _unread_data(slug: str, participant: ChatParticipant) -> dict[str, Any]:
    return {
        "room": slug,
        "unread_count": selectors.chat_unread_count(participant=participant),
        "last_read_message_id": participant.last_read_message_id,
    }
