// CareerShaper Jobs demo page: plain JS, no build step.
//
// Model output is only ever put on the page through textContent and createElement, never
// innerHTML, so nothing the model writes can run as markup.
//
// The page follows the user stream (`GET /api/events`, all the user's jobs in one response) and
// shows the frames of its job. A reload in the middle of a stream resumes it: the job, the text
// shown so far and the id of the last event applied are saved together in sessionStorage after
// every event, and the stream is reopened with `?last_event_id=` (EventSource cannot send a
// header on its first request).
"use strict";

(() => {
  const KEYS = { token: "cs.token", job: "cs.job", match: "cs.lastMatch" };
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STREAM_EVENTS = ["status", "progress", "delta", "result", "step", "queue"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    signedOut: $("signed-out"), signedIn: $("signed-in"), userId: $("user-id"),
    devSignin: $("dev-signin"), tokenForm: $("token-form"), tokenInput: $("token-input"),
    signout: $("signout"), coins: $("coins"), freeLeft: $("free-left"), active: $("active-jobs"),
    accountMessage: $("account-message"),
    form: $("job-form"), resume: $("resume"), jd: $("jd"), kind: $("kind"), tier: $("tier"),
    useMatch: $("use-match"), run: $("run"), cancel: $("cancel"), formMessage: $("form-message"),
    status: $("status"), queue: $("queue"), stage: $("stage"), progress: $("progress"),
    pct: $("pct"),
    output: $("output"), resultSection: $("result-section"), result: $("result"),
    screenshotField: $("screenshot-field"), screenshot: $("screenshot"),
  };

  // Storage ----------------------------------------------------------------------------------
  const store = {
    get(key) {
      try { return JSON.parse(sessionStorage.getItem(key)); } catch { return null; }
    },
    set(key, value) {
      try { sessionStorage.setItem(key, JSON.stringify(value)); } catch { /* full or disabled */ }
    },
    remove(key) { sessionStorage.removeItem(key); },
  };

  // API --------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code || "http_" + status;
      this.details = err.details;
      this.retryAfter = retryAfter;
    }
  }

  async function api(method, path, body) {
    const headers = {};
    const token = store.get(KEYS.token);
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, { error: { code: "network", message: "the server cannot be reached" } });
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data, response.headers.get("Retry-After"));
    return data;
  }

  function describe(error) {
    let text = `${error.message} (${error.code})`;
    if (error.details && typeof error.details === "object" && !Array.isArray(error.details)) {
      const parts = Object.entries(error.details).map(([k, v]) => `${k}: ${v}`);
      if (parts.length) text += ": " + parts.join("; ");
    }
    if (error.retryAfter) text += `. Try again in ${error.retryAfter} s.`;
    return text;
  }

  // Account ----------------------------------------------------------------------------------
  function subjectOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part)).sub || "unknown user";
    } catch {
      return "unknown user";
    }
  }

  function showAccount() {
    const token = store.get(KEYS.token);
    ui.signedOut.hidden = Boolean(token);
    ui.signedIn.hidden = !token;
    ui.userId.textContent = token ? subjectOf(token) : "";
    updateButtons();
  }

  async function refreshMe() {
    if (!store.get(KEYS.token)) return;
    try {
      const me = await api("GET", "/api/me");
      ui.coins.textContent = String(me.coins);
      ui.freeLeft.textContent = String(me.free_jobs_left_today);
      ui.active.textContent = String(me.active_jobs);
    } catch (error) {
      if (error.status === 401) {
        signOut(`Signed out: ${error.message}.`);
      } else {
        ui.accountMessage.textContent = "Could not load your balance: " + describe(error);
      }
    }
  }

  function signIn(token, message) {
    store.set(KEYS.token, token);
    ui.accountMessage.textContent = message;
    showAccount();
    refreshMe();
  }

  function signOut(message) {
    store.remove(KEYS.token);
    ui.coins.textContent = ui.freeLeft.textContent = ui.active.textContent = "–";
    ui.accountMessage.textContent = message || "Signed out.";
    showAccount();
  }

  ui.devSignin.addEventListener("click", async () => {
    ui.devSignin.disabled = true;
    try {
      const body = await api("POST", "/api/dev/token");
      signIn(body.access_token, "Signed in as a new dev user.");
    } catch (error) {
      ui.accountMessage.textContent = error.status === 404
        ? "Dev sign-in is off on this server. Paste an access token instead."
        : "Dev sign-in failed: " + describe(error);
    } finally {
      ui.devSignin.disabled = false;
    }
  });

  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    ui.tokenInput.value = "";
    if (token) signIn(token, "Using the pasted token.");
  });

  ui.signout.addEventListener("click", () => signOut());

  // The job being shown, as saved in sessionStorage -------------------------------------------
  let job = null;
  let source = null;
  let pollTimer = null;

  const saveJob = () => store.set(KEYS.job, job);
  const inProgress = () => Boolean(job) && !TERMINAL.has(job.status);

  function updateButtons() {
    const signedIn = Boolean(store.get(KEYS.token));
    ui.run.disabled = !signedIn || inProgress();
    ui.cancel.disabled = !signedIn || !inProgress();
    const match = store.get(KEYS.match);
    ui.useMatch.disabled = !match || ui.kind.value === "job_match";
    if (ui.useMatch.disabled) ui.useMatch.checked = false;
    ui.screenshotField.hidden = ui.kind.value !== "match_from_image";
  }

  function setStatus(text) {
    ui.status.textContent = text;
    ui.status.dataset.status = job ? job.status : "";
  }

  function statusText() {
    const head = `Job ${job.id.slice(0, 8)} (${job.kind}, ${job.tier} tier)`;
    switch (job.status) {
      case "queued": return `${head}: queued.`;
      case "running": return `${head}: running, attempt ${job.attempt}.`;
      case "retrying": return `${head}: attempt ${job.attempt} failed, retrying.`;
      case "succeeded": return `${head}: succeeded.`;
      case "cancelled": return `${head}: cancelled.`;
      case "failed": {
        const error = job.error ? `: ${job.error.message} (${job.error.code})` : "";
        return `${head}: failed${error}.`;
      }
      default: return `${head}: ${job.status}.`;
    }
  }

  function showProgress() {
    ui.stage.textContent = (job.step ? job.step + ", " : "") + (job.stage || "–");
    ui.progress.value = job.pct || 0;
    ui.pct.textContent = `${job.pct || 0}%`;
  }

  // Where a waiting job stands (`queue` events, detached mode): "#3 in line · about 40 s".
  function showQueue() {
    const view = job.status === "queued" ? job.queue : null;
    ui.queue.hidden = !view;
    ui.queue.textContent = view ? `#${view.position} in line · about ${view.eta_s} s` : "";
  }

  function showJob() {
    showQueue();
    ui.output.textContent = job.text;
    ui.output.setAttribute("aria-busy", String(inProgress()));
    showProgress();
    setStatus(statusText());
    renderResult();
    updateButtons();
  }

  // Redis stream ids are "<ms>-<seq>": compare them as numbers, part by part.
  function compareIds(a, b) {
    const [am, as] = a.split("-").map(Number);
    const [bm, bs] = b.split("-").map(Number);
    return am - bm || (as || 0) - (bs || 0);
  }

  // The user stream's id is a cursor over all the user's jobs, "<index>~<job hex>.<entry>~...":
  // this job's own entry id, or null once the job has left it (its terminal event).
  function entryOf(id) {
    const hex = job.id.replaceAll("-", "") + ".";
    const part = id.split("~").find((p) => p.startsWith(hex));
    return part ? part.slice(hex.length) : null;
  }

  function apply(type, data) {
    if (type === "status") {
      if (data.status === "running" && data.attempt > job.attempt) {
        // A new attempt starts over: the text of earlier attempts is discarded.
        if (job.attempt > 0) job.text = "";
        job.attempt = data.attempt;
        ui.output.textContent = job.text;
      }
      job.status = data.status;
      showQueue();
    } else if (type === "step") {
      // A pipeline's next step: its own text and progress follow.
      job.step = `step ${data.step + 1}/${data.steps}: ${data.name}`;
      job.text = "";
      ui.output.textContent = "";
    } else if (type === "queue") {
      job.queue = data.position > 0 ? { position: data.position, eta_s: data.eta_s } : null;
      showQueue();
    } else if (type === "progress") {
      job.stage = data.stage;
      job.pct = data.pct;
      showProgress();
    } else if (type === "delta") {
      if (data.attempt > job.attempt) {
        job.attempt = data.attempt;
        job.text = "";
        ui.output.textContent = "";
      }
      if (data.attempt === job.attempt) {
        job.text += data.text;
        ui.output.append(document.createTextNode(data.text));
        ui.output.scrollTop = ui.output.scrollHeight;
      }
    } else if (type === "result") {
      job.result = data.result;
    } else if (type === "error") {
      job.error = { code: data.code, message: data.message };
    }
  }

  function onEvent(type, event) {
    let data;
    try { data = JSON.parse(event.data); } catch { return; }
    if (data.job_id && data.job_id !== job.id) return; // another of the user's jobs
    const id = event.lastEventId;
    const entry = id ? entryOf(id) : null;
    if (entry && job.lastEntry && compareIds(entry, job.lastEntry) <= 0) return; // applied already
    apply(type, data);
    if (id) job.lastEventId = id;
    if (entry) job.lastEntry = entry;
    if (type === "status" && TERMINAL.has(job.status)) finish();
    saveJob();
    setStatus(statusText());
  }

  function finish() {
    closeStream();
    if (job.status === "succeeded") {
      job.stage = "done";
      job.pct = 100;
      showProgress();
      if (job.kind === "job_match" && job.result) store.set(KEYS.match, job.result);
    }
    ui.output.setAttribute("aria-busy", "false");
    renderResult();
    updateButtons();
    refreshMe();
  }

  function closeStream() {
    if (source) source.close();
    source = null;
    clearTimeout(pollTimer);
  }

  function openStream() {
    closeStream();
    let url = job.stream_url;
    if (job.lastEventId) {
      url += (url.includes("?") ? "&" : "?") + "last_event_id=" + encodeURIComponent(job.lastEventId);
    }
    const es = new EventSource(url);
    source = es;
    for (const type of STREAM_EVENTS) es.addEventListener(type, (event) => onEvent(type, event));
    // The server's `error` events and the connection's error share one event name.
    es.addEventListener("error", (event) => {
      if (event.data) {
        onEvent("error", event);
      } else if (es === source) {
        onConnectionError(es);
      }
    });
  }

  function onConnectionError(es) {
    if (es.readyState === EventSource.CONNECTING) {
      setStatus(statusText() + " Reconnecting…");
      return;
    }
    // Closed for good (an expired stream token, say): read the job itself until it ends.
    source = null;
    pollJob();
  }

  async function pollJob() {
    try {
      const body = await api("GET", `/api/jobs/${job.id}`);
      job.status = body.job.status;
      job.result = body.job.result;
      job.error = body.job.error;
      saveJob();
      setStatus(statusText() + (inProgress() ? " (the live stream is unavailable)" : ""));
      if (!inProgress()) {
        finish();
        return;
      }
    } catch (error) {
      setStatus(statusText() + " Cannot follow the job: " + describe(error));
      if (error.status === 401 || error.status === 404) return;
    }
    pollTimer = setTimeout(pollJob, 3000);
  }

  // The screenshot goes straight to Storage through a signed upload URL (never through the
  // API: Vercel refuses bodies over 4.5 MB), as supabase-js uploadToSignedUrl sends it.
  async function upload() {
    const file = ui.screenshot.files[0];
    if (!file) throw Object.assign(new Error("choose a screenshot first"), { code: "no_file" });
    const grant = await api("POST", "/api/uploads", { content_type: file.type, size: file.size });
    const form = new FormData();
    form.append("cacheControl", "3600");
    form.append("file", file);
    const response = await fetch(grant.signed_url, { method: "PUT", body: form });
    if (!response.ok) {
      throw Object.assign(new Error("the upload to storage failed"), { code: "http_" + response.status });
    }
    return grant.path;
  }

  // Submit and cancel --------------------------------------------------------------------------
  ui.kind.addEventListener("change", updateButtons);

  ui.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    ui.formMessage.textContent = "";
    let input = { resume_text: ui.resume.value, job_description: ui.jd.value };
    const match = store.get(KEYS.match);
    if (ui.useMatch.checked && match && ui.kind.value !== "job_match") input.match = match;
    ui.run.disabled = true;
    try {
      if (ui.kind.value === "match_from_image") {
        input = { resume_text: ui.resume.value, image: { path: await upload() } };
      }
      const body = await api("POST", "/api/jobs", {
        kind: ui.kind.value, tier: ui.tier.value, input,
      });
      closeStream();
      job = {
        id: body.job.id, kind: body.job.kind, tier: body.job.tier, cost: body.job.cost,
        status: body.job.status, events_url: body.events_url, lastEventId: null, lastEntry: null,
        // One stream for all the user's jobs (GET /api/events); this page shows this job's.
        stream_url: body.user_events_url,
        attempt: 0, text: "", stage: "", pct: 0, result: null, error: null,
      };
      saveJob();
      showJob();
      openStream();
      refreshMe();
    } catch (error) {
      ui.formMessage.textContent = "The job was not submitted: " + describe(error);
      if (error.status === 401) signOut(`Signed out: ${error.message}.`);
    } finally {
      updateButtons();
    }
  });

  ui.cancel.addEventListener("click", async () => {
    if (!inProgress()) return;
    ui.cancel.disabled = true;
    try {
      const body = await api("POST", `/api/jobs/${job.id}/cancel`);
      // The stream carries the `cancelled` status and ends the job on the page; without a
      // stream, the answer does.
      if (!source && inProgress()) {
        job.status = body.job.status;
        saveJob();
        setStatus(statusText());
        finish();
      }
    } catch (error) {
      ui.formMessage.textContent = "Cancel failed: " + describe(error);
      updateButtons();
    }
  });

  // Result rendering ----------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
      }
    }
    return node;
  }

  function list(items, attrs) {
    const ul = el("ul", attrs);
    for (const item of items || []) ul.append(el("li", null, String(item)));
    return ul;
  }

  function titledList(title, items, attrs) {
    return el("div", null, el("h4", null, title),
      items && items.length ? list(items, attrs) : el("p", { class: "hint" }, "None."));
  }

  // Text with **bold** spans, as text nodes and <strong> elements.
  function inline(parent, text) {
    const parts = text.split(/\*\*(.+?)\*\*/g);
    parts.forEach((part, i) => {
      if (part) parent.append(i % 2 ? el("strong", null, part) : document.createTextNode(part));
    });
    return parent;
  }

  // A tiny Markdown subset (headings, lists, bold, paragraphs) built as DOM nodes.
  function renderMarkdown(markdown, headingOffset = 3) {
    const root = el("div", { class: "markdown" });
    let block = null;
    for (const raw of String(markdown).replace(/\r\n?/g, "\n").split("\n")) {
      const line = raw.trim();
      let m;
      if (!line) {
        block = null;
      } else if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
        root.append(inline(el(`h${Math.min(6, m[1].length + headingOffset)}`), m[2]));
        block = null;
      } else if ((m = /^(?:[-*+]|(\d+)[.)])\s+(.*)$/.exec(line))) {
        const tag = m[1] ? "ol" : "ul";
        if (!block || block.tagName.toLowerCase() !== tag) {
          block = el(tag);
          root.append(block);
        }
        block.append(inline(el("li"), m[2]));
      } else if (block && block.tagName === "P") {
        block.append(document.createTextNode(" "));
        inline(block, line);
      } else {
        block = inline(el("p"), line);
        root.append(block);
      }
    }
    return root;
  }

  function renderMatch(r) {
    const score = Number(r.score) || 0;
    return el("div", { class: "match" },
      el("div", { class: "score" },
        el("strong", { id: "match-score" }, String(score)),
        el("span", null, "/ 100 match"),
        el("meter", { min: "0", max: "100", low: "50", high: "75", optimum: "100",
          value: String(score), "aria-label": `Match score ${score} of 100` })),
      el("p", { class: "summary" }, String(r.summary || "")),
      el("div", { class: "lists" },
        titledList("Strengths", r.strengths),
        titledList("Gaps", r.gaps)),
      titledList("Missing keywords", r.missing_keywords, { class: "keywords" }));
  }

  // A pipeline's audit: its summary and issues (why a stopped pipeline ran no match).
  function renderAudit(a) {
    const issues = el("ul");
    for (const i of (a && a.issues) || []) {
      issues.append(el("li", null, el("strong", null, String(i.severity || "")), ": ",
        String(i.problem || ""), el("span", { class: "hint" }, ` (${i.fix || ""})`)));
    }
    return el("div", { class: "audit" },
      el("p", { class: "summary" }, String((a && a.summary) || "")),
      a && a.issues && a.issues.length ? issues : null);
  }

  function renderFromImage(r) {
    if (r.stopped_by || !r.job_match) {
      return el("div", { id: "pipeline-stopped" },
        el("h3", null, `Stopped by ${r.stopped_by || "an earlier step"}: no match was run`),
        renderAudit(r.pre_match_audit));
    }
    return el("div", null, renderMatch(r.job_match),
      el("h3", null, "Pre-match audit"), renderAudit(r.pre_match_audit));
  }

  function renderCustomize(r) {
    const changes = el("ul");
    for (const c of r.changes || []) {
      changes.append(el("li", null, el("strong", null, String(c.section || "")), ": ",
        String(c.change || ""), el("span", { class: "hint" }, ` (${c.reason || ""})`)));
    }
    return el("div", null,
      el("h3", null, "Customized resume"), renderMarkdown(r.resume_markdown || ""),
      el("h3", null, "Changes"), changes);
  }

  function renderPrep(r) {
    const questions = el("ol", { class: "questions" });
    for (const q of r.questions || []) {
      questions.append(el("li", null,
        el("h4", null, String(q.question || "")),
        el("p", { class: "why" }, "Why it is asked: " + String(q.why_asked || "")),
        el("p", null, "Answer outline:"),
        list(q.answer_outline)));
    }
    return el("div", null,
      el("h3", null, "Questions"), questions,
      el("h3", null, "Focus areas"), list(r.focus_areas));
  }

  function renderResult() {
    ui.result.replaceChildren();
    if (!job || !TERMINAL.has(job.status)) {
      ui.resultSection.hidden = true;
      return;
    }
    let content;
    if (job.status === "succeeded" && job.result) {
      const render = { job_match: renderMatch, resume_customize: renderCustomize,
        interview_prep: renderPrep, match_from_image: renderFromImage }[job.kind];
      content = render ? render(job.result) : el("pre", null, JSON.stringify(job.result, null, 2));
    } else if (job.status === "failed") {
      content = el("p", null, job.error ? `${job.error.message} (${job.error.code})` : "The job failed.");
    } else {
      content = el("p", null, `The job was ${job.status}; coins spent on it are refunded.`);
    }
    ui.result.append(content);
    ui.resultSection.hidden = false;
  }

  // Start ---------------------------------------------------------------------------------------
  window.CareerShaper = { renderMarkdown };

  showAccount();
  refreshMe();
  job = store.get(KEYS.job);
  if (job && !job.stream_url) job.stream_url = job.events_url; // saved by an earlier page
  if (job) {
    showJob();
    if (inProgress()) openStream();
  }
})();
