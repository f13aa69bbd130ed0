"""The chat people use (issue 15 §6), in a real browser: rooms with live unread counts, a
private room and its invite, leaving, direct messages, editing and deleting your own
messages, scrolling back through history, the tasks/chat toggle of a phone and emoji that
render. Two users in two browser contexts against one real Daphne shared by the module
(the tables are flushed between tests; the server only ever sees committed rows).

Fixtures and steps are test_browser.py's (docs/browser.md says how to run them).
"""

# ruff: noqa: F811  (the fixtures imported from test_browser.py are taken by name)
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chat import services as chat_services
from chat.models import ChatParticipant, ChatRoom, Message
from devserver import testing
from devserver.testing import wait_until
from taskhub.tests.test_browser import (  # noqa: F401 (fixtures)
    CHROMIUM,
    browser,
    expect,
    on_server,
    open_page,
)
from taskhub.tests.test_browser import (
    sign_in as sign_in_page,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_connection_registry"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} not found: run .ci/install-debian-packages.sh (apt chromium) to run "
        "the browser tests",
    ),
]


@pytest.fixture(scope="module")
def chat_server(django_db_setup, django_db_blocker) -> Iterator[str]:
    """One Daphne for the module: it holds no state of its own between tests (sessions and
    rows are in the test database, which each test flushes)."""
    web, base_url = testing.start_daphne()
    yield base_url
    web.stop()


@pytest.fixture
def web_url(chat_server, general_room) -> str:
    return chat_server


def sign_in(page: Any, base_url: str, user: Any, password: str) -> None:
    """test_browser.py's sign-in, then until the chat follows the user's rooms (a message
    posted before would come in a history, not live)."""
    sign_in_page(page, base_url, user, password)
    expect(page.locator("body")).to_have_attribute("data-chat-ready", "true")


def room_participant(*, slug: str, username: str) -> ChatParticipant:
    return ChatParticipant.objects.get(room__slug=slug, user__username=username)


def room_button(page: Any, name: str) -> Any:
    return page.get_by_role("navigation", name="Chat rooms").get_by_role("button", name=name)


def message_item(page: Any, text: str) -> Any:
    return page.get_by_role("log").get_by_role("listitem").filter(has_text=text)


def say(page: Any, text: str) -> None:
    page.locator("#chat-input").fill(text)
    page.locator("#chat-input").press("Enter")


def record_chat_frames(page: Any) -> None:
    """Keep every chat frame this page's socket receives (to read back later)."""
    page.evaluate(
        """() => {
          window.chatFrames = [];
          window.taskhubClient.on("*", (frame) => {
            if (frame.type.startsWith("chat.")) window.chatFrames.push(frame);
          });
        }"""
    )


# --- Tests ---------------------------------------------------------------------------------


def test_a_private_room_is_created_an_invitee_sees_it_counts_unread_and_talks(
    web_url, open_page, alice, bob
):
    alice_page, bob_page = open_page(), open_page()
    sign_in(alice_page, web_url, alice, "alice-pass-123")
    sign_in(bob_page, web_url, bob, "bob-pass-123")
    expect(room_button(bob_page, "# General")).to_be_visible()

    alice_page.get_by_role("button", name="New room").click()
    dialog = alice_page.get_by_role("dialog", name="New room")
    dialog.get_by_label("Room name").fill("Project X")
    dialog.get_by_label("Private").check()
    dialog.get_by_role("button", name="Create room").click()
    expect(alice_page.get_by_role("heading", name="🔒 Project X")).to_be_visible()
    expect(alice_page.get_by_text("No messages in 🔒 Project X yet")).to_be_visible()
    # Bob is not in it: he does not see it.
    expect(room_button(bob_page, "Project X")).to_have_count(0)

    alice_page.get_by_role("button", name="Invite").click()
    invite = alice_page.get_by_role("dialog", name="Invite to")
    invite.get_by_label("Username").fill("bob")
    invite.get_by_role("button", name="Invite").click()
    expect(alice_page.locator("#chat-notice")).to_have_text("bob was invited.")

    # Bob's list gains the room live, and counts what alice says there while he reads #general.
    expect(room_button(bob_page, "🔒 Project X")).to_be_visible()
    say(alice_page, "Kickoff at ten")
    expect(room_button(bob_page, "🔒 Project X, 1 unread")).to_be_visible()
    say(alice_page, "Bring the numbers")
    expect(room_button(bob_page, "🔒 Project X, 2 unread")).to_be_visible()
    expect(bob_page.get_by_role("log").get_by_text("Kickoff at ten")).to_have_count(0)

    room_button(bob_page, "🔒 Project X").click()
    expect(message_item(bob_page, "Kickoff at ten")).to_be_visible()
    expect(message_item(bob_page, "Bring the numbers")).to_be_visible()
    expect(room_button(bob_page, "🔒 Project X")).to_have_attribute("aria-label", "🔒 Project X")
    say(bob_page, "On it")
    expect(message_item(alice_page, "On it")).to_be_visible()

    # The read mark went to the server: a fresh page counts nothing unread there.
    def bob_read_it() -> bool:
        participant = room_participant(slug="project-x", username="bob")
        return participant.last_read_message_id is not None

    wait_until(lambda: on_server(bob_read_it), timeout=10, message="bob's read mark")
    bob_page.reload()
    expect(room_button(bob_page, "🔒 Project X")).to_have_attribute("aria-label", "🔒 Project X")


