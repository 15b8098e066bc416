"""What the Kafka settings (``stream.settings.KafkaSettings``) become for each client library.

Two libraries reach the brokers, and they take different settings:

- confluent-kafka (librdkafka): every producer, consumer and admin client of glintstream, the
  worker's output producer and changelog reader included: librdkafka properties, built here, with
  ``kafka_extra`` merged over the typed settings;
- aiokafka, through faust: the worker's clicks consumer and faust's own producer (worker status):
  keyword arguments and a ``ssl.SSLContext``. aiokafka has no librdkafka properties, so
  ``kafka_extra`` never reaches it.

``KafkaSettings``' methods are the entry points; this module holds the mapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

if TYPE_CHECKING:
    import ssl

    from stream.settings import KafkaSettings

OAUTHBEARER = "OAUTHBEARER"


def secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _typed(k: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties of the typed settings (those that are set)."""
    conf: dict[str, Any] = {"bootstrap.servers": k.bootstrap_servers}
    optional = {
        "security.protocol": k.security_protocol,
        "sasl.mechanism": k.sasl_mechanism,
        "sasl.username": k.sasl_username,
        "sasl.password": secret(k.sasl_password),
        "ssl.ca.location": k.ssl_cafile,
        "ssl.certificate.location": k.ssl_certfile,
        "ssl.key.location": k.ssl_keyfile,
        "ssl.key.password": secret(k.ssl_key_password),
        **_oidc(k),
    }
    conf.update({key: v for key, v in optional.items() if v is not None})
    return conf


def _oidc(k: KafkaSettings) -> dict[str, Any]:
    """librdkafka fetches (and refreshes) OAUTHBEARER tokens itself with the OIDC
    client-credentials grant when given the token endpoint."""
    if k.sasl_oauthbearer_token_endpoint_url is None:
        return {}
    return {
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": k.sasl_oauthbearer_token_endpoint_url,
        "sasl.oauthbearer.client.id": k.sasl_oauthbearer_client_id,
        "sasl.oauthbearer.client.secret": secret(k.sasl_oauthbearer_client_secret),
        "sasl.oauthbearer.scope": k.sasl_oauthbearer_scope,
    }


def confluent_config(k: KafkaSettings) -> dict[str, Any]:
    """The typed settings, then ``kafka_extra`` over them (it may override any of them)."""
    return {**_typed(k), **k.extra}


def confluent_consumer_config(k: KafkaSettings, group_id: str, **extra: Any) -> dict[str, Any]:
    """A group consumer that joins quickly on Tansu and starts from the beginning;
    ``kafka_extra`` overrides these defaults too, and the caller's ``extra`` (what the code
    relies on, e.g. no auto-commit) overrides ``kafka_extra``."""
    return {
        **_typed(k),
        "group.id": group_id,
        "session.timeout.ms": k.session_timeout_ms,
        # LATEST is unreliable on Tansu (ListOffsets under-reports the log end).
        "auto.offset.reset": "earliest",
        **k.extra,
        **extra,
    }


def aiokafka_kwargs(k: KafkaSettings) -> dict[str, Any]:
    """The same connection for aiokafka clients (and so for faust); no ``kafka_extra``."""
    kwargs: dict[str, Any] = {"bootstrap_servers": k.bootstrap_servers}
    if k.security_protocol:
        kwargs["security_protocol"] = k.security_protocol
    if k.sasl_mechanism:
        kwargs["sasl_mechanism"] = k.sasl_mechanism
    if (k.sasl_mechanism or "").upper() == OAUTHBEARER:
        kwargs["sasl_oauth_token_provider"] = token_provider(k)
    else:
        if k.sasl_username is not None:
            kwargs["sasl_plain_username"] = k.sasl_username
        if k.sasl_password is not None:
            kwargs["sasl_plain_password"] = secret(k.sasl_password)
    context = ssl_context(k)
    if context is not None:
        kwargs["ssl_context"] = context
    return kwargs


def ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    """A TLS context (the CA, and the client certificate for mutual TLS) when TLS is asked for."""
    wanted = k.ssl_cafile or k.ssl_certfile or "SSL" in (k.security_protocol or "").upper()
    if not wanted:
        return None
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(
        cafile=k.ssl_cafile,
        certfile=k.ssl_certfile,
        keyfile=k.ssl_keyfile,
        password=secret(k.ssl_key_password),
    )


def token_provider(k: KafkaSettings) -> Any:
    """aiokafka's OAUTHBEARER token source: the same OIDC client-credentials grant."""
    from stream.oauth import OidcTokenProvider

    if k.sasl_oauthbearer_token_endpoint_url is None or k.sasl_oauthbearer_client_id is None:
        raise ValueError(
            "sasl_mechanism OAUTHBEARER needs kafka_sasl_oauthbearer_token_endpoint_url and "
            "kafka_sasl_oauthbearer_client_id"
        )
    return OidcTokenProvider(
        k.sasl_oauthbearer_token_endpoint_url,
        k.sasl_oauthbearer_client_id,
        k.sasl_oauthbearer_client_secret,
        k.sasl_oauthbearer_scope,
    )


def faust_credentials(k: KafkaSettings) -> Any:
    """faust ``broker_credentials`` for the optional SASL/TLS settings, or None."""
    import faust

    kw = aiokafka_kwargs(k)
    if "sasl_oauth_token_provider" in kw:
        return faust.OAuthCredentials(
            oauth_cb=kw["sasl_oauth_token_provider"], ssl_context=kw.get("ssl_context")
        )
    if k.sasl_mechanism:
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=secret(k.sasl_password),
            mechanism=k.sasl_mechanism,
            ssl_context=kw.get("ssl_context"),
        )
    if "ssl_context" in kw:
        return faust.SSLCredentials(kw["ssl_context"])
    return None
