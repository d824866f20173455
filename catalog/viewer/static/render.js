// What a STAC item draws as: its render (render extension) as tiler parameters, its XYZ tile source for MapLibre,
// landsurf's legends as titiler colormaps. Pure functions of the item and what the catalog told the page.
import { LngLatBounds } from "./vendor/maplibre-gl.mjs";

export function itemDate(item) {
  const p = item.properties || {};
  return p.datetime || p.start_datetime || "";
}

// The item's render (render extension): on the item, in its properties, or its collection's default.
export function renderOf(item, collections) {
  const renders = item.renders || (item.properties || {}).renders
    || (collections.get(item.collection) || {}).renders;
  if (!renders) return null;
  const [name] = Object.keys(renders);
  return name ? renders[name] : null;
}

// A render as tiler query parameters (as the API's own tile links write them).
export function renderQuery(render) {
  const q = new URLSearchParams();
  for (const a of render.assets || []) q.append("assets", a);
  for (const r of render.rescale || []) q.append("rescale", r.join(","));
  for (const key of ["expression", "colormap_name", "color_formula", "resampling", "nodata"]) {
    if (key in render) q.append(key, String(render[key]));
  }
  if (render.colormap) q.append("colormap", JSON.stringify(render.colormap));
  return q;
}

// The XYZ tile template of an item: its tilejson link's parameters (the API's), else built from its `renders`.
// `catalog`: the API's URL, the collections, the tiler's colormap names and landsurf's legends.
export function tileTemplate(item, catalog) {
  const root = new URL(`raster/collections/${encodeURIComponent(item.collection)}/items/${encodeURIComponent(item.id)}`,
                       catalog.api).href;
  let query;
  const link = (item.links || []).find((l) => l.rel === "tilejson");
  if (link) {
    query = new URL(link.href).searchParams;
  } else {
    const render = renderOf(item, catalog.collections);
    if (!render) return null;
    query = renderQuery(render);
  }
  // a landsurf colormap the tiler was not given: sent as an explicit colormap, from its legend
  const name = query.get("colormap_name");
  if (name && !catalog.tilerColormaps.has(name) && catalog.legends.has(name)) {
    query.delete("colormap_name");
    query.set("colormap", JSON.stringify(colormapOf(catalog.legends.get(name))));
  }
  query.set("tilesize", "512");
  // {z}/{x}/{y} must stay literal for MapLibre: appended after the encoded part
  return `${root}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?${query.toString()}`;
}

// A legend as a titiler colormap: {value: rgba} for categories, [[[lower, upper], rgba], …] for intervals.
export function colormapOf(legend) {
  if (legend.type === "intervals") return legend.entries.map((e) => [e.range, e.color]);
  return Object.fromEntries(legend.entries.map((e) => [String(e.value), e.color]));
}

export function rasterSource(item, catalog) {
  const tiles = tileTemplate(item, catalog);
  if (!tiles) return null;
  const source = { type: "raster", tiles: [tiles], tileSize: 512, minzoom: 0, maxzoom: 15 };
  if (Array.isArray(item.bbox) && item.bbox.length === 4) source.bounds = item.bbox;  // no request outside it
  return source;
}

export function boundsOf(items) {
  const bounds = new LngLatBounds();
  for (const item of items) {
    if (Array.isArray(item.bbox) && item.bbox.length >= 4) {
      bounds.extend([item.bbox[0], item.bbox[1]]);
      bounds.extend([item.bbox[2], item.bbox[3]]);
    }
  }
  return bounds.isEmpty() ? null : bounds;
}
