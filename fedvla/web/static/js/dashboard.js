// fedvla dashboard: the run page's live charts, clock, connection state and log, and the run
// comparison charts. Data arrives embedded in the page (<script type="application/json">) and, on
// a run page, from the run's server-sent events, which htmx's SSE extension connects
// (sse-connect on #run-stream).
(function () {
  "use strict";

  const ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
  const PALETTE = ["#0b5cad", "#a4161a", "#116329", "#7a4b00", "#6f42c1", "#00707a", "#8a1d6b", "#404a57"];
  const PREFS_KEY = "fedvla.charts";
  const MIB = 1024 * 1024;

  // ------------------------------------------------------------------ preferences (per browser)

  function loadPrefs() {
    try {
      const prefs = JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
      return {
        smoothing: Number(prefs.smoothing) || 0,
        log: prefs.log || {},
        hidden: prefs.hidden || {},
      };
    } catch (e) {
      return { smoothing: 0, log: {}, hidden: {} };
    }
  }

  function savePrefs(prefs) {
    try {
      localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
    } catch (e) {
      // storage full or disabled: the choice lasts for this page only
    }
  }

  // ------------------------------------------------------------------ numbers

  function format(v) {
    if (v == null || !isFinite(v)) {
      return "–";
    }
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) {
      return v.toExponential(3);
    }
    return String(Number(v.toPrecision(4)));
  }

  // TensorBoard's smoothing: an exponential moving average, debiased so the first points are
  // not pulled towards zero; gaps stay gaps.
  function smooth(values, weight) {
    if (!weight) {
      return values.slice();
    }
    let last = 0;
    let n = 0;
    return values.map(function (v) {
      if (v == null || !isFinite(v)) {
        return null;
      }
      last = last * weight + (1 - weight) * v;
      n += 1;
      return last / (1 - Math.pow(weight, n));
    });
  }

  function positiveOnly(values) {
    return values.map(function (v) { return v != null && v > 0 ? v : null; });
  }

  // Same text as the server's human_seconds filter (fedvla/web/pages/templating.py).
  function humanSeconds(value) {
    const seconds = Math.round(value);
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    const secs = seconds % 60;
    const two = function (x) { return (x < 10 ? "0" : "") + x; };
    if (hours) {
      return hours + " h " + two(minutes) + " min";
    }
    if (minutes) {
      return minutes + " min " + two(secs) + " s";
    }
    return value < 10 ? value.toFixed(1) + " s" : secs + " s";
  }

  // ------------------------------------------------------------------ one chart

  function width(figure) {
    const style = getComputedStyle(figure);
    const inner = figure.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return Math.max(240, Math.floor(inner));
  }

  function faint(colour) {
    return colour + "55"; // #rrggbb + alpha
  }

  // Draws ``lines`` ({key, label, values}) over ``xs`` in ``figure``. ``options``: yLabel, xLabel,
  // xValue (formats x in the legend), log, smoothing, empty (text when there is nothing).
  // With smoothing, each line is drawn smoothed, its raw values faint behind it.
  function plot(figure, title, xs, lines, options) {
    const holder = figure.querySelector(".plot");
    const o = options || {};
    const series = [{ label: o.xLabel || "round", value: o.xValue || function (u, v) { return v == null ? "–" : String(v); } }];
    const data = [xs];
    lines.forEach(function (line, i) {
      const colour = PALETTE[i % PALETTE.length];
      const values = o.log ? positiveOnly(line.values) : line.values;
      const value = function (u, v) { return format(v); };
      if (o.smoothing) {
        series.push({ label: line.label + " (raw)", stroke: faint(colour), width: 1, points: { show: false }, spanGaps: true, value: value });
        data.push(values);
      }
      series.push({ label: line.label, stroke: colour, width: 2, points: { show: xs.length < 60, size: 6 }, spanGaps: true, value: value });
      data.push(o.smoothing ? smooth(values, o.smoothing) : values);
    });
    const opts = {
      width: width(figure),
      height: 220,
      scales: { x: { time: false }, y: o.log ? { distr: 3 } : { distr: 1 } },
      legend: { live: true },
      cursor: { focus: { prox: 24 } },
      axes: [o.roundAxis === false ? { label: o.xLabel } : { label: "round", incrs: ROUND_STEPS }, { label: o.yLabel, size: 60 }],
      series: series,
    };
    const points = xs.length;
    const shape = JSON.stringify([series.map(function (s) { return s.label; }), !!o.log, o.smoothing || 0, opts.width]);
    if (figure._plot && figure._shape === shape && points > 0) {
      figure._plot.setData(data); // new points only: the cursor and the legend stay where they are
    } else {
      redraw(figure, holder, opts, data, points === 0 ? (o.empty || "No round finished yet.") : lines.length === 0 ? "No series chosen." : null);
      figure._shape = shape;
    }
    figure.dataset.points = String(points);
    figure.dataset.scale = o.log ? "log" : "linear";
    figure.dataset.smoothing = String(o.smoothing || 0);
    holder.setAttribute("aria-label", title + ": " + points + " point" + (points === 1 ? "" : "s") + " plotted; arrow keys move the cursor, the legend shows its values");
  }

  function redraw(figure, holder, opts, data, emptyText) {
    if (figure._plot) {
      figure._plot.destroy();
      figure._plot = null;
    }
    holder.innerHTML = "";
    if (emptyText) {
      const empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = emptyText;
      holder.append(empty);
      holder.removeAttribute("tabindex");
    } else {
      figure._plot = new uPlot(opts, data, holder);
      holder.tabIndex = 0;
    }
  }

  // Arrow keys move a chart's cursor from point to point (Home, End: the first, the last), so the
  // legend's values can be read without a mouse.
  function keyboardCursor(figure) {
    const holder = figure.querySelector(".plot");
    holder.addEventListener("keydown", function (e) {
      const u = figure._plot;
      if (!u) {
        return;
      }
      const n = u.data[0].length;
      let idx = u.cursor.idx == null ? -1 : u.cursor.idx;
      if (e.key === "ArrowRight") { idx = Math.min(n - 1, idx + 1); }
      else if (e.key === "ArrowLeft") { idx = idx < 0 ? n - 1 : Math.max(0, idx - 1); }
      else if (e.key === "Home") { idx = 0; }
      else if (e.key === "End") { idx = n - 1; }
      else { return; }
      e.preventDefault();
      const x = u.data[0][idx];
      let y = null;
      for (let s = 1; s < u.data.length && y == null; s++) { y = u.data[s][idx]; }
      u.setCursor({ left: u.valToPos(x, "x"), top: y == null ? u.bbox.height / devicePixelRatio / 2 : u.valToPos(y, "y") });
    });
  }

  // ------------------------------------------------------------------ run page

  // What each run chart may draw, chosen from the keys the page's chart data holds, so series
  // added to chart_data (fedvla/web/pages/routes/runs.py) show up without a change here.
  const ROUND_CHARTS = [
    { name: "loss", title: "Loss per round", yLabel: "loss", picks: function (k) { return /loss/.test(k); } },
    { name: "action_error", title: "Action error per round", yLabel: "MSE", picks: function (k) { return /mse/.test(k); } },
    { name: "bytes", title: "Bytes per round", yLabel: "MB", scale: 1e6, picks: function (k) { return /^bytes_/.test(k); } },
    { name: "duration", title: "Round duration", yLabel: "s", picks: function (k) { return /_s$/.test(k); } },
  ];
  const RESOURCE_CHARTS = [
    { name: "memory", title: "Worker memory", yLabel: "MiB", scale: MIB, picks: function (k) { return /_bytes$/.test(k); } },
    { name: "utilization", title: "Worker CPU and GPU use", yLabel: "%", picks: function (k) { return /_percent$/.test(k); } },
  ];
  const LABELS = {
    eval_loss: "server eval loss",
    fed_eval_loss: "federated eval loss",
    train_loss: "mean client train loss",
    eval_action_mse: "server action MSE",
    fed_eval_action_mse: "federated action MSE",
    bytes_sent: "sent (MB)",
    bytes_received: "received (MB)",
    duration_s: "seconds",
    memory_bytes: "memory",
    gpu_memory_bytes: "GPU memory",
    cpu_percent: "CPU",
    gpu_utilization_percent: "GPU",
  };

  function labelOf(key, labels) {
    return (labels && labels[key]) || LABELS[key] || key.replace(/_/g, " ");
  }

  // Numeric keys with at least one value: the known ones in LABELS' order, then the others by
  // name, so a series keeps its colour whether the page loaded it or a live event brought it.
  function numericKeys(records, skip) {
    const known = Object.keys(LABELS);
    const rank = function (k) { const i = known.indexOf(k); return i < 0 ? known.length : i; };
    return foundKeys(records, skip).sort(function (a, b) { return rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0); });
  }

  function foundKeys(records, skip) {
    const keys = [];
    records.forEach(function (r) {
      Object.keys(r).forEach(function (k) {
        if (skip.indexOf(k) < 0 && typeof r[k] === "number" && isFinite(r[k]) && keys.indexOf(k) < 0) {
          keys.push(k);
        }
      });
    });
    return keys;
  }

  function RunCharts(root) {
    this.root = root;
    const initial = JSON.parse(document.getElementById("run-chart-data").textContent);
    this.labels = initial.labels || {};
    this.rounds = new Map();
    this.clients = new Map();
    this.resources = [];
    this.prefs = loadPrefs();
    this.lastEventId = Number(root.dataset.lastEventId || 0);
    (initial.rounds || []).forEach(this.addRound.bind(this));
    (initial.clients || []).forEach(this.addClient.bind(this));
    (initial.resources || []).forEach(this.addResources.bind(this));
    this.bindControls();
    this.draw();
  }

  RunCharts.prototype.addRound = function (r) {
    if (r.round > 0) { // round 0 is the evaluation before training: a table row, not a round
      this.rounds.set(r.round, Object.assign({}, this.rounds.get(r.round), r));
    }
  };

  RunCharts.prototype.addClient = function (c) {
    this.clients.set(c.round + "\u0000" + c.client, c);
  };

  RunCharts.prototype.addResources = function (sample) {
    this.resources.push(sample);
  };

  RunCharts.prototype.figure = function (name) {
    return this.root.querySelector('[data-chart="' + name + '"]');
  };

  RunCharts.prototype.bindControls = function () {
    const self = this;
    const slider = document.getElementById("chart-smoothing");
    const shown = document.getElementById("chart-smoothing-value");
    if (slider) {
      slider.value = String(this.prefs.smoothing);
      shown.textContent = String(this.prefs.smoothing);
      slider.addEventListener("input", function () {
        self.prefs.smoothing = Number(slider.value);
        shown.textContent = slider.value;
        savePrefs(self.prefs);
        self.draw();
      });
    }
    this.root.querySelectorAll("[data-chart]").forEach(function (figure) {
      const name = figure.dataset.chart;
      const bar = document.createElement("div");
      bar.className = "chart-options";
      const logId = "chart-log-" + name;
      bar.innerHTML = '<label><input type="checkbox" id="' + logId + '" data-log> Log scale</label>' +
        '<fieldset class="series-choice"><legend>Series</legend><span data-series></span></fieldset>';
      figure.querySelector("figcaption").after(bar);
      const log = bar.querySelector("[data-log]");
      log.checked = !!self.prefs.log[name];
      log.addEventListener("change", function () {
        self.prefs.log[name] = log.checked;
        savePrefs(self.prefs);
        self.draw();
      });
      bar.addEventListener("change", function (e) {
        const key = e.target.dataset && e.target.dataset.series;
        if (!key) {
          return;
        }
        const hidden = (self.prefs.hidden[name] || []).filter(function (k) { return k !== key; });
        if (!e.target.checked) {
          hidden.push(key);
        }
        self.prefs.hidden[name] = hidden;
        savePrefs(self.prefs);
        self.draw();
      });
      keyboardCursor(figure);
    });
  };

  // The series checkboxes of a chart, one per key it may draw; returns the keys chosen.
  RunCharts.prototype.choose = function (name, keys) {
    const figure = this.figure(name);
    const holder = figure.querySelector("[data-series]");
    const hidden = this.prefs.hidden[name] || [];
    const want = keys.map(function (k) { return k.key; }).join("\u0000");
    if (holder.dataset.keys !== want) {
      holder.dataset.keys = want;
      holder.innerHTML = "";
      keys.forEach(function (k, i) {
        const label = document.createElement("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.dataset.series = k.key;
        box.id = "chart-" + name + "-series-" + i;
        label.append(box, " " + k.label);
        holder.append(label);
      });
    }
    holder.querySelectorAll("input[data-series]").forEach(function (box) {
      box.checked = hidden.indexOf(box.dataset.series) < 0;
    });
    holder.closest("fieldset").hidden = keys.length < 2;
    return keys.filter(function (k) { return hidden.indexOf(k.key) < 0; });
  };

  RunCharts.prototype.options = function (name, spec, extra) {
    return Object.assign({ yLabel: spec.yLabel, log: !!this.prefs.log[name], smoothing: this.prefs.smoothing }, extra || {});
  };

  RunCharts.prototype.draw = function () {
    this.drawRounds();
    this.drawResources();
  };

  RunCharts.prototype.drawRounds = function () {
    const self = this;
    const rounds = Array.from(this.rounds.values()).sort(function (a, b) { return a.round - b.round; });
    const xs = rounds.map(function (r) { return r.round; });
    const roundKeys = numericKeys(rounds, ["round"]);
    ROUND_CHARTS.forEach(function (spec) {
      const keys = roundKeys.filter(spec.picks).map(function (k) { return { key: k, label: labelOf(k, self.labels) }; });
      const chosen = self.choose(spec.name, keys).map(function (k) {
        return { key: k.key, label: k.label, values: rounds.map(function (r) { return r[k.key] == null ? null : r[k.key] / (spec.scale || 1); }) };
      });
      plot(self.figure(spec.name), spec.title, xs, chosen, self.options(spec.name, spec));
    });

    const clients = Array.from(this.clients.values());
    const names = Array.from(new Set(clients.map(function (c) { return c.client; }))).sort();
    const clientRounds = Array.from(new Set(clients.map(function (c) { return c.round; }))).sort(function (a, b) { return a - b; });
    const byKey = this.clients;
    const sites = this.choose("clients", names.map(function (n) { return { key: n, label: n }; })).map(function (k) {
      return {
        key: k.key,
        label: k.label,
        values: clientRounds.map(function (round) {
          const c = byKey.get(round + "\u0000" + k.key);
          return c && c.train_loss != null ? c.train_loss : null;
        }),
      };
    });
    plot(this.figure("clients"), "Train loss per site", clientRounds, sites, this.options("clients", { yLabel: "loss" }));
  };

  RunCharts.prototype.drawResources = function () {
    const self = this;
    const samples = this.resources;
    const t0 = samples.length ? Date.parse(samples[0].created_at) : 0;
    const ts = samples.map(function (s) { return Math.round((Date.parse(s.created_at) - t0) / 100) / 10; });
    const resourceKeys = numericKeys(samples, ["processes"]);
    RESOURCE_CHARTS.forEach(function (spec) {
      const keys = resourceKeys.filter(spec.picks).map(function (k) { return { key: k, label: labelOf(k, self.labels) }; });
      const chosen = self.choose(spec.name, keys).map(function (k) {
        return { key: k.key, label: k.label, values: samples.map(function (s) { return s[k.key] == null ? null : s[k.key] / (spec.scale || 1); }) };
      });
      plot(self.figure(spec.name), spec.title, ts, chosen, self.options(spec.name, spec, {
        xLabel: "seconds",
        roundAxis: false,
        xValue: function (u, v) { return v == null ? "–" : humanSeconds(v); },
        empty: "No sample yet: the worker samples its federation every few seconds while it runs.",
      }));
    });
  };

  RunCharts.prototype.onEvent = function (message) {
    const id = Number(message.lastEventId || 0);
    if (id && id <= this.lastEventId) {
      return; // already shown (a reconnect replays from the page's starting point)
    }
    if (id) {
      this.lastEventId = id;
    }
    const event = JSON.parse(message.data);
    if (event.kind === "resources") {
      this.addResources(Object.assign({ created_at: event.created_at }, event.data));
      this.drawResources();
      return; // drawn, not logged
    }
    appendLog(event);
    if (event.kind === "round" && event.data && typeof event.data.round === "number") {
      const r = event.data;
      this.addRound(r);
      (r.clients || []).forEach(function (c) {
        this.addClient({ round: r.round, client: c.client, train_loss: c.train_loss, ok: c.ok });
      }, this);
      this.drawRounds();
    }
  };

  function appendLog(event) {
    const log = document.getElementById("run-log");
    if (!log) {
      return;
    }
    const at = (event.created_at || "").slice(11, 19);
    log.append("[" + at + "] " + event.kind + ": " + event.message + "\n");
    const lines = log.textContent.split("\n");
    if (lines.length > 400) {
      log.textContent = lines.slice(-300).join("\n");
    }
    log.scrollTop = log.scrollHeight;
  }

  // The live connection: a visible notice while the stream is down, gone once it is back. The
  // SSE extension (and the browser's EventSource) reconnect by themselves, with Last-Event-ID.
  function watchConnection(stream, charts) {
    const notice = document.getElementById("run-connection");
    const known = new WeakSet();
    let ended = false;
    stream.addEventListener("htmx:sseOpen", function (e) {
      const source = e.detail.source;
      if (notice) {
        notice.hidden = true;
      }
      stream.dataset.connection = "open";
      if (!known.has(source)) { // the browser's own reconnects reopen the same source
        known.add(source);
        ["status", "log", "round", "checkpoint", "resources"].forEach(function (kind) {
          source.addEventListener(kind, charts.onEvent.bind(charts));
        });
        source.addEventListener("end", function () { ended = true; });
      }
    });
    stream.addEventListener("htmx:sseError", function () {
      if (ended) {
        return;
      }
      stream.dataset.connection = "reconnecting";
      if (notice) {
        notice.hidden = false;
      }
    });
  }

  function initRun(root) {
    if (root._charts) {
      return;
    }
    const charts = new RunCharts(root);
    root._charts = charts;
    let resizeTimer = 0;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () { charts.draw(); }, 200);
    });
    const stream = root.closest("[sse-connect]");
    if (stream) {
      watchConnection(stream, charts);
    }
  }

  // ------------------------------------------------------------------ the run's clock

  // #run-clock carries the server's seconds at render time; while the run is queued or running
  // (data-ticking) it counts on from there, so no clock difference with the server matters.
  // htmx replaces the element on each status refresh and the count restarts from the new value.
  function tick() {
    document.querySelectorAll("#run-clock[data-ticking][data-seconds]").forEach(function (clock) {
      if (clock._shownAt == null) {
        clock._shownAt = performance.now();
      }
      const seconds = Number(clock.dataset.seconds) + (performance.now() - clock._shownAt) / 1000;
      clock.textContent = humanSeconds(seconds);
    });
  }
  setInterval(tick, 1000);

  // ------------------------------------------------------------------ comparison page

  function initCompare(root) {
    if (root._done) {
      return;
    }
    root._done = true;
    const series = JSON.parse(document.getElementById("compare-data").textContent);
    const xs = Array.from(new Set([].concat.apply([], series.map(function (s) {
      return s.rounds.map(function (r) { return r.round; });
    })))).filter(function (x) { return x > 0; }).sort(function (a, b) { return a - b; });
    root.querySelectorAll("[data-chart]").forEach(function (figure) { // compare.html picks them
      const key = figure.dataset.chart;
      const lines = series.map(function (s) {
        const byRound = new Map(s.rounds.map(function (r) { return [r.round, r[key]]; }));
        return { key: s.label, label: s.label, values: xs.map(function (x) { return byRound.has(x) ? byRound.get(x) : null; }) };
      });
      plot(figure, figure.querySelector("h3").textContent, xs, lines, { yLabel: "loss" });
      keyboardCursor(figure);
    });
  }

  function init(element) {
    const scope = element || document;
    scope.querySelectorAll("[data-run-charts]").forEach(initRun);
    scope.querySelectorAll("[data-compare-charts]").forEach(initCompare);
  }

  if (window.htmx) {
    htmx.onLoad(init);
  } else {
    document.addEventListener("DOMContentLoaded", function () { init(document); });
  }
})();
