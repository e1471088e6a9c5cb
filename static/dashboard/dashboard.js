// The operator dashboard: every few seconds, read the API's public figures and draw them.
// Plain fetch + setTimeout and uPlot (vendored under /static/uplot): no build step, no framework.
"use strict";

(() => {
  const API = "/api/v1";
  const REFRESH_MS = 3000;
  const TIMEOUT_MS = 2500;
  const CACHE_SAMPLES = 200; // the cache chart's memory: 10 minutes at one sample per refresh
  const ROUTES_SHOWN = 14;
  const ZONE = "America/Bogota";

  const integer = new Intl.NumberFormat("es-CO");
  const pesos = new Intl.NumberFormat("es-CO", { style: "currency", currency: "COP", maximumFractionDigits: 0 });
  const compactPesos = new Intl.NumberFormat("es-CO", {
    style: "currency", currency: "COP", notation: "compact", maximumFractionDigits: 1,
  });
  const percent = new Intl.NumberFormat("es-CO", { style: "percent", maximumFractionDigits: 1 });
  const decimal = new Intl.NumberFormat("es-CO", { maximumFractionDigits: 2 });
  const clock = new Intl.DateTimeFormat("es-CO", {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, timeZone: ZONE,
  });
  const hourOfDay = new Intl.DateTimeFormat("es-CO", { hour: "2-digit", minute: "2-digit", hour12: false, timeZone: ZONE });

  const $ = (id) => document.getElementById(id);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();

  // ------------------------------------------------------------ reading the API
  // One GET; resolves to {ok, status, body} for any HTTP answer, rejects when nothing answers.
  async function get(path) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(API + path, { cache: "no-store", signal: controller.signal });
      let body = null;
      try { body = await response.json(); } catch (_) { /* an answer that is not JSON is a failure below */ }
      return { ok: response.ok && body !== null, status: response.status, body };
    } finally {
      clearTimeout(timer);
    }
  }

  const SOURCES = {
    health: "/health",
    total: "/trips/total",
    tripsByLocality: "/trips/total/localities",
    revenueByLocality: "/finance/revenue/localities",
    users: "/users/count",
    activeUsers: "/users/active/count",
    hourly: "/trips/hourly?hours=24",
    stats: "/stats",
  };

  // ------------------------------------------------------------ charts
  function axis(extra) {
    return { stroke: color("--muted"), grid: { stroke: "rgba(255,255,255,0.06)" }, ticks: { show: false }, ...extra };
  }

  function fromZero(_, __, max) { return [0, max > 0 ? max * 1.12 : 1]; }

  function chart(element, series, axes, scales) {
    const plot = new uPlot({
      width: Math.max(element.clientWidth, 200),
      height: Math.max(element.clientHeight, 120),
      tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), ZONE),
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, ...scales },
      series: [{}, ...series],
      axes,
    }, [[], ...series.map(() => [])], element);
    new ResizeObserver(() => plot.setSize({
      width: Math.max(element.clientWidth, 200), height: Math.max(element.clientHeight, 120),
    })).observe(element);
    return plot;
  }

  const hourlyChart = chart($("chart-hourly"), [
    {
      label: "trips", scale: "trips", stroke: color("--trips"), fill: color("--trips") + "cc",
      paths: uPlot.paths.bars({ size: [0.72, 80] }), points: { show: false },
    },
    { label: "revenue", scale: "revenue", stroke: color("--revenue"), width: 2.5, points: { show: true, size: 5 } },
  ], [
    axis({ values: (_, ticks) => ticks.map((t) => hourOfDay.format(new Date(t * 1000))) }),
    axis({ scale: "trips", values: (_, ticks) => ticks.map((t) => integer.format(t)), size: 60 }),
    axis({ scale: "revenue", side: 1, grid: { show: false }, values: (_, ticks) => ticks.map((t) => compactPesos.format(t)), size: 80 }),
  ], { trips: { range: fromZero }, revenue: { range: fromZero } });

  const cacheChart = chart($("chart-cache"), [
    { label: "hit ratio", scale: "ratio", stroke: color("--ratio"), width: 2.5, points: { show: false } },
    { label: "memory", scale: "memory", stroke: color("--memory"), width: 2, points: { show: false } },
  ], [
    axis({ values: (_, ticks) => ticks.map((t) => clock.format(new Date(t * 1000))) }),
    axis({ scale: "ratio", values: (_, ticks) => ticks.map((t) => percent.format(t)), size: 60 }),
    axis({ scale: "memory", side: 1, grid: { show: false }, values: (_, ticks) => ticks.map((t) => decimal.format(t) + " MB"), size: 70 }),
  ], { ratio: { range: () => [0, 1] }, memory: { range: fromZero } });
  const cacheSamples = [[], [], []];

  // ------------------------------------------------------------ drawing
  function tile(id, value, format) {
    const output = $(id).querySelector("output");
    output.textContent = format.format(value);
    output.dataset.value = String(value);
  }

  function bars(list, rows, format) {
    const max = Math.max(1, ...rows.map((row) => row.value));
    list.replaceChildren(...rows.map((row) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = name.title = row.name;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = (100 * row.value / max).toFixed(2) + "%";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = format.format(row.value);
      item.dataset.value = String(row.value);
      item.append(name, track, value);
      return item;
    }));
  }

  function drawHourly(hours) {
    const x = hours.map((h) => Date.parse(h.hour) / 1000);
    hourlyChart.setData([x, hours.map((h) => h.trips), hours.map((h) => h.revenue)]);
    const now = hours[hours.length - 1];
    const caption = $("current-hour");
    caption.dataset.hour = now.hour;
    caption.dataset.trips = String(now.trips);
    caption.dataset.revenue = String(now.revenue);
    caption.replaceChildren("This hour (since " + hourOfDay.format(new Date(now.hour)) + "): ");
    const figures = document.createElement("strong");
    figures.textContent = integer.format(now.trips) + " trips · " + pesos.format(now.revenue);
    caption.append(figures, " · " + integer.format(now.completed_trips) + " completed. Last 24 h: " +
      integer.format(hours.reduce((sum, h) => sum + h.trips, 0)) + " trips.");
  }

  function drawStats(stats) {
    const cache = stats.cache;
    const redis = stats.redis;
    const state = $("cache-state");
    state.dataset.state = cache.status;
    state.textContent = cache.status === "ok" ? "Redis up" : "Redis down";
    $("cache-window-ratio").textContent = cache.window_hit_ratio === null ? "–" : percent.format(cache.window_hit_ratio);
    $("cache-ratio").textContent = cache.hit_ratio === null ? "–" : percent.format(cache.hit_ratio);
    $("cache-memory").textContent = redis ? decimal.format(redis.used_memory / 1048576) + " MB" : "down";
    $("cache-evicted").textContent = redis ? integer.format(redis.evicted_keys) : "down";
    $("panel-cache").classList.toggle("stale", !redis);
    if (redis) {
      // The cache's own bookkeeping (gen:*, gen:sequence: cachekeys.py) is not a family of answers.
      bars($("bars-keys"), Object.entries(redis.keys_by_family).filter(([name]) => !name.startsWith("gen:"))
        .map(([name, value]) => ({ name, value })).sort((a, b) => b.value - a.value), integer);
      $("keys-total").textContent = integer.format(redis.keys) + " keys" +
        (redis.keys_counted < redis.keys ? " (families estimated from " + integer.format(redis.keys_counted) + ")" : "");
    }
    cacheSamples[0].push(Date.now() / 1000);
    cacheSamples[1].push(cache.window_hit_ratio);
    cacheSamples[2].push(redis ? redis.used_memory / 1048576 : null);
    if (cacheSamples[0].length > CACHE_SAMPLES) cacheSamples.forEach((samples) => samples.shift());
    cacheChart.setData(cacheSamples);

    $("routes").replaceChildren(...stats.routes.slice(0, ROUTES_SHOWN).map((route) => {
      const row = document.createElement("tr");
      row.dataset.route = route.route;
      for (const text of [route.route, decimal.format(route.requests_per_second),
        decimal.format(route.p50_ms), decimal.format(route.p99_ms)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }));
    const pool = stats.pool;
    $("instance").textContent = "Instance up " + duration(stats.uptime_seconds) + " · database pool: " +
      pool.size + " of " + pool.max_size + " connections open, " + pool.idle + " idle, " + pool.waiting + " waiting";
  }

  function duration(seconds) {
    const minutes = Math.floor(seconds / 60);
    if (minutes < 1) return Math.floor(seconds) + " s";
    if (minutes < 60) return minutes + " min";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  // ------------------------------------------------------------ status and banner
  let lastGood = null;

  function status(id, state) { $(id).dataset.state = state; }

  function banner(level, text) {
    const element = $("banner");
    element.hidden = !level;
    element.dataset.level = level || "";
    element.textContent = text || "";
  }

  // ------------------------------------------------------------ one refresh
  async function refresh() {
    const names = Object.keys(SOURCES);
    const settled = await Promise.allSettled(names.map((name) => get(SOURCES[name])));
    const got = {};
    names.forEach((name, i) => { got[name] = settled[i].status === "fulfilled" ? settled[i].value : null; });
    const ok = (name) => got[name] !== null && got[name].ok;

    const apiUp = Object.values(got).some((answer) => answer !== null);
    const health = got.health && got.health.body;
    const databaseUp = apiUp && !!health && health.database === "ok";
    const cacheUp = apiUp && !!health && health.cache === "ok" && (!ok("stats") || got.stats.body.cache.status === "ok");

    if (ok("total")) {
      tile("tile-trips", got.total.body.total_trips, integer);
      tile("tile-active-trips", got.total.body.active_trips, integer);
      tile("tile-revenue", got.total.body.total_revenue, pesos);
    }
    if (ok("users")) tile("tile-users", got.users.body.count, integer);
    if (ok("activeUsers")) tile("tile-active-users", got.activeUsers.body.count, integer);
    for (const [name, id] of [["total", "tile-trips"], ["total", "tile-active-trips"], ["total", "tile-revenue"],
      ["users", "tile-users"], ["activeUsers", "tile-active-users"]]) {
      $(id).classList.toggle("stale", !ok(name));
    }
    if (ok("tripsByLocality")) {
      bars($("bars-trips"), got.tripsByLocality.body.map((l) => ({ name: l.locality, value: l.total_trips })), integer);
    }
    if (ok("revenueByLocality")) {
      bars($("bars-revenue"), got.revenueByLocality.body.map((l) => ({ name: l.locality, value: l.total_revenue })), pesos);
    }
    $("panel-localities").classList.toggle("stale", !(ok("tripsByLocality") && ok("revenueByLocality")));
    if (ok("hourly")) drawHourly(got.hourly.body);
    $("panel-hourly").classList.toggle("stale", !ok("hourly"));
    if (ok("stats")) {
      drawStats(got.stats.body);
    } else {
      const state = $("cache-state");
      state.dataset.state = "stale";
      state.textContent = "no figures";
    }
    $("panel-routes").classList.toggle("stale", !ok("stats"));

    const everythingFresh = names.every(ok);
    if (everythingFresh) lastGood = new Date();
    status("status-api", apiUp ? "ok" : "down");
    status("status-database", !apiUp ? "stale" : databaseUp ? "ok" : "down");
    status("status-cache", !apiUp ? "stale" : cacheUp ? "ok" : "down");
    const since = lastGood ? " Figures shown are from " + clock.format(lastGood) + "." : "";
    if (!apiUp) {
      banner("down", "The API does not answer." + since + " Retrying every " + REFRESH_MS / 1000 + " s.");
    } else if (!databaseUp) {
      banner("down", "PostgreSQL is down: the API answers 503 for what needs it." + since +
        " The figures come back by themselves when it does.");
    } else if (!cacheUp) {
      banner("degraded", "Redis is down: reads are served from PostgreSQL, and the cache panel waits for it.");
    } else if (!everythingFresh) {
      banner("degraded", "Some figures could not be read." + since);
    } else {
      banner(null);
    }
    $("updated").textContent = "updated " + clock.format(new Date()) + (everythingFresh ? "" : " (partly)");
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  }

  async function loop() {
    try {
      await refresh();
    } catch (error) {
      banner("down", "The dashboard failed to draw: " + error.message);
    } finally {
      setTimeout(loop, REFRESH_MS);
    }
  }

  loop();
})();
