// Temperature playground: streams a generation from /v1/generate and colours each token by its tau.
//
// Plain JavaScript, no build step, no dependency. It talks only to the public API of the server that
// served it (GET /info, POST /v1/generate with stream=true), with URLs relative to this page so that it
// also works behind a gateway. Model output is only ever written with textContent (never innerHTML).
"use strict";

(function () {
  // ------------------------------------------------------------------ constants

  const API_INFO = new URL("../info", document.baseURI);
  const API_GENERATE = new URL("../v1/generate", document.baseURI);
  const KEY_STORAGE = "introllm-playground-api-key"; // sessionStorage: forgotten when the tab closes
  const SVG_NS = "http://www.w3.org/2000/svg";

  // Problems of the bundled model (checkpoints/introllm-countdown-tiny): numbers, then ">" and the target,
  // every number with its digits reversed. Labels give the problem in ordinary digits.
  const EXAMPLES = [
    { prompt: "3 5 7 2>24\n", label: "42 from 3 5 7 2" },
    { prompt: "3 6 4 1>42\n", label: "24 from 3 6 4 1" },
    { prompt: "5 5 7 5>04\n", label: "40 from 5 5 7 5" },
    { prompt: "6 3 1 6>01\n", label: "10 from 6 3 1 6" },
    { prompt: "5 5 3 6>82\n", label: "28 from 5 5 3 6" },
    { prompt: "6 2 2 7>51\n", label: "15 from 6 2 2 7" },
  ];

  // Viridis (perceptually uniform, readable by colour-blind people and in greyscale): low tau is dark
  // purple, high tau bright yellow. 9 stops, interpolated linearly in RGB.
  const VIRIDIS = [
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
  ];

  // Controls, by the name they have in the URL.
  const el = (id) => document.getElementById(id);
  const controls = {
    prompt: el("prompt"),
    mode: el("mode"),
    temperature: el("temperature"),
    tau_min: el("tau-min"),
    tau_max: el("tau-max"),
    seed: el("seed"),
    max_new_tokens: el("max-new-tokens"),
    n: el("n"),
    compare: el("compare"),
  };

  const state = {
    info: null, // GET /info
    tauRange: [0.1, 2.0], // replaced by /info's
    runs: [], // the panes on screen
    aborter: null, // AbortController of the requests in flight
    runOnLoad: false, // the page was opened from a link with settings
  };

  // ------------------------------------------------------------------ colour

  function clamp(x, lo, hi) {
    return Math.min(hi, Math.max(lo, x));
  }

  // tau -> [r, g, b] on the trained range (values outside it get the end colours).
  function tauColour(tau) {
    const [lo, hi] = state.tauRange;
    const t = clamp((tau - lo) / (hi - lo || 1), 0, 1) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(t), VIRIDIS.length - 2);
    const f = t - i;
    return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
  }

  function rgb(c) {
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  // Black text on light backgrounds, white on dark ones (relative luminance, WCAG formula).
  function textColourOn(c) {
    const lin = c.map((v) => {
      const s = v / 255;
      return s <= 0.03928 ? s / 12.92 : Math.pow((s + 0.055) / 1.055, 2.4);
    });
    const luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
    return luminance > 0.18 ? "#000" : "#fff";
  }

  function svg(name, attributes, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(x, digits) {
    return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
  }

  // A log-probability: 3 decimals, or 2 significant digits when it is that close to 0 (a near-certain token).
  function fmtLogprob(x) {
    if (x === null || x === undefined) return "–";
    return x !== 0 && Math.abs(x) < 0.001 ? x.toExponential(1) : x.toFixed(3);
  }

  // The legend: a gradient over the trained tau range with ticks.
  function drawLegend() {
    const box = el("legend-scale");
    box.textContent = "";
    const [lo, hi] = state.tauRange;
    const width = 300;
    const pad = 30; // room for the end labels
    const root = svg("svg", {
      width, height: 38, viewBox: `0 0 ${width} 38`, role: "img",
      "aria-label": `Colour scale: tau from ${lo} (dark purple) to ${hi} (bright yellow)`,
    }, box);
    const gradient = svg("linearGradient", { id: "tau-gradient" }, svg("defs", {}, root));
    VIRIDIS.forEach((c, i) => svg("stop", { offset: i / (VIRIDIS.length - 1), "stop-color": rgb(c) }, gradient));
    svg("rect", { x: pad, y: 2, width: width - 2 * pad, height: 14, rx: 2, fill: "url(#tau-gradient)" }, root);
    for (let k = 0; k <= 4; k++) {
      const tau = lo + (k / 4) * (hi - lo);
      const x = pad + (k / 4) * (width - 2 * pad);
      svg("line", { x1: x, x2: x, y1: 16, y2: 20, stroke: "#5b6070" }, root);
      const label = svg("text", { x, y: 32, "text-anchor": "middle", "font-size": 11, fill: "#5b6070" }, root);
      label.textContent = fmt(tau, 2);
    }
  }

  // ------------------------------------------------------------------ URL state

  // The controls live in the query string, so a link reproduces a run (the seed is always set).
  function controlsToParams() {
    const params = new URLSearchParams();
    for (const [name, input] of Object.entries(controls)) {
      if (input.type === "checkbox") {
        if (input.checked) params.set(name, "1");
      } else if (input.value !== "") {
        params.set(name, input.value);
      }
    }
    return params;
  }

  function paramsToControls(params) {
    for (const [name, input] of Object.entries(controls)) {
      if (!params.has(name)) continue;
      if (input.type === "checkbox") input.checked = params.get(name) === "1";
      else input.value = params.get(name);
    }
  }

  function saveToUrl() {
    const query = controlsToParams().toString();
    const url = `${location.pathname}?${query}`;
    history.replaceState(null, "", url);
    el("share").href = url;
  }

  // ------------------------------------------------------------------ errors

  function showError(message) {
    const box = el("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    el("error").hidden = true;
    el("error").textContent = "";
    for (const input of Object.values(controls)) input.removeAttribute("aria-invalid");
  }

  // A readable sentence for an HTTP error; the server's message (the one error shape) is quoted.
  function describeHttpError(status, body, headers) {
    const error = (body && body.error) || {};
    const message = (error.message || `HTTP ${status}`).replace(/\.$/, "");
    const retry = headers.get("Retry-After");
    const retryText = retry ? ` Retry after ${retry} s.` : "";
    switch (status) {
      case 401:
        return `This server needs an API key (401): ${message}. Enter it in the API key box and run again.`;
      case 413:
        return `The request is too large for this server (413): ${message}.`;
      case 422:
        return `The server refused these settings (422${error.param ? `, field ${error.param}` : ""}): ${message}.`;
      case 429:
        return `The server is busy (429): ${message}.${retryText}`;
      case 503:
        return `The server is not available right now (503): ${message}.${retryText}`;
      default:
        return `The server answered ${status}: ${message}.${retryText}`;
    }
  }

  // Marks the control a 422 names, so the user sees which one to fix.
  function markInvalid(param) {
    const input = param && controls[param === "temperature_mode" ? "mode" : param];
    if (input) input.setAttribute("aria-invalid", "true");
  }

  // ------------------------------------------------------------------ server info and API key

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function askForKey() {
    el("key-box").hidden = false;
    el("api-key").value = apiKey();
    if (!apiKey()) el("api-key").focus();
  }

  async function loadInfo() {
    let response;
    try {
      response = await fetch(API_INFO, { headers: { Accept: "application/json" } });
    } catch (err) {
      el("server").textContent = "The server cannot be reached.";
      showError(`Could not reach the server: ${err.message}`);
      return false;
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      el("server").textContent = "The server is not ready.";
      showError(describeHttpError(response.status, body, response.headers));
      // 503 while the model loads: ask again when the server says to.
      const retry = Number(response.headers.get("Retry-After")) || 2;
      setTimeout(async () => {
        if (await loadInfo()) clearError();
      }, retry * 1000);
      return false;
    }
    if (state.info === null && state.runOnLoad && !(body.auth && !apiKey())) {
      // A link with settings reproduces its run as soon as the page can (with a key, if one is needed).
      setTimeout(run, 0);
    }
    state.info = body;
    state.tauRange = body.tau_range;
    const [lo, hi] = body.tau_range;
    el("server").textContent =
      `${body.model} (${body.base_model}) on ${body.device}, ${body.dtype}; trained tau range ${lo} to ${hi}; ` +
      `up to ${body.limits.max_new_tokens} new tokens; version ${body.version}.`;
    controls.n.max = String(body.limits.max_n);
    controls.tau_min.placeholder = String(lo);
    controls.tau_max.placeholder = String(hi);
    if (body.auth) askForKey();
    drawLegend();
    document.body.dataset.ready = "true"; // for the browser test: /info has been read
    return true;
  }

  // ------------------------------------------------------------------ requests

  function numberOrUndefined(input) {
    return input.value === "" ? undefined : Number(input.value);
  }

  // The body of POST /v1/generate for one request (n panes); undefined fields are left out by JSON.stringify.
  function requestBody(mode, n) {
    const body = {
      n: n > 1 ? n : undefined,
      prompt: controls.prompt.value,
      temperature_mode: mode,
      seed: numberOrUndefined(controls.seed),
      max_new_tokens: numberOrUndefined(controls.max_new_tokens),
      stream: true,
      return_temperatures: true,
      return_logprobs: true,
    };
    if (mode === "fixed") {
      body.temperature = numberOrUndefined(controls.temperature);
    } else {
      body.tau_min = numberOrUndefined(controls.tau_min);
      body.tau_max = numberOrUndefined(controls.tau_max);
    }
    return body;
  }

  // Reads a text/event-stream body and calls onEvent(name, data) for each event.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, data.join("\n"));
      }
      if (done) return;
    }
  }

  // What one pane of an n-sample request shows as finished: its choice, with the request's timing.
  function choiceDone(done, choice, run) {
    return {
      finish_reason: choice.finish_reason,
      temperature: choice.temperature,
      usage: { completion_tokens: run.tokens.length },
      timing: done.timing,
      seed: choice.seed,
    };
  }

  // Streams one generation into `runs`: one pane, or one per sample of an n-sample request (the token
  // events name their choice). Resolves when it ends, however it ends.
  async function stream(runs, signal) {
    const failAll = (message) => runs.forEach((r) => r.fail(message));
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
    let response;
    try {
      response = await fetch(API_GENERATE, {
        method: "POST", headers, body: JSON.stringify(runs[0].request), signal,
      });
    } catch (err) {
      failAll(err.name === "AbortError" ? "stopped" : `Could not reach the server: ${err.message}`);
      return;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      if (response.status === 401) askForKey();
      if (response.status === 422) markInvalid(body && body.error && body.error.param);
      runs[0].fail(describeHttpError(response.status, body, response.headers));
      runs.slice(1).forEach((r) => r.fail("stopped"));
      return;
    }
    let finished = false;
    try {
      await readEvents(response, (name, data) => {
        if (name === "error") {
          const body = JSON.parse(data);
          const count = runs.reduce((sum, r) => sum + r.tokens.length, 0);
          failAll(`The generation failed after ${count} tokens: ${body.error.message}`);
          finished = true;
        } else if (data === "[DONE]") {
          finished = true;
        } else {
          const event = JSON.parse(data);
          if (event.type === "token") runs[event.choice || 0].addToken(event.index, event.token);
          else if (event.type === "done" && event.choices) {
            for (const choice of event.choices) {
              const pane = runs[choice.index];
              pane.finish(choiceDone(event, choice, pane));
            }
          } else if (event.type === "done") runs[0].finish(event);
        }
      });
    } catch (err) {
      failAll(err.name === "AbortError" ? "stopped" : `The stream broke: ${err.message}`);
      return;
    }
    if (!finished) failAll("The stream ended early (the server or the gateway closed it).");
  }

  // ------------------------------------------------------------------ a pane: tokens, chart, summary

  // What a token's text looks like on screen: whitespace made visible, empty text shown as ∅.
  function visibleParts(text) {
    if (text === "") return [["∅", true]];
    const parts = [];
    for (const ch of text) {
      if (ch === " ") parts.push(["␣", true]);
      else if (ch === "\n") parts.push(["↵", true]);
      else if (ch === "\t") parts.push(["⇥", true]);
      else if (ch === "\r") parts.push(["␍", true]);
      else parts.push([ch, false]);
    }
    return parts;
  }

  function describeToken(token) {
    const text = JSON.stringify(token.text);
    const updated = token.temperature_updated ? "re-chosen here" : "kept";
    return `token ${token.index + 1} ${text}: tau ${fmt(token.temperature, 3)} (${updated}), ` +
      `log-prob ${fmtLogprob(token.logprob)}`;
  }

  class Run {
    constructor(label, request) {
      this.label = label;
      this.request = request;
      this.tokens = [];
      this.done = null;
      this.failed = null;
      this.started = performance.now();
      this.chartPending = false;

      this.root = document.createElement("section");
      this.root.className = "run";
      this.root.dataset.mode = request.temperature_mode;
      this.root.dataset.state = "streaming";
      const heading = document.createElement("h2");
      heading.textContent = label;
      this.stateText = document.createElement("span");
      this.stateText.className = "state";
      this.stateText.textContent = "streaming…";
      heading.appendChild(this.stateText);
      this.root.setAttribute("aria-label", label);

      const echo = document.createElement("p");
      echo.className = "prompt-echo";
      echo.textContent = `prompt: ${JSON.stringify(request.prompt)}, seed ${request.seed}`;
      this.echo = echo;

      // One tab stop for all tokens; arrow keys move between them (roving tabindex).
      this.text = document.createElement("div");
      this.text.className = "tokens";
      this.text.setAttribute("role", "list");
      this.text.setAttribute("aria-label", `${label}: generated tokens coloured by tau`);
      this.text.addEventListener("keydown", (e) => this.onKey(e));

      this.chart = document.createElement("div");
      this.chart.className = "chart";

      this.summary = document.createElement("dl");
      this.summary.className = "summary";

      this.root.append(heading, echo, this.text, this.chart, this.summary);
      this.renderSummary();
    }

    addToken(index, token) {
      const entry = { index, ...token };
      this.tokens.push(entry);
      const span = document.createElement("span");
      span.className = "tok";
      span.setAttribute("role", "listitem");
      if (token.temperature_updated) span.classList.add("updated");
      const colour = tauColour(token.temperature);
      // Colours are set through the CSSOM, which the page's CSP (style-src 'self') allows.
      span.style.backgroundColor = rgb(colour);
      span.style.color = textColourOn(colour);
      span.tabIndex = this.tokens.length === 1 ? 0 : -1;
      // The exact values, for scripts and the browser test; the label is what assistive tech reads.
      span.dataset.index = String(index);
      span.dataset.tau = String(token.temperature);
      span.dataset.updated = String(token.temperature_updated);
      span.dataset.logprob = String(token.logprob);
      span.setAttribute("aria-label", describeToken(entry));
      const glyph = document.createElement("span");
      glyph.className = "glyph";
      for (const [text, whitespace] of visibleParts(token.text)) {
        const part = document.createElement("span");
        if (whitespace) part.className = "ws";
        part.textContent = text;
        glyph.appendChild(part);
      }
      const number = document.createElement("span");
      number.className = "num";
      number.textContent = fmt(token.temperature, 2);
      span.append(glyph, number);
      entry.element = span;
      this.text.appendChild(span);
      // A newline token ends its line, as in the text.
      if (token.text.endsWith("\n")) this.text.appendChild(document.createElement("br"));
      this.scheduleChart();
      this.renderSummary();
    }

    finish(done) {
      this.done = done;
      // A sample of an n-sample request draws with its own seed (the server's row_seed of the request's).
      if (done.seed !== undefined) this.echo.textContent = `prompt: ${JSON.stringify(this.request.prompt)}, seed ${done.seed}`;
      this.root.dataset.state = "done";
      this.stateText.textContent = `done: ${done.finish_reason}`;
      this.drawChart();
      this.renderSummary();
    }

    fail(message) {
      this.failed = message;
      this.root.dataset.state = message === "stopped" ? "stopped" : "error";
      this.stateText.textContent = message === "stopped" ? "stopped" : "failed";
      if (message !== "stopped") showError(`${this.label}: ${message}`);
    }

    onKey(event) {
      const current = this.tokens.findIndex((t) => t.element === document.activeElement);
      if (current < 0) return;
      const moves = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: this.tokens.length - 1 };
      if (event.key === "Escape") return hideTooltip();
      if (!(event.key in moves)) return;
      event.preventDefault();
      const next = clamp(moves[event.key], 0, this.tokens.length - 1);
      this.tokens[current].element.tabIndex = -1;
      this.tokens[next].element.tabIndex = 0;
      this.tokens[next].element.focus();
    }

    scheduleChart() {
      // At most one redraw per frame while tokens stream in.
      if (this.chartPending) return;
      this.chartPending = true;
      requestAnimationFrame(() => {
        this.chartPending = false;
        this.drawChart();
      });
    }

    // tau per token as a step line over the token index, gate firings as dots.
    drawChart(partingIndex) {
      if (partingIndex !== undefined) this.partingIndex = partingIndex;
      this.chart.textContent = "";
      const n = Math.max(this.tokens.length, 1);
      const taus = this.tokens.map((t) => t.temperature);
      const lo = Math.min(state.tauRange[0], ...taus);
      const hi = Math.max(state.tauRange[1], ...taus);
      // Drawn at the pane's width in CSS pixels, so text keeps its size (redrawn on resize).
      const width = Math.max(320, Math.round(this.chart.clientWidth || 560));
      const height = 150;
      const pad = { left: 66, right: 8, top: 8, bottom: 22 };
      const x = (i) => pad.left + (i / n) * (width - pad.left - pad.right);
      const y = (tau) => pad.top + (1 - (tau - lo) / (hi - lo || 1)) * (height - pad.top - pad.bottom);
      const updates = this.tokens.filter((t) => t.temperature_updated).length;
      const root = svg("svg", {
        width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
        "aria-label": `${this.label}: tau along the sequence, ${this.tokens.length} tokens` +
          (taus.length ? `, from ${fmt(Math.min(...taus), 2)} to ${fmt(Math.max(...taus), 2)}` : "") +
          `, ${updates} gate firings`,
      }, this.chart);
      // Axes with ticks at the range ends and middle.
      for (const tau of [lo, (lo + hi) / 2, hi]) {
        svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: y(tau), y2: y(tau) }, root);
        const label = svg("text", { class: "tick", x: pad.left - 4, y: y(tau) + 4, "text-anchor": "end" }, root);
        label.textContent = fmt(tau, 2);
      }
      const yTitle = svg("text", { class: "tick", x: 2, y: pad.top + 4 }, root);
      yTitle.textContent = "tau";
      const xTitle = svg("text", { class: "tick", x: 2, y: height - 6 }, root);
      xTitle.textContent = "token";
      const step = Math.max(1, Math.ceil(n / 8 / 5) * 5);
      for (let i = 0; i <= n; i += step) {
        const label = svg("text", { class: "tick", x: x(i), y: height - 6, "text-anchor": "middle" }, root);
        label.textContent = String(i);
      }
      // The narrowed range, if any, as dashed lines.
      for (const bound of [this.request.tau_min, this.request.tau_max]) {
        if (bound !== undefined && bound >= lo && bound <= hi) {
          svg("line", { class: "bound", x1: pad.left, x2: width - pad.right, y1: y(bound), y2: y(bound) }, root);
        }
      }
      if (this.partingIndex !== undefined && this.partingIndex !== null) {
        const px = x(this.partingIndex);
        svg("line", { class: "parting", x1: px, x2: px, y1: pad.top, y2: height - pad.bottom }, root);
      }
      if (!this.tokens.length) return;
      let d = "";
      this.tokens.forEach((t, i) => {
        d += `${i === 0 ? "M" : "L"}${x(i).toFixed(1)},${y(t.temperature).toFixed(1)}` +
          `L${x(i + 1).toFixed(1)},${y(t.temperature).toFixed(1)}`;
      });
      svg("path", { class: "tau-line", d }, root);
      this.tokens.forEach((t, i) => {
        if (t.temperature_updated) svg("circle", { class: "gate", cx: x(i + 0.5), cy: y(t.temperature), r: 2.8 }, root);
      });
    }

    renderSummary() {
      const done = this.done;
      const taus = this.tokens.map((t) => t.temperature);
      const mean = done ? done.temperature.mean : taus.length ? taus.reduce((a, b) => a + b, 0) / taus.length : null;
      const updates = done ? done.temperature.updates : this.tokens.filter((t) => t.temperature_updated).length;
      const count = done ? done.usage.completion_tokens : this.tokens.length;
      const rows = [
        ["mean tau", fmt(mean, 3), "mean-tau"],
        ["updates", String(updates), "updates"],
        ["tokens", String(count), "tokens"],
        ["time to first token", done && done.timing.ttft_s !== null ? `${fmt(done.timing.ttft_s * 1000, 0)} ms` : "–",
          "ttft"],
        ["tokens/s", done && done.timing.total_s > 0 ? fmt(count / done.timing.total_s, 1) : "–", "tokens-per-s"],
        ["finish reason", done ? done.finish_reason : "–", "finish-reason"],
      ];
      this.summary.textContent = "";
      for (const [name, value, key] of rows) {
        const row = document.createElement("div");
        const dt = document.createElement("dt");
        dt.textContent = name;
        const dd = document.createElement("dd");
        dd.textContent = value;
        dd.dataset.key = key;
        row.append(dt, dd);
        this.summary.appendChild(row);
      }
    }
  }

  // ------------------------------------------------------------------ tooltip and inspector

  function tokenOf(target) {
    const span = target instanceof Element ? target.closest(".tok") : null;
    if (!span) return null;
    for (const run of state.runs) {
      const token = run.tokens.find((t) => t.element === span);
      if (token) return { run, token };
    }
    return null;
  }

  function showTooltip(target) {
    const found = tokenOf(target);
    if (!found) return;
    const { run, token } = found;
    const tip = el("tooltip");
    tip.textContent =
      `${run.label}, token ${token.index + 1}: ${JSON.stringify(token.text)}\n` +
      `tau ${fmt(token.temperature, 3)}${token.temperature_updated ? " (re-chosen here)" : " (kept)"}\n` +
      `log-prob ${fmtLogprob(token.logprob)}`;
    tip.hidden = false;
    const box = token.element.getBoundingClientRect();
    const left = clamp(box.left, 4, window.innerWidth - tip.offsetWidth - 4);
    const above = box.top - tip.offsetHeight - 8;
    tip.style.left = `${left}px`;
    tip.style.top = `${above > 4 ? above : box.bottom + 8}px`;
    el("inspector").textContent = `${run.label}: ${describeToken(token)}`;
  }

  function hideTooltip() {
    el("tooltip").hidden = true;
  }

  // ------------------------------------------------------------------ comparison

  // The first token index where the two runs differ (null if they agree on every token both have).
  function partingIndex(a, b) {
    const n = Math.min(a.tokens.length, b.tokens.length);
    for (let i = 0; i < n; i++) if (a.tokens[i].id !== b.tokens[i].id) return i;
    return a.tokens.length === b.tokens.length ? null : n;
  }

  function showParting(a, b) {
    const i = partingIndex(a, b);
    const note = el("parting");
    note.hidden = false;
    if (i === null) {
      note.textContent = `Both runs wrote the same ${a.tokens.length} tokens; only their tau differs.`;
    } else {
      const what = (run) => (i < run.tokens.length ? JSON.stringify(run.tokens[i].text) : "nothing (it ended)");
      note.textContent = `The runs part at token ${i + 1}: ${a.label} wrote ${what(a)}, ${b.label} wrote ${what(b)}.`;
      for (const run of [a, b]) if (i < run.tokens.length) run.tokens[i].element.classList.add("parts");
    }
    a.drawChart(i);
    b.drawChart(i);
  }

  // ------------------------------------------------------------------ running

  async function run() {
    if (state.aborter) state.aborter.abort();
    clearError();
    hideTooltip();
    if (controls.seed.value === "") newSeed(); // always a seed, so the link reproduces this run
    saveToUrl();
    const aborter = new AbortController();
    state.aborter = aborter;
    const compare = controls.compare.checked;
    const modes = compare ? ["learned", "fixed"] : [controls.mode.value];
    const n = compare ? 1 : Math.max(1, Number(controls.n.value) || 1);
    // One request per mode; an n-sample request fills n panes side by side, one per choice.
    const groups = modes.map((mode) => {
      const request = requestBody(mode, n);
      const label = mode === "fixed" ? `fixed tau ${request.temperature}` : `${mode} tau`;
      if (n === 1) return [new Run(label, request)];
      return Array.from({ length: n }, (_, i) => new Run(`${label}, sample ${i}`, request));
    });
    state.runs = groups.flat();
    el("runs").replaceChildren(...state.runs.map((r) => r.root));
    el("parting").hidden = true;
    el("inspector").textContent = "";
    el("stop").disabled = false;
    document.body.dataset.running = "true";
    await Promise.all(groups.map((runs) => stream(runs, aborter.signal)));
    if (state.aborter !== aborter) return; // a newer run took over
    state.aborter = null;
    el("stop").disabled = true;
    document.body.dataset.running = "false";
    if (compare && state.runs.every((r) => r.done)) showParting(state.runs[0], state.runs[1]);
  }

  function newSeed() {
    const values = new Uint32Array(1);
    crypto.getRandomValues(values);
    controls.seed.value = String(values[0] & 0x7fffffff);
  }

  // ------------------------------------------------------------------ wiring

  function setUp() {
    for (const example of EXAMPLES) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = example.label;
      button.setAttribute("aria-label", `Example: reach ${example.label}`);
      button.addEventListener("click", () => {
        controls.prompt.value = example.prompt;
        saveToUrl();
        controls.prompt.focus();
      });
      el("examples").appendChild(button);
    }
    controls.prompt.value = EXAMPLES[0].prompt;
    const params = new URLSearchParams(location.search);
    paramsToControls(params);
    syncModeControls();
    el("share").href = `${location.pathname}?${controlsToParams()}`;

    el("controls").addEventListener("submit", (e) => {
      e.preventDefault();
      run();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        run();
      } else if (e.key === "Escape") {
        hideTooltip();
      }
    });
    el("stop").addEventListener("click", () => {
      if (state.aborter) state.aborter.abort();
    });
    el("new-seed").addEventListener("click", () => {
      newSeed();
      saveToUrl();
    });
    el("controls").addEventListener("input", (e) => {
      if (e.target === el("api-key")) return;
      syncModeControls();
      saveToUrl();
    });
    el("api-key").addEventListener("input", (e) => sessionStorage.setItem(KEY_STORAGE, e.target.value));
    el("show-numbers").addEventListener("change", (e) => {
      el("runs").classList.toggle("show-numbers", e.target.checked);
    });
    window.addEventListener("resize", () => state.runs.forEach((r) => r.drawChart()));
    const runs = el("runs");
    runs.addEventListener("mouseover", (e) => showTooltip(e.target));
    runs.addEventListener("focusin", (e) => showTooltip(e.target));
    runs.addEventListener("mouseout", hideTooltip);
    runs.addEventListener("focusout", hideTooltip);

    state.runOnLoad = params.has("prompt");
    loadInfo();
  }

  // Which inputs apply: the fixed tau in fixed mode or a comparison, the range in the other modes.
  function syncModeControls() {
    const compare = controls.compare.checked;
    const mode = controls.mode.value;
    controls.mode.disabled = compare;
    controls.n.disabled = compare; // a comparison is one sample per mode
    controls.temperature.disabled = !compare && mode !== "fixed";
    controls.tau_min.disabled = !compare && mode === "fixed";
    controls.tau_max.disabled = !compare && mode === "fixed";
  }

  setUp();
})();
