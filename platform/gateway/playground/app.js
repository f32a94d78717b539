// Ember's playground: plain JavaScript over the public API of the gateway that served this page.
//
// Every call goes to this origin (/v1/..., /metrics) with `Authorization: Bearer <key>` when the user gave a key;
// the key lives in this browser's localStorage and nowhere else. Streams are server-sent events read from fetch()
// (EventSource cannot POST or send headers), and each one can be stopped with an AbortController.

const $ = (id) => document.getElementById(id);
const KEY = "ember.apiKey";
const TABS = ["chat", "images", "audio", "metrics"];
// Which models each view offers: the `modality` field Ember adds to GET /v1/models.
const MODEL_SELECTS = {
  "chat-model": "text",
  "image-model": "image",
  "transcribe-model": "audio",
  "speech-model": "speech",
};

// ---------------------------------------------------------------------------------------------------- API calls

class ApiError extends Error {}

function authHeaders(extra = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { ...extra, authorization: `Bearer ${key}` } : extra;
}

// An Error whose message is the API's own: `{"error": {"message", "type", "param", "code"}}`, else the raw body.
async function errorOf(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    if (error && error.message) return new ApiError(describe(error, response.status));
  } catch {
    // not JSON: fall through
  }
  return new ApiError(`${response.status} ${response.statusText}${text ? `: ${text.slice(0, 300)}` : ""}`);
}

function describe(error, status) {
  const where = error.param ? ` [${error.param}]` : "";
  const code = error.code ? ` (${error.code})` : "";
  let text = `${status ? `${status}: ` : ""}${error.message}${where}${code}`;
  if (status === 401) text += " — paste a valid key in “API key” above.";
  return text;
}

async function api(path, { json, form, signal, method = "POST" } = {}) {
  const init = { method, signal, headers: authHeaders(json ? { "content-type": "application/json" } : {}) };
  if (json !== undefined) init.body = JSON.stringify(json);
  if (form !== undefined) init.body = form;
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`could not reach the gateway: ${e.message}`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

// The `data:` payloads of a server-sent event stream, parsed as JSON, until `[DONE]` or the end of the body.
// An error event (`{"error": {...}}`, which the gateway sends when a stream fails after its first byte) throws.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let match;
      while ((match = /\r?\n\r?\n/.exec(buffer)) !== null) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        const data = block
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(describe(parsed.error));
        yield parsed;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ------------------------------------------------------------------------------------------------------ helpers

function show(el, text) {
  el.textContent = text;
  el.hidden = !text;
}

function fail(el, error) {
  show(el, error.name === "AbortError" ? "" : error.message || String(error));
}

function seconds(since) {
  return ((performance.now() - since) / 1000).toFixed(1);
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

// One running stream per view: its AbortController, and the Stop button that aborts it.
class Run {
  constructor(startButton, stopButton) {
    this.startButton = startButton;
    this.stopButton = stopButton;
    this.controller = null;
    stopButton.addEventListener("click", () => this.stop());
  }

  begin() {
    this.controller = new AbortController();
    this.startButton.disabled = true;
    this.stopButton.disabled = false;
    return this.controller.signal;
  }

  end() {
    this.controller = null;
    this.startButton.disabled = false;
    this.stopButton.disabled = true;
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  get running() {
    return this.controller !== null;
  }
}

// ------------------------------------------------------------------------------------------------- tabs, key

function selectTab(name) {
  if (!TABS.includes(name)) name = "chat";
  for (const tab of TABS) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`view-${tab}`).hidden = tab !== name;
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  metrics.active(name === "metrics");
}

function setupHeader() {
  for (const tab of TABS) $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
  window.addEventListener("hashchange", () => selectTab(location.hash.slice(1)));
  const input = $("api-key");
  input.value = localStorage.getItem(KEY) || "";
  input.addEventListener("change", () => {
    const key = input.value.trim();
    if (key) localStorage.setItem(KEY, key);
    else localStorage.removeItem(KEY);
    loadModels();
  });
  $("api-key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    input.value = "";
    loadModels();
  });
  $("models-refresh").addEventListener("click", loadModels);
}

// GET /v1/models: each view's select offers the live models of its modality; the choice is remembered.
async function loadModels() {
  const error = $("global-error");
  let models;
  try {
    models = (await (await api("/v1/models", { method: "GET" })).json()).data;
    show(error, "");
  } catch (e) {
    fail(error, new ApiError(`Could not list the models: ${e.message}`));
    return;
  }
  for (const [id, modality] of Object.entries(MODEL_SELECTS)) {
    const select = $(id);
    const wanted = select.value || localStorage.getItem(`ember.${id}`);
    select.replaceChildren();
    const served = models.filter((m) => (m.modality || "text") === modality);
    for (const m of served) {
      const option = element("option", "", m.workers ? `${m.id} (${m.workers} worker${m.workers > 1 ? "s" : ""})` : m.id);
      option.value = m.id;
      select.append(option);
    }
    if (served.length === 0) {
      const none = element("option", "", `no ${modality} model is being served`);
      none.value = "";
      none.disabled = true;
      select.append(none);
    }
    if (served.some((m) => m.id === wanted)) select.value = wanted;
  }
}

function rememberModel(id) {
  $(id).addEventListener("change", () => localStorage.setItem(`ember.${id}`, $(id).value));
}

function requireModel(id, what) {
  const model = $(id).value;
  if (!model) throw new ApiError(`No ${what} model is being served: start a worker, then “Refresh models”.`);
  return model;
}

// ---------------------------------------------------------------------------------------------------------- chat

const EXAMPLE_TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The current weather in a city.",
      parameters: {
        type: "object",
        properties: { city: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
        required: ["city"],
      },
    },
  },
];

