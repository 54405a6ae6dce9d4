// The ftfsearch page: a search box, a Leaflet map (scene previews, scene outlines, result
// footprints coloured by score), a ranked list with chips and a detail panel, and marks: "more
// like this" and thumbs up / down (hit / miss) on a result refine the search at once (the marks accumulate in
// the tab's session, export as labels GeoJSON and import back). Plain JS, no build; every text
// from the server goes through textContent, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const state = { map: null, results: [], layers: new Map(), previews: new Map(), frontScene: null, resultGroup: null, selected: null, sceneBounds: null,
    marks: [], memoryKey: null, asking: null };
  const MARKS_KEY = "ftfsearch-marks";
  // Deepest zoom the map goes to (fitting results, a selected tile): about 3 cm a pixel, so a
  // 300 m drone scene and its 80 m tiles fill the view; the basemap stretches past its zoom 19.
  const MAX_ZOOM = 22;

  function colour(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const c = VIRIDIS[i].map((v, j) => Math.round(v + f * (VIRIDIS[i + 1][j] - v)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }

  // -- the API key (serve --keys): asked for once, kept for this tab only -----------------------
  // URLs are relative to the page, so it works under a reverse proxy's path prefix.

  const KEY = "ftfsearch-key";
  const apiKey = () => { try { return sessionStorage.getItem(KEY) || state.memoryKey; } catch (e) { return state.memoryKey; } };
  const withKey = (headers) => (apiKey() ? { ...headers, Authorization: `Bearer ${apiKey()}` } : headers);

  // One prompt however many requests were refused at once; resolves when a key is entered.
  function askKey(message) {
    if (state.asking) return state.asking;
    state.memoryKey = null;
    try { sessionStorage.removeItem(KEY); } catch (e) { /* private mode */ }
    $("login-msg").textContent = message;
    $("login").hidden = false;
    $("api-key").value = "";
    $("api-key").focus();
    state.asking = new Promise((resolve) => {
      $("login").onsubmit = (ev) => {
        ev.preventDefault();
        const key = $("api-key").value.trim();
        if (!key) return;
        try { sessionStorage.setItem(KEY, key); } catch (e) { /* private mode: this page's life only */ }
        state.memoryKey = key;
        $("login").hidden = true;
        state.asking = null;
        resolve();
      };
    });
    return state.asking;
  }

  // fetch with the key; a 401 asks for a key and tries again with it
  async function authFetch(url, init) {
    for (;;) {
      const resp = await fetch(url, { ...(init || {}), headers: withKey((init || {}).headers || {}) });
      if (resp.status !== 401) return resp;
      let body = null;
      try { body = await resp.json(); } catch (e) { /* not JSON */ }
      await askKey(apiKey() ? "That key was refused (revoked or mistyped): enter a valid key." :
        ((body && body.error) || "This server needs an API key."));
    }
  }

  async function getJSON(url, init) {
    const resp = await authFetch(url, { ...(init || {}), headers: { Accept: "application/json", ...((init || {}).headers || {}) } });
    let body = null;
    try { body = await resp.json(); } catch (e) { /* not JSON */ }
    if (!resp.ok) throw new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
    return body;
  }

  // Images with a key cannot go through <img src> (no header): fetched, then shown as blob URLs,
  // the last few hundred kept.
  const blobs = new Map();
  async function imageURL(url) {
    if (!apiKey()) return url;
    if (!blobs.has(url)) {
      blobs.set(url, authFetch(url).then(async (resp) => (resp.ok ? URL.createObjectURL(await resp.blob()) : url)));
      if (blobs.size > 400) {
        const [oldest, made] = blobs.entries().next().value;
        blobs.delete(oldest);
        made.then((u) => { if (u.startsWith("blob:")) URL.revokeObjectURL(u); });
      }
    }
    return blobs.get(url);
  }
  const showImage = (img, url) => { imageURL(url).then((u) => { img.src = u; }); };

  // Leaflet wants [lat, lon]; the API gives [lon, lat].
  const latlngs = (ring) => ring.map(([lon, lat]) => [lat, lon]);
  const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

  function initMap(info) {
    if (typeof L === "undefined") { $("no-leaflet").hidden = false; return; }
    const map = L.map("map", { worldCopyJump: false, zoomSnap: 0.25, preferCanvas: false, maxZoom: MAX_ZOOM });
    const overlays = {};
    if (info.basemap && info.basemap.url) {
      L.tileLayer(info.basemap.url, { attribution: info.basemap.attribution || "", maxNativeZoom: 19, maxZoom: MAX_ZOOM }).addTo(map);
    }
    state.previewGroup = L.layerGroup().addTo(map);
    state.outlineGroup = L.layerGroup().addTo(map);
    state.resultGroup = L.featureGroup().addTo(map);
    state.regionGroup = L.layerGroup().addTo(map);
    overlays["scene previews"] = state.previewGroup;
    overlays["scene outlines"] = state.outlineGroup;
    overlays["results"] = state.resultGroup;
    overlays["matched region"] = state.regionGroup;
    L.control.layers(null, overlays, { collapsed: true }).addTo(map);
    L.control.scale({ imperial: false }).addTo(map);
    map.setView([20, 0], 2);
    state.map = map;
  }

  function addScenes(scenes) {
    if (!state.map) return;
    const all = L.latLngBounds([]);
    state.shownScenes = state.shownScenes || new Set();
    for (const s of scenes) {
      if (state.shownScenes.has(s.scene_id)) continue;
      state.shownScenes.add(s.scene_id);
      if (s.preview_url && s.preview_bounds) {
        const [w, so, e, n] = s.preview_bounds;
        const b = L.latLngBounds([so, w], [n, e]);
        imageURL(s.preview_url).then((u) => {
          const overlay = L.imageOverlay(u, b, { opacity: 0.95, className: "scene-preview", alt: s.scene_id });
          state.previews.set(s.scene_id, overlay.addTo(state.previewGroup));
          const front = state.previews.get(state.frontScene);  // a preview loaded later is drawn on top
          if (front) front.bringToFront();
        });
        all.extend(b);
      }
      if (s.footprint) {
        const poly = L.polygon(latlngs(s.footprint), {
          color: "#9fb3c8", weight: 1.5, dashArray: "4 4", fill: false, className: "scene-footprint",
          interactive: false,
        }).addTo(state.outlineGroup);
        all.extend(poly.getBounds());
      }
    }
    if (all.isValid()) {
      state.sceneBounds = all;
      // not animated: a zoom animation still running would undo any view set before it ends
      state.map.fitBounds(all, { padding: [20, 20], maxZoom: MAX_ZOOM, animate: false });
    }
  }

  function clearResults() {
    $("results").replaceChildren();
    if (state.resultGroup) state.resultGroup.clearLayers();
    if (state.regionGroup) state.regionGroup.clearLayers();
    state.layers.clear();
    state.results = [];
    state.selected = null;
    $("detail").hidden = true;
    $("legend").hidden = true;
  }

  function renderResults(body, animate = true) {
    clearResults();
    const results = body.results;
    state.results = results;
    if (!results.length) {
      setStatus("No tiles matched (is the date range or scene filter too narrow?).");
      return;
    }
    const scores = results.map((r) => r.score);
    const lo = Math.min(...scores), hi = Math.max(...scores);
    const norm = (s) => (hi > lo ? (s - lo) / (hi - lo) : 1);
    $("legend-min").textContent = lo.toFixed(3);
    $("legend-max").textContent = hi.toFixed(3);
    $("legend").hidden = false;
    const t = body.timings_ms || {};
    const total = Object.values(t).reduce((a, b) => a + b, 0);
    setStatus(`${results.length} results for ${describe(body)} in ${total.toFixed(0)} ms` +
      (body.warnings && body.warnings.length ? ` — ${body.warnings.join("; ")}` : ""));

    const list = $("results");
    // Draw the weakest first so the best sit on top where footprints overlap.
    for (const r of [...results].reverse()) {
      if (!state.map || !r.footprint) continue;
      const c = colour(norm(r.score));
      const poly = L.polygon(latlngs(r.footprint), {
        color: c, weight: 2, fillColor: c, fillOpacity: 0.35, className: "result-footprint",
      });
      poly.bindTooltip(`#${r.rank}  ${r.score.toFixed(3)}  ${r.scene_id}`, { sticky: true });
      // while an area is being drawn a click on a result is a corner (it bubbles to the map), not a pick
      poly.on("click", () => { if (!(window.ftfArea && window.ftfArea.drawing())) select(r.rank); });
      poly.addTo(state.resultGroup);
      state.layers.set(r.rank, poly);
    }
    for (const r of results) {
      const li = document.createElement("li");
      li.className = "result";
      li.dataset.rank = r.rank;
      li.dataset.id = r.id;
      li.tabIndex = 0;
      const img = document.createElement("img");
      img.loading = "lazy";
      showImage(img, r.chip_url);
      img.alt = `chip of result ${r.rank}`;
      const meta = document.createElement("div");
      meta.className = "meta";
      const head = document.createElement("div");
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = `#${r.rank} `;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = r.score.toFixed(4);
      score.style.background = colour(norm(r.score));
      if (norm(r.score) > 0.7) score.style.color = "#1d2430";
      head.append(rank, score);
      const scene = document.createElement("div");
      scene.className = "scene";
      scene.textContent = `${r.scene_id} · level ${r.level}` + (r.acquired ? ` · ${r.acquired.slice(0, 10)}` : "");
      scene.title = r.path;
      const where = document.createElement("div");
      where.className = "where";
      where.textContent = r.bbox ? `${fmt((r.bbox[1] + r.bbox[3]) / 2, 5)}, ${fmt((r.bbox[0] + r.bbox[2]) / 2, 5)}`
        : "no CRS (pixel coordinates only)";
      meta.append(head, scene, where, actions(r));
      li.append(img, meta);
      li.addEventListener("click", () => select(r.rank));
      li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(r.rank); });
      list.append(li);
    }
    if (state.map && state.resultGroup.getLayers().length) {
      state.map.fitBounds(state.resultGroup.getBounds(), { padding: [30, 30], maxZoom: MAX_ZOOM, animate });
    }
  }

  function describe(body) {
    const parts = [];
    if (body.query) parts.push(`“${body.query}”`);
    if (body.like && body.like.length) parts.push(`${body.like.length} liked`);
    if (body.unlike && body.unlike.length) parts.push(`${body.unlike.length} unliked`);
    return parts.join(" + ");
  }

  // -- marks ---------------------------------------------------------------------------------

  const markOf = (id) => state.marks.find((m) => m.id === id && m.region === null);

  function saveMarks() {
    try { sessionStorage.setItem(MARKS_KEY, JSON.stringify(state.marks)); } catch (e) { /* private mode */ }
  }

  function loadMarks() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(MARKS_KEY) || "[]");
      if (Array.isArray(saved)) state.marks = saved.filter((m) => m && typeof m.id === "string");
    } catch (e) { state.marks = []; }
  }

  function renderMarks() {
    const list = $("marks-list");
    list.replaceChildren();
    const n = state.marks.length;
    const up = state.marks.filter((m) => m.label === "positive").length;
    $("marks-title").textContent = n ? `Marks: ${up} hit${up === 1 ? "" : "s"} · ${n - up} miss${n - up === 1 ? "" : "es"}` : "Marks";
    $("marks-empty").hidden = n > 0;
    $("marks-export").disabled = n === 0;
    $("marks-clear").disabled = n === 0;
    for (const m of state.marks) {
      const li = document.createElement("li");
      li.className = `mark ${m.label}`;
      li.dataset.id = m.id;
      li.title = `${m.label}: ${m.scene_id || ""} ${m.id}`;
      const img = document.createElement("img");
      showImage(img, m.chip_url);
      img.alt = `${m.label} mark`;
      const label = document.createElement("span");
      label.className = "mark-label";
      label.textContent = m.label === "positive" ? "✓ hit" : "✗ miss";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "mark-remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", "remove this mark");
      remove.addEventListener("click", () => {
        state.marks = state.marks.filter((x) => x !== m);
        marksChanged();
      });
      li.append(img, label, remove);
      list.append(li);
    }
  }

  function marksChanged() {
    saveMarks();
    renderMarks();
    if (window.ftfArea) window.ftfArea.marksChanged();
    const q = $("q").value.trim();
    if (q || state.marks.some((m) => m.label === "positive")) search(q);
    else { clearResults(); setStatus(state.marks.length ? "Mark a hit or type a query: misses alone find nothing." : "Type what you are looking for."); }
  }

  function mark(r, label) {
    const had = markOf(r.id);
    state.marks = state.marks.filter((m) => m !== had);
    if (!had || had.label !== label) {
      state.marks.push({ id: r.id, label, region: null, chip_url: r.chip_url.split("?")[0], scene_id: r.scene_id });
    }
    marksChanged();
  }

  function moreLikeThis(r) {
    state.marks = [{ id: r.id, label: "positive", region: null, chip_url: r.chip_url.split("?")[0], scene_id: r.scene_id }];
    $("q").value = "";
    marksChanged();
  }

  function actions(r) {
    const box = document.createElement("div");
    box.className = "actions";
    const current = markOf(r.id);
    const make = (cls, text, title, fn) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = cls;
      b.textContent = text;
      b.title = title;
      b.setAttribute("aria-label", title);
      b.addEventListener("click", (ev) => { ev.stopPropagation(); fn(); });
      b.addEventListener("keydown", (ev) => ev.stopPropagation());
      return b;
    };
    const up = make("up", "✓ hit", "mark as a hit (thumbs up)", () => mark(r, "positive"));
    const down = make("down", "✗ miss", "mark as a miss (thumbs down)", () => mark(r, "negative"));
    if (current) (current.label === "positive" ? up : down).classList.add("on");
    box.append(make("more", "more like this", "search for more like this tile", () => moreLikeThis(r)), up, down);
    return box;
  }

  async function exportLabels() {
    const body = JSON.stringify({ query: $("q").value.trim() || null,
      marks: state.marks.map((m) => ({ id: m.id, label: m.label, region: m.region })) });
    try {
      const collection = await getJSON("api/labels/export",
        { method: "POST", body, headers: { "Content-Type": "application/json" } });
      const blob = new Blob([JSON.stringify(collection, null, 1)], { type: "application/geo+json" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "labels.geojson";
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    } catch (e) {
      setStatus(`export labels: ${e.message}`, true);
    }
  }

  async function importLabels(file) {
    try {
      const text = await file.text();
      const body = await getJSON("api/labels/import",
        { method: "POST", body: text, headers: { "Content-Type": "application/geo+json" } });
      state.marks = body.marks.map((m) => ({ id: m.id, label: m.label, region: m.region,
        chip_url: m.chip_url.split("?")[0], scene_id: m.scene_id }));
      if (body.query && !$("q").value.trim()) $("q").value = body.query;
      marksChanged();
    } catch (e) {
      setStatus(`import labels (${file.name}): ${e.message}`, true);
    }
  }

  function field(dl, name, value) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }

  function select(rank) {
    const r = state.results.find((x) => x.rank === rank);
    if (!r) return;
    state.selected = rank;
    for (const li of document.querySelectorAll(".result")) {
      li.classList.toggle("selected", Number(li.dataset.rank) === rank);
    }
    const li = document.querySelector(`.result[data-rank="${rank}"]`);
    if (li) li.scrollIntoView({ block: "nearest" });
    for (const [k, layer] of state.layers) {
      layer.setStyle({ weight: k === rank ? 4 : 2, fillOpacity: k === rank ? 0.1 : 0.35 });
      if (k === rank) layer.bringToFront();
    }
    if (state.regionGroup) {
      state.regionGroup.clearLayers();
      if (r.region_footprint) {
        L.polygon(latlngs(r.region_footprint), {
          color: "#ffd600", weight: 2.5, fill: false, className: "region-footprint", interactive: false,
        }).addTo(state.regionGroup);
      }
    }
    const layer = state.layers.get(rank);
    if (layer && state.map) {
      // Some ground around the tile for context; keep it clear of the detail panel on the right.
      state.map.flyToBounds(layer.getBounds().pad(0.6), {
        paddingTopLeft: [40, 40], paddingBottomRight: [420, 40], maxZoom: MAX_ZOOM, duration: 0.6,
      });
    }

    const url = new URL(r.chip_url, window.location.href);
    url.searchParams.set("size", "512");
    showImage($("detail-chip"), url.toString());
    $("detail-title").textContent = `#${r.rank} · ${r.scene_id}`;
    const dl = $("detail-fields");
    dl.replaceChildren();
    field(dl, "score", `${fmt(r.score, 4)} (coarse ${fmt(r.coarse_score, 4)}, fine ${fmt(r.fine_score, 4)})`);
    field(dl, "scene", r.scene_id);
    field(dl, "file", r.path);
    field(dl, "level", String(r.level));
    field(dl, "acquired", r.acquired || "unknown");
    const w = r.window;
    field(dl, "window", `col ${w.col}, row ${w.row}, ${w.width}×${w.height} px`);
    if (r.bbox) {
      field(dl, "centre", `${fmt((r.bbox[1] + r.bbox[3]) / 2, 6)}°, ${fmt((r.bbox[0] + r.bbox[2]) / 2, 6)}° (lat, lon)`);
      field(dl, "bbox", r.bbox.map((v) => fmt(v, 6)).join(", "));
    } else {
      field(dl, "coordinates", "none: the scene has no CRS");
    }
    if (r.region) {
      const rw = r.region_window;
      field(dl, "matched region", `${r.region.map((v) => fmt(v, 2)).join(", ")} of the tile`);
      field(dl, "region pixels", `col ${rw.col}, row ${rw.row}, ${rw.width}×${rw.height} px`);
      if (r.region_footprint) {
        const pts = r.region_footprint.slice(0, -1);
        const lon = pts.reduce((a, p) => a + p[0], 0) / pts.length;
        const lat = pts.reduce((a, p) => a + p[1], 0) / pts.length;
        field(dl, "region centre", `${fmt(lat, 6)}°, ${fmt(lon, 6)}° (lat, lon)`);
      }
    } else {
      field(dl, "matched region", "none (coarse order, no rerank)");
    }
    field(dl, "tile id", r.id);
    $("detail").hidden = false;
  }

  function nextDay(isoDate) {
    const d = new Date(`${isoDate}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + 1);
    return d.toISOString().slice(0, 10);
  }

  async function search(q, animate = true) {
    const params = new URLSearchParams({ k: $("k").value || "20", rerank: $("rerank").checked ? "true" : "false" });
    if (q) params.set("q", q);
    // a day range, both ends included: after = the first day's start, before = the day after the last
    if ($("after").value) params.set("after", $("after").value);
    if ($("before").value) params.set("before", nextDay($("before").value));
    for (const m of state.marks) {
      const name = (m.label === "positive" ? "like" : "unlike") + (m.region === null ? "" : "_region");
      params.append(name, m.region === null ? m.id : `${m.id}:${m.region}`);
    }
    const page = new URL(window.location.href);
    if (q) page.searchParams.set("q", q); else page.searchParams.delete("q");
    window.history.replaceState(null, "", page.toString());
    $("go").disabled = true;
    setStatus("Searching…");
    const seq = (state.seq = (state.seq || 0) + 1);  // marks clicked in a row: the last search wins
    try {
      const body = await getJSON(`api/search?${params}`);
      if (seq === state.seq) renderResults(body, animate);
    } catch (e) {
      if (seq === state.seq) { clearResults(); setStatus(e.message, true); }
    } finally {
      if (seq === state.seq) $("go").disabled = false;
    }
  }

  async function start() {
    $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
    $("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = $("q").value.trim();
      if (q || state.marks.some((m) => m.label === "positive")) search(q);
    });
    $("marks-export").addEventListener("click", exportLabels);
    $("marks-clear").addEventListener("click", () => { state.marks = []; marksChanged(); });
    $("marks-import").addEventListener("change", (ev) => {
      const file = ev.target.files && ev.target.files[0];
      if (file) importLabels(file);
      ev.target.value = "";
    });
    loadMarks();
    renderMarks();
    let info = {};
    try {
      info = await getJSON("api/info");
    } catch (e) {
      setStatus(e.message, true);
    }
    initMap(info);
    if (window.ftfArea) {  // area.js: draw an area, find all, classify, review, export
      window.ftfArea.init({ map: state.map, getJSON, authFetch, showImage, colour, latlngs,
        marks: () => state.marks, query: () => $("q").value.trim() });
    }
    await refreshStore(info);
    const q = new URL(window.location.href).searchParams.get("q");
    if (q) $("q").value = q;
    // ready means settled: the first search (from the address or the saved marks) has drawn its
    // results and moved the map without an animation, so nothing the page does by itself follows
    if (q || state.marks.some((m) => m.label === "positive")) await search(q || "", false);
    document.body.dataset.ready = "1";
  }

  // The store line and the scenes; while a scene is being ingested (by `ftfsearch ingest` through
  // this server) both are refreshed every few seconds, so its new tiles and its state show.
  async function refreshStore(info) {
    try {
      if (!info || !info.encoder) info = await getJSON("api/info");
      const scenes = (await getJSON("api/scenes")).scenes;
      const ingesting = scenes.filter((s) => s.state === "ingesting");
      let line = `${info.tiles} tiles · ${info.scenes} scenes · ${info.encoder.id}`;
      if (ingesting.length) {
        line += ` · ingesting: ${ingesting.map((s) => `${s.scene_id} (${s.tiles} tiles)`).join(", ")}`;
      }
      $("store-info").textContent = line;
      $("store-info").dataset.ingesting = String(ingesting.length);
      addScenes(scenes);
      if (ingesting.length) setTimeout(() => refreshStore(null), 3000);
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  // what change.js (the change mode) uses
  // Scenes of one place at several dates overlap on the map: this one's preview goes on top.
  function showScene(sceneId) {
    state.frontScene = sceneId;
    const overlay = state.previews.get(sceneId);
    if (overlay) overlay.bringToFront();
  }

  window.ftfsearch = { getJSON, showImage, setStatus, map: () => state.map, showScene };
  start();
})();
