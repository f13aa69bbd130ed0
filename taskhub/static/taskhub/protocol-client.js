// TaskHub event protocol client (WebSocket /ws, protocol version 1).
//
// A small, dependency-free ES module: the dashboard uses it, and so can any other page or
// script (docs/browser.md has the API). It owns one socket and keeps it open:
//
//  * reconnects by itself with exponential backoff and jitter, and asks the server to
//    resume from the last persisted event it saw (`?last_event_id=N`), so a server restart
//    or a network blip loses no persisted event and delivers none twice;
//  * drops any persisted frame whose id it has already seen (ids only increase per user);
//  * pings so the server's idle timeout never closes a quiet socket, and treats a socket
//    that stops answering as dead (a half-open TCP connection never fires `close`);
//  * stops for good on 4401 (not signed in, deactivated, or the session logged out) and 4403
//    (foreign origin): retrying cannot help;
//  * on 4503 (a backing service failed while connecting) keeps backing off: the attempt
//    count is only reset by a welcome, so each failed connect waits longer (docs/protocol.md).

const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_FORBIDDEN_ORIGIN = 4403;
const CLOSE_TOO_MANY = 4429;
export const CLOSE_SERVICE_UNAVAILABLE = 4503;
const FATAL_CLOSE_CODES = new Set([CLOSE_UNAUTHENTICATED, CLOSE_FORBIDDEN_ORIGIN]);

