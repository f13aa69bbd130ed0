// The dashboard's chat: rooms with live unread counts, direct messages, invites, leaving,
// editing and deleting your own messages, and history loaded as you scroll back.
//
// dashboard.js owns the socket and hands it here (startChat); everything chat does with it
// goes through the protocol client's on()/send()/request(). Like the rest of the page, user
// text reaches the DOM through textContent only (docs/browser.md).
//
// How the counts stay live: the page subscribes to every room the user is a participant of
// (one `subscribe.chat` each), so every post of every room reaches it. A room's count is the
// REST list's `unread_count` (messages up to its `last_message_id`) plus each message seen
// since with a higher id, not the user's own, each counted once; the room on screen is read.

const HISTORY_PAGE = 20; // older messages fetched per scroll-back (and what a subscribe sends)
const MAX_FOLLOWED_ROOMS = 50; // rooms subscribed at once; the others count on the next list read
const LEFT_REASONS = {
  left: "You left",
  removed: "You were removed from",
  private: "You no longer have access to",
  deleted: "This room was deleted:",
  no_access: "You no longer have access to",
};

export function startChat({ client, config, api, el, timeElement, announce }) {
  const $ = (id) => document.getElementById(id);
  const me = config.user.id;
  const roomList = $("chat-room-list");
  const roomTitle = $("chat-room-title");
  const notice = $("chat-notice");
  const log = $("chat-log");
  const older = $("chat-older");
  const empty = $("chat-empty");
  const form = $("chat-form");
  const input = $("chat-input");
  const inputLabel = $("chat-input-label");
  const error = $("chat-error");
  const typingLine = $("chat-typing");
  const inviteButton = $("chat-invite");
  const leaveButton = $("chat-leave");
  const tabCount = $("chat-tab-count");
  const viewTabs = document.querySelector(".view-tabs");

  /** slug -> {data (REST room), messages: Map id->message, counted: Set, unread, hasMore, loadingOlder} */
  const rooms = new Map();
  const deleted = new Set(); // message ids deleted (a history read before the delete may hold one)
  const typers = new Map(); // username -> timer (active room only)
  const sentRefs = new Map(); // ref -> text, given back if the server refuses it
  let active = config.chatRoom;
  let lastTypingSentAt = 0;
  let readTimer = null;

  // --- Rooms ----------------------------------------------------------------------------

  function roomState(slug) {
    if (!rooms.has(slug)) {
      rooms.set(slug, {
        data: { slug, name: slug, is_public: true, kind: "room", role: null, unread_count: 0, last_message_id: null },
        messages: new Map(),
        counted: new Set(),
        unread: 0,
        hasMore: false,
        loadingOlder: false,
        subscribed: false,
        history: false,
      });
    }
    return rooms.get(slug);
  }

  function displayName(data) {
    if (data.kind === "direct") return `@${data.peer?.username ?? "deleted user"}`;
    return `${data.is_public ? "#" : "🔒"} ${data.name}`;
  }

  function isMember(data) {
    return data.role !== null && data.role !== undefined;
  }

  function mergeRoom(data) {
    const state = roomState(data.slug);
    const first = !state.listed;
    state.data = { ...state.data, ...data };
    state.listed = true;
    if (first || state.restLastId !== data.last_message_id) {
      // A fresh count from the server: it covers everything up to last_message_id.
      state.restLastId = data.last_message_id ?? 0;
      state.unread = data.unread_count || 0;
      state.counted = new Set();
      for (const message of state.messages.values()) countUnread(state, message);
    }
    if (data.slug === active && chatOnScreen()) state.unread = 0; // read (markRead tells the server)
    return state;
  }

  async function loadRooms() {
    try {
      const page = await api("GET", "/api/chat/rooms/?page_size=100");
      const listed = new Set();
      for (const data of page.results || []) {
        mergeRoom(data);
        listed.add(data.slug);
      }
      for (const slug of [...rooms.keys()]) {
        if (!listed.has(slug) && slug !== config.chatRoom) rooms.delete(slug);
      }
      renderRooms();
      showRoomHeader(); // the active room's real name and role are known now
      await followRooms();
      document.body.dataset.chatReady = "true"; // the rooms are followed (tests wait on it)
    } catch (err) {
      error.textContent = `Could not load chat rooms: ${err.message}`;
    }
  }

  /** Subscribe to the active room and every room the user is in (for live unread counts). */
  async function followRooms() {
    const slugs = [active];
    for (const [slug, state] of rooms) {
      if (slug !== active && isMember(state.data) && !state.subscribed) slugs.push(slug);
    }
    await Promise.all(slugs.slice(0, MAX_FOLLOWED_ROOMS).map((slug) => subscribe(slug)));
  }

  async function subscribe(slug) {
    const state = roomState(slug);
    try {
      const reply = await client.request("subscribe.chat", { room: slug });
      state.subscribed = true;
      state.history = true;
      const messages = reply.data?.messages || [];
      if (!state.loadedOlder) state.hasMore = messages.length >= HISTORY_PAGE;
      for (const message of messages) addMessage(message);
      if (!isMember(state.data)) {
        // Subscribing to a public room joined it.
        state.data.role = "member";
        renderRooms();
      }
      if (slug === active) {
        renderLog();
        log.scrollTop = log.scrollHeight;
        if (chatOnScreen()) markRead();
        fillIfShort();
      }
    } catch (err) {
      if (err.code === "connection_lost" || err.code === "not_connected") return; // again on "open"
      if (slug === active) error.textContent = `Chat unavailable: ${err.message}`;
      if (err.code === "not_found") dropRoom(slug, null);
    }
  }

  function renderRooms() {
    const sorted = [...rooms.values()].sort((a, b) => {
      const kind = (a.data.kind === "direct") - (b.data.kind === "direct");
      return kind || displayName(a.data).localeCompare(displayName(b.data));
    });
    const items = sorted.map((state) => {
      const { data } = state;
      const name = displayName(data);
      const count = state.unread;
      const button = el("button", {
        className: "room-link",
        attrs: {
          type: "button",
          "data-room": data.slug,
          "aria-current": data.slug === active ? "true" : null,
          "aria-label": count > 0 ? `${name}, ${count} unread` : name,
        },
      }, [el("span", { className: "room-name", text: name })]);
      if (count > 0) button.append(el("span", { className: "room-unread", text: count > 99 ? "99+" : count, attrs: { "aria-hidden": "true" } }));
      if (!isMember(data)) button.classList.add("room-link--outside");
      return el("li", {}, [button]);
    });
    roomList.replaceChildren(...items);
    const total = [...rooms.values()].reduce((sum, state) => sum + state.unread, 0);
    tabCount.textContent = total > 99 ? "99+" : String(total);
    tabCount.hidden = total === 0;
    tabCount.closest("button")?.setAttribute("aria-label", total > 0 ? `Chat, ${total} unread` : "Chat");
  }

  function showRoomHeader() {
    const state = roomState(active);
    const name = displayName(state.data);
    roomTitle.textContent = name;
    log.setAttribute("aria-label", `Messages in ${active}`);
    inputLabel.textContent = `Message to #${active}`;
    input.placeholder = `Message ${name}`;
    const privateRoom = !state.data.is_public && state.data.kind !== "direct";
    inviteButton.hidden = !privateRoom || !isMember(state.data);
    leaveButton.hidden = !isMember(state.data) || active === config.chatRoom;
    leaveButton.setAttribute("aria-label", `Leave ${name}`);
  }

  async function switchRoom(slug) {
    if (slug === active && roomState(slug).history) return;
    active = slug;
    typers.clear();
    typingLine.textContent = "";
    error.textContent = "";
    showRoomHeader();
    renderLog();
    renderRooms();
    const state = roomState(slug);
    if (!state.subscribed) await subscribe(slug);
    else markRead();
    log.scrollTop = log.scrollHeight;
  }

  /** The server or this page ended our membership: drop the room and say why. */
  function dropRoom(slug, reason) {
    const state = rooms.get(slug);
    const name = state ? displayName(state.data) : `#${slug}`;
    if (state && state.data.is_public && reason === "left") {
      // A public room stays readable: keep it listed, as a room you are not in.
      state.data.role = null;
      state.unread = 0;
    } else {
      rooms.delete(slug);
    }
    if (reason) {
      const text = `${LEFT_REASONS[reason] || "You left"} ${name}.`;
      notice.textContent = text;
      announce(text);
    }
    if (slug === active && slug !== config.chatRoom) {
      active = config.chatRoom;
      showRoomHeader();
      renderLog();
      if (!roomState(active).subscribed) subscribe(active);
    }
    // The default room itself is gone (an operator deleted it): nowhere to fall back to.
    // Its "Chat unavailable" stays; subscribing again would be refused again, in a loop
    // that ends only when the server closes the socket for flooding (4429).
    renderRooms();
  }

  roomList.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-room]");
    if (!button) return;
    notice.textContent = "";
    switchRoom(button.dataset.room);
    document.body.dataset.view = "chat";
  });

  // --- Messages -------------------------------------------------------------------------

  /** Whether the chat is on screen: always on a wide screen, behind its tab on a phone. */
  function chatOnScreen() {
    return document.body.dataset.view === "chat" || getComputedStyle(viewTabs).display === "none";
  }

  function countUnread(state, message) {
    if (message.author?.id === me || message.id <= (state.restLastId ?? 0)) return;
    if (state.counted.has(message.id) || (state.data.slug === active && chatOnScreen())) return;
    state.counted.add(message.id);
    state.unread += 1;
  }

  function addMessage(message) {
    if (!message || message.id === undefined || deleted.has(message.id)) return;
    const state = rooms.get(message.room);
    if (!state) return; // a room we no longer show
    const known = state.messages.has(message.id);
    state.messages.set(message.id, message);
    if (isMember(state.data)) countUnread(state, message);
    if (message.room === active) {
      const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
      placeMessage(message, known);
      empty.hidden = true;
      if (stick) log.scrollTop = log.scrollHeight;
      const timer = typers.get(message.author?.username);
      if (timer) {
        clearTimeout(timer);
        typers.delete(message.author.username);
        showTypers();
      }
      if (!known && chatOnScreen()) markRead();
    }
    if (!known) renderRooms();
  }

  function removeMessage(data) {
    if (!data || data.id === undefined) return;
    deleted.add(data.id);
    const state = rooms.get(data.room);
    if (!state) return;
    state.messages.delete(data.id);
    if (state.counted.delete(data.id)) {
      state.unread = Math.max(0, state.unread - 1);
      renderRooms();
    }
    log.querySelector(`li[data-message-id="${Number(data.id)}"]`)?.remove();
    if (data.room === active) empty.hidden = state.messages.size > 0;
  }

  function messageItem(message) {
    const mine = message.author?.id === me;
    const item = el("li", { className: mine ? "msg msg--mine" : "msg", attrs: { "data-message-id": message.id } });
    const meta = el("div", { className: "msg-meta" }, [
      el("span", { className: "msg-author", text: message.author?.username ?? "deleted user" }),
      timeElement(message.created_at),
    ]);
    if (message.edited_at) meta.append(el("span", { className: "muted msg-edited", text: "(edited)" }));
    if (mine) {
      meta.append(
        el("span", { className: "msg-actions" }, [
          el("button", { className: "link-button", text: "Edit", attrs: { type: "button", "data-msg-action": "edit", "aria-label": "Edit message" } }),
          el("button", { className: "link-button link-button--danger", text: "Delete", attrs: { type: "button", "data-msg-action": "delete", "aria-label": "Delete message" } }),
        ]),
      );
    }
    item.append(meta, el("p", { className: "msg-text", text: message.text }));
    return item;
  }

  /** Put one message of the active room in the log, in id order (history and live interleave). */
  function placeMessage(message, replace) {
    const item = messageItem(message);
    const existing = log.querySelector(`li[data-message-id="${Number(message.id)}"]`);
    if (existing) {
      if (existing.querySelector("form")) return; // being edited here: keep the editor
      existing.replaceWith(item);
      return;
    }
    if (replace) return;
    let before = null;
    for (const node of log.children) {
      if (Number(node.dataset.messageId) > message.id) {
        before = node;
        break;
      }
    }
    log.insertBefore(item, before);
  }

  function renderLog() {
    const state = roomState(active);
    const sorted = [...state.messages.values()].sort((a, b) => a.id - b.id);
    log.replaceChildren(...sorted.map(messageItem));
    empty.textContent = `No messages in ${displayName(state.data)} yet. Say hello!`;
    empty.hidden = sorted.length > 0 || !state.history;
    older.textContent = state.history && !state.hasMore && sorted.length > 0 ? `The beginning of ${displayName(state.data)}.` : "";
  }

  /** The active room is on screen: mark it read up to its newest message (debounced). */
  function markRead() {
    const state = roomState(active);
    const wasUnread = state.unread > 0;
    state.unread = 0;
    for (const id of state.messages.keys()) state.counted.add(id);
    if (wasUnread) renderRooms();
    if (!isMember(state.data)) return;
    clearTimeout(readTimer);
    const slug = active;
    readTimer = setTimeout(() => {
      const newest = Math.max(0, ...roomState(slug).messages.keys());
      if (newest > 0) api("POST", `/api/chat/rooms/${encodeURIComponent(slug)}/read/`, { message_id: newest }).catch(() => {});
    }, 300);
  }

  async function loadOlder() {
    const state = roomState(active);
    if (!state.hasMore || state.loadingOlder || state.messages.size === 0) return false;
    state.loadingOlder = true;
    const slug = active;
    older.textContent = "Loading older messages…";
    try {
      const oldest = Math.min(...state.messages.keys());
      const page = await api("GET", `/api/chat/rooms/${encodeURIComponent(slug)}/messages/?before=${oldest}&limit=${HISTORY_PAGE}`);
      state.hasMore = Boolean(page.has_more);
      state.loadedOlder = true;
      for (const message of page.results || []) {
        if (!deleted.has(message.id)) {
          state.messages.set(message.id, message);
          state.counted.add(message.id); // older than anything unread we count
        }
      }
      if (slug === active) {
        // Keep the message the reader was looking at where it was.
        const fromBottom = log.scrollHeight - log.scrollTop;
        renderLog();
        log.scrollTop = log.scrollHeight - fromBottom;
      }
      return slug === active;
    } catch (err) {
      older.textContent = `Could not load older messages: ${err.message}`;
      return false;
    } finally {
      state.loadingOlder = false;
    }
  }

  log.addEventListener("scroll", () => {
    if (log.scrollTop < 80) loadOlder();
  });

  /** A log too short to scroll fires no scroll event: load older pages until it scrolls. */
  function fillIfShort() {
    const state = roomState(active);
    if (!state.hasMore || state.loadingOlder || log.clientHeight === 0) return;
    if (log.scrollHeight > log.clientHeight) return;
    loadOlder().then((loaded) => loaded && fillIfShort());
  }

  // Inline edit and delete of one's own messages.
  log.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-msg-action]");
    if (!button) return;
    const item = button.closest("li[data-message-id]");
    const id = Number(item.dataset.messageId);
    const message = roomState(active).messages.get(id);
    if (!message) return;
    if (button.dataset.msgAction === "edit") openEditor(item, message);
    else if (button.dataset.msgAction === "delete") {
      if (button.dataset.confirm !== "yes") {
        // Two steps, without a dialog: the first click asks, the second deletes.
        button.dataset.confirm = "yes";
        button.textContent = "Really delete?";
        button.setAttribute("aria-label", "Really delete message?");
        setTimeout(() => {
          if (button.isConnected) {
            delete button.dataset.confirm;
            button.textContent = "Delete";
            button.setAttribute("aria-label", "Delete message");
          }
        }, 5000);
        return;
      }
      try {
        await api("DELETE", `/api/chat/messages/${id}/`);
        removeMessage({ id, room: message.room });
        announce("Message deleted.");
      } catch (err) {
        error.textContent = `Could not delete: ${err.message}`;
      }
    }
  });

  function openEditor(item, message) {
    const text = item.querySelector(".msg-text");
    const editor = el("form", { className: "msg-editor" });
    const field = el("input", { attrs: { type: "text", maxlength: 2000, "aria-label": "Edit message", autocomplete: "off" } });
    field.value = message.text;
    const save = el("button", { className: "button button--small", text: "Save", attrs: { type: "submit" } });
    const cancel = el("button", { className: "button button--small button--quiet", text: "Cancel", attrs: { type: "button" } });
    editor.append(field, save, cancel);
    text.replaceWith(editor);
    field.focus();
    const close = () => {
      const current = roomState(message.room).messages.get(message.id) || message;
      item.replaceWith(messageItem(current));
    };
    cancel.addEventListener("click", close);
    field.addEventListener("keydown", (event) => {
      if (event.key === "Escape") close();
    });
    editor.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = field.value.trim();
      if (!value || value === message.text) {
        close();
        return;
      }
      save.disabled = true;
      try {
        const reply = await client.request("chat.message.edit", { message_id: message.id, text: value });
        roomState(message.room).messages.set(message.id, reply.data);
        error.textContent = "";
        close();
      } catch (err) {
        save.disabled = false;
        error.textContent = `Not edited: ${err.detail || err.message}`;
      }
    });
  }

  // --- Typing and posting ---------------------------------------------------------------

  function showTypers() {
    const names = [...typers.keys()];
    if (names.length === 0) typingLine.textContent = "";
    else if (names.length === 1) typingLine.textContent = `${names[0]} is typing…`;
    else typingLine.textContent = `${names.slice(0, 3).join(", ")} are typing…`;
  }

  function onTyping(frame) {
    const data = frame.data || {};
    if (data.room !== active || !data.user || data.user.id === me) return;
    const name = data.user.username;
    clearTimeout(typers.get(name));
    typers.set(name, setTimeout(() => {
      typers.delete(name);
      showTypers();
    }, 4000));
    showTypers();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    const ref = client.send("chat.message.post", { room: active, text });
    if (ref === null) {
      error.textContent = "Not connected; your message was not sent. Try again in a moment.";
      return;
    }
    error.textContent = "";
    input.value = "";
    sentRefs.set(ref, text);
    setTimeout(() => sentRefs.delete(ref), 30000);
  });

  input.addEventListener("input", () => {
    // The server keeps one hint per user per 2 s anyway; not sending more spares the socket.
    const now = Date.now();
    if (input.value.trim() && now - lastTypingSentAt > 1500) {
      lastTypingSentAt = now;
      client.send("chat.typing", { room: active });
    }
  });

  // --- Create, invite, leave, direct messages -------------------------------------------

  function dialogForm(dialogId, formId, errorId, submit) {
    const dialog = $(dialogId);
    const dialogForm = $(formId);
    const dialogError = $(errorId);
    dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
    dialogForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      dialogError.textContent = "";
      const button = dialogForm.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        await submit(new FormData(dialogForm));
        dialog.close();
        dialogForm.reset();
      } catch (err) {
        dialogError.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    });
    return () => {
      dialogError.textContent = "";
      dialog.showModal();
      dialogForm.querySelector("input")?.focus();
    };
  }

  async function openRoom(data, message) {
    mergeRoom(data);
    renderRooms();
    await switchRoom(data.slug);
    if (message) announce(message);
  }

  const openCreate = dialogForm("chat-room-dialog", "chat-room-form", "chat-room-form-error", async (values) => {
    const room = await api("POST", "/api/chat/rooms/", {
      name: String(values.get("name") || "").trim(),
      is_public: values.get("private") !== "on",
    });
    await openRoom(room, `Room ${room.name} created.`);
  });
  $("chat-new-room").addEventListener("click", openCreate);

  const openInvite = dialogForm("chat-invite-dialog", "chat-invite-form", "chat-invite-form-error", async (values) => {
    const username = String(values.get("username") || "").trim();
    const reply = await api("POST", `/api/chat/rooms/${encodeURIComponent(active)}/invite/`, { username });
    const text = reply.added ? `${reply.user.username} was invited.` : `${reply.user.username} is already in this room.`;
    notice.textContent = text;
    announce(text);
  });
  inviteButton.addEventListener("click", () => {
    $("chat-invite-room").textContent = displayName(roomState(active).data);
    openInvite();
  });

  leaveButton.addEventListener("click", async () => {
    const slug = active;
    try {
      await api("POST", `/api/chat/rooms/${encodeURIComponent(slug)}/leave/`);
      const state = rooms.get(slug);
      if (state?.data.is_public) client.send("unsubscribe.chat", { room: slug });
      if (state) state.subscribed = false;
      dropRoom(slug, "left"); // the server's chat.unsubscribed tells this user's other tabs
    } catch (err) {
      error.textContent = `Could not leave: ${err.message}`;
    }
  });

  $("chat-dm-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const field = $("chat-dm-user");
    const username = field.value.trim();
    if (!username) return;
    const dmError = $("chat-dm-error");
    dmError.textContent = "";
    try {
      const room = await api("POST", "/api/chat/direct/", { username });
      field.value = "";
      await openRoom(room, `Direct messages with ${username}.`);
    } catch (err) {
      dmError.textContent = err.message;
    }
  });

  // --- Narrow screens: tasks or chat ----------------------------------------------------

  for (const tab of document.querySelectorAll("[data-view-tab]")) {
    tab.addEventListener("click", () => {
      document.body.dataset.view = tab.dataset.viewTab;
      if (tab.dataset.viewTab === "chat") {
        markRead(); // what was counted while the tasks were shown is read now
        log.scrollTop = log.scrollHeight;
        fillIfShort();
      }
    });
  }
  new MutationObserver(() => {
    for (const tab of document.querySelectorAll("[data-view-tab]")) {
      tab.setAttribute("aria-pressed", String(tab.dataset.viewTab === document.body.dataset.view));
    }
  }).observe(document.body, { attributes: true, attributeFilter: ["data-view"] });
  document.body.dataset.view = "tasks";

  // --- Wiring ---------------------------------------------------------------------------

  client.on("state", ({ state }) => {
    if (state !== "open") {
      for (const room of rooms.values()) room.subscribed = false;
      return;
    }
    loadRooms();
  });
  client.on("chat.history", (frame) => {
    // Unasked (no ref): the server resent it after losing Redis. Merge by id.
    if (frame.ref === undefined) for (const message of frame.data?.messages || []) addMessage(message);
  });
  client.on("chat.message.posted", (frame) => addMessage(frame.data));
  client.on("chat.message.edited", (frame) => addMessage(frame.data));
  client.on("chat.message.deleted", (frame) => removeMessage(frame.data));
  client.on("chat.typing", onTyping);
  client.on("chat.unsubscribed", (frame) => {
    const { room, reason } = frame.data || {};
    const state = rooms.get(room);
    if (!state) return; // already dropped (this tab's own leave)
    state.subscribed = false;
    dropRoom(room, reason || "no_access");
  });
  client.on("chat.room.added", () => loadRooms());
  client.on("error", (frame) => {
    const data = frame.data || {};
    const ref = frame.ref ?? data.ref;
    if (ref !== undefined && sentRefs.has(ref)) {
      error.textContent = `Message not sent: ${data.detail || data.code}`;
      if (!input.value) input.value = sentRefs.get(ref);
      sentRefs.delete(ref);
    }
  });

  roomState(active);
  showRoomHeader();
  renderRooms();
}
