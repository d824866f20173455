// landsurf web viewer: search the STAC API (POST /search, paged by its `next` links), show footprints on the map
// and in a list, draw a selected product's tiles from the tiler (/raster) with its render parameters and legend,
// step through the results in time, show the monthly L3A syntheses by month — two months side by side with a
// swipe — and download a product (account.js). Everything comes from this origin.
import { Map as MapLibre, NavigationControl, ScaleControl } from "./vendor/maplibre-gl.mjs";
import { createAccount } from "./account.js";
import { boundsOf, itemDate, rasterSource, renderOf } from "./render.js";

const API = new URL("../", window.location.href);  // the viewer lives at <api>/viewer/
const L3A = "sentinel2-l3a";
const DEFAULT_COLLECTION = "sentinel2-l2a";
// landsurf's colormaps, with labels (static copies of processing.colormaps.legend, kept equal by a test)
const LEGENDS = ["landsurf_snow", "landsurf_scd"];
const LEGEND_SAMPLES = 10;  // an interval legend longer than this shows this many of its entries
const MAX_PAGES = 20;  // L3A months: at most this many pages of the collection are read to list them
const $ = (id) => document.getElementById(id);

const BLANK_STYLE = {
  version: 8,
  sources: {},
  layers: [{ id: "background", type: "background", paint: { "background-color": "#dfe6e9" } }],
};
const EMPTY = { type: "FeatureCollection", features: [] };

const state = {
  collections: new Map(),  // id → collection (its `renders`, if any)
  body: null,              // the body of the current search (paging merges into it)
  next: null,              // the current search's `next` link
  items: new Map(),        // id → item, in arrival order
  matched: null,           // numberMatched of the current search
  selected: null,
  drawing: false,
  area: null,              // [w, s, e, n] drawn on the map
  months: new Map(),       // "YYYY-MM" → L3A items of that month
  mosaics: new Map(),      // "YYYY-MM" → the month's registered mosaic (GET /raster/mosaics): one tile layer
  tilerColormaps: new Set(),  // the colormap names the tiler knows
  legends: new Map(),      // colormap name → legend
  token: null,             // a download user's token, for this tab only (account.js)
};

// ---------- helpers ----------
function apiUrl(path) { return new URL(path, API).href; }
function catalog() {
  return { api: API, collections: state.collections, tilerColormaps: state.tilerColormaps, legends: state.legends };
}

async function getJson(url, options = {}) {
  const response = await fetch(url, { headers: { Accept: "application/geo+json, application/json" }, ...options });
  if (!response.ok) {
    let detail = "";
    try { detail = (await response.json()).description || ""; } catch { /* not JSON */ }
    throw new Error(`${response.status} ${response.statusText} for ${new URL(url).pathname}${detail ? `: ${detail}` : ""}`);
  }
  return response.json();
}

function report(message, isError = false) {
  $("status").textContent = message;
  if (isError) console.error(`landsurf viewer: ${message}`);
}

function showLegend(render) {
  const legend = render && render.colormap_name ? state.legends.get(render.colormap_name) : null;
  $("legend").hidden = !legend;
  if (!legend) return;
  let entries = legend.entries;
  if (legend.type === "intervals" && entries.length > LEGEND_SAMPLES) {
    const every = (entries.length - 1) / (LEGEND_SAMPLES - 1);
    entries = Array.from({ length: LEGEND_SAMPLES }, (_, k) => entries[Math.round(k * every)]);
  }
  $("legend-title").textContent = legend.title + (legend.unit ? ` (${legend.unit})` : "");
  $("legend-entries").replaceChildren(...entries.map((e) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b, a] = e.color;
    swatch.style.backgroundColor = `rgba(${r}, ${g}, ${b}, ${a / 255})`;  // CSSOM: allowed by the CSP
    li.append(swatch, document.createTextNode(e.label));
    return li;
  }));
}

const account = createAccount({ state, $, report, apiUrl, getJson });

// ---------- the maps ----------
const map = new MapLibre({ container: "map", style: BLANK_STYLE, center: [2.5, 46.5], zoom: 4.5,
                           attributionControl: false, maxZoom: 16 });
map.addControl(new NavigationControl({ showCompass: false }), "top-right");
map.addControl(new ScaleControl(), "bottom-left");
let mapB = null;  // created when a comparison is asked for
const mapReady = new Promise((resolve) => map.on("load", resolve));

