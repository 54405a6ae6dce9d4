// The ftfsearch page: a search box, a Leaflet map (scene previews, scene outlines, result
// footprints coloured by score), a ranked list with chips and a detail panel. Plain JS, no build;
// every text from the server goes through textContent, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const state = { map: null, results: [], layers: new Map(), resultGroup: null, selected: null, sceneBounds: null };

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

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    let body = null;
    try { body = await resp.json(); } catch (e) { /* not JSON */ }
    if (!resp.ok) throw new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
    return body;
  }

  // Leaflet wants [lat, lon]; the API gives [lon, lat].
  const latlngs = (ring) => ring.map(([lon, lat]) => [lat, lon]);
  const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

  function initMap(info) {
    if (typeof L === "undefined") { $("no-leaflet").hidden = false; return; }
    const map = L.map("map", { worldCopyJump: false, zoomSnap: 0.25, preferCanvas: false });
    const overlays = {};
    if (info.basemap && info.basemap.url) {
      L.tileLayer(info.basemap.url, { attribution: info.basemap.attribution || "", maxZoom: 19 }).addTo(map);
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
    for (const s of scenes) {
      if (s.preview_url && s.preview_bounds) {
        const [w, so, e, n] = s.preview_bounds;
        const b = L.latLngBounds([so, w], [n, e]);
        L.imageOverlay(s.preview_url, b, { opacity: 0.95, className: "scene-preview", alt: s.scene_id })
          .addTo(state.previewGroup);
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
      state.map.fitBounds(all, { padding: [20, 20] });
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

  function renderResults(body) {
    clearResults();
    const results = body.results;
    state.results = results;
    if (!results.length) {
      setStatus("No tiles matched (is the bbox or scene filter too narrow?).");
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
    setStatus(`${results.length} results for “${body.query}” in ${total.toFixed(0)} ms` +
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
      poly.on("click", () => select(r.rank));
      poly.addTo(state.resultGroup);
      state.layers.set(r.rank, poly);
    }
    for (const r of results) {
      const li = document.createElement("li");
      li.className = "result";
      li.dataset.rank = r.rank;
      li.tabIndex = 0;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.src = r.chip_url;
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
      scene.textContent = `${r.scene_id} · level ${r.level}`;
      scene.title = r.path;
      const where = document.createElement("div");
      where.className = "where";
      where.textContent = r.bbox ? `${fmt((r.bbox[1] + r.bbox[3]) / 2, 5)}, ${fmt((r.bbox[0] + r.bbox[2]) / 2, 5)}`
        : "no CRS (pixel coordinates only)";
      meta.append(head, scene, where);
      li.append(img, meta);
      li.addEventListener("click", () => select(r.rank));
      li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(r.rank); });
      list.append(li);
    }
    if (state.map && state.resultGroup.getLayers().length) {
      state.map.fitBounds(state.resultGroup.getBounds(), { padding: [30, 30], maxZoom: 14 });
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
        paddingTopLeft: [40, 40], paddingBottomRight: [420, 40], maxZoom: 17, duration: 0.6,
      });
    }

    const url = new URL(r.chip_url, window.location.href);
    url.searchParams.set("size", "512");
    $("detail-chip").src = url.toString();
    $("detail-title").textContent = `#${r.rank} · ${r.scene_id}`;
    const dl = $("detail-fields");
    dl.replaceChildren();
    field(dl, "score", `${fmt(r.score, 4)} (coarse ${fmt(r.coarse_score, 4)}, fine ${fmt(r.fine_score, 4)})`);
    field(dl, "scene", r.scene_id);
    field(dl, "file", r.path);
    field(dl, "level", String(r.level));
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

  async function search(q) {
    const params = new URLSearchParams({ q, k: $("k").value || "20", rerank: $("rerank").checked ? "true" : "false" });
    const page = new URL(window.location.href);
    page.searchParams.set("q", q);
    window.history.replaceState(null, "", page.toString());
    $("go").disabled = true;
    setStatus("Searching…");
    try {
      renderResults(await getJSON(`/api/search?${params}`));
    } catch (e) {
      clearResults();
      setStatus(e.message, true);
    } finally {
      $("go").disabled = false;
    }
  }

  async function start() {
    $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
    $("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = $("q").value.trim();
      if (q) search(q);
    });
    let info = {};
    try {
      info = await getJSON("/api/info");
      $("store-info").textContent = `${info.tiles} tiles · ${info.scenes} scenes · ${info.encoder.id}`;
    } catch (e) {
      setStatus(e.message, true);
    }
    initMap(info);
    try {
      addScenes((await getJSON("/api/scenes")).scenes);
    } catch (e) {
      setStatus(e.message, true);
    }
    const q = new URL(window.location.href).searchParams.get("q");
    if (q) { $("q").value = q; search(q); }
    document.body.dataset.ready = "1";
  }

  start();
})();
