from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        # chat plugs its commands into the /ws socket that notifications owns; imported
        # here (the app registry is ready) so notifications never imports chat
        # (docs/architecture.md, "Apps and layers").
        from chat import services, ws
        from notifications import protocol

        protocol.register_client_commands(ws.handle, ws.COMMANDS, resync=ws.resend_history)
        protocol.register_group_message(services.ACCESS_CHECK, ws.access_check)