function reportMapError(event) {
  const error = event && event.error;
  report(`map: ${error && error.message ? error.message : String(error)}`, true);
}
map.on("error", reportMapError);

mapReady.then(() => {
  map.addSource("footprints", { type: "geojson", data: EMPTY });
  map.addSource("area", { type: "geojson", data: EMPTY });
  map.addLayer({ id: "footprints-fill", type: "fill", source: "footprints",
                 paint: { "fill-color": "#2471a3", "fill-opacity": 0.12 } });
  map.addLayer({ id: "footprints-line", type: "line", source: "footprints",
                 paint: { "line-color": "#1a5276", "line-width": 1.5 } });
  map.addLayer({ id: "footprints-selected", type: "line", source: "footprints", filter: ["==", ["get", "id"], ""],
                 paint: { "line-color": "#d35400", "line-width": 3 } });
  map.addLayer({ id: "area-line", type: "line", source: "area",
                 paint: { "line-color": "#b7950b", "line-width": 2, "line-dasharray": [2, 1] } });
  map.on("click", "footprints-fill", (e) => {
    if (state.drawing || !e.features.length) return;
    select(e.features[0].properties.id);
  });
  map.on("mouseenter", "footprints-fill", () => { map.getCanvas().classList.add("pointer"); });
  map.on("mouseleave", "footprints-fill", () => { map.getCanvas().classList.remove("pointer"); });
});

// ---------- area (a drag-box) ----------
let boxStart = null;
function boxFeature(a, b) {
  const [w, e] = [Math.min(a.lng, b.lng), Math.max(a.lng, b.lng)];
  const [s, n] = [Math.min(a.lat, b.lat), Math.max(a.lat, b.lat)];
  return { bbox: [w, s, e, n],
           feature: { type: "Feature", properties: {},
                      geometry: { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] } } };
}
function setDrawing(on) {
  state.drawing = on;
  $("draw").setAttribute("aria-pressed", String(on));
  if (on) map.dragPan.disable(); else map.dragPan.enable();
}
map.on("mousedown", (e) => { if (state.drawing) { boxStart = e.lngLat; e.preventDefault(); } });
map.on("mousemove", (e) => {
  if (state.drawing && boxStart) map.getSource("area").setData(boxFeature(boxStart, e.lngLat).feature);
});
map.on("mouseup", (e) => {
  if (!state.drawing || !boxStart) return;
  const { bbox, feature } = boxFeature(boxStart, e.lngLat);
  boxStart = null;
  setDrawing(false);
  if (bbox[0] === bbox[2] || bbox[1] === bbox[3]) return;  // a click, not a box
  state.area = bbox;
  map.getSource("area").setData(feature);
  $("area-text").textContent = bbox.map((v) => v.toFixed(3)).join(", ");
});
$("draw").addEventListener("click", () => setDrawing(!state.drawing));
$("clear-area").addEventListener("click", () => {
  state.area = null;
  setDrawing(false);
  if (map.getSource("area")) map.getSource("area").setData(EMPTY);
  $("area-text").textContent = "no area";
});

// ---------- search ----------
function searchBody() {
  const body = { collections: [$("collection").value], limit: Math.max(1, Math.min(1000, Number($("limit").value) || 50)) };
  const start = $("start").value, end = $("end").value;
  if (start || end) body.datetime = `${start ? `${start}T00:00:00Z` : ".."}/${end ? `${end}T23:59:59Z` : ".."}`;
  if (state.area) body.bbox = state.area;
  const filters = [];
  if ($("cloud").value !== "") filters.push({ op: "<=", args: [{ property: "eo:cloud_cover" }, Number($("cloud").value)] });
  const tile = $("tile").value.trim().toUpperCase().replace(/^T/, "");
  if (tile) filters.push({ op: "=", args: [{ property: "grid:code" }, `MGRS-${tile}`] });
  if (filters.length) {
    body.filter = filters.length === 1 ? filters[0] : { op: "and", args: filters };
    body["filter-lang"] = "cql2-json";
  }
  return body;
}

function footprints() {
  return {
    type: "FeatureCollection",
    features: [...state.items.values()].filter((i) => i.geometry).map((i) => ({
      type: "Feature", geometry: i.geometry, properties: { id: i.id },
    })),
  };
}

