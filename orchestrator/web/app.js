// The live transcript page (docs/web.md): the microphone through an AudioWorklet (16 kHz PCM16 in 100 ms
// binary frames) to the gateway's /ws/stream on the page's own origin, and its events shown as they come.
// No framework and no build step; every text from the server goes into the page as text, never as HTML.
// A connection lost mid-session is resumed (docs/web.md#a-dropped-connection, docs/protocol.md#resume).

const TARGET_RATE = 16000; // what the gateway takes (docs/protocol.md)
const CHUNK_MS = 100; // one binary frame: 3200 bytes
const MAX_QUEUED_CHUNKS = 50; // audio held until the `ack` (5 s); past it the oldest goes
const BYTES_PER_S = TARGET_RATE * 2;
// Audio kept for a resume, sent or captured while the connection is down: the gateway's RESUME_WINDOW_S
// (30 s) and a margin. Past it a resume would be refused anyway.
const KEEP_BYTES = 35 * BYTES_PER_S;
const RESUME_QUEUED_CHUNKS = KEEP_BYTES / (BYTES_PER_S * (CHUNK_MS / 1000));
const RESUME_DELAYS_S = [0.5, 1, 2, 4, 8]; // one reconnection after each; a resumed session counts anew
// A connection whose `ack` has not come by then is given up, open or not (a black-holed network, a
// half-open link, a gateway that does not answer), and counts as lost.
const ACK_TIMEOUT_MS = 10000;
const SUBPROTOCOL = "speechgw.v1";
// A token fits in a Sec-WebSocket-Protocol entry only with these characters (RFC 7230 tchar); a JWT does.
const TOKEN_CHARS = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;
// What a refusal code means for someone looking at this page (codes: docs/errors.md).
const HELP = {
  auth_required: "This gateway needs a token: paste one above, or open the link `make run` prints.",
  auth_invalid: "The token was not accepted: check that it is whole and made for this gateway.",
  auth_expired: "The token has expired: get a new one.",
  auth_forbidden: "The token does not allow this session.",
  origin_not_allowed: "The gateway does not accept pages from this address (ALLOWED_ORIGINS).",
  too_many_sessions: "The gateway is full: try again in a moment.",
  server_draining: "The gateway is restarting: try again in a moment.",
  resume_expired: "The connection was down too long: the session ended without it. Press Start for a new one.",
  resume_unknown: "The gateway no longer knows this session (restarted, or another instance). Press Start for a new one.",
};

const $ = (id) => document.getElementById(id);
const ui = {
  token: $("token"),
  lang: $("lang"),
  start: $("start"),
  stop: $("stop"),
  status: $("status"),
  error: $("error"),
  finals: $("finals"),
  partial: $("partial"),
  record: $("record"),
  recordLink: $("record-link"),
};

let session = null; // the running session, null when idle

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.textContent = "";
  ui.error.hidden = true;
}

function setRunning(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.token.disabled = running;
  ui.lang.disabled = running;
}

function seconds(ts) {
  return `${ts[0].toFixed(1)}–${ts[1].toFixed(1)} s`;
}

function addFinal(event) {
  const line = document.createElement("p");
  line.className = "final";
  if (Array.isArray(event.ts)) {
    const ts = document.createElement("span");
    ts.className = "ts";
    ts.textContent = seconds(event.ts);
    line.append(ts);
  }
  line.append(document.createTextNode(event.text.trim()));
  ui.finals.append(line);
  ui.partial.textContent = "";
}

function showRecord(event) {
  let url;
  try {
    url = new URL(event.url);
  } catch {
    return;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return; // never a javascript: link
  ui.recordLink.href = url.href;
  const duration = typeof event.duration_s === "number" ? ` (${event.duration_s.toFixed(1)} s)` : "";
  ui.recordLink.textContent = `open the recording${duration}`;
  ui.record.hidden = false;
}

function onEvent(s, event) {
  switch (event.type) {
    case "ack":
      if (event.resume) {
        resumed(s, event.resume);
        break;
      }
      s.acknowledged = true;
      s.live = true;
      setStatus(`Listening (flow ${event.flowId}). Speak, then press Stop.`);
      for (const chunk of s.queue.splice(0)) sendAudio(s, chunk);
      if (s.flushed) sendFlush(s);
      break;
    case "lid":
      setStatus(`Listening; language ${event.lang} (${event.source === "hint" ? "chosen" : "detected"}).`);
      break;
    case "asr_partial":
      ui.partial.textContent = event.text; // replaced in place until its final comes
      break;
    case "asr_final":
      addFinal(event);
      break;
    case "record_url":
      showRecord(event);
      break;
    case "error": {
      const help = HELP[event.code] ? `\n${HELP[event.code]}` : "";
      showError(`Error ${event.code}: ${event.message}${help}`);
      break;
    }
    case "end":
      s.ended = event.reason;
      break;
    default:
      break;
  }
}

async function openMicrophone() {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    throw new Error("The microphone needs a secure page: open it over https:// or on localhost / 127.0.0.1.");
  }
  try {
    // Echo cancellation for speakers; the gateway has its own noise suppression stage.
    return await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    if (err.name === "NotAllowedError") throw new Error("The microphone was not allowed: allow it for this page.");
    if (err.name === "NotFoundError") throw new Error("No microphone was found.");
    throw new Error(`The microphone could not be opened: ${err.message || err.name}`);
  }
}

