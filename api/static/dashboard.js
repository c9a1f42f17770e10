/* RLAD dashboard pages. Every page calls the /v1 API with the sign-in cookie (same origin); writes add the
 * X-Requested-With header the API asks of cookie-authenticated writes. No framework, no build step. */
(function () {
  "use strict";
  const $ = (sel, root = document) => root.querySelector(sel);
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
      else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  };

  // ----- the API ----------------------------------------------------------------------------------------
  async function api(path, { method = "GET", params } = {}) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      for (const x of [].concat(v)) if (x !== "" && x !== null && x !== undefined) url.searchParams.append(k, x);
    }
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-Requested-With"] = "rlad-dashboard";
    const r = await fetch(url, { method, headers, credentials: "same-origin" });
    if (r.status === 401) { location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("signed out"); }
    const body = await r.json().catch(() => null);
    if (!r.ok) throw new Error((body && body.error && body.error.message) || `HTTP ${r.status}`);
    return body;
  }

  /* run fn now and every `ms` until it returns false; a failed call shows on the page and is retried */
  function every(ms, fn, statusEl) {
    let stopped = false;
    const tick = async () => {
      if (stopped) return;
      try {
        if (statusEl && statusEl.dataset.failed) { statusEl.textContent = ""; delete statusEl.dataset.failed; }
        const more = await fn();
        if (more === false) { stopped = true; return; }
      } catch (e) {
        if (statusEl) { statusEl.textContent = "update failed: " + e.message + " (retrying)"; statusEl.dataset.failed = "1"; }
      }
      setTimeout(tick, ms);
    };
    tick();
    return () => { stopped = true; };
  }

  // ----- formatting -------------------------------------------------------------------------------------
  function duration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    const h = Math.floor(s / 3600);
    return h < 48 ? `${h}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m` : `${Math.floor(h / 24)}d ${h % 24}h`;
  }
  const when = (iso) => (iso ? new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "–");
  const secondsSince = (iso) => (Date.now() - new Date(iso).getTime()) / 1000;
  function bytes(n) {
    const u = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  }
  const num = (v, d = 3) => (v === null || v === undefined ? "–" : Number.isInteger(v) ? String(v) : (+v).toFixed(d));
  const chip = (status) => el("span", { class: `chip status-${status}`, text: status });
  const modelName = (s) => (s ? String(s).split("/").filter(Boolean).slice(-2).join("/") : "–");
  function runTime(job) {
    if (!job.started_at) return "–";
    const end = job.finished_at ? new Date(job.finished_at).getTime() : Date.now();
    return duration((end - new Date(job.started_at).getTime()) / 1000);
  }
  function progressCell(job) {
    const pct = job.total_steps ? Math.round((100 * job.steps_done) / job.total_steps) : 0;
    return el("div", { class: "progress" },
      el("progress", { max: job.total_steps, value: job.steps_done, "aria-label": `${pct}% of steps done` }),
      el("span", { class: "num", text: `${job.steps_done}/${job.total_steps}` }));
  }

  // ----- charts of a job's metrics ------------------------------------------------------------------------
  // keys: exact metric keys; prefix: every key that starts with it (e.g. accuracy by difficulty)
  const CHARTS = [
    { id: "reward", title: "Reward", yLabel: "reward", keys: ["reward_mean"] },
    { id: "accuracy", title: "Accuracy", yLabel: "fraction correct", keys: ["accuracy", "eval/accuracy"], fraction: true },
    { id: "loss", title: "Loss", yLabel: "loss", keys: ["loss"], log: "auto" },
    { id: "clip", title: "Clip fraction", yLabel: "fraction of tokens", keys: ["clip_frac_low", "clip_frac_high"] },
    { id: "gap", title: "Teacher-student gap", yLabel: "log-prob gap", unit: "nats/token", keys: ["teacher_gap"] },
    { id: "entropy", title: "Entropy", yLabel: "entropy", unit: "nats/token", keys: ["entropy"] },
    { id: "length", title: "Response length", yLabel: "length", unit: "tokens", keys: ["response_length_mean"] },
    { id: "throughput", title: "Throughput", yLabel: "throughput", unit: "tokens/s", keys: ["tokens_per_s"], log: "auto" },
    { id: "eval-difficulty", title: "Eval accuracy by difficulty", yLabel: "fraction correct", prefix: "eval/accuracy/d",
      fraction: true },
  ];
  const isEval = (key) => key.startsWith("eval/");
  const keysOf = (spec, available) => (spec.prefix
    ? available.filter((k) => k.startsWith(spec.prefix)).sort((a, b) => parseInt(a.slice(spec.prefix.length)) - parseInt(b.slice(spec.prefix.length)))
    : spec.keys);
  const shortKey = (spec, key) => (spec.prefix ? "difficulty " + key.slice(spec.prefix.length) : key);

  function smoothingControl(charts) {
    const input = $("#smoothing"), out = $("#smoothing-value");
    if (!input) return;
    const apply = () => { out.textContent = (+input.value).toFixed(2); for (const c of charts()) c.setSmoothing(+input.value); };
    input.addEventListener("input", apply);
    apply();
  }

  window.rlad = { charts: {} };  // the page's charts by id (tests read their data)

  // ----- pages ------------------------------------------------------------------------------------------
  const pages = {};

  pages.jobs = function () {
    const tbody = $("#jobs tbody"), team = tbody.dataset.team, status = $("#f-status"), method = $("#f-method");
    const compareBtn = $("#compare-selected"), selected = new Set();
    const qs = new URLSearchParams(location.search);
    status.value = qs.get("status") || ""; method.value = qs.get("method") || "";
    const syncUrl = () => {
      const p = new URLSearchParams();
      if (status.value) p.set("status", status.value);
      if (method.value) p.set("method", method.value);
      history.replaceState(null, "", "/ui/jobs" + (p.toString() ? "?" + p : ""));
    };
    const updateCompare = () => {
      compareBtn.disabled = selected.size < 2 || selected.size > 5;
      compareBtn.textContent = `Compare selected (${selected.size})`;
    };
    compareBtn.addEventListener("click", () => {
      location.href = "/ui/compare?" + [...selected].map((id) => "job=" + encodeURIComponent(id)).join("&");
    });
    const render = (jobs) => {
      tbody.replaceChildren(...jobs.map((j) => {
        const box = el("input", { type: "checkbox", "aria-label": `select ${j.name || j.id} to compare`, checked: selected.has(j.id) });
        box.addEventListener("change", () => { box.checked ? selected.add(j.id) : selected.delete(j.id); updateCompare(); });
        const spec = j.spec_resolved || {};
        return el("tr", { "data-job-id": j.id, "data-status": j.status },
          el("td", {}, box), el("td", {}, chip(j.status)),
          el("td", {}, el("a", { href: `/ui/jobs/${encodeURIComponent(j.id)}`, text: j.name || j.id })),
          el("td", { text: j.method }), el("td", { text: modelName(spec.student), title: spec.student || "" }),
          el("td", { text: modelName(spec.teacher), title: spec.teacher || "" }), el("td", { text: team }),
          el("td", {}, progressCell(j)),
          el("td", { class: "num", text: j.is_terminal ? "–" : duration(j.eta_s) }),
          el("td", { class: "num", text: j.heartbeat_age_s === null ? "–" : duration(j.heartbeat_age_s) + " ago" }),
          el("td", { class: "num", text: duration(secondsSince(j.created_at)) + " ago", title: when(j.created_at) }),
          el("td", { class: "num", text: runTime(j) }));
      }));
      $("#jobs-empty").hidden = jobs.length > 0;
      updateCompare();
    };
    let refresh = async () => {
      const page = await api("/v1/jobs", { params: { limit: 100, status: status.value, method: method.value } });
      render(page.items);
      $("#jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()}` + (page.has_more ? " · newest 100 shown" : "");
    };
    for (const s of [status, method]) s.addEventListener("change", () => { syncUrl(); refresh().catch(() => {}); });
    every(2000, refresh, $("#jobs-updated"));
  };

  pages.job = function () {
    const jobId = $("#job-head").dataset.jobId, base = `/v1/jobs/${encodeURIComponent(jobId)}`;
    let terminal = false;

    // header: status, progress, ETA, heartbeat
    const showJob = (j) => {
      const st = $("#job-status");
      st.textContent = j.status; st.className = `chip status-${j.status}`;
      $("#job-progress").max = j.total_steps; $("#job-progress").value = j.steps_done;
      $("#job-steps").textContent = `${j.steps_done} / ${j.total_steps}`;
      $("#job-eta").textContent = j.is_terminal ? "–" : duration(j.eta_s);
      $("#job-heartbeat").textContent = j.heartbeat_age_s === null ? "–" : duration(j.heartbeat_age_s) + " ago";
      $("#job-attempt").textContent = `${j.attempt} / ${j.max_attempts}`;
      $("#job-worker").textContent = j.worker || "–";
      const err = $("#job-error");
      err.hidden = !j.error_code; err.textContent = j.error_code ? `${j.error_code}: ${j.error_message || ""}` : "";
      $("#cancel").hidden = j.is_terminal || j.status === "cancelling";
      $("#pause").hidden = !["queued", "starting", "running"].includes(j.status);
      $("#resume").hidden = j.status !== "paused";
      terminal = j.is_terminal;
    };
    every(2000, async () => { showJob(await api(base)); return !terminal; });

    // timeline
    let lastEvent = 0;
    every(3000, async () => {
      const evs = (await api(base + "/events", { params: { after: lastEvent || null } })).items;
      const list = $("#timeline"), atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
      for (const e of evs) {
        lastEvent = Math.max(lastEvent, e.id);
        const show = (v) => typeof v === "number" ? num(v) : v && typeof v === "object" ? (v.total !== undefined ? num(v.total) : JSON.stringify(v)) : v;
        const detail = Object.entries(e.data || {}).map(([k, v]) => `${k}=${show(v)}`).join(" ");
        $("#timeline").append(el("li", { "data-kind": e.kind },
          el("time", { datetime: e.created_at, text: when(e.created_at) }), el("strong", { text: e.kind }),
          e.attempt ? ` (attempt ${e.attempt}) ` : " ", el("span", { class: "muted", text: detail })));
      }
      if (evs.length && atEnd) list.scrollTop = list.scrollHeight;  // follow the newest, unless scrolled up
      return !(terminal && evs.length === 0);
    });

    // checkpoints
    every(5000, async () => {
      const items = (await api(base + "/checkpoints")).items;
      $("#checkpoints tbody").replaceChildren(...items.map((c) => el("tr", { "data-step": c.step },
        el("td", { class: "num", text: c.step }), el("td", { text: c.kind }), el("td", { class: "num", text: bytes(c.bytes) }),
        el("td", { class: "wrap", text: Object.entries(c.metrics || {}).filter(([k]) => ["reward_mean", "accuracy", "eval/accuracy", "loss"].includes(k))
          .map(([k, v]) => `${k} ${num(v)}`).join(" · ") || "–" }),
        el("td", {}, el("a", { href: c.download_url, download: `${jobId}-step-${c.step}.tar`, class: "button",
                               "aria-label": `download checkpoint at step ${c.step}`, text: "Download .tar" })))));
      if (!items.length) $("#checkpoints tbody").append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "none yet" })));
      return !terminal;
    });

    // samples
    const kind = $("#samples-kind");
    const loadSamples = async () => {
      const items = (await api(base + "/samples", { params: { limit: 8, eval: kind.value } })).items;
      $("#samples").replaceChildren(...items.map((s) => el("article", { class: "sample" },
        el("div", { class: "meta" }, `step ${s.step} · ${s.eval ? "evaluation" : "training"} · reward ${num(s.reward)} · `,
           el("span", { class: s.correct ? "ok" : "bad", text: s.correct ? "correct" : "wrong" })),
        el("pre", { class: "prompt", text: s.prompt }), el("pre", { class: "completion", text: s.completion }))));
      if (!items.length) $("#samples").append(el("p", { class: "muted", text: "no samples yet" }));
      return !terminal;
    };
    kind.addEventListener("change", () => loadSamples().catch(() => {}));
    every(4000, loadSamples);

    // cancel, with confirmation
    const dialog = $("#cancel-dialog");
    $("#cancel").addEventListener("click", () => dialog.showModal());
    $("#cancel-no").addEventListener("click", () => dialog.close());
    $("#cancel-yes").addEventListener("click", async () => {
      dialog.close();
      try { showJob(await api(base + "/cancel", { method: "POST" })); }
      catch (e) { $("#job-error").hidden = false; $("#job-error").textContent = "cancel failed: " + e.message; }
    });

    // pause (a running job checkpoints and frees its worker) and resume (it continues from that checkpoint)
    for (const action of ["pause", "resume"]) {
      $("#" + action).addEventListener("click", async () => {
        try { showJob(await api(base + "/" + action, { method: "POST" })); }
        catch (e) { $("#job-error").hidden = false; $("#job-error").textContent = `${action} failed: ` + e.message; }
      });
    }

    // charts: the downsampled history, then the live tail; a chart appears with its first key
    const charts = window.rlad.charts, routes = new Map();  // metric key -> [[chart, series label]]
    const specFor = (key) => CHARTS.filter((c) => (c.prefix ? key.startsWith(c.prefix) : c.keys.includes(key)));
    const route = (key) => {
      if (!routes.has(key)) {
        routes.set(key, specFor(key).map((spec) => {
          let c = charts[spec.id];
          if (!c) {
            c = charts[spec.id] = new RladCharts.Chart($("#charts"), spec);
            c.setSmoothing(+$("#smoothing").value);
          }
          const label = shortKey(spec, key);
          if (!c.raw.some((r) => r.key === key)) {
            c.raw.push({ label, key, steps: [], values: [], smooth: !isEval(key),
                         color: RladCharts.PALETTE[c.raw.length % RladCharts.PALETTE.length] });
            if (spec.prefix) c.raw.sort((a, b) => parseInt(a.key.slice(spec.prefix.length)) - parseInt(b.key.slice(spec.prefix.length)));
          }
          return [c, label];
        }));
      }
      return routes.get(key);
    };
    // keep the page's chart order whatever order keys arrive in
    const order = () => { for (const spec of CHARTS) if (charts[spec.id]) $("#charts").append(charts[spec.id].el); };
    (async () => {
      const m = await api(base + "/metrics", { params: { max_points: 1000 } });
      let since = 0;
      for (const s of m.series) {
        for (const t of s.times) since = Math.max(since, t);
        for (const [c, label] of route(s.key)) for (let i = 0; i < s.steps.length; i++) c.append(label, s.steps[i], s.values[i]);
      }
      order();
      for (const c of Object.values(charts)) c.redraw();
      $("#charts-empty").hidden = Object.keys(charts).length > 0;
      smoothingControl(() => Object.values(charts));
      const live = $("#live-state");
      const source = new EventSource(`${base}/metrics/stream?since=${since}`);
      source.addEventListener("metrics", (ev) => {
        const { step, values } = JSON.parse(ev.data);
        const before = Object.keys(charts).length;
        for (const [k, v] of Object.entries(values)) {
          for (const [c, label] of route(k)) { c.append(label, step, v); c.schedule(); }
        }
        if (Object.keys(charts).length !== before) { order(); $("#charts-empty").hidden = true; }
        live.textContent = `live · step ${step}`;
      });
      source.addEventListener("end", (ev) => {
        live.textContent = `finished: ${JSON.parse(ev.data).status}`;
        source.close();
      });
      source.onerror = () => { if (source.readyState === EventSource.CONNECTING) live.textContent = "reconnecting…"; };
    })().catch((e) => { $("#live-state").textContent = "charts failed: " + e.message; });
  };

  pages.compare = function () {
    const root = $("#compare");
    const ids = JSON.parse(root.dataset.jobs), names = JSON.parse(root.dataset.labels);
    if (ids.length === 0) return;
    const labels = ids.map((id, i) => names[i] || id);
    const charts = window.rlad.charts;
    (async () => {
      const all = await Promise.all(ids.map((id) => api(`/v1/jobs/${encodeURIComponent(id)}/metrics`, { params: { max_points: 1000 } })));
      const latest = await Promise.all(ids.map((id) => api(`/v1/jobs/${encodeURIComponent(id)}/metrics/latest`)));
      const jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${encodeURIComponent(id)}`)));
      const keysAll = [...new Set(all.flatMap((m) => m.keys))];
      for (const spec of CHARTS) {
        const keys = keysOf(spec, keysAll);
        if (!keys.length) continue;
        const c = new RladCharts.Chart($("#charts"), { ...spec, id: spec.id });
        charts[spec.id] = c;
        const series = [];
        all.forEach((m, j) => {
          const byKey = new Map(m.series.map((s) => [s.key, s]));
          keys.forEach((k, n) => {
            const s = byKey.get(k);
            if (!s) return;
            series.push({ label: keys.length > 1 ? `${labels[j]} · ${shortKey(spec, k)}` : labels[j], key: k, job: ids[j],
                          steps: s.steps, values: s.values, smooth: !isEval(k), dash: n ? [6, 4] : undefined,
                          color: RladCharts.PALETTE[j % RladCharts.PALETTE.length] });  // a color per job
          });
        });
        c.setSeries(series);
      }
      smoothingControl(() => Object.values(charts));
      // final evaluation: the newest value of every eval/ key, per job
      const evalKeys = [...new Set(latest.flatMap((l) => Object.keys(l.latest).filter(isEval)))]
        .filter((k) => k !== "eval/n").sort();
      $("#final-eval thead").replaceChildren(el("tr", {}, el("th", { scope: "col", text: "Job" }), el("th", { scope: "col", text: "Method" }),
        el("th", { scope: "col", text: "Status" }), el("th", { scope: "col", text: "Steps" }),
        el("th", { scope: "col", text: "Eval step" }), ...evalKeys.map((k) => el("th", { scope: "col", text: k.slice(5) }))));
      $("#final-eval tbody").replaceChildren(...latest.map((l, j) => {
        const first = evalKeys.map((k) => l.latest[k]).find(Boolean);
        return el("tr", { "data-job-id": ids[j] },
          el("th", { scope: "row" }, el("a", { href: `/ui/jobs/${encodeURIComponent(ids[j])}`, text: labels[j] })),
          el("td", { text: jobs[j].method }), el("td", {}, chip(jobs[j].status)),
          el("td", { class: "num", text: `${jobs[j].steps_done}/${jobs[j].total_steps}` }),
          el("td", { class: "num", text: first ? first.step : "–" }),
          ...evalKeys.map((k) => el("td", { class: "num", text: l.latest[k] ? num(l.latest[k].value) : "–" })));
      }));
    })().catch((e) => root.append(el("p", { class: "error", role: "alert", text: "could not load: " + e.message })));
  };

  pages.queue = function () {
    every(3000, async () => {
      const q = await api("/v1/queue");
      $("#queues tbody").replaceChildren(...q.queues.map((d) => el("tr", { "data-queue": d.queue },
        el("td", { text: d.queue }), el("td", { class: "num", text: d.queued }), el("td", { class: "num", text: d.running }))));
      const [allQueued, allRunning] = document.querySelectorAll("#queue-totals td");
      allQueued.textContent = q.totals.queued;  // the cluster's load: totals only, no other team's detail
      allRunning.textContent = q.totals.running;
      $("#workers tbody").replaceChildren(...q.workers.map((w) => el("tr", { "data-worker": w.name },
        el("td", { text: w.name }), el("td", { text: w.queues.join(", ") }),
        el("td", {}, el("span", { class: "chip " + (w.alive ? (w.busy ? "status-running" : "status-queued") : "status-failed"),
                                 text: w.alive ? (w.busy ? "busy" : "idle") : "not reporting" })),
        el("td", { class: "num", text: duration(w.heartbeat_age_s) + " ago" }),
        el("td", {}, w.job_id ? el("a", { href: `/ui/jobs/${encodeURIComponent(w.job_id)}`, text: w.job_id })
                              : (w.busy ? "another team's job" : "–")),
        el("td", { class: "num", text: when(w.started_at) }))));
      $("#workers-empty").hidden = q.workers.length > 0;
      $("#queue-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    }, $("#queue-updated"));
  };

  const page = document.body.dataset.page;
  if (pages[page]) pages[page]();
})();