function listEntry(item) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.id = item.id;
  const date = document.createElement("span");
  date.className = "date";
  date.textContent = itemDate(item).slice(0, 10);
  const cloud = (item.properties || {})["eo:cloud_cover"];
  const text = document.createTextNode(`  ${item.id}${cloud === undefined ? "" : `  ☁ ${Number(cloud).toFixed(0)} %`}`);
  button.append(date, text);
  button.addEventListener("click", () => select(item.id));
  li.append(button);
  return li;
}

async function runPage(url, body) {
  $("go").disabled = true;
  $("more").disabled = true;
  try {
    const page = await getJson(url, { method: "POST", body: JSON.stringify(body),
                                      headers: { "Content-Type": "application/json", Accept: "application/geo+json" } });
    const fresh = [];
    for (const item of page.features || []) {
      if (!state.items.has(item.id)) { state.items.set(item.id, item); fresh.push(item); }
    }
    $("results").append(...fresh.map(listEntry));
    state.matched = page.numberMatched ?? state.matched;
    state.next = (page.links || []).find((l) => l.rel === "next") || null;
    await mapReady;
    map.getSource("footprints").setData(footprints());
    $("more").hidden = !state.next;
    updateTimeline();
    const of = state.matched === null || state.matched === undefined ? "" : ` of ${state.matched}`;
    report(`${state.items.size}${of} products${state.next ? "" : " (all shown)"}`);
    return fresh;
  } finally {
    $("go").disabled = false;
    $("more").disabled = false;
  }
}

async function search(event) {
  if (event) event.preventDefault();
  state.body = searchBody();
  state.items.clear();
  state.next = null;
  state.matched = null;
  $("results").replaceChildren();
  $("more").hidden = true;
  unselect();
  updateTimeline();
  report("searching…");
  try {
    await runPage(apiUrl("search"), state.body);
    const bounds = boundsOf(state.items.values());
    if (bounds) map.fitBounds(bounds, { padding: 40, maxZoom: 14, duration: 0 });
  } catch (error) {
    report(`search failed: ${error.message}`, true);
  }
}

async function more() {
  const link = state.next;
  if (!link) return;
  // a POST `next` link carries the paging token in its body, to merge into the search's own
  const body = link.merge ? { ...state.body, ...(link.body || {}) } : (link.body || state.body);
  try {
    if ((link.method || "GET").toUpperCase() === "POST") {
      await runPage(link.href, body);
    } else {
      state.body = null;
      await runPage(link.href, undefined);
    }
  } catch (error) {
    report(`next page failed: ${error.message}`, true);
  }
}

// ---------- time slider: the loaded products in date order ----------
function byDate() {
  return [...state.items.values()].sort((a, b) => itemDate(a).localeCompare(itemDate(b)) || a.id.localeCompare(b.id));
}

function updateTimeline() {
  const items = byDate();
  $("timeline").hidden = items.length < 2;
  $("time").max = String(Math.max(0, items.length - 1));
  const at = state.selected ? items.findIndex((i) => i.id === state.selected) : -1;
  if (at >= 0) $("time").value = String(at);
  $("time-text").textContent = at >= 0 ? `${itemDate(items[at]).slice(0, 10)} (${at + 1}/${items.length})` : "";
}

function step() {
  const item = byDate()[Number($("time").value)];
  if (item && item.id !== state.selected) select(item.id, { fit: false });  // the view stays: only time moves
}

// ---------- selection ----------
function unselect() {
  state.selected = null;
  $("detail").hidden = true;
  if (map.getLayer("item")) map.removeLayer("item");
  if (map.getSource("item")) map.removeSource("item");
  if (map.getLayer("footprints-selected")) {
    map.setFilter("footprints-selected", ["==", ["get", "id"], ""]);
    map.setFilter("footprints-fill", null);
  }
}