/** The default /ws URL of the page's own origin (ws: or wss: to match http: or https:). */
export function defaultSocketUrl(loc = globalThis.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/**
 * @typedef {{type: string, id?: number, ts?: string, ref?: string|number, data: object}} Frame
 * States: "idle" (not started), "connecting" (first attempt), "open" (welcome received),
 * "reconnecting" (lost, retrying), "closed" (close() called or a fatal close code).
 */
export class ProtocolClient {
  /**
   * @param {object} [options]
   * @param {string} [options.url] the socket URL (default: this origin's /ws)
   * @param {number|null} [options.lastEventId] resume after this id on the first connect;
   *   null (default) starts from the server's newest event (welcome.data.last_event_id)
   * @param {string} [options.token] a JWT access token (query parameter); the browser
   *   page does not need one, it authenticates with the session cookie
   * @param {number} [options.minBackoffMs=500] first retry delay
   * @param {number} [options.maxBackoffMs=8000] longest retry delay
   * @param {number} [options.pingIntervalMs=25000] ping period (capped by the server's
   *   idle timeout, which the welcome frame carries)
   * @param {number} [options.requestTimeoutMs=10000] how long request() waits for a reply
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation (tests, Node)
   */
  constructor(options = {}) {
    this.url = options.url || defaultSocketUrl();
    this.token = options.token || null;
    this.minBackoffMs = options.minBackoffMs ?? 500;
    this.maxBackoffMs = options.maxBackoffMs ?? 8000;
    this.pingIntervalMs = options.pingIntervalMs ?? 25000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this.WebSocketImpl = options.WebSocket || globalThis.WebSocket;

    this._lastEventId = Number.isInteger(options.lastEventId) ? options.lastEventId : null;
    this._state = "idle";
    this._socket = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._lastHeardAt = 0;
    this._pingSentAt = 0;
    this._refCounter = 0;
    this._pending = new Map(); // ref -> {resolve, reject, timer}
    this._listeners = new Map(); // type -> Set<fn>
    this._welcome = null;
    this._onOnline = () => this.reconnectNow();
  }

  // --- Public API -----------------------------------------------------------------------

  /** The connection state (see the typedef above). */
  get state() {
    return this._state;
  }

  /** The id of the newest persisted event received (null before the first welcome). */
  get lastEventId() {
    return this._lastEventId;
  }

  /** The data of the latest welcome frame (user, server_version, last_event_id...). */
  get welcome() {
    return this._welcome;
  }

  /** Open the socket (idempotent). */
  connect() {
    if (this._state !== "idle" && this._state !== "closed") return this;
    this._setState("connecting");
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
    return this;
  }

  /** Close for good: no more reconnects; pending requests are rejected. */
  close() {
    globalThis.removeEventListener?.("online", this._onOnline);
    clearTimeout(this._retryTimer);
    this._stopPing();
    const socket = this._socket;
    this._socket = null;
    this._setState("closed");
    if (socket) socket.close(1000, "client closed");
    this._rejectAll(new Error("connection closed"));
  }

  /** Skip the current backoff wait and try now (e.g. the browser came back online). */
  reconnectNow() {
    if (this._state !== "reconnecting" || this._socket) return;
    clearTimeout(this._retryTimer);
    this._open();
  }

  /**
   * Listen to frames of one type ("task.updated", "chat.message.posted", ...), to every
   * frame ("*"), or to the client's own events: "state" ({state, previous, code}),
   * "reset" (the server's event log is behind what we saw: re-read state over REST),
   * "fatal" ({code}: closed for good by the server). Returns a function that unsubscribes.
   */
  on(type, handler) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(handler);
    return () => this._listeners.get(type)?.delete(handler);
  }

  /**
   * Send one client frame, `{type, ...fields, ref}`. Returns the ref (generated unless
   * given), which the server echoes on its reply and on an `error` about this frame.
   * Returns null if the socket is not open (the frame is not queued: after a reconnect
   * the caller re-sends what still matters, e.g. subscribe.chat on "open").
   */
  send(type, fields = {}) {
    const ref = fields.ref ?? `c${++this._refCounter}`;
    if (!this._socket || this._socket.readyState !== 1 || this._state !== "open") return null;
    this._socket.send(JSON.stringify({ ...fields, type, ref }));
    return ref;
  }

  /**
   * Send a frame and resolve with the first reply that carries its ref (rejects with an
   * Error whose `code`/`detail` come from an `error` frame, on timeout, or if not open).
   */
  request(type, fields = {}, { timeoutMs } = {}) {
    const ref = this.send(type, fields);
    if (ref === null) return Promise.reject(Object.assign(new Error("not connected"), { code: "not_connected" }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(Object.assign(new Error(`no reply to ${type}`), { code: "timeout" }));
      }, timeoutMs ?? this.requestTimeoutMs);
      this._pending.set(ref, { resolve, reject, timer });
    });
  }

  // --- Connection ------------------------------------------------------------------------

  _socketUrl() {
    const url = new URL(this.url, globalThis.location?.href);
    if (this.token) url.searchParams.set("token", this.token);
    if (this._lastEventId !== null) url.searchParams.set("last_event_id", String(this._lastEventId));
    else url.searchParams.delete("last_event_id");
    return url.toString();
  }

  _open() {
    this._retryTimer = null;
    let socket;
    try {
      socket = new this.WebSocketImpl(this._socketUrl());
    } catch (error) {
      this._scheduleReconnect(null);
      return;
    }
    this._socket = socket;
    socket.onmessage = (event) => this._onMessage(socket, event);
    socket.onclose = (event) => this._onClose(socket, event);
    // An error is always followed by close; reconnecting is handled there.
    socket.onerror = () => {};
  }

  _onClose(socket, event) {
    if (socket !== this._socket) return; // an old socket we already gave up on
    this._socket = null;
    this._stopPing();
    this._rejectAll(Object.assign(new Error("connection lost"), { code: "connection_lost" }));
    if (this._state === "closed") return;
    if (FATAL_CLOSE_CODES.has(event.code)) {
      this._setState("closed", event.code);
      this._emit("fatal", { code: event.code, reason: event.reason });
      return;
    }
    this._scheduleReconnect(event.code);
  }

  _scheduleReconnect(code) {
    this._setState("reconnecting", code);
    // Exponential backoff with full jitter over the upper half, so a restarted server
    // is not hit by every client in the same instant. Too-many-connections waits longest;
    // 4503 (Redis or PostgreSQL down) starts one step up, never at the shortest delay.
    const exponent = Math.min(this._attempt + (code === CLOSE_SERVICE_UNAVAILABLE ? 1 : 0), 10);
    this._attempt += 1;
    let delay = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** exponent);
    if (code === CLOSE_TOO_MANY) delay = this.maxBackoffMs;
    delay = delay / 2 + Math.random() * (delay / 2);
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _startPing(idleTimeoutSeconds) {
    this._stopPing();
    let interval = this.pingIntervalMs;
    if (idleTimeoutSeconds > 0) interval = Math.min(interval, (idleTimeoutSeconds * 1000) / 3);
    interval = Math.max(interval, 1000);
    // How long a ping may go unanswered before the socket counts as dead.
    const patience = Math.max(interval, 10000);
    this._pingSentAt = 0;
    this._pingTimer = setInterval(() => {
      const socket = this._socket;
      if (!socket) return;
      const now = Date.now();
      const awaiting = this._pingSentAt > 0 && this._lastHeardAt < this._pingSentAt;
      if (awaiting && now - this._pingSentAt > patience) {
        // Not even a pong: the connection is dead even if the browser has not noticed
        // (a half-open TCP connection never fires `close`). Drop it and reconnect.
        this._socket = null;
        socket.onclose = null;
        socket.close();
        this._stopPing();
        this._rejectAll(Object.assign(new Error("connection lost"), { code: "connection_lost" }));
        this._scheduleReconnect(null);
        return;
      }
      // One ping in flight at a time; a timer delayed by a background tab is no loss.
      if (!awaiting) {
        this._pingSentAt = now;
        this.send("ping");
      }
    }, interval);
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  // --- Frames ----------------------------------------------------------------------------

  _onMessage(socket, event) {
    if (socket !== this._socket) return;
    this._lastHeardAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return; // the server only sends JSON; ignore anything else rather than die
    }
    if (!frame || typeof frame.type !== "string") return;

    if (frame.type === "welcome") {
      this._handleWelcome(frame);
    } else if (Number.isInteger(frame.id)) {
      // A persisted event: deliver each id once, in order.
      if (this._lastEventId !== null && frame.id <= this._lastEventId) return;
      this._lastEventId = frame.id;
    }

    this._emit(frame.type, frame);
    this._emit("*", frame);
    this._settle(frame);
  }

  _handleWelcome(frame) {
    const data = frame.data || {};
    this._welcome = data;
    const serverLast = Number.isInteger(data.last_event_id) ? data.last_event_id : 0;
    if (this._lastEventId === null) {
      // First connect without a resume point: live events from here on; the caller
      // reads the current state over REST after "open".
      this._lastEventId = serverLast;
    } else if (serverLast < this._lastEventId) {
      // The server holds fewer events than we saw (a different or reset database):
      // our position means nothing there. Start from its newest and let the page re-read.
      this._lastEventId = serverLast;
      this._emit("reset", { lastEventId: serverLast });
    }
    this._attempt = 0;
    this._startPing(Number(data.idle_timeout) || 0);
    this._setState("open");
  }

  _settle(frame) {
    const ref = frame.ref ?? frame.data?.ref;
    if (ref === undefined || ref === null || !this._pending.has(ref)) return;
    const { resolve, reject, timer } = this._pending.get(ref);
    this._pending.delete(ref);
    clearTimeout(timer);
    if (frame.type === "error") {
      const error = new Error(frame.data?.detail || "error");
      error.code = frame.data?.code;
      error.detail = frame.data?.detail;
      error.frame = frame;
      reject(error);
    } else {
      resolve(frame);
    }
  }

  _rejectAll(error) {
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(error);
    }
    this._pending.clear();
  }

  _setState(state, code = null) {
    const previous = this._state;
    if (previous === state) return;
    this._state = state;
    this._emit("state", { state, previous, code });
  }

  _emit(type, payload) {
    const handlers = this._listeners.get(type);
    if (!handlers) return;
    for (const handler of [...handlers]) {
      try {
        handler(payload);
      } catch (error) {
        // One broken listener must not stop the others or the connection.
        console.error(`TaskHub protocol listener for ${type} failed`, error);
      }
    }
  }
}
