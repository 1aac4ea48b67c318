// fedvla dashboard: the run page's live charts and log, and the run comparison charts.
// Data arrives embedded in the page (<script type="application/json">) and, on a run page, from
// the run's server-sent events, which htmx's SSE extension connects (sse-connect on #run-stream).
(function () {
  "use strict";

  const ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
  const PALETTE = ["#0b5cad", "#a4161a", "#116329", "#7a4b00", "#6f42c1", "#00707a", "#8a1d6b", "#404a57"];

  function width(figure) {
    const style = getComputedStyle(figure);
    const inner = figure.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return Math.max(240, Math.floor(inner));
  }

  function plot(figure, title, series, data, yLabel) {
    const holder = figure.querySelector(".plot");
    const opts = {
      width: width(figure),
      height: 220,
      scales: { x: { time: false } },
      legend: { live: false },
      axes: [{ label: "round", incrs: ROUND_STEPS }, { label: yLabel, size: 60 }],
      series: [{ label: "round" }].concat(series.map(function (s, i) {
        return { label: s, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: true, size: 6 }, spanGaps: true };
      })),
    };
    if (figure._plot) {
      figure._plot.destroy();
      figure._plot = null;
    }
    holder.innerHTML = "";
    const points = data[0].length;
    if (points === 0) {
      const empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = "No round finished yet.";
      holder.append(empty);
    } else {
      figure._plot = new uPlot(opts, data, holder);
    }
    figure.dataset.points = String(points);
    holder.setAttribute("aria-label", title + ": " + points + " round" + (points === 1 ? "" : "s") + " plotted");
  }

  // ------------------------------------------------------------------ run page

  function RunCharts(root) {
    this.root = root;
    const initial = JSON.parse(document.getElementById("run-chart-data").textContent);
    this.rounds = new Map();
    this.clients = new Map();
    this.lastEventId = Number(root.dataset.lastEventId || 0);
    this.lossSeries = initial.loss_series;
    initial.rounds.forEach(this.addRound.bind(this));
    initial.clients.forEach(this.addClient.bind(this));
    this.draw();
  }

  RunCharts.prototype.addRound = function (r) {
    if (r.round > 0) { // round 0 is the evaluation before training: a table row, not a round
      this.rounds.set(r.round, r);
    }
  };

  RunCharts.prototype.addClient = function (c) {
    this.clients.set(c.round + "\u0000" + c.client, c);
  };

  RunCharts.prototype.figure = function (name) {
    return this.root.querySelector('[data-chart="' + name + '"]');
  };

  RunCharts.prototype.draw = function () {
    const rounds = Array.from(this.rounds.values()).sort(function (a, b) { return a.round - b.round; });
    const xs = rounds.map(function (r) { return r.round; });
    const col = function (key, scale) {
      return rounds.map(function (r) { return r[key] == null ? null : r[key] / (scale || 1); });
    };
    const loss = this.lossSeries; // the evaluations the run makes, then train loss (chart_data)
    plot(this.figure("loss"), "Loss per round", loss.map(function (s) { return s.label; }), [xs].concat(loss.map(function (s) { return col(s.key); })), "loss");
    plot(this.figure("bytes"), "Bytes per round", ["sent (MB)", "received (MB)"], [xs, col("bytes_sent", 1e6), col("bytes_received", 1e6)], "MB");
    plot(this.figure("duration"), "Round duration", ["seconds"], [xs, col("duration_s")], "s");

    const clients = Array.from(this.clients.values());
    const names = Array.from(new Set(clients.map(function (c) { return c.client; }))).sort();
    const clientRounds = Array.from(new Set(clients.map(function (c) { return c.round; }))).sort(function (a, b) { return a - b; });
    const byKey = this.clients;
    const perSite = names.map(function (name) {
      return clientRounds.map(function (round) {
        const c = byKey.get(round + "\u0000" + name);
        return c && c.train_loss != null ? c.train_loss : null;
      });
    });
    plot(this.figure("clients"), "Train loss per site", names, [clientRounds].concat(perSite), "loss");
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
    appendLog(event);
    if (event.kind === "round" && event.data && typeof event.data.round === "number") {
      const r = event.data;
      this.addRound(r);
      (r.clients || []).forEach(function (c) {
        this.addClient({ round: r.round, client: c.client, train_loss: c.train_loss, ok: c.ok });
      }, this);
      this.draw();
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

  function initRun(root) {
    if (root._charts) {
      return;
    }
    const charts = new RunCharts(root);
    root._charts = charts;
    const stream = root.closest("[sse-connect]");
    if (!stream) {
      return;
    }
    stream.addEventListener("htmx:sseOpen", function (e) {
      const source = e.detail.source;
      ["status", "log", "round", "checkpoint"].forEach(function (kind) {
        source.addEventListener(kind, charts.onEvent.bind(charts));
      });
    });
  }

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
      const ys = series.map(function (s) {
        const byRound = new Map(s.rounds.map(function (r) { return [r.round, r[key]]; }));
        return xs.map(function (x) { return byRound.has(x) ? byRound.get(x) : null; });
      });
      plot(figure, figure.querySelector("h3").textContent, series.map(function (s) { return s.label; }), [xs].concat(ys), "loss");
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
