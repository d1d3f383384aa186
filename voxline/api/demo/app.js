// voxline browser demo: streams text to /v1/audio/speech/stream and plays the PCM it gets
// back through WebAudio. Plain JS, no build step, nothing fetched from elsewhere.
"use strict";

(() => {
  const PATH = "/v1/audio/speech/stream";
  // Audio buffered before playback starts (and again after an underrun): absorbs network and
  // synthesis jitter, so the chunks that follow join back to back on the audio clock.
  const JITTER_LEAD = 0.12;
  // A chunk due closer to "now" than this would start late (a gap, or a click): restart instead.
  const SAFETY = 0.01;
  // Barge-in fades out over this long rather than cutting mid-wave (which clicks).
  const BARGE_FADE = 0.015;
  const PIECE_CHARS = [2, 8];
  const PIECE_MS = [20, 60];
  const MAX_LOG = 1000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"),
    apiKey: $("api-key"),
    connect: $("connect"),
    text: $("text"),
    voiceSelect: $("voice-select"),
    voiceText: $("voice-text"),
    speed: $("speed"),
    speak: $("speak"),
    simulate: $("simulate"),
    bargeIn: $("barge-in"),
    session: $("session"),
    errors: $("errors"),
    canvas: $("waveform"),
    meter: $("meter"),
    rows: $("rows"),
  };

  // Read by the browser test (tests/api/test_demo.py); handy in the console too.
  const stats = {
    scheduledChunks: 0,
    scheduledSeconds: 0,
    playing: 0, // sources scheduled and not ended
    cancelled: 0, // input.cancelled messages received
    sentencesDone: 0, // audio.done without error or cancel
    underruns: 0, // restarts of the schedule in the middle of a sentence
    lastError: null,
  };
  const log = []; // every JSON message received, oldest first

  let ws = null;
  let ready = null; // the last session.ready
  let busy = false; // an utterance is open on the server (text sent, no session.done yet)
  let pendingCancels = 0; // input.cancel sent and not answered: its audio is dropped
  let configVersion = 0; // bumped when voice or speed change; resent before the next utterance
  let sentConfigVersion = -1;
  let simTimer = null;
  let voicesLoaded = false;
  let voicesRequest = 0; // a reconnect's answer wins over an older one still in flight

  // --- audio ---------------------------------------------------------------------------------

  const ctx = new AudioContext({ latencyHint: "interactive" });
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  analyser.connect(ctx.destination);
  const audio = {
    bus: newBus(), // one gain per generation of playback, so barge-in can fade it alone
    nextTime: 0, // where the next chunk starts on the audio clock
    sources: new Set(),
    carry: null, // an odd trailing byte, joined to the next frame
    level: 0, // peak of the waveform last drawn
  };

  function newBus() {
    const bus = ctx.createGain();
    bus.connect(analyser);
    return bus;
  }

  // The server resamples; ask for the context's own rate when the protocol allows it.
  function wantedRate() {
    return Math.min(48000, Math.max(8000, Math.round(ctx.sampleRate)));
  }

  function schedule(data, row) {
    let bytes = new Uint8Array(data);
    if (audio.carry !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = audio.carry;
      joined.set(bytes, 1);
      bytes = joined;
      audio.carry = null;
    }
    if (bytes.length % 2) {
      audio.carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    const samples = bytes.length / 2;
    if (!samples) return;
    const rate = (row && row.rate) || (ready && ready.sample_rate) || wantedRate();
    const buffer = ctx.createBuffer(1, samples, rate);
    const channel = buffer.getChannelData(0);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    for (let i = 0; i < samples; i++) channel[i] = view.getInt16(2 * i, true) / 32768;

    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(audio.bus);
    let at = audio.nextTime;
    if (at < ctx.currentTime + SAFETY) {
      if (row && row.bytes > data.byteLength) stats.underruns += 1;
      at = ctx.currentTime + JITTER_LEAD;
    }
    source.start(at);
    audio.nextTime = at + buffer.duration;
    audio.sources.add(source);
    source.onended = () => {
      audio.sources.delete(source);
      stats.playing = audio.sources.size;
      source.disconnect();
    };
    stats.playing = audio.sources.size;
    stats.scheduledChunks += 1;
    stats.scheduledSeconds += buffer.duration;
  }

  // Everything scheduled stops now (after a short fade); the next chunk starts a fresh lead.
  function flushAudio() {
    const now = ctx.currentTime;
    audio.bus.gain.setTargetAtTime(0, now, BARGE_FADE / 3);
    for (const source of audio.sources) {
      try {
        source.stop(now + BARGE_FADE);
      } catch (err) {
        audio.sources.delete(source); // never started: nothing to stop
      }
    }
    stats.playing = audio.sources.size;
    audio.bus = newBus();
    audio.nextTime = 0;
    audio.carry = null;
  }

  // --- what was sent when: the client side of first-byte latency ----------------------------

  // Sentences come back without markdown and with their own spacing: match on letters and
  // digits only. `pieces` holds, per piece sent, where its text ends and when it was sent.
  const sent = { norm: "", pieces: [], cursor: 0 };
  const normalize = (s) => s.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "");

  function resetSent() {
    sent.norm = "";
    sent.pieces = [];
    sent.cursor = 0;
  }

  function recordSent(text) {
    sent.norm += normalize(text);
    sent.pieces.push({ end: sent.norm.length, at: performance.now() });
  }

  // When the sentence's last character left the page: its text was complete from then on.
  function completedAt(sentenceText) {
    const last = sent.pieces[sent.pieces.length - 1];
    const tail = normalize(sentenceText).slice(-24);
    const found = tail ? sent.norm.indexOf(tail, sent.cursor) : -1;
    if (found < 0) return last ? last.at : performance.now();
    const end = found + tail.length;
    sent.cursor = end;
    const piece = sent.pieces.find((p) => p.end >= end);
    return piece ? piece.at : last.at;
  }

  // --- sentence rows -----------------------------------------------------------------------

  const rows = new Map(); // "utterance:sentence" -> row
  let current = null; // the row whose frames are arriving

  function addRow(msg) {
    const tr = document.createElement("tr");
    const cells = {};
    for (const name of ["index", "text", "client", "server", "audio", "status"]) {
      const td = document.createElement("td");
      if (["client", "server", "audio"].includes(name)) td.className = "num";
      if (name === "status") td.className = "state";
      tr.appendChild(td);
      cells[name] = td;
    }
    cells.index.textContent = `${msg.utterance_index}.${msg.sentence_index}`;
    cells.text.textContent = msg.sentence_text;
    cells.client.textContent = cells.server.textContent = "…";
    cells.audio.textContent = "";
    cells.status.textContent = "streaming";
    ui.rows.prepend(tr);
    const row = {
      tr,
      cells,
      utterance: msg.utterance_index,
      rate: msg.sample_rate,
      ref: completedAt(msg.sentence_text),
      firstAt: null,
      bytes: 0,
      finished: false,
    };
    rows.set(`${msg.utterance_index}:${msg.sentence_index}`, row);
    return row;
  }

  function finishRow(row, status) {
    row.finished = true;
    row.tr.className = status;
    row.cells.status.textContent = status;
    if (row.firstAt === null) row.cells.client.textContent = "—";
  }

  function note(text) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 6;
    td.className = "note";
    td.textContent = text;
    tr.appendChild(td);
    ui.rows.prepend(tr);
  }

  const ms = (value) => (value === null || value === undefined ? "—" : `${Math.round(value)} ms`);

  // --- the connection ----------------------------------------------------------------------

  function setStatus(kind, text) {
    ui.status.className = `status ${kind}`;
    ui.status.textContent = text;
  }

  function showError(text) {
    const div = document.createElement("div");
    div.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    ui.errors.prepend(div);
    while (ui.errors.children.length > 5) ui.errors.lastChild.remove();
  }

  function updateButtons() {
    const open = ws !== null && ws.readyState === WebSocket.OPEN && ready !== null;
    ui.speak.disabled = ui.simulate.disabled = !open || busy;
    ui.bargeIn.disabled = !open;
  }

  function send(message) {
    ws.send(JSON.stringify(message));
  }

  function sendConfig() {
    const config = {
      type: "session.config",
      response_format: "pcm",
      stream_audio: true,
      sample_rate: wantedRate(),
    };
    const voice = ui.voiceSelect.hidden ? ui.voiceText.value.trim() : ui.voiceSelect.value;
    if (voice) config.voice = voice;
    const speed = Number(ui.speed.value);
    if (Number.isFinite(speed) && speed > 0 && speed !== 1) config.speed = speed;
    send(config);
    sentConfigVersion = configVersion;
  }

  function connect() {
    if (ws !== null) {
      ws.onclose = ws.onmessage = null;
      ws.close(1000);
      ws = null;
    }
    stopSimulation();
    flushAudio();
    ready = null;
    busy = false;
    pendingCancels = 0;
    current = null;
    ui.errors.textContent = "";
    const key = ui.apiKey.value.trim();
    sessionStorage.setItem("voxline.apiKey", key);
    loadVoices(key);
    const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${PATH}`;
    try {
      // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol.
      // voxline.v1: the extension messages (session.ready, warning) the page shows.
      ws = new WebSocket(url, key ? ["voxline.v1", "token", key] : ["voxline.v1"]);
    } catch (err) {
      setStatus("closed", "disconnected");
      showError(`cannot connect: ${err.message}`);
      updateButtons();
      return;
    }
    ws.binaryType = "arraybuffer";
    setStatus("connecting", "connecting…");
    updateButtons();
    ws.onopen = () => sendConfig();
    ws.onmessage = (event) => {
      if (typeof event.data === "string") onMessage(JSON.parse(event.data));
      else onAudio(event.data);
    };
    ws.onclose = (event) => {
      ws = null;
      ready = null;
      busy = false;
      stopSimulation();
      const reason = event.reason ? `: ${event.reason}` : "";
      setStatus("closed", `closed ${event.code}`);
      if (event.code !== 1000) showError(`connection closed ${event.code}${reason}`);
      updateButtons();
    };
  }

  async function loadVoices(key) {
    voicesLoaded = false;
    const request = ++voicesRequest;
    let list = {};
    try {
      const headers = key ? { Authorization: `Bearer ${key}` } : {};
      const response = await fetch("/v1/voices", { headers, cache: "no-store" });
      if (response.ok) list = await response.json();
    } catch (err) {
      list = {}; // no voice list on this server: a free-text field instead
    }
    if (request !== voicesRequest) return;
    const voices = Array.isArray(list.voices) ? list.voices : [];
    const previous = ui.voiceSelect.value;
    ui.voiceSelect.textContent = "";
    const fallback = typeof list.default === "string" ? ` (${list.default})` : "";
    ui.voiceSelect.add(new Option(`engine default${fallback}`, ""));
    for (const voice of voices) {
      // A voice of a multilingual engine may list every language: name only a few.
      const languages = voice.languages || [];
      const few = languages.length && languages.length <= 3 ? ` (${languages.join(", ")})` : "";
      ui.voiceSelect.add(new Option(`${voice.name || voice.id}${few}`, voice.id));
    }
    ui.voiceSelect.value = previous;
    if (ui.voiceSelect.value !== previous) ui.voiceSelect.value = "";
    ui.voiceSelect.hidden = voices.length === 0;
    ui.voiceText.hidden = voices.length !== 0;
    voicesLoaded = true;
  }

  function onMessage(msg) {
    log.push(msg);
    if (log.length > MAX_LOG) log.shift();
    switch (msg.type) {
      case "session.ready":
        ready = msg;
        setStatus("open", "connected");
        ui.session.textContent =
          `session ${msg.session_id.slice(0, 8)} · engine ${msg.engine} · voice ${msg.voice}` +
          ` · ${msg.format} ${msg.sample_rate} Hz`;
        break;
      case "audio.start":
        current = addRow(msg);
        audio.carry = null; // a sentence starts on a sample boundary
        break;
      case "audio.done": {
        const row = rows.get(`${msg.utterance_index}:${msg.sentence_index}`);
        if (row === current) current = null;
        if (!row) break;
        row.cells.server.textContent = ms(msg.first_byte_ms);
        row.cells.audio.textContent = `${(msg.total_bytes / 2 / row.rate).toFixed(2)} s`;
        if (msg.cancelled) finishRow(row, "cancelled");
        else if (msg.error) finishRow(row, "error");
        else {
          finishRow(row, "done");
          stats.sentencesDone += 1;
        }
        break;
      }
      case "session.done":
        busy = false;
        break;
      case "input.cancelled":
        pendingCancels = Math.max(0, pendingCancels - 1);
        stats.cancelled += 1;
        busy = false;
        current = null;
        for (const row of rows.values()) {
          if (row.utterance === msg.utterance_index && !row.finished) finishRow(row, "cancelled");
        }
        if (msg.cancelled_sentences.length) {
          note(`barge-in: ${msg.cancelled_sentences.length} sentence(s) cancelled`);
        }
        break;
      case "error": {
        stats.lastError = { code: msg.code, message: msg.message };
        showError(`${msg.code}: ${msg.message}`);
        break;
      }
      default:
        break; // audio.words and future messages: nothing to show
    }
    updateButtons();
  }

  function onAudio(data) {
    if (pendingCancels > 0 || current === null) return; // the tail of a cancelled utterance
    if (current.firstAt === null) {
      current.firstAt = performance.now();
      current.cells.client.textContent = ms(current.firstAt - current.ref);
    }
    current.bytes += data.byteLength;
    schedule(data, current);
  }

  // --- speaking ----------------------------------------------------------------------------

  function beginUtterance() {
    const text = ui.text.value;
    if (!text.trim() || ws === null || ready === null || busy) return null;
    ctx.resume(); // a click is the user gesture browsers want before sound
    if (sentConfigVersion !== configVersion) sendConfig(); // between utterances only
    busy = true;
    resetSent();
    updateButtons();
    return text;
  }

  function speak() {
    const text = beginUtterance();
    if (text === null) return;
    send({ type: "input.text", text });
    recordSent(text);
    send({ type: "input.done" });
  }

  // Text arriving the way an LLM streams it: small pieces at an uneven pace.
  function simulate() {
    const text = beginUtterance();
    if (text === null) return;
    const between = (low, high) => low + Math.floor(Math.random() * (high - low + 1));
    let at = 0;
    const step = () => {
      simTimer = null;
      if (ws === null) return;
      const piece = text.slice(at, at + between(...PIECE_CHARS));
      at += piece.length;
      send({ type: "input.text", text: piece });
      recordSent(piece);
      if (at < text.length) simTimer = setTimeout(step, between(...PIECE_MS));
      else send({ type: "input.done" });
    };
    step();
  }

  function stopSimulation() {
    if (simTimer !== null) clearTimeout(simTimer);
    simTimer = null;
  }

  function bargeIn() {
    stopSimulation();
    flushAudio();
    if (ws !== null && ws.readyState === WebSocket.OPEN) {
      send({ type: "input.cancel" });
      pendingCancels += 1; // frames until its input.cancelled belong to what was cancelled
    }
    current = null;
  }

  // --- the waveform ------------------------------------------------------------------------

  const wave = new Float32Array(analyser.fftSize);
  const pen = ui.canvas.getContext("2d");

  function draw() {
    const canvas = ui.canvas;
    const scale = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * scale);
    const height = Math.round(canvas.clientHeight * scale);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    analyser.getFloatTimeDomainData(wave);
    pen.fillStyle = "#10151f";
    pen.fillRect(0, 0, width, height);
    pen.strokeStyle = "#2a3344";
    pen.beginPath();
    pen.moveTo(0, height / 2);
    pen.lineTo(width, height / 2);
    pen.stroke();
    pen.strokeStyle = "#5b9dff";
    pen.lineWidth = 2 * scale;
    pen.beginPath();
    let peak = 0;
    for (let i = 0; i < wave.length; i++) {
      peak = Math.max(peak, Math.abs(wave[i]));
      const x = (i / (wave.length - 1)) * width;
      const y = height / 2 - wave[i] * (height / 2) * 0.95;
      if (i === 0) pen.moveTo(x, y);
      else pen.lineTo(x, y);
    }
    pen.stroke();
    audio.level = peak;
    const ahead = Math.max(0, audio.nextTime - ctx.currentTime);
    ui.meter.textContent =
      `buffered ${Math.round(ahead * 1000)} ms · ${stats.scheduledChunks} chunks,` +
      ` ${stats.scheduledSeconds.toFixed(1)} s scheduled · ${stats.playing} sources queued` +
      ` · underruns ${stats.underruns} · audio ${ctx.state} ${ctx.sampleRate} Hz`;
    requestAnimationFrame(draw);
  }

  // --- wiring ------------------------------------------------------------------------------

  const reconfigure = () => {
    configVersion += 1;
  };
  ui.voiceSelect.addEventListener("change", reconfigure);
  ui.voiceText.addEventListener("change", reconfigure);
  ui.speed.addEventListener("change", reconfigure);
  ui.speak.addEventListener("click", speak);
  ui.simulate.addEventListener("click", simulate);
  ui.bargeIn.addEventListener("click", bargeIn);
  ui.connect.addEventListener("click", connect);
  ui.apiKey.value = sessionStorage.getItem("voxline.apiKey") || "";
  ui.apiKey.addEventListener("keydown", (event) => {
    if (event.key === "Enter") connect();
  });

  window.voxlineDemo = {
    stats,
    log,
    connect,
    speak,
    simulate,
    bargeIn,
    get state() {
      return {
        connected: ready !== null,
        voicesLoaded,
        busy,
        pendingCancels,
        audioState: ctx.state,
        currentTime: ctx.currentTime,
        nextTime: audio.nextTime,
        level: audio.level,
      };
    },
  };

  requestAnimationFrame(draw);
  connect();
})();
