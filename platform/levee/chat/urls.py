from django.urls import path

from levee.chat import views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("<int:conversation_id>/", views.chat_page, name="chat-conversation"),
    path("<int:conversation_id>/export.<str:fmt>", views.export, name="chat-export"),
    path("api/search", views.search, name="chat-api-search"),
    path("api/conversations", views.create_conversation, name="chat-api-conversations"),
    path("api/conversations/<int:conversation_id>", views.conversation_detail, name="chat-api-conversation"),
    path("api/conversations/<int:conversation_id>/messages", views.post_message, name="chat-api-messages"),
    path("api/conversations/<int:conversation_id>/messages/<int:message_id>/stop", views.stop_reply,
         name="chat-api-stop"),
]