function select(id, { fit = true } = {}) {
  const item = state.items.get(id);
  if (!item) return;
  unselect();
  state.selected = id;
  for (const b of $("results").querySelectorAll("button")) b.classList.toggle("selected", b.dataset.id === id);
  map.setFilter("footprints-selected", ["==", ["get", "id"], id]);
  map.setFilter("footprints-fill", ["!=", ["get", "id"], id]);  // its tiles unveiled
  $("detail").hidden = false;
  $("detail-title").textContent = id;
  const thumb = Object.values(item.assets || {}).find((a) => (a.roles || []).includes("thumbnail"));
  const preview = (item.links || []).find((l) => l.rel === "preview");
  const img = $("thumb");
  img.hidden = !(thumb || preview);
  if (thumb && state.token) account.showThumbnail(img, thumb.href, id);  // a server may ask a token for files
  else if (thumb || preview) img.src = (thumb || preview).href;
  const props = item.properties || {};
  const rows = [["date", itemDate(item)], ["collection", item.collection], ["platform", props.platform],
                ["cloud cover %", props["eo:cloud_cover"]], ["grid", props["grid:code"]]];
  $("detail-props").replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== null).flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = String(v);
    return [dt, dd];
  }));
  const render = renderOf(item, state.collections);
  showLegend(render);
  const source = rasterSource(item, catalog());
  if (source) {
    map.addSource("item", source);
    const paint = { "raster-fade-duration": 0 };
    if (render && render.resampling === "nearest") paint["raster-resampling"] = "nearest";  // classes stay classes
    map.addLayer({ id: "item", type: "raster", source: "item", paint }, "footprints-fill");
  } else {
    report(`${id}: no render parameters, no tiles to draw`);
  }
  updateTimeline();
  const bounds = boundsOf([item]);
  if (bounds && fit) map.fitBounds(bounds, { padding: 40, duration: 0 });
}

// ---------- monthly L3A syntheses ----------
function setMonthLayers(target, prefix, month) {
  const style = target.getStyle();
  for (const layer of style.layers.filter((l) => l.id.startsWith(prefix))) target.removeLayer(layer.id);
  for (const id of Object.keys(style.sources).filter((s) => s.startsWith(prefix))) target.removeSource(id);
  const items = state.months.get(month) || [];
  const before = target.getLayer("item") ? "item" : target.getLayer("footprints-fill") ? "footprints-fill" : undefined;
  const mosaic = mosaicSource(month, items);
  if (mosaic) {  // the month's registered search: one layer, its small zooms from the precomputed overview
    target.addSource(`${prefix}0`, mosaic);
    target.addLayer({ id: `${prefix}0`, type: "raster", source: `${prefix}0`,
                      paint: { "raster-fade-duration": 0 } }, before);
    return items;
  }
  items.forEach((item, i) => {
    const source = rasterSource(item, catalog());
    if (!source) return;
    target.addSource(`${prefix}${i}`, source);
    target.addLayer({ id: `${prefix}${i}`, type: "raster", source: `${prefix}${i}`,
                      paint: { "raster-fade-duration": 0 } }, before);
  });
  return items;
}

// The month's mosaic as one raster source (the tiler's search tiles), or null: then each item is drawn on its own.
function mosaicSource(month, items) {
  const mosaic = state.mosaics.get(month);
  const render = mosaic && (mosaic.renders["true-colour"] || Object.values(mosaic.renders)[0]);
  const bounds = boundsOf(items);
  if (!render || !bounds) return null;
  return { type: "raster", tiles: [`${render.tiles}&tilesize=512`], tileSize: 512, minzoom: 0, maxzoom: 15,
           bounds: bounds.toArray().flat() };
}

function showMonth() {
  const items = setMonthLayers(map, "l3a-", $("month").value);
  const bounds = boundsOf(items);
  if (bounds && !state.selected) map.fitBounds(bounds, { padding: 40, maxZoom: 14, duration: 0 });
  $("mosaic-status").textContent = $("month").value ? `${items.length} tile(s) in ${$("month").value}` : "";
}

function syncB() {
  if (mapB) mapB.jumpTo({ center: map.getCenter(), zoom: map.getZoom(), bearing: map.getBearing(), pitch: map.getPitch() });
}

function placeSwipe() {
  // the comparison map shows right of the handle: its left part is clipped away (CSSOM, allowed by the CSP)
  $("map-b").style.clipPath = `inset(0 0 0 ${$("swipe").value}%)`;
}

async function compare() {
  const on = $("compare").checked && $("month-b").value !== "";
  $("map-b").hidden = !on;
  $("swipe").hidden = !on;
  if (!on) return;
  if (!mapB) {
    mapB = new MapLibre({ container: "map-b", style: BLANK_STYLE, interactive: false, attributionControl: false,
                          center: map.getCenter(), zoom: map.getZoom() });
    mapB.on("error", reportMapError);
    map.on("move", syncB);
    await new Promise((resolve) => mapB.on("load", resolve));
  }
  mapB.resize();
  syncB();
  placeSwipe();
  setMonthLayers(mapB, "l3a-", $("month-b").value);
}