def test_leaving_a_private_room_cuts_off_the_users_other_tabs_at_once(
    web_url, open_page, alice, bob
):
    room = on_server(chat_services.chat_room_create, creator=alice, name="Team", is_public=False)
    on_server(chat_services.chat_room_invite, room=room, by=alice, username="bob")
    bob_tab, bob_other_tab = open_page(), open_page()
    sign_in(bob_tab, web_url, bob, "bob-pass-123")
    sign_in(bob_other_tab, web_url, bob, "bob-pass-123")
    room_button(bob_other_tab, "🔒 Team").click()
    expect(bob_other_tab.get_by_role("heading", name="🔒 Team")).to_be_visible()
    record_chat_frames(bob_other_tab)

    room_button(bob_tab, "🔒 Team").click()
    bob_tab.get_by_role("button", name="Leave 🔒 Team").click()

    # The other tab is told by the server (chat.unsubscribed), not by a reload.
    expect(bob_other_tab.locator("#chat-notice")).to_have_text("You left 🔒 Team.")
    expect(room_button(bob_other_tab, "🔒 Team")).to_have_count(0)
    expect(bob_other_tab.get_by_role("heading", name="# General")).to_be_visible()
    expect(room_button(bob_tab, "🔒 Team")).to_have_count(0)

    # Nothing of the room reaches bob's sockets any more: alice's next message there is
    # not delivered, while a later one in #general is.
    on_server(chat_services.chat_message_post, room=room, author=alice, text="after you left")
    general = on_server(ChatRoom.objects.get, slug="general")
    on_server(chat_services.chat_room_join, room=general, user=alice)
    on_server(chat_services.chat_message_post, room=general, author=alice, text="marker")
    expect(message_item(bob_other_tab, "marker")).to_be_visible()
    frames = bob_other_tab.evaluate("window.chatFrames")
    assert [f["data"]["reason"] for f in frames if f["type"] == "chat.unsubscribed"] == ["left"]
    assert [f for f in frames if f["data"].get("room") == room.slug and "text" in f["data"]] == []


def test_direct_messages_with_edit_and_delete_seen_by_the_other_user(
    web_url, open_page, alice, bob
):
    alice_page, bob_page = open_page(), open_page()
    sign_in(alice_page, web_url, alice, "alice-pass-123")
    sign_in(bob_page, web_url, bob, "bob-pass-123")

    alice_page.get_by_label("Direct message to (username)").fill("bob")
    alice_page.get_by_role("button", name="Start").click()
    expect(alice_page.get_by_role("heading", name="@bob")).to_be_visible()
    expect(room_button(bob_page, "@alice")).to_be_visible()

    say(alice_page, "Lunch? 🎉")
    expect(room_button(bob_page, "@alice, 1 unread")).to_be_visible()
    room_button(bob_page, "@alice").click()
    message = message_item(bob_page, "Lunch? 🎉")
    expect(message).to_be_visible()
    # Bob may not edit or delete alice's message.
    expect(message.get_by_role("button", name="Edit message")).to_have_count(0)

    message_id = message_item(alice_page, "Lunch? 🎉").get_attribute("data-message-id")
    mine = alice_page.locator(f'#chat-log li[data-message-id="{message_id}"]')
    mine.get_by_role("button", name="Edit message").click()
    mine.get_by_role("textbox", name="Edit message").fill("Lunch at noon? 🎉")
    mine.get_by_role("textbox", name="Edit message").press("Enter")
    edited = message_item(bob_page, "Lunch at noon? 🎉")
    expect(edited).to_be_visible()
    expect(edited.get_by_text("(edited)")).to_be_visible()

    expect(mine.get_by_text("(edited)")).to_be_visible()
    mine.get_by_role("button", name="Delete message").click()
    mine.get_by_role("button", name="Really delete message?").click()
    expect(message_item(bob_page, "Lunch at noon?")).to_have_count(0)
    expect(message_item(alice_page, "Lunch at noon?")).to_have_count(0)
    expect(bob_page.get_by_text("No messages in @alice yet")).to_be_visible()
    assert on_server(Message.objects.filter(text__startswith="Lunch").count) == 0


