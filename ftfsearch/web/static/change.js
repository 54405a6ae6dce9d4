// The page's change mode (issue 25): two date ranges, the places that changed most between them
// (GET api/change) with the two dates side by side, each chip with its matched region outlined,
// each place's footprint on the map (a click selects it in the list, and a click in the list flies
// the map to it), and the standing queries with their newest hits (GET api/watches). Its own file: app.js only
// hands over its key-aware fetch (window.ftfsearch) and loads this. Server text goes through
// textContent, never innerHTML.
"use strict";

(function () {
  const api = window.ftfsearch;
  if (!api) return;
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === true) node.setAttribute(k, "");
      else if (v !== false && v != null) node.setAttribute(k, String(v));
    }
    if (text != null) node.textContent = text;
    return node;
  }

  const toggle = el("button", { id: "change-toggle", type: "button", title: "what changed between two dates" }, "Change");
  $("store-info").before(toggle);
  const panel = el("section", { id: "change", "aria-label": "change", hidden: true });
  const form = el("form", { id: "change-form", autocomplete: "off" });
  const field = (id, label, placeholder, value) => {
    const l = el("label", {}, label + " ");
    l.append(el("input", { id, name: id, placeholder, value: value || "" }));
    return l;
  };
  form.append(field("change-before", "before", "2009-01-01/2015-01-01"), field("change-after", "after", "2015-01-01/.."),
    field("change-q", "what appeared", "(empty: anything)"), el("button", { id: "change-go", type: "submit" }, "Compare"));
  panel.append(form, el("div", { id: "change-status", role: "status" }, "Give two ISO 8601 ranges START/END ('..' leaves an end open)."),
    el("ol", { id: "change-places" }), el("h2", {}, "Watches"), el("ul", { id: "watch-list" }));
  $("side").prepend(panel);

  // The places on the map: their own layer, shown only in the change mode.
  const places = { group: null, layers: new Map() };
  const latlngs = (ring) => ring.map(([lon, lat]) => [lat, lon]);
  const ringOf = (side) => side.footprint ||
    (side.bbox && [[side.bbox[0], side.bbox[1]], [side.bbox[2], side.bbox[1]], [side.bbox[2], side.bbox[3]], [side.bbox[0], side.bbox[3]]]);

  function mapGroup() {
    const map = api.map();
    if (!map) return null;
    if (!places.group) places.group = L.featureGroup();
    if (!map.hasLayer(places.group)) places.group.addTo(map);
    return places.group;
  }

  // The map shows one date of the selected place under its outline: the after scene, or the side
  // whose chip was clicked (that chip is marked), since the dates' previews overlap.
  function selectPlace(rank, fly, side = "after") {
    for (const li of document.querySelectorAll(".change-place")) {
      const on = Number(li.dataset.rank) === rank;
      li.classList.toggle("selected", on);
      if (on && !fly) li.scrollIntoView({ block: "nearest" });
      for (const fig of li.querySelectorAll(".change-side")) fig.classList.toggle("on-map", on && fig.dataset.side === side);
      if (on) {
        const fig = li.querySelector(`.change-side[data-side="${side}"]`);
        if (fig) api.showScene(fig.dataset.scene);
      }
    }
    for (const [k, layer] of places.layers) {
      layer.setStyle({ weight: k === rank ? 4 : 2, fillOpacity: k === rank ? 0.1 : 0.3 });
      if (k === rank) layer.bringToFront();
    }
    const layer = places.layers.get(rank);
    if (fly && layer) api.map().flyToBounds(layer.getBounds().pad(0.6), { maxZoom: 19, duration: 0.5 });
  }

  function drawPlaces(list) {
    places.layers.clear();
    const group = mapGroup();
    if (!group) return;
    group.clearLayers();
    for (const place of [...list].reverse()) {  // the most changed last: on top where they overlap
      const ring = ringOf(place.after);
      if (!ring) continue;
      const poly = L.polygon(latlngs(ring), { color: "#e65100", weight: 2, fillColor: "#e65100", fillOpacity: 0.3,
        className: "change-footprint" });
      poly.bindTooltip(`#${place.rank} · ${place.change.toFixed(4)}`);
      poly.on("click", () => selectPlace(place.rank, false));
      poly.addTo(group);
      places.layers.set(place.rank, poly);
    }
    if (places.layers.size) api.map().fitBounds(group.getBounds(), { padding: [30, 30], maxZoom: 19, animate: false });
  }

  function show(on) {
    panel.hidden = !on;
    if (places.group && api.map()) {
      if (on) places.group.addTo(api.map());
      else places.group.remove();
    }
    document.body.classList.toggle("change-mode", on);
    toggle.setAttribute("aria-pressed", String(on));
    if (on) loadWatches();
  }
  toggle.onclick = () => show(panel.hidden);

  const chip = (side) => `api/tiles/${encodeURIComponent(side.id)}/chip.png` +
    (side.region_index == null ? "" : `?region=${side.region_index}`);

  function figure(side, label) {
    const fig = el("figure", { class: "change-side", "data-side": label, "data-scene": side.scene_id,
      title: `show the ${label} scene on the map` });
    const img = el("img", { alt: `${label}: ${side.scene_id}` });
    api.showImage(img, chip(side));
    const caption = `${label} · ${(side.acquired || "no date").slice(0, 10)}` + (side.score == null ? "" : ` · ${side.score.toFixed(4)}`);
    fig.append(img, el("figcaption", {}, caption));
    return fig;
  }

  async function compare(ev) {
    if (ev) ev.preventDefault();
    const params = new URLSearchParams({ before: $("change-before").value.trim(), after: $("change-after").value.trim(), k: "10" });
    const q = $("change-q").value.trim();
    if (q) params.set("q", q);
    const status = $("change-status");
    status.classList.remove("error");
    status.textContent = "Comparing…";
    $("change-places").replaceChildren();
    drawPlaces([]);
    try {
      const out = await api.getJSON(`api/change?${params}`);
      for (const place of out.places) {
        const li = el("li", { class: "change-place", "data-rank": place.rank, tabindex: 0 });
        li.addEventListener("click", (ev) => {
          const fig = ev.target.closest(".change-side");
          selectPlace(place.rank, true, fig ? fig.dataset.side : "after");
        });
        const what = q ? (place.change >= 0 ? "rise" : "fall") : "moved";
        li.append(el("div", { class: "change-head" }, `#${place.rank} ${what} ${place.change.toFixed(4)} · ${place.after.scene_id}`),
          el("div", { class: "change-pair" }));
        li.lastChild.append(figure(place.before, "before"), figure(place.after, "after"));
        $("change-places").append(li);
      }
      drawPlaces(out.places);
      if (out.places.length) selectPlace(out.places[0].rank, false);
      status.textContent = `${out.places.length} places changed most between ${params.get("before")} and ${params.get("after")}`;
    } catch (e) {
      status.textContent = e.message;
      status.classList.add("error");
    }
  }
  form.onsubmit = compare;

  async function loadWatches() {
    const list = $("watch-list");
    list.replaceChildren();
    try {
      for (const w of await api.getJSON("api/watches")) {
        const li = el("li", { class: "watch" });
        li.append(el("div", { class: "watch-head" }, `${w.name}: ${w.query} · ${w.hits} hits` + (w.pending ? ` (${w.pending} owed to its webhook)` : "")));
        const hits = (await api.getJSON(`api/watches/${encodeURIComponent(w.name)}/hits`)).hits.slice(0, 5);
        const ul = el("ul", { class: "watch-hits" });
        for (const h of hits) {
          ul.append(el("li", { class: "watch-hit" }, `${h.found_at.slice(0, 16)} · ${h.scene_id} · ${(h.acquired || "").slice(0, 10)} · ${h.score.toFixed(4)}`));
        }
        li.append(ul);
        list.append(li);
      }
      if (!list.children.length) list.append(el("li", {}, "No watches: 'ftfsearch watch add NAME TEXT' adds one."));
    } catch (e) {
      list.append(el("li", { class: "error" }, e.message));
    }
  }

  // ?change=1&before=..&after=..&cq=..: open in change mode (a link to a comparison)
  const url = new URL(window.location.href).searchParams;
  if (url.get("change") === "1") {
    $("change-before").value = url.get("before") || "";
    $("change-after").value = url.get("after") || "";
    $("change-q").value = url.get("cq") || "";
    show(true);
    if (url.get("before") && url.get("after")) compare(null);
  }
})();