async function loadMonths() {
  if (!state.collections.has(L3A)) {
    $("mosaic-status").textContent = "no L3A collection in this catalog";
    return;
  }
  // the mosaics' list is asked for at once, beside the months' search (one round trip less before a month draws)
  const mosaics = getJson(apiUrl(`raster/mosaics?collection=${L3A}&limit=1000`)).then(
    (listed) => { for (const m of listed.mosaics || []) state.mosaics.set(m.month, m); },
    (error) => report(`monthly mosaics not listed (${error.message}): months drawn item by item`));
  let url = apiUrl("search"), body = { collections: [L3A], limit: 500 }, pages = 0;
  while (url && pages < MAX_PAGES) {
    const page = await getJson(url, { method: "POST", body: JSON.stringify(body),
                                      headers: { "Content-Type": "application/json" } });
    for (const item of page.features || []) {
      const month = itemDate(item).slice(0, 7);
      if (!state.months.has(month)) state.months.set(month, []);
      state.months.get(month).push(item);
    }
    const next = (page.links || []).find((l) => l.rel === "next" && (l.method || "").toUpperCase() === "POST");
    url = next ? next.href : null;
    body = next && next.merge ? { ...body, ...(next.body || {}) } : (next && next.body);
    pages += 1;
  }
  await mosaics;  // registered monthly mosaics (a month without one is drawn item by item)
  const months = [...state.months.keys()].sort().reverse();
  for (const select of [$("month"), $("month-b")]) {
    select.append(...months.map((m) => new Option(m, m)));
  }
  $("mosaic-status").textContent = months.length ? `${months.length} month(s) of L3A syntheses` : "no L3A synthesis yet";
}

async function loadColormaps() {
  const known = await getJson(apiUrl("raster/colorMaps"));
  for (const c of known.colormaps || []) state.tilerColormaps.add(c.id);
  const legends = await Promise.all(LEGENDS.map((name) => getJson(new URL(`legends/${name}.json`, window.location.href).href)));
  LEGENDS.forEach((name, i) => state.legends.set(name, legends[i]));
}

// What a link may ask the page to show at once (the demo prints one): `?month=YYYY-MM` or `?month=latest` draws that
// L3A month, `?search` runs the search form as it stands (every product of the default collection).
async function openAsAsked(params) {
  if (params.has("search")) await search(new Event("submit"));  // first: it moves the map, the month then fits it
  const month = params.get("month");
  const months = [...state.months.keys()].sort();
  const wanted = month === "latest" ? months[months.length - 1] : month;
  if (wanted && state.months.has(wanted)) {
    $("month").value = wanted;
    await mapReady;
    showMonth();
  }
}

// ---------- start ----------
async function start() {
  $("search").addEventListener("submit", search);
  $("more").addEventListener("click", more);
  $("month").addEventListener("change", () => mapReady.then(showMonth));
  $("month-b").addEventListener("change", compare);
  $("compare").addEventListener("change", compare);
  $("swipe").addEventListener("input", placeSwipe);
  $("time").addEventListener("input", step);
  $("sign-in").addEventListener("submit", account.signIn);
  $("sign-out").addEventListener("click", account.signOut);
  $("download").addEventListener("click", account.download);
  if (state.token) account.signIn();
  try {
    // independent reads in parallel: the page is ready (and a month asked for by the link drawn) sooner
    const [{ collections }] = await Promise.all([getJson(apiUrl("collections")), loadColormaps()]);
    for (const c of collections) state.collections.set(c.id, c);
    $("collection").append(...collections.filter((c) => !c.id.endsWith("-history"))
      .map((c) => new Option(`${c.title || c.id} (${c.id})`, c.id)));
    if (state.collections.has(DEFAULT_COLLECTION)) $("collection").value = DEFAULT_COLLECTION;
    await loadMonths();
    await openAsAsked(new URLSearchParams(window.location.search));
    document.body.dataset.ready = "true";
  } catch (error) {
    report(`cannot read the catalog: ${error.message}`, true);
  }
}

// For tests and the curious: the maps and the state, read-only by convention.
window.landsurfViewer = { map, state, get mapB() { return mapB; } };
start();