const chat = {
  messages: [], // the conversation as the API takes it (system prompt excluded)
  pendingCalls: [], // tool calls of the last answer: [{id, resultInput}]
  run: null,

  setup() {
    this.run = new Run($("chat-send"), $("chat-stop"));
    rememberModel("chat-model");
    $("chat-temperature").addEventListener("input", () => {
      $("chat-temperature-value").textContent = $("chat-temperature").value;
    });
    $("chat-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    $("chat-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        if (!this.run.running) this.send();
      }
    });
    $("chat-clear").addEventListener("click", () => {
      this.run.stop();
      this.messages = [];
      this.pendingCalls = [];
      $("chat-log").replaceChildren();
      show($("chat-error"), "");
      $("chat-status").textContent = "";
    });
    $("chat-tools-example").addEventListener("click", () => {
      $("chat-tools").value = JSON.stringify(EXAMPLE_TOOLS, null, 2);
    });
  },

  // The tools textarea as OpenAI's `tools`: an array, one tool, or bare function definitions.
  tools() {
    const text = $("chat-tools").value.trim();
    if (!text) return null;
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw new ApiError(`Tools: not valid JSON (${e.message})`);
    }
    const list = Array.isArray(parsed) ? parsed : [parsed];
    return list.map((t) => (t && t.type === undefined && t.name !== undefined ? { type: "function", function: t } : t));
  },

  bubble(role, text) {
    const li = element("li", `message ${role}`);
    li.append(element("span", "role", role), element("div", "content", text));
    $("chat-log").append(li);
    li.scrollIntoView({ block: "end" });
    return li;
  },

  async send() {
    const input = $("chat-input");
    const text = input.value.trim();
    const error = $("chat-error");
    show(error, "");
    let body;
    let turn;
    try {
      const tools = this.tools();
      const model = requireModel("chat-model", "text");
      // Answers to the tool calls of the last turn go first, as OpenAI wants them.
      turn = this.pendingCalls.map((call) => ({ role: "tool", tool_call_id: call.id, content: call.resultInput.value }));
      if (text) turn.push({ role: "user", content: text });
      if (turn.length === 0) return;
      const system = $("chat-system").value.trim();
      const messages = [...this.messages, ...turn];
      body = {
        model,
        messages: system ? [{ role: "system", content: system }, ...messages] : messages,
        stream: true,
        stream_options: { include_usage: true },
        temperature: Number($("chat-temperature").value),
        max_tokens: Number($("chat-max-tokens").value) || undefined,
      };
      if (tools) {
        body.tools = tools;
        body.tool_choice = $("chat-tool-choice").value;
      }
    } catch (e) {
      fail(error, e);
      return;
    }
    const bubble = text ? this.bubble("user", text) : null;
    input.value = "";
    for (const call of this.pendingCalls) call.resultInput.disabled = true;
    const answer = await this.stream(body);
    if (answer) {
      this.messages.push(...turn, answer);
      return;
    }
    // No answer: the turn is not part of the conversation, and can be sent again as it was.
    bubble?.remove();
    if (text && !input.value) input.value = text;
    for (const call of this.pendingCalls) call.resultInput.disabled = false;
  },

  async stream(body) {
    const li = this.bubble("assistant", "");
    li.classList.add("streaming");
    const content = li.querySelector(".content");
    const calls = []; // by index: {id, name, arguments, card}
    let answer = "";
    let usage = null;
    let finish = null;
    let firstToken = null;
    const started = performance.now();
    const status = $("chat-status");
    status.textContent = "waiting for the model…";
    const signal = this.run.begin();
    try {
      const response = await api("/v1/chat/completions", { json: body, signal });
      for await (const chunk of events(response)) {
        if (chunk.usage) usage = chunk.usage;
        const choice = (chunk.choices || [])[0];
        if (!choice) continue;
        const delta = choice.delta || {};
        if (firstToken === null && (delta.content || delta.tool_calls)) firstToken = performance.now();
        if (delta.content) {
          answer += delta.content;
          content.textContent = answer;
        }
        for (const part of delta.tool_calls || []) {
          const call = (calls[part.index] ||= { id: "", name: "", arguments: "", card: this.callCard(li) });
          if (part.id) call.id = part.id;
          if (part.function?.name) call.name += part.function.name;
          if (part.function?.arguments) call.arguments += part.function.arguments;
          call.card.name.textContent = call.name;
          call.card.args.textContent = call.arguments;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
        status.textContent = `streaming… ${seconds(started)} s`;
      }
      status.textContent = this.summary(started, firstToken, usage, finish);
    } catch (e) {
      if (e.name === "AbortError") {
        status.textContent = `stopped after ${seconds(started)} s`;
        li.classList.add("stopped");
      } else {
        fail($("chat-error"), e);
        status.textContent = "";
      }
    } finally {
      this.run.end();
      li.classList.remove("streaming");
    }
    const toolCalls = calls.filter(Boolean);
    for (const call of toolCalls) call.card.args.textContent = pretty(call.arguments);
    if (!answer && !toolCalls.length) {
      li.remove();
      return null;
    }
    // The answer as the API takes it back; its tool calls wait for results, sent with the next turn.
    const message = { role: "assistant", content: answer || null };
    if (toolCalls.length) {
      message.tool_calls = toolCalls.map((c) => ({
        id: c.id,
        type: "function",
        function: { name: c.name, arguments: c.arguments },
      }));
    }
    this.pendingCalls = toolCalls.map((c) => ({ id: c.id, resultInput: c.card.result }));
    return message;
  },

  callCard(li) {
    const card = element("div", "tool-call");
    const name = element("span", "tool-name");
    const args = element("pre", "tool-args");
    const label = element("label", "", "Result to send back ");
    const result = element("input", "tool-result");
    result.type = "text";
    result.placeholder = '{"temperature": 21}';
    label.append(result);
    card.append(element("span", "tool-label", "tool call"), name, args, label);
    li.append(card);
    return { name, args, result };
  },

  summary(started, firstToken, usage, finish) {
    const parts = [`done in ${seconds(started)} s`];
    if (firstToken !== null) parts.push(`first token after ${((firstToken - started) / 1000).toFixed(2)} s`);
    if (usage) {
      const decode = (performance.now() - (firstToken ?? started)) / 1000;
      parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
      if (decode > 0 && usage.completion_tokens > 1) parts.push(`${(usage.completion_tokens / decode).toFixed(1)} tokens/s`);
    }
    if (finish) parts.push(`finish: ${finish}`);
    return parts.join(" · ");
  },
};