function socketUrl() {
  const url = new URL("ws/stream", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  url.search = "";
  return url.href;
}

async function start() {
  clearError();
  ui.finals.replaceChildren();
  ui.partial.textContent = "";
  ui.record.hidden = true;
  setRunning(true);
  setStatus("Opening the microphone…");
  const s = { ws: null, ctx: null, mic: null, node: null, queue: [], opened: false, acknowledged: false };
  Object.assign(s, { ended: null, stopped: false, flushed: false, live: false, audioEnded: false });
  // For a resume: the flow's name, the newest event seen, the audio sent with its offsets in the stream.
  Object.assign(s, { token: ui.token.value.trim(), flowId: crypto.randomUUID(), lastSeq: 0 });
  Object.assign(s, { sent: [], sentBytes: 0, attempt: 0, timer: null });
  session = s;
  try {
    s.mic = await openMicrophone();
    // The context runs at the device's own rate and the worklet resamples to 16 kHz itself (docs/web.md).
    s.ctx = new AudioContext({ latencyHint: "interactive" });
    if (s.ctx.state === "suspended") await s.ctx.resume(); // the click on Start allows it
    await s.ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
    s.node = new AudioWorkletNode(s.ctx, "speechgw-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      processorOptions: { targetRate: TARGET_RATE, chunkMs: CHUNK_MS },
    });
    s.node.port.onmessage = (e) => onAudio(s, e.data);
    s.ctx.createMediaStreamSource(s.mic).connect(s.node);
  } catch (err) {
    releaseAudio(s);
    finish(s);
    showError(err.message || String(err));
    return;
  }
  if (session !== s) {
    releaseAudio(s); // stopped while the microphone was opening
    return;
  }
  connect(s);
}

// `resume`: the session lost its connection and this one resumes it (same flowId, same token).
function connect(s, resume = false) {
  const protocols = [SUBPROTOCOL];
  const startMessage = {
    type: "start",
    flowId: s.flowId,
    audio: { codec: "pcm_s16le", sr: TARGET_RATE, channels: 1, chunk_ms: CHUNK_MS },
    return: ["lid", "asr", "record_url"],
    hints: { user_lang_pref: ui.lang.value },
  };
  if (resume) startMessage.resume = { last_seq: s.lastSeq, audio_s: s.sentBytes / BYTES_PER_S };
  // Browsers cannot set headers: the token goes as a `bearer.<token>` subprotocol (docs/protocol.md), or in
  // `start.auth.token` when it has characters a subprotocol cannot carry.
  if (s.token && TOKEN_CHARS.test(s.token)) protocols.push(`bearer.${s.token}`);
  else if (s.token) startMessage.auth = { token: s.token };
  if (!resume) setStatus("Connecting…");
  const url = socketUrl();
  const ws = new WebSocket(url, protocols);
  s.ws = ws;
  s.live = false;
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    s.opened = true;
    ws.send(JSON.stringify(startMessage));
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string" || s.ws !== ws) return;
    let event;
    try {
      event = JSON.parse(e.data);
    } catch {
      return;
    }
    if (typeof event.seq === "number") {
      if (event.seq <= s.lastSeq) return; // seen before the connection dropped: each event is shown once
      s.lastSeq = event.seq;
    }
    if (event.type === "ack") clearTimeout(ws.ackTimer);
    onEvent(s, event);
  };
  ws.onclose = (e) => closed(s, ws, e.code, e.reason, url);
  ws.ackTimer = setTimeout(() => {
    // Closing an open socket waits for the gateway's close frame, which may never come: let it go now.
    ws.onclose = ws.onmessage = null;
    ws.close();
    closed(s, ws, 1006, `no answer in ${ACK_TIMEOUT_MS / 1000} s`, url);
  }, ACK_TIMEOUT_MS);
}

