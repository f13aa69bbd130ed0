"""Who is calling: the `authorization: Bearer <JWT>` metadata, checked exactly as the REST
API checks its header (simplejwt), so both interfaces accept the same tokens and users."""

from __future__ import annotations

import grpc
from django.contrib.auth.models import AbstractBaseUser
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication

from tasks.grpc.errors import RpcAbort

AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case


def authenticate(context: grpc.ServicerContext) -> AbstractBaseUser:
    """The user the call's bearer token names; RpcAbort(UNAUTHENTICATED) otherwise.

    The reason stays vague on purpose (as REST's 401 body does not say which check failed
    beyond simplejwt's own wording): a caller learns that the token was refused, not why.
    """
    header = ""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            header = value if isinstance(value, str) else value.decode("latin-1")
            break
    scheme, _, raw_token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not raw_token.strip():
        raise RpcAbort(
            grpc.StatusCode.UNAUTHENTICATED,
            "Send `authorization: Bearer <access token>` metadata.",
        )
    backend = JWTAuthentication()
    try:
        validated = backend.get_validated_token(raw_token.strip().encode())
        return backend.get_user(validated)
    except AuthenticationFailed as exc:  # InvalidToken is a subclass
        raise RpcAbort(
            grpc.StatusCode.UNAUTHENTICATED, "The access token is invalid or expired."
        ) from exc
