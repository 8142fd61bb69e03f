"""What a message is, through the wrappers WhatsApp puts around it: built by neonize's own
builders where it has one, and decoded from the wire form (bytes) as events are."""

from __future__ import annotations

from typing import Any

import pytest
from neonize.builder import build_edit, build_revoke
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from waclient.messages import message_kind, message_text, to_jid, unwrap

CHAT = to_jid("15550000001")
IMAGE = e2e.Message(imageMessage=e2e.ImageMessage(caption="look", mimetype="image/jpeg"))
DOCUMENT = e2e.Message(documentMessage=e2e.DocumentMessage(caption="the plan", fileName="a.pdf"))


def wrapped(field: str, inner: Any) -> Any:
    message = e2e.Message()
    getattr(message, field).message.CopyFrom(inner)
    return message


def through_the_wire(message: Any) -> Any:
    return e2e.Message.FromString(message.SerializeToString())


@pytest.mark.parametrize(
    "field",
    ["ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension"],
)
def test_an_image_in_a_wrapper_is_an_image_with_its_caption(field: str) -> None:
    message = through_the_wire(wrapped(field, IMAGE))
    assert (message_kind(message), message_text(message)) == ("image", "look")


def test_wrappers_nest_and_a_document_with_caption_is_a_document() -> None:
    message = through_the_wire(
        wrapped("ephemeralMessage", wrapped("documentWithCaptionMessage", DOCUMENT))
    )
    assert (message_kind(message), message_text(message)) == ("document", "the plan")
    assert unwrap(message).documentMessage.fileName == "a.pdf"


def test_a_message_sent_from_another_device_is_what_it_carries() -> None:
    message = e2e.Message()
    message.deviceSentMessage.destinationJID = "15550000002@s.whatsapp.net"
    message.deviceSentMessage.message.conversation = "from my phone"
    message = through_the_wire(message)
    assert (message_kind(message), message_text(message)) == ("text", "from my phone")


def test_an_edit_is_an_edit_with_its_new_text() -> None:
    new = e2e.Message(extendedTextMessage=e2e.ExtendedTextMessage(text="fixed typo"))
    message = through_the_wire(build_edit(CHAT, "ID1", new))
    assert (message_kind(message), message_text(message)) == ("edit", "fixed typo")


def test_a_revoke_is_a_revoke() -> None:
    message = through_the_wire(build_revoke(CHAT, CHAT, "ID1", to_jid("15550000000")))
    assert (message_kind(message), message_text(message)) == ("revoke", "")


def test_plain_messages_are_unchanged() -> None:
    assert unwrap(IMAGE) is IMAGE
    assert (message_kind(e2e.Message(conversation="hi")), message_text(IMAGE)) == ("text", "look")
    assert message_kind(e2e.Message()) == "other"
