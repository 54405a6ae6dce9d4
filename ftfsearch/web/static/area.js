// Areas on the page (issue 24): draw a polygon on the map, find every match in it, train a
// classifier from the marks and map its detections coloured by probability, review tiles one by
// one with the keyboard (y a hit, n a miss, s skip) while the running estimate of the count updates,
// and export the detections as GeoJSON or GeoParquet. The review file lives in this tab (and its
// session storage) and travels with each request: the server stores nothing. app.js calls
// ftfArea.init(api) once the map exists; every text from the server goes through textContent.
"use strict";

window.ftfArea = (function () {
  const $ = (id) => document.getElementById(id);
  const REVIEW_KEY = "ftfsearch-review";
  const s = { api: null, vertices: [], drawing: false, aoi: null, areaLayer: null, sketch: null, hits: null,
    detections: null, itemLayer: null, review: null, item: null, busy: false };

  const renderer = () => (s.canvas = s.canvas || L.canvas({ padding: 0.2 }));

  function say(text, isError) {
    const el = $("area-status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  // -- drawing -------------------------------------------------------------------------------

  function startDrawing() {
    const map = s.api.map;
    if (s.areaLayer) { s.areaLayer.remove(); s.areaLayer = null; }
    s.vertices = [];
    s.drawing = true;
    s.aoi = null;
    map.doubleClickZoom.disable();
    $("area-draw").textContent = "finish area";
    say("Click the map to add corners; finish with this button or a double click.");
    refreshButtons();
  }

  function addVertex(ev) {
    if (!s.drawing) return;
    s.vertices.push([ev.latlng.lng, ev.latlng.lat]);
    if (s.sketch) s.sketch.remove();
    s.sketch = L.polyline(s.vertices.map(([x, y]) => [y, x]), { color: "#e4572e", dashArray: "4 4" }).addTo(s.api.map);
  }

  function finishDrawing() {
    s.drawing = false;
    s.api.map.doubleClickZoom.enable();
    $("area-draw").textContent = "draw area";
    if (s.sketch) { s.sketch.remove(); s.sketch = null; }
    const ring = s.vertices.filter((v, i, a) => i === 0 || v[0] !== a[i - 1][0] || v[1] !== a[i - 1][1]);
    if (ring.length < 3) { say("An area needs at least three corners: draw again.", true); refreshButtons(); return; }
    setArea({ type: "Polygon", coordinates: [[...ring, ring[0]]] });
  }

  function setArea(geometry) {
    s.aoi = geometry;
    if (s.areaLayer) s.areaLayer.remove();
    s.areaLayer = L.polygon(geometry.coordinates[0].map(([x, y]) => [y, x]),
      { color: "#e4572e", weight: 2, fill: false, className: "area-outline" }).addTo(s.api.map);
    say("Area set: find all, or classify from your marks.");
    refreshButtons();
  }

  // -- requests ------------------------------------------------------------------------------

  async function postLines(url, body) {
    const resp = await s.api.authFetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    const text = await resp.text();
    if (!resp.ok) throw new Error(errorOf(text, resp.status));
    const lines = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
    const failed = lines.find((l) => l.type === "error");
    if (failed) throw new Error(failed.error);
    return lines;
  }

  function errorOf(text, status) {
    try { return JSON.parse(text).error || `HTTP ${status}`; } catch (e) { return `HTTP ${status}`; }
  }

  async function labels() {
    // The review file when one is going (its answers are marks too), else the page's marks.
    if (s.review) return s.review;
    const marks = s.api.marks().map((m) => ({ id: m.id, label: m.label, region: m.region }));
    return s.api.getJSON("api/labels/export", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: s.api.query() || null, marks }) });
  }

  function layerOf(items, value, cls) {
    const group = L.featureGroup();
    for (const it of items) {
      if (!it.footprint) continue;
      L.polygon(s.api.latlngs(it.footprint), { renderer: renderer(), weight: 1, color: s.api.colour(value(it)),
        fillOpacity: 0.45, className: cls }).addTo(group);
    }
    return group.addTo(s.api.map);
  }

  async function findAll() {
    const q = s.api.query();
    if (!q) { say("Type what to find in the search box first.", true); return; }
    await run("Finding every match…", async () => {
      const lines = await postLines("api/find", { q, aoi: s.aoi });
      const plan = lines[0].plan;
      const hits = lines.filter((l) => l.type === "page").flatMap((l) => l.page.results);
      if (s.hits) s.hits.remove();
      const lo = plan.threshold, hi = Math.max(lo + 1e-6, ...hits.map((h) => h.score));
      s.hits = layerOf(hits, (h) => (h.score - lo) / (hi - lo), "find-hit");
      $("area-hits").textContent = `${hits.length} tile${hits.length === 1 ? "" : "s"} above ${plan.threshold.toFixed(3)} (${plan.threshold_source})`;
    });
  }

  async function classify() {
    await run("Training and scoring every tile…", async () => {
      const body = { labels: await labels(), aoi: s.review ? null : s.aoi, estimate: Boolean(s.review) };
      const lines = await postLines("api/classify", body);
      const plan = lines[0].plan;
      const found = lines.filter((l) => l.type === "page").flatMap((l) => l.page.detections);
      if (s.detections) s.detections.remove();
      s.detections = layerOf(found, (d) => (d.probability - 0.5) / 0.5, "detection");
      $("area-model").textContent = `${found.length} detections of ${plan.scope} tiles · precision ` +
        `${plan.precision.toFixed(2)} recall ${plan.recall.toFixed(2)} (${plan.folds}-fold, ` +
        `${plan.positives} hits, ${plan.negatives} misses)`;
      if (plan.estimate) $("area-estimate").textContent = `hit tiles ${plan.estimate.text}`;
      $("area-legend").hidden = false;
    });
  }

  // -- review --------------------------------------------------------------------------------

  async function reviewStep(answers) {
    await run(answers.length ? "Retraining…" : "Starting the review…", async () => {
      const body = { labels: await labels(), answers };
      if (!s.review && s.aoi) body.aoi = s.aoi;
      const out = await s.api.getJSON("api/review", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body) });
      s.review = out.labels;
      try { sessionStorage.setItem(REVIEW_KEY, JSON.stringify(s.review)); } catch (e) { /* private mode */ }
      $("area-estimate").textContent = `hit tiles ${out.estimate.text} · of ${out.quality.scope} in scope`;
      $("area-model").textContent = `retrained in ${out.quality.train_ms.toFixed(0)} ms · precision ` +
        `${out.quality.precision.toFixed(2)} recall ${out.quality.recall.toFixed(2)}`;
      showItem(out.item);
    });
  }

  function showItem(item) {
    s.item = item;
    $("review-card").hidden = !item;
    if (s.itemLayer) { s.itemLayer.remove(); s.itemLayer = null; }
    if (!item) { say("Nothing left to check."); return; }
    $("review-what").textContent = (item.kind === "estimate" ? `random draw, stratum ${item.stratum}` : "least sure") +
      ` · p ${item.probability.toFixed(2)} · ${item.scene_id}`;
    $("review-card").dataset.id = item.id;
    s.api.showImage($("review-chip"), `api/tiles/${item.id}/chip.png?size=256`);
    if (item.footprint) {
      s.itemLayer = L.polygon(s.api.latlngs(item.footprint), { color: "#ff00ff", weight: 3, fill: false,
        className: "review-footprint" }).addTo(s.api.map);
      // the tile with its surroundings, however small the tile (a drone tile is tens of metres)
      s.api.map.fitBounds(s.itemLayer.getBounds().pad(1.5), { maxZoom: s.api.map.getMaxZoom(), animate: false });
    }
    say("Is this a hit? y yes · n no · s skip");
    $("review-card").focus();
  }

  function onKey(ev) {
    if (!s.item || s.busy || ev.target.tagName === "INPUT") return;
    const hit = { y: true, n: false, s: null }[ev.key.toLowerCase()];
    if (hit === undefined) return;
    ev.preventDefault();
    reviewStep([{ id: s.item.id, hit }]);
  }

  // -- export --------------------------------------------------------------------------------

  async function exportAs(format) {
    await run(`Writing ${format}…`, async () => {
      const body = { labels: await labels(), aoi: s.review ? null : s.aoi, format };
      const resp = await s.api.authFetch("api/classify", { method: "POST",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (!resp.ok) throw new Error(errorOf(await resp.text(), resp.status));
      const a = document.createElement("a");
      a.href = URL.createObjectURL(await resp.blob());
      a.download = `detections.${format}`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    });
  }

  // -- plumbing ------------------------------------------------------------------------------

  async function run(message, fn) {
    s.busy = true;
    refreshButtons();
    say(message);
    try {
      await fn();
      if ($("area-status").textContent === message) say("Done.");
    } catch (e) {
      say(e.message, true);
    } finally {
      s.busy = false;
      refreshButtons();
    }
  }

  function refreshButtons() {
    const marks = s.api ? s.api.marks().filter((m) => m.label === "positive").length : 0;
    $("area-find").disabled = s.busy || s.drawing;
    $("area-classify").disabled = s.busy || s.drawing || (!s.review && marks === 0);
    $("area-review").disabled = s.busy || s.drawing || (!s.review && marks === 0);
    for (const id of ["area-geojson", "area-parquet"]) $(id).disabled = s.busy || !s.detections;
    $("area-draw").disabled = s.busy;
  }

  function init(api) {
    s.api = api;
    if (!api.map) return;
    api.map.on("click", addVertex);
    api.map.on("dblclick", () => { if (s.drawing) finishDrawing(); });
    $("area-draw").addEventListener("click", () => (s.drawing ? finishDrawing() : startDrawing()));
    $("area-find").addEventListener("click", findAll);
    $("area-classify").addEventListener("click", classify);
    $("area-review").addEventListener("click", () => reviewStep([]));
    $("area-new").addEventListener("click", () => {
      s.review = null;
      try { sessionStorage.removeItem(REVIEW_KEY); } catch (e) { /* private mode */ }
      showItem(null);
      $("area-estimate").textContent = "";
      say("Review reset: the next one starts from your marks.");
    });
    $("area-geojson").addEventListener("click", () => exportAs("geojson"));
    $("area-parquet").addEventListener("click", () => exportAs("parquet"));
    for (const b of document.querySelectorAll("#review-card button")) {
      b.addEventListener("click", () => s.item && !s.busy && reviewStep([{ id: s.item.id, hit: { y: true, n: false, s: null }[b.dataset.key] }]));
    }
    document.addEventListener("keydown", onKey);
    try { s.review = JSON.parse(sessionStorage.getItem(REVIEW_KEY) || "null"); } catch (e) { s.review = null; }
    refreshButtons();
  }

  return { init, marksChanged: () => s.api && refreshButtons(), setArea, map: () => s.api && s.api.map,
    drawing: () => s.drawing };
})();
