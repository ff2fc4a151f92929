// Charts drawn in the page as inline SVG (no library): bars, overlaid histograms, curves with intervals.
const SVG_NS = 'http://www.w3.org/2000/svg';
const STATE_COLOUR = { ok: '#4c8bd6', 'generation error': '#c62828', 'score error': '#ef8f2f', 'not scored': '#b8c0cc' };

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  return node;
}

function svgText(x, y, text, attrs) { return svg('text', { x, y, ...(attrs || {}) }, String(text)); }

// One horizontal stacked bar per group: [{label, colour, segments: [{name, value}]}]
function stackedBars(container, groups, legendNames) {
  clear(container);
  const total = Math.max(1, ...groups.map((g) => g.segments.reduce((s, x) => s + x.value, 0)));
  const width = 360; const left = 110; const barH = 18; const gap = 8; const top = 4;
  const height = top + groups.length * (barH + gap) + 24;
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
  groups.forEach((group, i) => {
    const y = top + i * (barH + gap);
    root.append(svgText(0, y + 13, group.label, { fill: group.colour }));
    let x = left; const sum = group.segments.reduce((s, seg) => s + seg.value, 0);
    for (const seg of group.segments) {
      if (!seg.value) continue;
      const w = ((width - left - 40) * seg.value) / total;
      root.append(svg('rect', { x, y, width: Math.max(w, 1), height: barH, fill: STATE_COLOUR[seg.name] || '#999' }, svg('title', {}, `${group.label}: ${seg.name} ${seg.value}`)));
      x += w;
    }
    root.append(svgText(x + 4, y + 13, sum.toLocaleString('en')));
  });
  let lx = 0; const ly = height - 6;
  for (const name of legendNames) {
    root.append(svg('rect', { x: lx, y: ly - 9, width: 9, height: 9, fill: STATE_COLOUR[name] }));
    root.append(svgText(lx + 12, ly, name)); lx += 22 + name.length * 6;
  }
  container.append(root);
  if (!groups.length) container.append(el('p', { class: 'note', text: 'no responses match' }));
}

// Overlaid step histograms with shared bins: [{name, colour, values}]
function histograms(container, series, binCount = 24) {
  clear(container);
  const all = series.flatMap((s) => s.values);
  if (!all.length) { container.append(el('p', { class: 'note', text: 'no scored responses match' })); return; }
  let low = Infinity; let high = -Infinity;
  for (const v of all) { if (v < low) low = v; if (v > high) high = v; }
  if (low === high) { low -= 0.5; high += 0.5; }
  const step = (high - low) / binCount;
  const counts = series.map((s) => {
    const bins = new Array(binCount).fill(0);
    for (const v of s.values) bins[Math.min(binCount - 1, Math.floor((v - low) / step))] += 1;
    return bins;
  });
  const peak = Math.max(1, ...counts.flat());
  const width = 360; const height = 150; const left = 30; const bottom = 20; const top = 16;
  const plotW = width - left - 6; const plotH = height - top - bottom;
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
  root.append(svg('line', { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, stroke: '#999' }));
  root.append(svgText(left, height - 4, fmt(low, 3), { 'text-anchor': 'start' }));
  root.append(svgText(left + plotW, height - 4, fmt(high, 3), { 'text-anchor': 'end' }));
  root.append(svgText(left - 4, top + 4, peak, { 'text-anchor': 'end' }));
  series.forEach((s, i) => {
    if (!s.values.length) return;
    let points = `${left},${top + plotH}`;
    counts[i].forEach((c, b) => {
      const x0 = left + (b * plotW) / binCount; const x1 = left + ((b + 1) * plotW) / binCount; const y = top + plotH - (c * plotH) / peak;
      points += ` ${x0},${y} ${x1},${y}`;
    });
    points += ` ${left + plotW},${top + plotH}`;
    root.append(svg('polyline', { points, fill: s.colour, 'fill-opacity': 0.12, stroke: s.colour, 'stroke-width': 1.6 }));
    const mean = s.values.reduce((a, b) => a + b, 0) / s.values.length;
    root.append(svgText(left + 6 + i * 112, 11, `${s.name} n=${s.values.length} μ=${fmt(mean, 3)}`, { fill: s.colour }));
  });
  container.append(root);
}

