from django.urls import path

from chat.api import views

urlpatterns = [
    path("rooms/", views.RoomListCreateApi.as_view(), name="chat-room-list"),
    path("rooms/<slug:slug>/", views.RoomDetailApi.as_view(), name="chat-room-detail"),
    path("rooms/<slug:slug>/join/", views.RoomJoinApi.as_view(), name="chat-room-join"),
    path("rooms/<slug:slug>/leave/", views.RoomLeaveApi.as_view(), name="chat-room-leave"),
    path("rooms/<slug:slug>/invite/", views.RoomInviteApi.as_view(), name="chat-room-invite"),
    path("direct/", views.DirectRoomApi.as_view(), name="chat-direct"),
    path(
        "messages/<int:message_id>/", views.MessageDetailApi.as_view(), name="chat-message-detail"
    ),
    path("rooms/<slug:slug>/messages/", views.RoomMessagesApi.as_view(), name="chat-messages"),
    path("rooms/<slug:slug>/unread/", views.RoomUnreadApi.as_view(), name="chat-room-unread"),
    path("rooms/<slug:slug>/read/", views.RoomMarkReadApi.as_view(), name="chat-room-read"),
]