def test_scrolling_up_loads_older_history_twenty_at_a_time(
    web_url, open_page, alice, bob, general_room
):
    def seed() -> None:
        chat_services.chat_room_join(room=general_room, user=bob)
        for n in range(45):
            chat_services.chat_message_post(room=general_room, author=bob, text=f"note {n:02}")

    on_server(seed)
    page = open_page(viewport={"width": 1280, "height": 700})
    sign_in(page, web_url, alice, "alice-pass-123")
    log = page.get_by_role("log", name="Messages in general")
    expect(log.get_by_text("note 44", exact=True)).to_be_visible()
    expect(log.get_by_role("listitem")).to_have_count(20)

    for shown in (40, 45):
        log.evaluate("log => { log.scrollTop = 0; }")
        expect(log.get_by_role("listitem")).to_have_count(shown)
    expect(log.get_by_text("note 00", exact=True)).to_be_attached()
    expect(page.get_by_text("The beginning of # General.")).to_be_visible()
    # Loaded once each: ids in order, none twice.
    ids = log.get_by_role("listitem").evaluate_all(
        "items => items.map(item => Number(item.dataset.messageId))"
    )
    assert ids == sorted(set(ids)) and len(ids) == 45


def test_a_phone_switches_between_tasks_and_chat(web_url, open_page, alice, bob, general_room):
    page = open_page(viewport={"width": 375, "height": 740})
    sign_in(page, web_url, alice, "alice-pass-123")
    tasks_tab = page.get_by_role("button", name="Tasks", exact=True)
    chat_tab = page.locator('[data-view-tab="chat"]')  # its name carries the unread count
    expect(tasks_tab).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_role("heading", name="Your tasks")).to_be_visible()
    expect(page.get_by_role("heading", name="Chat", exact=True)).to_be_hidden()

    # While the tasks are shown, the Chat button counts what arrives in the open room.
    def bob_says_hi() -> None:
        chat_services.chat_room_join(room=general_room, user=bob)
        chat_services.chat_message_post(room=general_room, author=bob, text="hi from bob")

    on_server(bob_says_hi)
    expect(page.get_by_role("button", name="Chat, 1 unread")).to_be_visible()

    chat_tab.click()
    expect(message_item(page, "hi from bob")).to_be_visible()
    expect(chat_tab).to_have_attribute("aria-label", "Chat")
    expect(page.get_by_role("heading", name="Chat", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Your tasks")).to_be_hidden()
    expect(page.locator("#chat-input")).to_be_in_viewport()
    say(page, "from my phone")
    expect(message_item(page, "from my phone")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the chat scrolls sideways by {overflow}px on a phone"

    page.get_by_role("button", name="Tasks", exact=True).click()
    expect(page.get_by_role("heading", name="Your tasks")).to_be_visible()
    expect(page.get_by_role("heading", name="Chat", exact=True)).to_be_hidden()
    # On a wide screen there is no toggle: both are shown.
    page.set_viewport_size({"width": 1280, "height": 900})
    expect(page.get_by_role("heading", name="Chat", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Your tasks")).to_be_visible()
    expect(tasks_tab).to_be_hidden()


COLOURED_PIXELS = """([element, text]) => {
  // Draw `text` in the element's own font stack, in black: a colour emoji font paints
  // coloured pixels, a missing glyph (a box, "tofu") only black ones.
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 64;
  const context = canvas.getContext("2d");
  context.font = `40px ${getComputedStyle(element).fontFamily}`;
  context.textBaseline = "top";
  context.fillStyle = "#000";
  context.fillText(text, 4, 4);
  const pixels = context.getImageData(0, 0, 64, 64).data;
  let coloured = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    const [r, g, b, a] = pixels.slice(i, i + 4);
    if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured += 1;
  }
  return coloured;
}"""


def test_emoji_render_in_colour_not_as_boxes(web_url, open_page, alice, general_room):
    def post() -> None:
        chat_services.chat_room_join(room=general_room, user=alice)
        chat_services.chat_message_post(room=general_room, author=alice, text="Shipped 🎉🚀")

    on_server(post)
    page = open_page()
    sign_in(page, web_url, alice, "alice-pass-123")
    text = message_item(page, "Shipped").locator(".msg-text")
    expect(text).to_be_visible()

    handle = text.element_handle()
    assert page.evaluate(COLOURED_PIXELS, [handle, "🎉"]) > 50
    assert page.evaluate(COLOURED_PIXELS, [handle, "🚀"]) > 50
    # The check can fail: a code point no font has is drawn as a box, with no colour.
    assert page.evaluate(COLOURED_PIXELS, [handle, "\U0010fffd"]) == 0


def test_without_its_default_room_the_chat_says_so_once_and_the_page_stays_live(
    chat_server, open_page, alice
):
    """An operator deleted #general. The chat tells the user, asks the server once, and
    leaves the socket alone: it used to ask again on every refusal, until the server closed
    the socket for flooding and the page went 'Reconnecting…'."""
    on_server(lambda: ChatRoom.objects.filter(slug="general").delete())
    page = open_page()
    asked: list[str] = []
    page.on(
        "websocket",
        lambda socket: socket.on(
            "framesent",
            lambda payload: asked.append(payload) if "subscribe.chat" in str(payload) else None,
        ),
    )
    sign_in_page(page, chat_server, alice, "alice-pass-123")

    expect(page.get_by_role("alert")).to_have_text("Chat unavailable: No such room.")
    page.wait_for_timeout(2000)  # the loop ran hundreds of requests in far less
    expect(page.locator("#conn-status")).to_have_text("Live")
    assert len(asked) == 1