function pretty(json) {
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json;
  }
}

// -------------------------------------------------------------------------------------------------------- images

const images = {
  run: null,

  setup() {
    this.run = new Run($("image-generate"), $("image-stop"));
    rememberModel("image-model");
    $("image-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.generate();
    });
  },

  body() {
    const body = {
      model: requireModel("image-model", "image"),
      prompt: $("image-prompt").value,
      n: Number($("image-n").value) || 1,
      stream: true,
      partial_images: Number($("image-partials").value) || 0,
      response_format: "b64_json",
    };
    const optional = {
      size: $("image-size").value.trim(),
      negative_prompt: $("image-negative").value.trim(),
      num_inference_steps: $("image-steps").value,
      seed: $("image-seed").value,
    };
    for (const [field, value] of Object.entries(optional)) {
      if (value === "") continue;
      body[field] = field === "size" || field === "negative_prompt" ? value : Number(value);
    }
    return body;
  },

  // One figure per image (Ember's `index`): its previews replace each other, then the finished image.
  figure(index, n) {
    let fig = document.querySelector(`#image-results figure[data-index="${index}"]`);
    if (!fig) {
      fig = element("figure", "image");
      fig.dataset.index = String(index);
      const img = element("img");
      img.alt = `image ${index + 1} of ${n}`;
      fig.append(img, element("figcaption"));
      $("image-results").append(fig);
    }
    return fig;
  },

  async generate() {
    const error = $("image-error");
    const status = $("image-status");
    const progress = $("image-progress");
    show(error, "");
    let body;
    try {
      body = this.body();
    } catch (e) {
      fail(error, e);
      return;
    }
    $("image-results").replaceChildren();
    // Progress in events: each image sends its previews, then itself.
    progress.max = body.n * (body.partial_images + 1);
    progress.value = 0;
    progress.hidden = false;
    const started = performance.now();
    status.textContent = "waiting for the model…";
    const signal = this.run.begin();
    let done = 0;
    try {
      const response = await api("/v1/images/generations", { json: body, signal });
      for await (const event of events(response)) {
        const fig = this.figure(event.index ?? 0, body.n);
        const img = fig.querySelector("img");
        const format = event.output_format || "png";
        img.src = `data:image/${format};base64,${event.b64_json}`;
        const caption = fig.querySelector("figcaption");
        progress.value += 1;
        if (event.type.endsWith(".partial_image")) {
          fig.classList.add("preview");
          caption.textContent = `preview ${event.partial_image_index + 1} of ${body.partial_images} · ${event.size}`;
        } else {
          fig.classList.remove("preview");
          fig.classList.add("done");
          done += 1;
          caption.textContent = `${event.size}${event.seed !== undefined ? ` · seed ${event.seed}` : ""} `;
          const link = element("a", "", "download");
          link.href = img.src;
          link.download = `ember-${event.seed ?? event.index}.${format}`;
          caption.append(link);
          progress.value = Math.max(progress.value, done * (body.partial_images + 1));
        }
        status.textContent = `${done} of ${body.n} image${body.n > 1 ? "s" : ""} · ${seconds(started)} s`;
      }
      status.textContent = `${done} of ${body.n} image${body.n > 1 ? "s" : ""} in ${seconds(started)} s`;
    } catch (e) {
      if (e.name === "AbortError") status.textContent = `stopped after ${seconds(started)} s`;
      else {
        fail(error, e);
        status.textContent = "";
      }
    } finally {
      this.run.end();
      progress.hidden = done === body.n ? true : progress.hidden;
    }
  },
};