// Vertical bars: [{label, value, colour}]
function bars(container, items, note) {
  clear(container);
  const width = 360; const height = 150; const bottom = 20; const top = 14; const plotH = height - top - bottom;
  const peak = Math.max(1, ...items.map((i) => i.value));
  const slot = (width - 10) / Math.max(1, items.length); const barW = Math.min(48, slot * 0.6);
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
  items.forEach((item, i) => {
    const h = (item.value * plotH) / peak; const x = 5 + i * slot + (slot - barW) / 2;
    root.append(svg('rect', { x, y: top + plotH - h, width: barW, height: Math.max(h, item.value ? 1 : 0), fill: item.colour }, svg('title', {}, `${item.label}: ${item.value}`)));
    root.append(svgText(x + barW / 2, top + plotH - h - 3, item.value.toLocaleString('en'), { 'text-anchor': 'middle' }));
    root.append(svgText(x + barW / 2, height - 5, item.label, { 'text-anchor': 'middle' }));
  });
  container.append(root);
  if (note) container.append(el('p', { class: 'note', text: note }));
}

// A metric across rounds, with its interval as error bars when it has one.
function curve(container, title, rounds, values, low, high) {
  const width = 300; const height = 160; const left = 52; const right = 10; const top = 22; const bottom = 22;
  const plotW = width - left - right; const plotH = height - top - bottom;
  const numbers = [...values, ...(low || []), ...(high || [])].filter((v) => v !== null && v !== undefined);
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
  root.append(svgText(4, 13, title, { 'font-weight': 600 }));
  if (!numbers.length) { root.append(svgText(left, top + 30, 'no values')); container.append(el('figure', {}, el('div', { class: 'chart' }, root))); return; }
  let lo = Math.min(...numbers); let hi = Math.max(...numbers);
  if (lo === hi) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const x = (i) => left + (rounds.length === 1 ? plotW / 2 : (i * plotW) / (rounds.length - 1));
  const y = (v) => top + plotH - ((v - lo) * plotH) / (hi - lo);
  root.append(svg('line', { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, stroke: '#999' }));
  root.append(svg('line', { x1: left, y1: top, x2: left, y2: top + plotH, stroke: '#999' }));
  root.append(svgText(left - 4, top + 4, fmt(hi, 3), { 'text-anchor': 'end' }));
  root.append(svgText(left - 4, top + plotH, fmt(lo, 3), { 'text-anchor': 'end' }));
  rounds.forEach((k, i) => root.append(svgText(x(i), height - 6, k, { 'text-anchor': 'middle' })));
  rounds.forEach((_, i) => {
    if (low && high && low[i] !== null && high[i] !== null && low[i] !== undefined && high[i] !== undefined) {
      root.append(svg('line', { x1: x(i), x2: x(i), y1: y(low[i]), y2: y(high[i]), stroke: '#1f5fbf', 'stroke-width': 1.2 }));
      for (const v of [low[i], high[i]]) root.append(svg('line', { x1: x(i) - 4, x2: x(i) + 4, y1: y(v), y2: y(v), stroke: '#1f5fbf' }));
    }
  });
  const points = rounds.map((_, i) => (values[i] === null || values[i] === undefined ? null : `${x(i)},${y(values[i])}`)).filter(Boolean);
  if (points.length > 1) root.append(svg('polyline', { points: points.join(' '), fill: 'none', stroke: '#1f5fbf', 'stroke-width': 1.8 }));
  rounds.forEach((k, i) => {
    if (values[i] === null || values[i] === undefined) return;
    root.append(svg('circle', { cx: x(i), cy: y(values[i]), r: 3.2, fill: '#1f5fbf' }, svg('title', {}, `round ${k}: ${fmt(values[i])}`)));
  });
  container.append(el('figure', { dataset: { metric: title } }, el('div', { class: 'chart' }, root)));
}
