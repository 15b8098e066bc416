"""Confluent Schema Registry framing of the messages glintstream writes and reads.

Confluent's serializers put a header before each payload: a magic byte (0, then a 4-byte schema
id; or 1, then a 16-byte schema GUID) naming the writer's schema in a Schema Registry. Consumers
built on them (Java's ``KafkaJsonSchemaDeserializer``, ksqlDB, Kafka Connect, confluent-kafka's
``JSONDeserializer``) expect that header.

- Writing: with ``kafka.schema_registry_url`` set, every message glintstream writes to one of its
  message topics (``stream.schemas.MESSAGES``: clicks from ``produce``, recommendations, dead
  letters, model updates, worker statuses) is framed by confluent-kafka's ``JSONSerializer``,
  which registers the message's JSON Schema (the one ``stream.schemas`` generates) under the
  topic's subject, ``<topic>-value``, on first use. The payload after the header is the same
  JSON as without a registry. Unset (the default), values are plain JSON.
- Reading: a JSON text never starts with byte 0 or 1, so every reader here takes framed and
  plain values alike (``unframe``): a click from a producer that uses Confluent's serializer is
  accepted whether or not this deployment names a registry; its JSON is checked by
  ``stream.clicks`` as any other click's.

The registry client is confluent-kafka's own (``confluent-kafka[schemaregistry]``); its
``mock://`` URLs give an in-process registry (what the tests use: no registry server installs
on this machine).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the click parser imports this module: it stays light
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.json_schema import JSONSerializer
    from confluent_kafka.serialization import SerializationContext

    from stream.settings import Settings

# the first byte of a framed value: schema id (0) or schema GUID (1); never a JSON text's
FRAMED_FIRST_BYTES = (b"\x00", b"\x01")


class FramingError(ValueError):
    """A value starts like a framed one but its header is cut short or unknown."""


class RegistryError(RuntimeError):
    """The registry did not register a schema or give its id (unreachable, refused)."""


def unframe(value: bytes) -> bytes:
    """The JSON payload of ``value``: without its Confluent header when it has one."""
    if value[:1] not in FRAMED_FIRST_BYTES:
        return value
    # the library's header parser, imported only when a framed value first comes: plain-JSON
    # readers never pay for the registry client's imports
    from confluent_kafka.schema_registry.common.serde import SchemaId

    try:
        return SchemaId("JSON").from_bytes(io.BytesIO(value)).read()
    except Exception as e:  # struct.error on a short header, SerializationError on a bad one
        raise FramingError(f"a Schema Registry header that cannot be read: {e}") from e


def payload(value: bytes | None) -> bytes:
    """What a reader validates: the JSON of ``value`` (none: empty), or ``value`` as it is when
    its header cannot be read (the reader's validation then reports it as malformed)."""
    try:
        return unframe(value or b"")
    except FramingError:
        return value or b""


def registry_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka's ``SchemaRegistryClient`` configuration from ``kafka.*`` settings."""
    kafka = settings.kafka
    config: dict[str, Any] = {"url": kafka.schema_registry_url}
    if kafka.schema_registry_basic_auth is not None:
        config["basic.auth.user.info"] = kafka.schema_registry_basic_auth.get_secret_value()
    if kafka.ssl_cafile:  # one CA for the cluster and its registry
        config["ssl.ca.location"] = kafka.ssl_cafile
    return config


def message_topics(settings: Settings) -> dict[str, str]:
    """topic name -> the message it carries (``stream.schemas.MESSAGES``), for this deployment."""
    from stream.schemas import MESSAGES  # it imports every message model: not at this
    # module's import, which the click parser pays

    topics: dict[str, str] = {}
    for name, (_model, carrier) in MESSAGES.items():
        group, _, field = carrier.partition(".")
        if group == "topics":
            topics[getattr(settings.topics, field)] = name
    return topics


class Framing:
    """How this deployment writes its messages: ``framing(topic, json)`` is the value to write,
    plain JSON without a registry, framed for the registry with one."""

    def __init__(self, settings: Settings) -> None:
        self._topics = message_topics(settings)
        self._url = settings.kafka.schema_registry_url
        self._client: SchemaRegistryClient | None = None
        if settings.kafka.schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            # new_client: an http(s) registry, or an in-process one for a mock:// URL
            self._client = SchemaRegistryClient.new_client(registry_config(settings))
        self._serializers: dict[str, tuple[JSONSerializer, SerializationContext]] = {}

    @property
    def registry(self) -> SchemaRegistryClient | None:
        return self._client

    def __call__(self, topic: str, value: bytes, message: str | None = None) -> bytes:
        """``value``, the JSON of a ``message`` (default: the one ``topic`` carries), as
        written to ``topic``; a topic of no message (a changelog) takes it as it is."""
        if self._client is None:
            return value
        name = message or self._topics.get(topic)
        if name is None:
            return value
        if topic not in self._serializers:
            from confluent_kafka.serialization import MessageField, SerializationContext

            context = SerializationContext(topic, MessageField.VALUE)
            self._serializers[topic] = (self._serializer(name), context)
        serializer, context = self._serializers[topic]
        try:
            framed = serializer(value, context)
        except Exception as e:  # the HTTP client's, the registry's or the serializer's errors
            raise RegistryError(
                f"the schema registry at {self._url} did not frame a {name} for {topic}: {e!r}"
            ) from e
        assert framed is not None  # None only for a None value
        return framed

    def _serializer(self, name: str) -> JSONSerializer:
        from confluent_kafka.schema_registry.json_schema import JSONSerializer

        from stream.schemas import schema_text

        return JSONSerializer(
            schema_text(name),
            self._client,
            # the payload is the JSON the message's model wrote: valid by construction
            to_dict=lambda payload, _ctx: payload,
            json_encode=lambda payload: payload,
            conf={"auto.register.schemas": True, "validate": False},
        )
