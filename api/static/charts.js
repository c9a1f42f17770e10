/* Line charts of metric series against step, over uPlot (api/static/vendor/uplot).
 *
 * A chart holds raw series {label, key, steps, values, smooth}; what is drawn is, per series, the raw points
 * (thin, faded when smoothing is on) and, for smoothed series, a debiased exponential moving average (as
 * TensorBoard draws it). `chart.u.data` is what uPlot plots; `chart.raw` is the data as the API sent it. */
(function () {
  "use strict";
  const MAX_POINTS = 4000;  // per series; the API sends at most 1,000, the live tail adds one per step
  const PALETTE = ["#0b5cad", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];

  function ema(values, weight) {
    // debiased EMA over the non-null points; nulls stay null
    const out = new Array(values.length);
    let acc = 0, n = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || !Number.isFinite(v)) { out[i] = null; continue; }
      acc = acc * weight + (1 - weight) * v; n++;
      out[i] = acc / (1 - Math.pow(weight, n));
    }
    return out;
  }

  function fade(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
  }

  function fmtValue(v) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return +v.toPrecision(4) + "";
  }

  class Chart {
    /* opts: {id, title, unit, yLabel, log: "auto" | true | false, fraction: y in [0, 1]} */
    constructor(container, opts) {
      this.opts = opts;
      this.raw = [];            // [{label, key, steps: [], values: [], smooth, color}]
      this.smoothing = 0;
      this.log = opts.log === true;
      this.u = null;
      this.el = document.createElement("figure");
      this.el.className = "chart";
      this.el.id = "chart-" + opts.id;
      this.el.setAttribute("aria-label", opts.title + " against training step");
      const head = document.createElement("header");
      const h = document.createElement("h3");
      h.textContent = opts.title + (opts.unit ? ` (${opts.unit})` : "");
      head.appendChild(h);
      const logId = "log-" + opts.id;
      const lab = document.createElement("label");
      lab.htmlFor = logId;
      this.logBox = document.createElement("input");
      this.logBox.type = "checkbox";
      this.logBox.id = logId;
      this.logBox.addEventListener("change", () => { this.log = this.logBox.checked; this.userLog = true; this.redraw(); });
      lab.append(this.logBox, " log scale");
      head.appendChild(lab);
      this.el.appendChild(head);
      this.plot = document.createElement("div");
      this.el.appendChild(this.plot);
      this.empty = document.createElement("p");
      this.empty.className = "empty";
      this.empty.textContent = "no data yet";
      this.el.appendChild(this.empty);
      container.appendChild(this.el);
      new ResizeObserver(() => this.u && this.u.setSize(this.size())).observe(this.el);
    }

    size() { return { width: Math.max(240, this.el.clientWidth - 22), height: 220 }; }

    setSeries(series) {
      this.raw = series.map((s, i) => ({ ...s, steps: [...s.steps], values: [...s.values],
                                         color: s.color || PALETTE[i % PALETTE.length] }));
      this.redraw();
    }

    /* one live point; a step already present is replaced (a resumed run rewrites steps) */
    append(label, step, value) {
      const s = this.raw.find((r) => r.label === label);
      if (!s) return false;
      const n = s.steps.length;
      if (n === 0 || step > s.steps[n - 1]) { s.steps.push(step); s.values.push(value); }
      else {
        const i = s.steps.indexOf(step);
        if (i >= 0) s.values[i] = value;
        else { const j = s.steps.findIndex((x) => x > step); s.steps.splice(j, 0, step); s.values.splice(j, 0, value); }
      }
      if (s.steps.length > MAX_POINTS) {  // a long live tail: halve it (every other point, the newest kept)
        const keep = (_, i, a) => i % 2 === 0 || i === a.length - 1;
        s.steps = s.steps.filter(keep); s.values = s.values.filter(keep);
      }
      return true;
    }

    setSmoothing(w) { this.smoothing = w; this.redraw(); }

    /* redraw once per animation frame however many live points arrived */
    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.redraw(); });
    }

    pointCount() { return this.raw.reduce((a, s) => a + s.steps.length, 0); }

    autoLog() {
      // a log scale when the positive values span more than two decades (e.g. a loss falling from 10 to 0.01)
      let lo = Infinity, hi = -Infinity;
      for (const s of this.raw) for (const v of s.values) {
        if (v === null || !Number.isFinite(v)) continue;
        if (v <= 0) return false;
        lo = Math.min(lo, v); hi = Math.max(hi, v);
      }
      return hi / lo > 100;
    }

    redraw() {
      const live = this.raw.filter((s) => s.steps.length);
      this.empty.hidden = live.length > 0;
      if (!this.userLog && this.opts.log === "auto") this.log = this.autoLog();
      this.logBox.checked = this.log;
      if (!live.length) { if (this.u) { this.u.destroy(); this.u = null; } return; }
      const logv = (v) => (this.log && !(v > 0) ? null : v);
      const tables = [], series = [{ label: "step" }];
      for (const s of live) {
        const vals = s.values.map(logv);
        const smooth = s.smooth !== false && this.smoothing > 0;
        tables.push([s.steps, vals]);
        series.push({ label: smooth ? `${s.label} (raw)` : s.label, stroke: smooth ? fade(s.color, 0.3) : s.color,
                      width: smooth ? 1 : 1.75, spanGaps: true, value: (u, v) => fmtValue(v), dash: s.dash,
                      points: { show: s.steps.length < 60 }, raw: smooth });
        if (smooth) {
          tables.push([s.steps, ema(vals, this.smoothing)]);
          series.push({ label: s.label, stroke: s.color, width: 2, spanGaps: true, value: (u, v) => fmtValue(v),
                        dash: s.dash, points: { show: false } });
        }
      }
      const data = uPlot.join(tables);
      const shape = JSON.stringify([series.map((x) => x.label), this.log]);
      if (this.u && shape === this.shape) { this.u.setData(data); return; }  // live points: no rebuild
      this.shape = shape;
      const opts = {
        ...this.size(), series,
        scales: { x: { time: false }, y: { distr: this.log ? 3 : 1, range: this.log ? undefined : this.opts.fraction ? [0, 1]
          // a flat series gets a band around its value, not uPlot's 0..100 default
          : (u, min, max) => (min === max ? [min - (Math.abs(min) || 1), max + (Math.abs(max) || 1)]
                                          : uPlot.rangeNum(min, max, 0.1, true)) } },
        axes: [{ label: "step", labelSize: 18 },
               { label: this.opts.yLabel + (this.opts.unit ? ` (${this.opts.unit})` : "") + (this.log ? ", log" : ""),
                 labelSize: 18, size: 58, values: (u, ticks) => ticks.map(fmtValue) }],
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
      };
      if (this.u) this.u.destroy();
      this.u = new uPlot(opts, data, this.plot);
      // the legend names each series once: the faded raw line of a smoothed series is not listed
      const rows = this.u.root.querySelectorAll(".u-legend .u-series");
      series.forEach((x, i) => { if (x.raw && rows[i]) { rows[i].hidden = true; rows[i].style.display = "none"; } });
    }
  }

  window.RladCharts = { Chart, PALETTE, ema };
})();