// --------------------------------------------------------------------------------------------------------- audio

const audio = {
  run: null,
  recorder: null,

  setup() {
    this.run = new Run($("transcribe-send"), $("transcribe-stop"));
    rememberModel("transcribe-model");
    rememberModel("speech-model");
    $("transcribe-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const file = $("transcribe-file").files[0];
      if (!file) show($("transcribe-error"), "Choose an audio file first, or record one.");
      else this.transcribe(file);
    });
    $("transcribe-record").addEventListener("click", () => this.toggleRecording());
    $("speech-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.speak();
    });
  },

  // The microphone through MediaRecorder (webm/opus in Chromium and Firefox, mp4 in Safari), sent when stopped.
  async toggleRecording() {
    const button = $("transcribe-record");
    const error = $("transcribe-error");
    if (this.recorder) {
      this.recorder.stop();
      return;
    }
    show(error, "");
    if (!navigator.mediaDevices?.getUserMedia) {
      show(error, "This browser gives no microphone here (it needs https or localhost).");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      show(error, `No microphone: ${e.message}`);
      return;
    }
    const chunks = [];
    const recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (e) => chunks.push(e.data));
    recorder.addEventListener("stop", () => {
      for (const track of stream.getTracks()) track.stop();
      this.recorder = null;
      button.textContent = "Record";
      button.classList.remove("recording");
      const type = recorder.mimeType || "audio/webm";
      const extension = type.includes("mp4") ? "m4a" : type.includes("ogg") ? "ogg" : "webm";
      this.transcribe(new File(chunks, `recording.${extension}`, { type }));
    });
    recorder.start();
    this.recorder = recorder;
    button.textContent = "Stop recording";
    button.classList.add("recording");
    $("transcribe-status").textContent = "recording…";
  },

  async transcribe(file) {
    const error = $("transcribe-error");
    const status = $("transcribe-status");
    const out = $("transcript");
    show(error, "");
    const form = new FormData();
    try {
      form.append("model", requireModel("transcribe-model", "audio"));
    } catch (e) {
      fail(error, e);
      return;
    }
    form.append("file", file, file.name);
    form.append("stream", "true");
    const language = $("transcribe-language").value.trim();
    if (language) form.append("language", language);
    out.replaceChildren();
    out.classList.remove("done");
    const started = performance.now();
    status.textContent = `uploading ${file.name} (${(file.size / 1024).toFixed(0)} KB)…`;
    const signal = this.run.begin();
    try {
      const response = await api("/v1/audio/transcriptions", { form, signal });
      status.textContent = "transcribing…";
      for await (const event of events(response)) {
        if (event.type === "transcript.text.delta") {
          const span = element("span", "segment", event.delta);
          if (event.segment) span.title = `${event.segment.start.toFixed(1)}–${event.segment.end.toFixed(1)} s`;
          out.append(span);
        } else if (event.type === "transcript.text.done") {
          out.classList.add("done");
          if (!out.childElementCount) out.textContent = event.text;
        }
        status.textContent = `transcribing… ${seconds(started)} s`;
      }
      status.textContent = `done in ${seconds(started)} s`;
    } catch (e) {
      if (e.name === "AbortError") status.textContent = `stopped after ${seconds(started)} s`;
      else {
        fail(error, e);
        status.textContent = "";
      }
    } finally {
      this.run.end();
    }
  },

  async speak() {
    const error = $("speech-error");
    const status = $("speech-status");
    const player = $("speech-audio");
    const button = $("speech-send");
    show(error, "");
    const started = performance.now();
    button.disabled = true;
    try {
      const format = $("speech-format").value;
      const body = {
        model: requireModel("speech-model", "speech"),
        input: $("speech-input").value,
        voice: $("speech-voice").value.trim() || "alloy",
        response_format: format,
        speed: Number($("speech-speed").value) || 1,
      };
      status.textContent = "speaking…";
      const response = await api("/v1/audio/speech", { json: body });
      const blob = await response.blob();
      if (player.src) URL.revokeObjectURL(player.src);
      player.src = URL.createObjectURL(blob);
      player.hidden = false;
      status.textContent = `${(blob.size / 1024).toFixed(0)} KB of ${format} in ${seconds(started)} s`;
      player.play().catch(() => {}); // a browser may refuse to autoplay: the controls are there
    } catch (e) {
      fail(error, e);
      status.textContent = "";
    } finally {
      button.disabled = false;
    }
  },
};

