// The verification page: fetch a project's bundle with a fresh nonce and run every check
// a browser can run, with WebCrypto only (SHA-256, SHA-512, Ed25519). Every value from
// the bundle reaches the page through textContent: nothing is ever parsed as HTML.
"use strict";

(() => {
  const main = document.getElementById("main");
  const project = main.dataset.project;
  const bundleUrl = main.dataset.bundle;
  const enc = new TextEncoder();
  const results = [];

  // -- small helpers ------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function hexToBytes(hex) {
    if (typeof hex !== "string" || hex.length % 2 || !/^[0-9a-fA-F]*$/.test(hex)) {
      throw new Error("not a hex string");
    }
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }

  function bytesToHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function b64ToBytes(b64) {
    const bin = atob(b64);
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }

  async function digest(alg, bytes) {
    return new Uint8Array(await crypto.subtle.digest(alg, bytes));
  }

  const sha256 = (bytes) => digest("SHA-256", bytes);
  const leafHash = (bytes) => sha256(concat(Uint8Array.of(0), bytes));
  const nodeHash = (l, r) => sha256(concat(Uint8Array.of(1), l, r));

  // Python's canonical JSON: sorted keys, no whitespace, non-ASCII kept (core/canonical.py).
  function canonical(value) {
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
    const keys = Object.keys(value).sort();
    return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
  }

  const odd = (n) => n % 2 === 1;
  const half = (n) => Math.floor(n / 2);

  // RFC 9162 2.1.3.2: the root an inclusion proof leads to, or null.
  async function rootFromInclusion(index, size, hash, proof) {
    if (!(index >= 0 && index < size)) return null;
    let fn = index, sn = size - 1, r = hash;
    for (const p of proof) {
      if (sn === 0) return null;
      if (odd(fn) || fn === sn) {
        r = await nodeHash(p, r);
        if (!odd(fn)) while (!odd(fn) && fn !== 0) { fn = half(fn); sn = half(sn); }
      } else {
        r = await nodeHash(r, p);
      }
      fn = half(fn); sn = half(sn);
    }
    return sn === 0 ? r : null;
  }

  // RFC 9162 2.1.4.2: does `proof` show the tree of size m (root1) is a prefix of size n (root2)?
  async function verifyConsistency(m, n, root1, root2, proof) {
    if (m > n) return false;
    if (m === n) return proof.length === 0 && equalBytes(root1, root2);
    if (m === 0) return proof.length === 0;
    if (proof.length === 0) return false;
    let path = proof.slice();
    if ((m & (m - 1)) === 0 && m < 2 ** 31) path = [root1, ...path];
    let fn = m - 1, sn = n - 1;
    while (odd(fn)) { fn = half(fn); sn = half(sn); }
    let fr = path[0], sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0) return false;
      if (odd(fn) || fn === sn) {
        fr = await nodeHash(c, fr);
        sr = await nodeHash(c, sr);
        if (!odd(fn)) while (!odd(fn) && fn !== 0) { fn = half(fn); sn = half(sn); }
      } else {
        sr = await nodeHash(sr, c);
      }
      fn = half(fn); sn = half(sn);
    }
    return sn === 0 && equalBytes(fr, root1) && equalBytes(sr, root2);
  }

  // -- dstack's event log (see core/eventlog.py for the rules and where they come from) --

  const RUNTIME_EVENT_TYPE = 0x08000001;

  // The digests dstack allows for a runtime event: V1 hashes type:name:payload, V2 a
  // canonical JSON of the event (two spellings in dstack's sources). [] = not recomputable.
  async function expectedDigests(e) {
    if (e.event_type !== RUNTIME_EVENT_TYPE) return [];
    const payload = hexToBytes(e.event_payload || "");
    const version = e.version === undefined ? 1 : e.version;
    if (version === 1) {
      const type = new Uint8Array(4);
      new DataView(type.buffer).setUint32(0, RUNTIME_EVENT_TYPE, true);
      const colon = Uint8Array.of(0x3a);
      return [await digest("SHA-384", concat(type, colon, enc.encode(e.event), colon, payload))];
    }
    if (version === 2) {
      const hex = bytesToHex(payload);
      const forms = [
        { event: e.event, event_type: RUNTIME_EVENT_TYPE, payload: hex, version: 2 },
        { name: e.event, type: RUNTIME_EVENT_TYPE, payload: hex },
      ];
      return Promise.all(forms.map((f) => digest("SHA-384", enc.encode(canonical(f)))));
    }
    return [];
  }

  // RTMR extend: mr = SHA-384(mr || digest) from 48 zero bytes, short digests zero-padded.
  async function replayRtmr(events, imr) {
    let mr = new Uint8Array(48);
    for (const e of events) {
      if (e.imr !== imr) continue;
      const d = hexToBytes(e.digest || "");
      const padded = new Uint8Array(Math.max(48, d.length));
      padded.set(d);
      mr = await digest("SHA-384", concat(mr, padded));
    }
    return mr;
  }

  // -- recording checks ---------------------------------------------------------------

  // status: "pass" | "fail" | "info" | "warn". values: [[label, value], ...]
  function record(id, title, status, why, values) {
    results.push({ id, title, status, why, values: values || [] });
  }

  async function check(id, title, fn) {
    try {
      await fn();
    } catch (err) {
      record(id, title, "fail", "The check could not run: " + (err && err.message ? err.message : String(err)));
    }
  }

  const short = (s, n = 16) => (typeof s === "string" && s.length > n ? s.slice(0, n) + "\u2026" : String(s));

  // -- the TDX quote --------------------------------------------------------------------

  // TDX quote v4: a 48-byte header, then the 584-byte TD report; offsets from the quote start.
  const TD_FIELDS = [
    ["TEE TCB SVN", 48, 16], ["MRSEAM", 64, 48], ["TD attributes", 168, 8], ["XFAM", 176, 8],
    ["MRTD", 184, 48], ["MRCONFIGID", 232, 48], ["MROWNER", 280, 48],
    ["RTMR0", 376, 48], ["RTMR1", 424, 48], ["RTMR2", 472, 48], ["RTMR3", 520, 48],
    ["report_data", 568, 64],
  ];

  function parseQuote(bytes) {
    if (bytes.length < 632) throw new Error(`the quote is ${bytes.length} bytes, too short for a TDX v4 quote`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const fields = {
      version: view.getUint16(0, true),
      attestationKeyType: view.getUint16(2, true),
      teeType: view.getUint32(4, true),
    };
    for (const [label, off, len] of TD_FIELDS) fields[label] = bytes.slice(off, off + len);
    return fields;
  }

  // -- the checks -----------------------------------------------------------------------

  async function run() {
    const nonce = bytesToHex(crypto.getRandomValues(new Uint8Array(32)));
    let bundle;
    try {
      const res = await fetch(`${bundleUrl}?nonce=${nonce}`, { headers: { Accept: "application/json" } });
      const text = await res.text();
      try { bundle = JSON.parse(text); } catch { throw new Error(`the daemon answered ${res.status} with something that is not JSON`); }
      if (!res.ok) throw new Error(`the daemon answered ${res.status}: ${bundle.detail || text}`);
    } catch (err) {
      record("fetch", "Fetch the verification bundle", "fail", err.message);
      return render(null);
    }
    window.__bundle = bundle;

    const manifest = bundle.manifest || {};
    const att = bundle.attestation || bundle.attest || bundle;
    const audit = bundle.audit || bundle;
    const checkpoint = audit.checkpoint || bundle.checkpoint || {};
    const entries = audit.entries || [];
    const tee = bundle.tee || att.tee || checkpoint.tee || "unknown";
    let preimage = null;
    let quote = null;
    let events = null;

    // The TEE itself.
    if (tee === "tdx") {
      record("tee", "TEE mode", "info", "The daemon reports Intel TDX. The quote signature below is what proves it.", [["tee", tee]]);
    } else {
      record("tee", "TEE mode", "warn",
        tee === "simulated"
          ? "The daemon runs with a simulated TEE: the quote is not signed by Intel hardware, so it proves nothing about the machine."
          : "The daemon reports no real TEE.",
        [["tee", tee]]);
    }

    await check("report-data", "Quote report_data = SHA-512(preimage)", async () => {
      const qbytes = hexToBytes(att.quote);
      quote = parseQuote(qbytes);
      if (typeof att.report_data_preimage !== "string") throw new Error("the bundle has no report_data_preimage");
      const want = await digest("SHA-512", enc.encode(att.report_data_preimage));
      const got = quote.report_data;
      const ok = equalBytes(want, got);
      record("report-data", "Quote report_data = SHA-512(preimage)", ok ? "pass" : "fail",
        ok ? "The quote commits to the preimage below, byte for byte."
           : "The quote's report_data does not match the hash of the preimage: the quote does not vouch for this bundle.",
        [["SHA-512(preimage)", bytesToHex(want)], ["quote report_data", bytesToHex(got)]]);
    });

    await check("quote-format", "Quote is a TDX v4 quote", async () => {
      if (!quote) quote = parseQuote(hexToBytes(att.quote));
      const ok = quote.version === 4 && quote.teeType === 0x81;
      record("quote-format", "Quote is a TDX v4 quote", ok ? "pass" : "fail",
        "Header version 4 and TEE type 0x81 (TDX). Its signature is checked by tee-daemon verify.",
        [["version", quote.version], ["TEE type", "0x" + quote.teeType.toString(16)], ["size", att.quote.length / 2 + " bytes"]]);
    });

    await check("rtmr3", "The event log replays to the quote's RTMR3", async () => {
      if (!quote) quote = parseQuote(hexToBytes(att.quote));
      events = typeof att.event_log === "string" ? JSON.parse(att.event_log) : att.event_log;
      if (!Array.isArray(events)) throw new Error("the bundle has no event log");
      const got = await replayRtmr(events, 3);
      const ok = equalBytes(got, quote.RTMR3);
      record("rtmr3", "The event log replays to the quote's RTMR3", ok ? "pass" : "fail",
        ok ? "The quote measured exactly these runtime events, in this order."
           : "The event log is not the one the quote measured: an event was changed, added, removed or reordered.",
        [["replayed", bytesToHex(got)], ["quote RTMR3", bytesToHex(quote.RTMR3)],
         ["IMR-3 events", events.filter((e) => e.imr === 3).length]]);
    });

    await check("event-digests", "Each event's digest matches its name and payload", async () => {
      if (!events) throw new Error("no event log");
      const bad = [];
      for (const [i, e] of events.entries()) {
        if (e.imr !== 3) continue;
        const allowed = (await expectedDigests(e)).map(bytesToHex);
        if (!allowed.includes(String(e.digest).toLowerCase())) bad.push(`#${i} ${e.event}`);
      }
      record("event-digests", "Each event's digest matches its name and payload", bad.length ? "fail" : "pass",
        bad.length ? "These events' payloads are not what their digests measured: " + bad.join(", ")
                   : "The names and payloads below are what RTMR3 measured.",
        []);
    });

    await check("app-identity", "App identity from the event log", async () => {
      if (!events) throw new Error("no event log");
      let info = {};
      try {
        const res = await fetch("/_api/substrate", { headers: { Accept: "application/json" } });
        if (res.ok) info = (await res.json()).tee_info || {};
      } catch { info = {}; }
      const rows = [];
      const bad = [];
      for (const [name, key] of [["app-id", "app_id"], ["compose-hash", "compose_hash"], ["instance-id", "instance_id"]]) {
        const values = events.filter((e) => e.imr === 3 && e.event_type === RUNTIME_EVENT_TYPE && e.event === name)
          .map((e) => String(e.event_payload || "").toLowerCase());
        const published = typeof info[key] === "string" && info[key] ? info[key].toLowerCase() : null;
        if (values.length !== 1) bad.push(`${values.length} ${name} events`);
        else if (published && published !== values[0]) bad.push(`${name} differs from the daemon's tee_info ${key}`);
        rows.push([name, values.join(", ") || "(none)"]);
      }
      record("app-identity", "App identity from the event log", bad.length ? "fail" : "pass",
        bad.length ? bad.join("; ")
                   : "The dstack app, its compose file hash and the instance, as measured into RTMR3 (and as the daemon reports them).",
        rows);
    });

    await check("preimage", "Preimage fields match the manifest, the checkpoint and the nonce", async () => {
      preimage = JSON.parse(att.report_data_preimage);
      const expect = [
        ["v", "tee-daemon/1"],
        ["project", project],
        ["tree_sha256", manifest.tree_sha256],
        ["manifest_sha256", manifest.manifest_sha256],
        ["log_size", checkpoint.size],
        ["log_root", checkpoint.root],
        ["log_public_key", checkpoint.public_key],
        ["nonce", nonce],
      ];
      const bad = expect.filter(([k, v]) => preimage[k] !== v);
      const canon = canonical(preimage) === att.report_data_preimage;
      const ok = bad.length === 0 && canon;
      const why = ok
        ? "The quote binds this project's tree and manifest, the log head below, the key that signs it, and the nonce this page just chose (so the quote is fresh)."
        : (canon ? "" : "The preimage is not canonical JSON. ") +
          bad.map(([k, v]) => `${k} is ${JSON.stringify(preimage[k])}, expected ${JSON.stringify(v)}`).join("; ");
      record("preimage", "Preimage fields match the manifest, the checkpoint and the nonce", ok ? "pass" : "fail", why,
        expect.map(([k, v]) => [k, String(preimage[k]) + (preimage[k] === v ? "" : `  (expected ${v})`)]));
    });

    await check("manifest", "manifest_sha256 = SHA-256 of the manifest's fields", async () => {
      const fields = ["name", "runtime", "entry", "env", "secret_names", "source", "ref", "commit", "tree_sha1", "tree_sha256",
        "command", "image", "port", // SPEC 11
        "toolchain", "lock_sha256", "deps_tree_sha256", "pinned"]; // SPEC 12: what runs beyond the tree
      const picked = {};
      for (const f of fields) picked[f] = f in manifest ? manifest[f] : null;
      const got = bytesToHex(await sha256(enc.encode(canonical(picked))));
      const ok = got === manifest.manifest_sha256 && manifest.name === project;
      record("manifest", "manifest_sha256 = SHA-256 of the manifest's fields", ok ? "pass" : "fail",
        ok ? "The published manifest (runtime, entry, env, secret names, source, commit, tree, toolchain, lockfile and installed dependency tree) is exactly what the hash covers."
           : "The manifest shown does not hash to the manifest_sha256 the quote and log commit to.",
        [["computed", got], ["published", manifest.manifest_sha256]]);
    });

    await check("deps", "Dependencies are pinned by a lockfile", async () => {
      const tools = Object.entries(manifest.toolchain || {}).sort().map(([k, v]) => `${k} ${v}`).join(", ");
      const rows = [["toolchain", tools || "not recorded"], ["pinned", String(manifest.pinned === true)],
        ["lock_sha256", manifest.lock_sha256 || "none"], ["deps_tree_sha256", manifest.deps_tree_sha256 || "nothing installed"]];
      if (manifest.pinned === true) {
        record("deps", "Dependencies are pinned by a lockfile", "pass",
          manifest.deps_tree_sha256
            ? "Every installed dependency is fixed by the lockfile with integrity hashes: reinstalling it with this toolchain gives the same tree (tee-daemon verify --deps checks that)."
            : "Nothing is installed beyond the source tree.", rows);
      } else {
        record("deps", "Dependencies are pinned by a lockfile", "warn",
          "NOT pinned: the dependencies were resolved at deploy time, so the same source can run other package versions after a redeploy, and nobody can reproduce the installed tree from this evidence (see below).", rows);
      }
    });

    await check("checkpoint-note", "Checkpoint note matches its size and root", async () => {
      const lines = String(checkpoint.note).split("\n");
      const root = bytesToHex(b64ToBytes(lines[2] || ""));
      const ok = lines.length === 4 && lines[3] === "" && lines[0] === checkpoint.origin &&
        lines[1] === String(checkpoint.size) && root === checkpoint.root;
      record("checkpoint-note", "Checkpoint note matches its size and root", ok ? "pass" : "fail",
        "The signed C2SP checkpoint body names this log, its size and root hash.",
        [["origin", lines[0]], ["size", lines[1]], ["root", root]]);
    });

    let signatureOk = false;
    await check("checkpoint-sig", "Checkpoint signature (Ed25519)", async () => {
      let key;
      try {
        key = await crypto.subtle.importKey("raw", hexToBytes(checkpoint.public_key), { name: "Ed25519" }, false, ["verify"]);
      } catch (err) {
        if (err && err.name === "NotSupportedError") {
          record("checkpoint-sig", "Checkpoint signature (Ed25519)", "info",
            "This browser's WebCrypto has no Ed25519; tee-daemon verify checks the signature.");
          return;
        }
        throw err;
      }
      const sig = b64ToBytes(checkpoint.signature);
      signatureOk = sig.length === 64 && await crypto.subtle.verify({ name: "Ed25519" }, key, sig, enc.encode(checkpoint.note));
      record("checkpoint-sig", "Checkpoint signature (Ed25519)", signatureOk ? "pass" : "fail",
        signatureOk ? "Signed by the log key the quote's preimage names (so by the attested machine)."
                    : "The signature does not verify under the published log key.",
        [["public key", checkpoint.public_key], ["signature", checkpoint.signature]]);
    });

    // Inclusion of each entry, and what the entries say.
    const root = checkpoint.root ? hexToBytes(checkpoint.root) : new Uint8Array(32);
    const parsed = [];
    for (const entry of entries) {
      const title = `Log entry #${entry.index} is in the checkpoint's tree`;
      await check(`inclusion-${entry.index}`, title, async () => {
        const leaf = JSON.parse(entry.leaf);
        const proof = (entry.inclusion_proof || []).map(hexToBytes);
        const got = await rootFromInclusion(entry.index, checkpoint.size, await leafHash(enc.encode(entry.leaf)), proof);
        const ok = got !== null && equalBytes(got, root) && leaf.index === entry.index && leaf.project === project;
        parsed.push({ entry, leaf, ok });
        record(`inclusion-${entry.index}`, title, ok ? "pass" : "fail",
          ok ? `${leaf.action} of version ${leaf.version}: its RFC 6962 inclusion proof leads to the signed root.`
             : (leaf.project !== project ? `The entry is about ${JSON.stringify(leaf.project)}, not this project. ` : "") +
               "The inclusion proof does not lead to the checkpoint's root: this entry is not part of the signed log.",
          [["leaf hash", bytesToHex(await leafHash(enc.encode(entry.leaf)))],
           ["computed root", got ? bytesToHex(got) : "(proof has the wrong shape)"],
           ["checkpoint root", checkpoint.root]]);
      });
    }
    if (!entries.length) {
      record("entries", "The log has entries for this project", "fail", "An attested project has at least its promotion in the log.");
    }

    await check("latest", "The latest log entry is what runs now", async () => {
      const mine = parsed.filter((p) => p.leaf.project === project).sort((a, b) => a.leaf.index - b.leaf.index);
      const last = mine[mine.length - 1];
      if (!last) throw new Error("no log entry for this project");
      const ok = last.leaf.action !== "delete" && last.leaf.manifest_sha256 === manifest.manifest_sha256 &&
        last.leaf.tree_sha256 === manifest.tree_sha256 && last.leaf.version === manifest.version;
      record("latest", "The latest log entry is what runs now", ok ? "pass" : "fail",
        ok ? "The most recent change recorded in the log is the manifest and tree shown here."
           : "The log's most recent entry for this project does not describe the manifest the daemon serves.",
        [["entry", `#${last.leaf.index} ${last.leaf.action} v${last.leaf.version}`],
         ["entry manifest_sha256", last.leaf.manifest_sha256], ["manifest_sha256", manifest.manifest_sha256]]);
    });

    await check("consistency", "Consistency with the checkpoint this browser saw before", async () => {
      const key = `tee-daemon:checkpoint:${checkpoint.origin}:${checkpoint.public_key}`;
      let seen = null;
      try { seen = JSON.parse(localStorage.getItem(key) || "null"); } catch { seen = null; }
      const remember = () => {
        if (!signatureOk) return;
        try { localStorage.setItem(key, JSON.stringify({ size: checkpoint.size, root: checkpoint.root, at: Date.now() })); } catch {}
      };
      if (!seen || typeof seen.size !== "number") {
        remember();
        record("consistency", "Consistency with the checkpoint this browser saw before", "info",
          "First visit from this browser: the checkpoint is remembered, and the next visit checks the log only grew.",
          [["size", checkpoint.size], ["root", checkpoint.root]]);
        return;
      }
      let ok;
      if (seen.size > checkpoint.size) ok = false;
      else if (seen.size === checkpoint.size) ok = seen.root === checkpoint.root;
      else {
        const res = await fetch(`/_api/log/consistency?from=${seen.size}&to=${checkpoint.size}`, { headers: { Accept: "application/json" } });
        if (!res.ok) throw new Error(`the consistency proof request answered ${res.status}`);
        const body = await res.json();
        ok = await verifyConsistency(seen.size, checkpoint.size, hexToBytes(seen.root), root, (body.proof || []).map(hexToBytes));
      }
      if (ok) remember();
      record("consistency", "Consistency with the checkpoint this browser saw before", ok ? "pass" : "fail",
        ok ? `The log of size ${checkpoint.size} extends the one of size ${seen.size} seen on ${new Date(seen.at || 0).toLocaleString()}: nothing was rewritten.`
           : "The log is not an extension of the one this browser saw before: history was rewritten.",
        [["seen before", `${seen.size} ${seen.root}`], ["now", `${checkpoint.size} ${checkpoint.root}`]]);
    });

    record("quote-signature", "Quote signature and TCB status", "info",
      "Not checkable in a browser (needs Intel's PCK certificate chain and collateral): run the command below.");

    render({ manifest, att, checkpoint, parsed, quote, preimage, tee });
  }

  // -- rendering ------------------------------------------------------------------------

  function kvTable(rows) {
    return el("table", { class: "kv" },
      el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v === null || v === undefined ? "\u2014" : String(v))))));
  }

  function render(data) {
    const list = document.getElementById("checks");
    list.replaceChildren(...results.map((r) => {
      const values = r.values.length
        ? el("dl", { class: "values" }, r.values.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]))
        : null;
      const label = { pass: "pass", fail: "fail", info: "info", warn: "warning" }[r.status];
      return el("li", { class: `check ${r.status}`, "data-check": r.id, "data-status": r.status },
        el("div", { class: "check-head" }, el("span", { class: "status" }, label), el("span", { class: "check-title" }, r.title)),
        r.why ? el("p", { class: "check-why" }, r.why) : null,
        values);
    }));

    const failed = results.filter((r) => r.status === "fail");
    const passed = results.filter((r) => r.status === "pass");
    const warned = results.filter((r) => r.status === "warn");
    const verdict = document.getElementById("verdict");
    verdict.className = "verdict " + (failed.length ? "fail" : warned.length ? "warn" : "pass");
    verdict.dataset.result = failed.length ? "fail" : "pass";
    verdict.replaceChildren(
      el("span", { class: "big", "aria-hidden": "true" }, failed.length ? "\u2716" : warned.length ? "\u26A0" : "\u2714"),
      el("div", {},
        el("h2", {}, failed.length
          ? `${failed.length} check${failed.length > 1 ? "s" : ""} failed`
          : `All ${passed.length} browser checks passed` + (warned.length ? `, with ${warned.length} warning${warned.length > 1 ? "s" : ""}` : "")),
        el("p", {}, failed.length
          ? "Do not rely on this project's attestation: the failing checks are marked below."
          : (warned.some((r) => r.id === "tee") ? "But the TEE is not real hardware (see the warning). " : "") +
            (warned.some((r) => r.id === "deps") ? "Its dependencies are not pinned: the source alone does not decide what runs (see below). " : "") +
            "The quote's own signature still needs tee-daemon verify.")));

    const cmd = `tee-daemon verify ${location.origin} ${project}` + (data && data.tee !== "tdx" ? " --allow-simulated" : "");
    document.getElementById("verify-cmd").textContent = cmd;
    const copy = document.getElementById("copy-cmd");
    copy.onclick = async () => {
      try { await navigator.clipboard.writeText(cmd); copy.textContent = "Copied"; } catch { copy.textContent = "Select and copy"; }
    };

    if (!data) {
      for (const id of ["manifest", "quote", "log"]) document.getElementById(id).replaceChildren(el("p", { class: "none" }, "Unavailable."));
      return;
    }
    const m = data.manifest;
    const env = m.env && Object.keys(m.env).length
      ? Object.entries(m.env).sort().map(([k, v]) => `${k}=${v}`).join("\n") : null;
    document.getElementById("manifest").replaceChildren(kvTable([
      ["name", m.name], ["version", m.version], ["runtime", m.runtime], ["entry", m.entry],
      ["source", m.source], ["ref", m.ref], ["commit", m.commit],
      ["tree_sha1", m.tree_sha1], ["tree_sha256", m.tree_sha256],
      ["env", env], ["secret_names", (m.secret_names || []).join(", ") || null],
      ...["command", "image", "port"].filter((k) => m[k] !== null && m[k] !== undefined).map((k) => [k, String(m[k])]),
      ["toolchain", Object.entries(m.toolchain || {}).sort().map(([k, v]) => `${k} ${v}`).join("\n") || null],
      ["pinned", m.pinned === true ? "yes: installed from a lockfile with integrity hashes" : "NO: dependencies resolved at deploy time"],
      ["lock_sha256", m.lock_sha256], ["deps_tree_sha256", m.deps_tree_sha256],
      ["promoted_at", m.promoted_at], ["last_changed_at", m.last_changed_at],
      ["manifest_sha256", m.manifest_sha256],
    ]));

    const q = data.quote;
    document.getElementById("quote").replaceChildren(q
      ? kvTable([["TEE", data.tee], ["version", q.version], ...TD_FIELDS.map(([label]) => [label, bytesToHex(q[label])]),
                 ["preimage", data.att.report_data_preimage]])
      : el("p", { class: "none" }, "The quote could not be parsed."));

    const cp = data.checkpoint;
    const timeline = el("ol", { class: "timeline", "aria-label": "Log entries for this project" },
      data.parsed.slice().sort((a, b) => a.leaf.index - b.leaf.index).map(({ leaf, ok }) =>
        el("li", { class: ok ? "" : "bad", "data-index": String(leaf.index) },
          el("div", { class: "when" }, `#${leaf.index} \u00b7 `, el("time", { datetime: String(leaf.time) }, formatTime(leaf.time))),
          el("div", { class: "what" }, el("span", { class: "action" }, String(leaf.action)), ` \u2192 version ${leaf.version} (${leaf.runtime})`),
          el("div", { class: "detail" },
            leaf.commit ? ["commit ", el("code", {}, short(leaf.commit, 12)), " \u00b7 "] : [],
            "tree ", el("code", {}, short(leaf.tree_sha1, 12)),
            " \u00b7 manifest ", el("code", {}, short(leaf.manifest_sha256, 12)),
            ok ? " \u00b7 proof \u2714" : " \u00b7 proof \u2716"))));
    document.getElementById("log").replaceChildren(
      el("p", {}, `Checkpoint of log `, el("code", {}, String(cp.origin)), `: ${cp.size} entries in all, root `,
        el("code", { class: "hash" }, String(cp.root)), "."),
      data.parsed.length ? timeline : el("p", { class: "none" }, "No entries."));

    const blob = new Blob([JSON.stringify(window.__bundle, null, 2)], { type: "application/json" });
    const download = document.getElementById("download");
    download.href = URL.createObjectURL(blob);
    download.download = `${project}-verification.json`;
  }

  function formatTime(t) {
    const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
    return isNaN(d) ? String(t) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  run().catch((err) => {
    record("page", "Run the checks", "fail", String(err && err.message ? err.message : err));
    render(null);
  });
})();