function closed(s, ws, code, reason, url) {
  clearTimeout(ws.ackTimer);
  if (session !== s) {
    releaseAudio(s); // stopped before it opened, or a later session runs now
    return;
  }
  if (s.ws !== ws) return;
  // Lost, not ended: no `end`, not Stop, not a refusal (1008) nor an internal error (1011). Resumable once
  // the gateway has acknowledged the session, a few times with backoff; the microphone goes on meanwhile.
  const lost = !s.ended && !s.stopped && code !== 1008 && code !== 1011;
  if (lost && s.acknowledged && s.attempt < RESUME_DELAYS_S.length) {
    reconnect(s);
    return;
  }
  releaseAudio(s);
  if (!s.ended && !s.stopped && ui.error.hidden) {
    const why = reason ? `: ${reason}` : "";
    showError(
      s.attempt > 0
        ? `The connection was lost and could not be resumed (${s.attempt} attempts; code ${code}${why}).`
        : !s.opened
          ? `Could not connect to ${url} (refused or unreachable).`
          : `The connection closed before the session ended (code ${code}${why}).`,
    );
  }
  setStatus(s.ended ? `Ended (${s.ended}).` : "Stopped.");
  finish(s);
}

function reconnect(s) {
  s.live = false;
  const delay = RESUME_DELAYS_S[s.attempt];
  s.attempt += 1;
  setStatus(`Connection lost: reconnecting (attempt ${s.attempt} of ${RESUME_DELAYS_S.length})…`);
  s.timer = setTimeout(() => session === s && connect(s, true), delay * 1000);
}

// The `ack` of a resume: the gateway has the audio up to `resume_from_bytes`; the rest goes again, then
// what was captured while the connection was down, then the live audio.
function resumed(s, answer) {
  s.attempt = 0;
  if (answer.audio_ended) {
    // The session had ended its audio (a `flush` it received, an idle flush): its last events follow.
    s.audioEnded = true;
    s.queue = [];
    setStatus("Reconnected: the last words are being transcribed…");
    return;
  }
  const from = answer.resume_from_bytes;
  for (const { at, pcm } of s.sent) {
    if (at + pcm.byteLength > from) s.ws.send(at >= from ? pcm : pcm.slice(from - at));
  }
  s.live = true;
  for (const chunk of s.queue.splice(0)) sendAudio(s, chunk);
  if (s.flushed) sendFlush(s);
  setStatus(
    s.flushed
      ? "Reconnected: the last words are being transcribed…"
      : `Reconnected: listening again (flow ${s.flowId}). Speak, then press Stop.`,
  );
}

function sendAudio(s, pcm) {
  s.ws.send(pcm);
  s.sent.push({ at: s.sentBytes, pcm });
  s.sentBytes += pcm.byteLength;
  while (s.sentBytes - s.sent[0].at > KEEP_BYTES) s.sent.shift();
}

function onAudio(s, message) {
  if (message.type === "audio") {
    if (s.audioEnded) return; // the gateway takes no more audio
    if (s.live && s.ws.readyState === WebSocket.OPEN) sendAudio(s, message.pcm);
    else {
      // Before the `ack`, or while the connection is down: held, up to 5 s before the first `ack`, up to
      // the resume window after it.
      s.queue.push(message.pcm);
      if (s.queue.length > (s.acknowledged ? RESUME_QUEUED_CHUNKS : MAX_QUEUED_CHUNKS)) s.queue.shift();
    }
  } else if (message.type === "flushed") {
    s.flushed = true; // the `flush` goes now, or after the audio held for the next `ack`
    if (s.live && s.ws.readyState === WebSocket.OPEN) sendFlush(s);
    releaseAudio(s);
  }
}

function sendFlush(s) {
  if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ type: "flush" }));
}

function stop() {
  const s = session;
  if (!s) return;
  ui.stop.disabled = true;
  // A session the gateway acknowledged ends with a `flush`, sent when its connection is back if it is down.
  if (s.node && s.ws && (s.ws.readyState === WebSocket.OPEN || s.acknowledged)) {
    setStatus("Finishing: the last words are being transcribed…");
    s.node.port.postMessage({ type: "flush" }); // the worklet answers `flushed` after its last chunk
  } else {
    s.stopped = true; // before the socket opened: nothing was streamed, nothing to wait for
    releaseAudio(s);
    if (s.ws) s.ws.close(1000, "stopped");
    finish(s);
    setStatus("Stopped.");
  }
}

function releaseAudio(s) {
  if (s.mic) for (const track of s.mic.getTracks()) track.stop();
  if (s.ctx && s.ctx.state !== "closed") s.ctx.close().catch(() => {});
  s.mic = null;
  s.ctx = null;
}

function finish(s) {
  clearTimeout(s.timer);
  if (session !== s) return; // a later session runs now
  session = null;
  setRunning(false);
}

function init() {
  // A token in the fragment (`#token=...`) never reaches a server; it is taken and cleared from the address.
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    ui.token.value = token;
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  ui.start.addEventListener("click", () => start());
  ui.stop.addEventListener("click", () => stop());
  ui.start.disabled = false;
  setStatus("Ready: press Start and allow the microphone.");
  if (!window.isSecureContext) {
    showError("This page is not a secure context: the microphone works only over https:// or on localhost.");
  }
}

init();
