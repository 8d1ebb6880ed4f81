// The admin dashboard (core/web/admin.py). Everything it shows comes from the admin API,
// called with the token the operator pasted (kept in this tab's sessionStorage, never in
// a URL). Values are put into the page with textContent only, never parsed as markup:
// project names, env values, log lines and error details are the tenants' words.
"use strict";

(function () {
  const KEY = "tee-daemon-admin-token";
  const NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
  const LOG_KEEP = 200000; // characters of log kept on the page
  const $ = (id) => document.getElementById(id);
  let selected = null; // the project whose versions and log are open
  let follower = null; // AbortController of the live log
  let poll = null;

  // -- talking to the API ------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(KEY) || "";
  }

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: "Bearer " + token(), Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    return answer(response.status, await response.text());
  }

  function answer(status, text) {
    let data = null;
    try { data = JSON.parse(text); } catch (_) { data = null; }
    if (status === 401) {
      signOut("The daemon refused the token (401). Paste the current admin token.");
      throw new ApiError(401, "token refused");
    }
    if (status >= 400) {
      const detail = data && typeof data.detail === "string" ? data.detail : text.slice(0, 500);
      throw new ApiError(status, detail || "HTTP " + status);
    }
    return data;
  }

  // -- small DOM helpers (text only) -----------------------------------------------

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function button(label, onClick, cls) {
    const b = el("button", label, "button" + (cls ? " " + cls : ""));
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  function status(text, bad) {
    const node = $("status");
    node.textContent = text;
    node.className = "notice" + (bad ? " bad" : "");
  }

  function short(value, n) {
    return value ? String(value).slice(0, n || 12) : "-";
  }

  // The instance's state in the operator's words.
  function stateOf(instance) {
    if (!instance) return "not running";
    if (!instance.state) return "serving"; // static files: the daemon serves them itself
    const names = { running: "serving", idle: "parked", "crash-loop": "crash-looping" };
    return names[instance.state] || instance.state;
  }

  function confirmAction(title, text, okLabel) {
    const dialog = $("confirm");
    $("confirm-h").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
      $("confirm-cancel").focus(); // the safe choice is the default
    });
  }

  // -- signing in ---------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    stopFollowing();
    if (poll) clearInterval(poll);
    poll = null;
    $("app").hidden = true;
    $("login").hidden = false;
    const error = $("login-error");
    error.textContent = message || "";
    error.hidden = !message;
  }

  async function signIn() {
    $("login").hidden = true;
    $("app").hidden = false;
    await refresh();
    if (!poll) poll = setInterval(() => { if (!$("confirm").open) refresh(); }, 10000);
  }

  // -- the projects table -------------------------------------------------------------

  function parseMetrics(text) {
    // tee_daemon_requests_total{project="x",status="200"} 5
    const counts = {};
    const line = /^tee_daemon_requests_total\{project="((?:[^"\\]|\\.)*)",status="(\d+)"\} (\d+)/;
    for (const row of text.split("\n")) {
      const m = line.exec(row);
      if (!m) continue;
      const c = counts[m[1]] || (counts[m[1]] = { requests: 0, errors: 0 });
      const n = Number(m[3]);
      const code = Number(m[2]);
      c.requests += n;
      if (code >= 500 || code === 0) c.errors += n; // 0: the project gave no answer
    }
    return counts;
  }

  async function refresh() {
    let listing, metricsText;
    try {
      listing = await api("GET", "/_api/projects");
      const r = await fetch("/_api/metrics", { headers: { Authorization: "Bearer " + token() } });
      metricsText = r.ok ? await r.text() : "";
    } catch (exc) {
      if (exc.status !== 401) status("Could not load the projects: " + exc.message, true);
      return;
    }
    const counts = parseMetrics(metricsText);
    const projects = listing.projects || [];
    const details = await Promise.all(
      projects.map((p) => api("GET", "/_api/projects/" + encodeURIComponent(p.name)).catch(() => p))
    );
    const body = $("projects").querySelector("tbody");
    body.replaceChildren();
    for (const p of details) body.appendChild(projectRow(p, counts[p.name] || { requests: 0, errors: 0 }));
    $("empty").hidden = projects.length > 0;
    if (selected && !projects.some((p) => p.name === selected)) closeDetail();
    if (selected) {
      const current = details.find((p) => p.name === selected);
      if (current) showFacts(current);
    }
  }

  function projectRow(p, count) {
    const tr = el("tr");
    tr.dataset.project = p.name;
    if (p.name === selected) tr.className = "selected";
    const nameCell = el("td");
    const link = el("a", p.name);
    link.href = p.url || "/" + encodeURIComponent(p.name) + "/";
    link.rel = "noopener noreferrer";
    nameCell.appendChild(link);
    tr.appendChild(nameCell);
    tr.appendChild(el("td", p.mode, "mode-" + p.mode));
    const state = stateOf(p.instance);
    const stateCell = el("td", state, "state state-" + state.replace(/[^a-z]+/g, "-"));
    if (p.instance && p.instance.restarts) stateCell.title = p.instance.restarts + " restarts";
    tr.appendChild(stateCell);
    tr.appendChild(el("td", "v" + p.version));
    tr.appendChild(el("td", p.runtime));
    const tree = el("td", short(p.tree_sha1), "mono");
    tree.title = "git tree " + (p.tree_sha1 || "") + "\nSHA-256 " + (p.tree_sha256 || "");
    tr.appendChild(tree);
    tr.appendChild(el("td", count.requests, "requests"));
    tr.appendChild(el("td", count.errors, "errors"));
    const actions = el("td", null, "row");
    actions.appendChild(button("Open", () => openDetail(p.name)));
    if (p.mode !== "attested") actions.appendChild(button("Promote", () => promote(p.name)));
    actions.appendChild(button("Delete", () => remove(p.name), "danger"));
    tr.appendChild(actions);
    return tr;
  }

  // -- one project: facts, versions, log ------------------------------------------------

  function showFacts(p) {
    const facts = $("detail-facts");
    facts.replaceChildren();
    const add = (label, value) => {
      facts.appendChild(el("dt", label));
      facts.appendChild(el("dd", value === undefined || value === null || value === "" ? "-" : value));
    };
    add("Mode", p.mode);
    add("State", stateOf(p.instance) + (p.instance && p.instance.restarts ? " (" + p.instance.restarts + " restarts)" : ""));
    add("Runtime", p.runtime + (p.entry ? " (" + p.entry + ")" : ""));
    add("Source", p.source + (p.ref ? " @ " + p.ref : ""));
    add("Tree", p.tree_sha1);
    add("Env", Object.entries(p.env || {}).map(([k, v]) => k + "=" + v).join("\n"));
    add("Secrets", (p.secret_names || []).join(", ") + ((p.secret_names || []).length ? " (values hidden)" : ""));
    if (p.instance && p.instance.last_exit_reason) add("Last exit", p.instance.last_exit_reason);
  }

  async function openDetail(name) {
    stopFollowing();
    selected = name;
    for (const tr of $("projects").querySelectorAll("tbody tr")) {
      tr.className = tr.dataset.project === name ? "selected" : "";
    }
    $("detail").hidden = false;
    $("detail-name").textContent = name;
    $("log").textContent = "";
    try {
      showFacts(await api("GET", "/_api/projects/" + encodeURIComponent(name)));
      await loadVersions(name);
      const r = await fetch("/_api/projects/" + encodeURIComponent(name) + "/logs?lines=200", {
        headers: { Authorization: "Bearer " + token() },
      });
      const text = await r.text();
      if (!r.ok) answer(r.status, text);
      appendLog($("log"), text);
    } catch (exc) {
      if (exc.status !== 401) status(exc.message, true);
    }
  }

  function closeDetail() {
    stopFollowing();
    selected = null;
    $("detail").hidden = true;
  }

  async function loadVersions(name) {
    const data = await api("GET", "/_api/projects/" + encodeURIComponent(name) + "/versions");
    const body = $("versions").querySelector("tbody");
    body.replaceChildren();
    for (const v of data.versions) {
      const tr = el("tr");
      tr.dataset.version = v.version;
      tr.appendChild(el("td", "v" + v.version));
      tr.appendChild(el("td", (v.created_at || "").replace("T", " ").replace("Z", " UTC")));
      tr.appendChild(el("td", v.runtime));
      tr.appendChild(el("td", short(v.tree_sha1), "mono"));
      tr.appendChild(el("td", v.commit ? short(v.commit) : "upload", "mono"));
      tr.appendChild(el("td", v.serving ? "serving" : "", v.serving ? "state-serving" : ""));
      const cell = el("td");
      if (!v.serving) cell.appendChild(button("Roll back to v" + v.version, () => rollback(name, v.version)));
      tr.appendChild(cell);
      body.appendChild(tr);
    }
  }

  function appendLog(pre, text) {
    if (!text) return;
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    let all = pre.textContent + text;
    if (all.length > LOG_KEEP) all = all.slice(all.length - LOG_KEEP);
    pre.textContent = all;
    if (stick) pre.scrollTop = pre.scrollHeight;
  }

  // Once the answer's head is in, read its stream into `pre` until `controller` aborts
  // it; `{ done }` settles when reading ends (wrapped: an async function returning a
  // promise would wait for it).
  async function stream(path, pre, controller) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + token() }, signal: controller.signal });
    if (!r.ok) answer(r.status, await r.text());
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    const done = (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          appendLog(pre, decoder.decode(value, { stream: true }));
        }
      } catch (_) {
        // aborted: the reader ends here
      }
    })();
    return { done };
  }

  async function toggleFollow() {
    if (follower) {
      stopFollowing();
      return;
    }
    if (!selected) return;
    follower = new AbortController();
    $("follow").textContent = "Stop following";
    $("log").textContent = "";
    try {
      await stream("/_api/projects/" + encodeURIComponent(selected) + "/logs?follow=1&lines=200", $("log"), follower);
    } catch (exc) {
      stopFollowing();
      if (exc.name !== "AbortError" && exc.status !== 401) status(exc.message, true);
    }
  }

  function stopFollowing() {
    if (follower) follower.abort();
    follower = null;
    const b = $("follow");
    if (b) b.textContent = "Follow live";
  }

  // -- actions ------------------------------------------------------------------------

  async function rollback(name, version) {
    status("Rolling " + name + " back to v" + version + "…");
    try {
      const p = await api("POST", "/_api/projects/" + encodeURIComponent(name) + "/rollback", { version });
      status(name + " serves v" + p.version + " again.");
    } catch (exc) {
      if (exc.status !== 401) status("Rollback refused: " + exc.message, true);
    }
    await refresh();
    if (selected === name) await loadVersions(name).catch(() => {});
  }

  async function promote(name) {
    const ok = await confirmAction(
      "Promote " + name + " to attested?",
      "Promoting makes " + name + " attested, and that cannot be undone. From now on anyone, " +
        "without a token, can fetch its manifest (runtime, entry, env, secret names, source and " +
        "tree hash) and a TEE quote over it; this promote and every later deploy, rollback and " +
        "delete of it are appended to the daemon's public, append-only transparency log, which " +
        "is never rewritten. Secret values stay private.",
      "Promote (cannot be undone)"
    );
    if (!ok) return;
    try {
      await api("POST", "/_api/projects/" + encodeURIComponent(name) + "/promote");
      status(name + " is attested: every change to it is now in the transparency log.");
    } catch (exc) {
      if (exc.status !== 401) status("Promote refused: " + exc.message, true);
    }
    await refresh();
  }

  async function remove(name) {
    const ok = await confirmAction(
      "Delete " + name + "?",
      "This stops " + name + " and removes all its kept versions, its logs and its data dir. " +
        "It cannot be undone. For an attested project the delete is recorded in the transparency log.",
      "Delete"
    );
    if (!ok) return;
    try {
      await api("DELETE", "/_api/projects/" + encodeURIComponent(name));
      status("Deleted " + name + ".");
      if (selected === name) closeDetail();
    } catch (exc) {
      if (exc.status !== 401) status("Delete refused: " + exc.message, true);
    }
    await refresh();
  }

  // -- deploying from the browser -----------------------------------------------------

  // A name from a folder's or file's name, when it makes a valid project name.
  function defaultName(raw) {
    const name = String(raw || "").toLowerCase().replace(/\.(tar\.gz|tgz|tar)$/, "").replace(/[^a-z0-9-]+/g, "-")
      .replace(/^-+|-+$/g, "").slice(0, 63);
    return NAME_RE.test(name) ? name : "";
  }

  // -- .gitignore, as `tee-daemon deploy` honours it (cli/client.py's _PatternIgnore) --

  function globRegex(glob) {
    let re = "";
    for (let i = 0; i < glob.length; i++) {
      const c = glob[i];
      if (c === "*" && glob[i + 1] === "*" && glob[i + 2] === "/") {
        re += "(?:.*/)?"; // "**/": any folders, or none
        i += 2;
      } else if (c === "*" && glob[i + 1] === "*") {
        re += ".*";
        i += 1;
      } else if (c === "*") re += "[^/]*";
      else if (c === "?") re += "[^/]";
      else re += c.replace(/[\\^$.|+()[\]{}]/g, "\\$&");
    }
    return new RegExp("^" + re + "$");
  }

  function parseIgnore(text) {
    const rules = [];
    for (let line of text.split("\n")) {
      line = line.replace(/\s+$/, "");
      if (!line || line.startsWith("#")) continue;
      const negate = line.startsWith("!");
      if (negate) line = line.slice(1);
      const dirOnly = line.endsWith("/");
      line = line.replace(/\/+$/, "");
      const anchored = line.includes("/");
      rules.push({ negate, dirOnly, anchored, re: globRegex(line.replace(/^\//, "")) });
    }
    return rules;
  }

  // Whether `rel` (a path in the folder) is left out: .git, or what a .gitignore of its
  // folder or a parent excludes (deeper files win, as in git).
  function ignoredBy(rules, rel, isDir) {
    const parts = rel.split("/");
    if (parts.includes(".git")) return true;
    let ignored = false;
    for (let depth = 0; depth < parts.length; depth++) {
      for (const rule of rules[parts.slice(0, depth).join("/")] || []) {
        if (rule.dirOnly && !isDir) continue;
        const target = rule.anchored ? parts.slice(depth).join("/") : parts[parts.length - 1];
        if (rule.re.test(target)) ignored = !rule.negate;
      }
    }
    return ignored;
  }

  async function deployable(files) {
    const rules = {};
    for (const file of files) {
      const rel = file.webkitRelativePath.split("/").slice(1).join("/");
      if (rel === ".gitignore" || rel.endsWith("/.gitignore")) {
        rules[rel.slice(0, -".gitignore".length).replace(/\/$/, "")] = parseIgnore(await file.text());
      }
    }
    const kept = [];
    for (const file of files) {
      const rel = file.webkitRelativePath.split("/").slice(1).join("/");
      const parts = rel.split("/");
      // A file under an ignored folder stays out, whatever its own rules say (as in git).
      const dirs = parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join("/"));
      if (!rel || dirs.some((d) => ignoredBy(rules, d, true)) || ignoredBy(rules, rel, false)) continue;
      kept.push([rel, file]);
    }
    return kept;
  }

  // A ustar archive of the chosen folder's deployable files (paths relative to it).
  async function tarFolder(files) {
    const enc = new TextEncoder();
    const parts = [];
    const octal = (n, width) => n.toString(8).padStart(width - 1, "0") + "\0";
    for (const [rel, file] of await deployable(files)) {
      let name = enc.encode(rel);
      let prefix = new Uint8Array(0);
      if (name.length > 100) { // ustar: the path split at a "/" into prefix (155) and name (100)
        const cut = rel.lastIndexOf("/", rel.length - 1);
        prefix = enc.encode(rel.slice(0, cut));
        name = enc.encode(rel.slice(cut + 1));
        if (cut < 0 || prefix.length > 155 || name.length > 100) throw new Error("path too long for a tar file: " + rel);
      }
      const header = new Uint8Array(512);
      const put = (bytes, at) => header.set(typeof bytes === "string" ? enc.encode(bytes) : bytes, at);
      put(name, 0);
      put(octal(0o644, 8), 100);
      put(octal(0, 8), 108);
      put(octal(0, 8), 116);
      put(octal(file.size, 12), 124);
      put(octal(Math.floor(file.lastModified / 1000), 12), 136);
      put("        ", 148); // the checksum counts its own field as spaces
      put("0", 156);
      put("ustar\u000000", 257);
      put(prefix, 345);
      let sum = 0;
      for (const b of header) sum += b;
      put(sum.toString(8).padStart(6, "0") + "\0 ", 148);
      parts.push(header, new Uint8Array(await file.arrayBuffer()));
      const pad = (512 - (file.size % 512)) % 512;
      if (pad) parts.push(new Uint8Array(pad));
    }
    if (!parts.length) throw new Error("the folder has nothing to deploy");
    parts.push(new Uint8Array(1024));
    let blob = new Blob(parts, { type: "application/x-tar" });
    if (typeof CompressionStream === "function") {
      blob = await new Response(blob.stream().pipeThrough(new CompressionStream("gzip"))).blob();
    }
    return blob;
  }

  function upload(form, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/_api/projects");
      xhr.setRequestHeader("Authorization", "Bearer " + token());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded, e.total));
      xhr.upload.addEventListener("load", () => onProgress(1, 1));
      xhr.addEventListener("load", () => {
        try { resolve(answer(xhr.status, xhr.responseText)); } catch (exc) { reject(exc); }
      });
      xhr.addEventListener("error", () => reject(new Error("the daemon could not be reached")));
      xhr.send(form);
    });
  }

  async function deploy(event) {
    event.preventDefault();
    const folder = $("deploy-folder").files;
    const tarball = $("deploy-tarball").files[0];
    const state = $("deploy-state");
    const bar = $("deploy-progress");
    const output = $("deploy-output");
    let name = $("deploy-name").value.trim();
    if (!folder.length && !tarball) {
      state.textContent = "Choose a folder or a tarball first.";
      return;
    }
    if (!name) {
      name = tarball ? defaultName(tarball.name) : defaultName(folder[0].webkitRelativePath.split("/")[0]);
      if (!name) {
        state.textContent = "Give the project a name (lowercase letters, digits and '-').";
        return;
      }
      $("deploy-name").value = name;
    }
    if (!NAME_RE.test(name)) {
      state.textContent = "Invalid name: lowercase letters, digits and '-', at most 63, not starting with '-'.";
      return;
    }
    output.hidden = false;
    output.textContent = "";
    bar.hidden = false;
    bar.value = 0;
    const live = new AbortController();
    try {
      state.textContent = tarball ? "Uploading " + tarball.name + "…" : "Packing " + folder.length + " files…";
      const files = tarball || (await tarFolder(folder));
      // Follow the build and start output first, so nothing the deploy writes is missed.
      const reading = await stream("/_api/projects/" + encodeURIComponent(name) + "/output", output, live);
      const form = new FormData();
      form.append("manifest", new Blob([JSON.stringify({ name })], { type: "application/json" }));
      form.append("files", files, tarball ? tarball.name : name + ".tar.gz");
      const p = await upload(form, (loaded, total) => {
        bar.value = Math.round((100 * loaded) / total);
        state.textContent = loaded >= total ? "Building and starting " + name + "…" : "Uploading… " + bar.value + "%";
      });
      await new Promise((r) => setTimeout(r, 500)); // the last lines, polled every 200 ms
      live.abort();
      await reading.done;
      state.textContent = "Deployed " + p.name + " v" + p.version + " (" + p.runtime + "): " + p.url;
      state.className = "state-serving";
    } catch (exc) {
      live.abort();
      state.className = "error";
      if (exc.status !== 401) state.textContent = "Deploy failed: " + exc.message;
    } finally {
      bar.hidden = true;
    }
    await refresh();
    if (selected === name) await loadVersions(name).catch(() => {});
  }

  // -- wiring -------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      $("token").value = "";
      signIn();
    });
    $("logout").addEventListener("click", () => signOut(""));
    $("refresh").addEventListener("click", () => refresh());
    $("follow").addEventListener("click", toggleFollow);
    $("deploy-form").addEventListener("submit", deploy);
    $("confirm-ok").addEventListener("click", () => $("confirm").close("ok"));
    $("confirm-cancel").addEventListener("click", () => $("confirm").close("cancel"));
    $("deploy-folder").addEventListener("change", () => { $("deploy-tarball").value = ""; });
    $("deploy-tarball").addEventListener("change", () => { $("deploy-folder").value = ""; });
    if (token()) signIn();
  });
})();