// ------------------------------------------------------------------------------------------------------- metrics

// Prometheus' text format: `name{label="value",...} number [timestamp]` per line, `#` lines are comments.
function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const m = line.exec(raw.trim());
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

function sum(samples, name, keep = () => true) {
  return samples.filter((s) => s.name === name && keep(s.labels)).reduce((total, s) => total + s.value, 0);
}

function byModel(samples, name) {
  const out = {};
  for (const s of samples) if (s.name === name) out[s.labels.model ?? ""] = (out[s.labels.model ?? ""] || 0) + s.value;
  return out;
}

// Requests the page makes itself to watch (the scrapes, its own files) are not traffic.
function isTraffic(labels) {
  const route = labels.route || "";
  return route !== "/metrics" && route !== "/" && !route.startsWith("/playground");
}

const metrics = {
  timer: null,
  last: null, // {at, requests, tokens, tokensByModel}
  history: [], // [{rps, tps}], newest last
  intervalMs: 2000,

  active(on) {
    clearTimeout(this.timer);
    this.timer = null;
    if (on) this.poll();
  },

  async poll() {
    const status = $("metrics-status");
    try {
      let response;
      try {
        response = await fetch("/metrics", { headers: authHeaders() });
      } catch (e) {
        throw new ApiError(`could not reach the gateway: ${e.message}`);
      }
      if (response.status === 404) {
        status.textContent = "Metrics are not available on this gateway (GET /metrics answered 404).";
        status.classList.add("error");
        this.schedule(10000);
        return;
      }
      if (!response.ok) throw await errorOf(response);
      this.update(parseMetrics(await response.text()));
      status.classList.remove("error");
      status.textContent = `Live from GET /metrics, every ${this.intervalMs / 1000} s · ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      status.textContent = `Metrics: ${e.message}`;
      status.classList.add("error");
    }
    this.schedule(this.intervalMs);
  },

  schedule(ms) {
    if ($("view-metrics").hidden) return;
    // The first rate comes from a second scrape a second after the first, not a whole interval later.
    this.timer = setTimeout(() => this.poll(), this.history.length === 0 ? Math.min(ms, 1000) : ms);
  },

  update(samples) {
    const now = performance.now();
    const current = {
      at: now,
      requests: sum(samples, "ember_http_requests_total", isTraffic),
      tokens: sum(samples, "ember_completion_tokens_total"),
      tokensByModel: byModel(samples, "ember_completion_tokens_total"),
    };
    const waiting = byModel(samples, "ember_worker_requests_waiting");
    const running = byModel(samples, "ember_worker_requests_running");
    $("metric-requests").textContent = String(current.requests);
    // The scrape that brought these numbers was itself in flight: it is not load.
    $("metric-inflight").textContent = String(Math.max(0, sum(samples, "ember_http_requests_in_flight") - 1));
    $("metric-queue").textContent = String(Object.values(waiting).reduce((a, b) => a + b, 0));
    $("metric-running").textContent = String(Object.values(running).reduce((a, b) => a + b, 0));
    const rates = {};
    if (this.last) {
      const dt = (now - this.last.at) / 1000;
      // A counter that went down was reset (a restarted gateway): count from zero.
      const rate = (a, b) => Math.max(0, a - (a >= b ? b : 0)) / dt;
      const rps = rate(current.requests, this.last.requests);
      const tps = rate(current.tokens, this.last.tokens);
      for (const [model, value] of Object.entries(current.tokensByModel)) {
        rates[model] = rate(value, this.last.tokensByModel[model] || 0);
      }
      $("metric-rps").textContent = rps.toFixed(2);
      $("metric-tps").textContent = tps.toFixed(1);
      this.history.push({ rps, tps });
      if (this.history.length > 90) this.history.shift();
      this.draw();
    }
    this.last = current;
    const rows = new Set([...Object.keys(waiting), ...Object.keys(running), ...Object.keys(current.tokensByModel)]);
    const body = $("metrics-models").querySelector("tbody");
    body.replaceChildren();
    for (const model of [...rows].sort()) {
      const tr = element("tr");
      const tps = rates[model] === undefined ? "–" : rates[model].toFixed(1);
      for (const cell of [model || "(none)", waiting[model] ?? 0, running[model] ?? 0, tps]) {
        tr.append(element("td", "", String(cell)));
      }
      body.append(tr);
    }
  },

  // Two lines on one canvas, each scaled to its own maximum: requests/s and tokens/s.
  draw() {
    const canvas = $("metrics-chart");
    const ctx = canvas.getContext("2d");
    const { width, height } = canvas;
    ctx.clearRect(0, 0, width, height);
    ctx.strokeStyle = "#8888";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(5, height - 20);
    ctx.lineTo(width - 5, height - 20);
    ctx.stroke();
    canvas.dataset.points = String(this.history.length);
    const series = [
      ["rps", "#d9480f", "requests/s"],
      ["tps", "#1971c2", "tokens/s"],
    ];
    series.forEach(([field, colour, name], i) => {
      const values = this.history.map((h) => h[field]);
      const max = Math.max(1e-9, ...values);
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      values.forEach((v, x) => {
        const px = (x / Math.max(values.length - 1, 1)) * (width - 10) + 5; // the points so far span the width
        const py = height - 20 - (v / max) * (height - 30);
        if (x === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      });
      ctx.stroke();
      ctx.fillStyle = colour;
      if (values.length === 1) ctx.fillRect(3, height - 22 - (values[0] / max) * (height - 30), 4, 4);
      ctx.font = "12px sans-serif";
      ctx.fillText(`${name} (max ${max < 1e-6 ? 0 : max.toFixed(1)})`, 8 + i * 180, height - 4);
    });
  },
};

// ----------------------------------------------------------------------------------------------------------- start

setupHeader();
chat.setup();
images.setup();
audio.setup();
selectTab(location.hash.slice(1) || "chat");
loadModels();
