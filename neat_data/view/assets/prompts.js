// The prompt list: per-prompt figures, filters, sorting, paging, and the overview charts of what matches.
const PAGE_SIZE = 50;

// Per prompt: best / worst / mean score, largest kept margin, longest response, flags. Computed once.
function derive(D) {
  const P = D.prompts; const R = D.responses; const n = P.pid.length;
  const fin = D.strings.fin; const lengthCode = fin.indexOf('length');
  const out = { best: new Array(n).fill(null), worst: new Array(n).fill(null), mean: new Array(n).fill(null), margin: new Array(n).fill(null),
    longest: new Array(n).fill(0), shortest: new Array(n).fill(null), truncated: new Array(n).fill(0), errors: new Array(n).fill(0),
    kept: new Array(n).fill(0), drops: new Array(n).fill(null), keptOf: new Map(), droppedOf: new Map() };
  for (let p = 0; p < n; p++) {
    let sum = 0; let count = 0;
    for (let r = P.r0[p]; r < P.r0[p] + P.rn[p]; r++) {
      const s = R.score[r];
      if (s !== null && R.ss[r] === 0) {
        sum += s; count += 1;
        if (out.best[p] === null || s > out.best[p]) out.best[p] = s;
        if (out.worst[p] === null || s < out.worst[p]) out.worst[p] = s;
      }
      if (R.gs[r] === 0) {
        if (R.len[r] > out.longest[p]) out.longest[p] = R.len[r];
        if (out.shortest[p] === null || R.len[r] < out.shortest[p]) out.shortest[p] = R.len[r];
      }
      if (R.fin[r] === lengthCode && lengthCode >= 0) out.truncated[p] += 1;
      if (R.gs[r] || R.ss[r] === 1) out.errors[p] += 1;
    }
    if (count) out.mean[p] = sum / count;
  }
  const K = D.kept;
  for (let i = 0; i < K.p.length; i++) {
    const p = K.p[i]; out.kept[p] += 1;
    if (K.m[i] !== null && (out.margin[p] === null || K.m[i] > out.margin[p])) out.margin[p] = K.m[i];
    if (!out.keptOf.has(p)) out.keptOf.set(p, []);
    out.keptOf.get(p).push(i);
  }
  if (D.dropped) {
    const X = D.dropped;
    for (let i = 0; i < X.p.length; i++) {
      const p = X.p[i];
      if (!out.drops[p]) out.drops[p] = new Set();
      out.drops[p].add(X.reason[i]);
      if (!out.droppedOf.has(p)) out.droppedOf.set(p, []);
      out.droppedOf.get(p).push(i);
    }
  }
  return out;
}

function responseState(R, r) {
  if (R.gs[r]) return 'generation error';
  const state = R.ss[r];
  return state === 0 ? 'ok' : state === 1 ? 'score error' : state === 2 ? 'ok' : 'not scored';
}

function numberOrNull(input) { const v = input.value.trim(); return v === '' || Number.isNaN(Number(v)) ? null : Number(v); }

function readFilters() {
  const value = (id) => document.getElementById(id).value;
  return {
    search: value('search').trim(), steering: value('f-steering'), status: value('f-status'),
    scoreMin: numberOrNull(document.getElementById('f-score-min')), scoreMax: numberOrNull(document.getElementById('f-score-max')),
    marginMin: numberOrNull(document.getElementById('f-margin-min')), marginMax: numberOrNull(document.getElementById('f-margin-max')),
    round: value('f-round'), library: value('f-library'), pair: value('f-pair'), drop: value('f-drop'),
    truncated: document.getElementById('f-truncated').checked, sort: value('sort'),
  };
}

// Does one response pass the response-level filters (steering, status, score range, truncated)?
function responseMatcher(D, f) {
  const R = D.responses; const lengthCode = D.strings.fin.indexOf('length');
  const steering = f.steering === '' ? null : Number(f.steering);
  const active = steering !== null || f.status !== '' || f.scoreMin !== null || f.scoreMax !== null || f.truncated;
  const test = (r) => {
    if (steering !== null && R.st[r] !== steering) return false;
    if (f.status !== '') {
      const state = responseState(R, r);
      if (f.status === 'error' ? !(state === 'generation error' || state === 'score error') : state !== f.status) return false;
    }
    if (f.scoreMin !== null && !(R.score[r] !== null && R.score[r] >= f.scoreMin)) return false;
    if (f.scoreMax !== null && !(R.score[r] !== null && R.score[r] <= f.scoreMax)) return false;
    if (f.truncated && R.fin[r] !== lengthCode) return false;
    return true;
  };
  return { active, test };
}

function matchingPrompts(D, X, f, searchHits) {
  const P = D.prompts; const n = P.pid.length; const rm = responseMatcher(D, f);
  const round = f.round === '' ? null : Number(f.round); const library = f.library === '' ? null : Number(f.library);
  const pair = f.pair === '' ? null : Number(f.pair); const drop = f.drop === '' ? null : Number(f.drop);
  const found = [];
  for (let p = 0; p < n; p++) {
    if (round !== null && P.round[p] !== round) continue;
    if (library !== null && P.lib[p] !== library) continue;
    if (pair !== null && P.pair[p] !== pair) continue;
    if (f.marginMin !== null && !(X.margin[p] !== null && X.margin[p] >= f.marginMin)) continue;
    if (f.marginMax !== null && !(X.margin[p] !== null && X.margin[p] <= f.marginMax)) continue;
    if (drop !== null && !(X.drops[p] && X.drops[p].has(drop))) continue;
    if (searchHits && !searchHits.has(p)) continue;
    if (rm.active) {
      let any = false;
      for (let r = P.r0[p]; r < P.r0[p] + P.rn[p] && !any; r++) any = rm.test(r);
      if (!any) continue;
    }
    found.push(p);
  }
  return { prompts: found, matcher: rm };
}

function sortPrompts(list, X, how) {
  if (how === 'run') return list;
  const [field, direction] = how.split('-');
  const key = { margin: X.margin, best: X.best, worst: X.worst, mean: X.mean, length: field === 'length' && direction === 'asc' ? X.shortest : X.longest }[field];
  const sign = direction === 'asc' ? 1 : -1;
  return list.slice().sort((a, b) => {
    const va = key[a]; const vb = key[b];
    if (va === null && vb === null) return a - b;
    if (va === null) return 1; // missing values last, whatever the direction
    if (vb === null) return -1;
    return va === vb ? a - b : sign * (va - vb);
  });
}

function renderList(state) {
  const { D, X } = state; const P = D.prompts; const body = document.querySelector('#prompt-list tbody');
  clear(body);
  const pages = Math.max(1, Math.ceil(state.order.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const start = state.page * PAGE_SIZE;
  for (const p of state.order.slice(start, start + PAGE_SIZE)) {
    const flags = [];
    if (X.errors[p]) flags.push(el('span', { class: 'badge error', text: `${X.errors[p]} error` }));
    if (X.truncated[p]) flags.push(el('span', { class: 'badge trunc', text: `${X.truncated[p]} truncated` }));
    if (X.drops[p]) flags.push(el('span', { class: 'badge drop', text: `dropped: ${[...X.drops[p]].map((d) => D.strings.drop[d]).join(', ')}` }));
    const pairName = P.pair[p] >= 0 ? D.strings.pair[P.pair[p]] : '–';
    const row = el('tr', { dataset: { prompt: p }, class: state.selected === p ? 'selected' : null },
      el('td', { class: 'num', text: p + 1 }), el('td', { class: 'num', text: P.round[p] }),
      el('td', { class: 'title', title: P.title[p] }, highlighted(P.title[p] || '(no user turn)', state.filters.search)),
      el('td', { text: pairName }), el('td', { class: 'num', text: P.rn[p] }),
      el('td', { class: 'num', text: fmt(X.best[p], 3) }), el('td', { class: 'num', text: fmt(X.worst[p], 3) }),
      el('td', { class: 'num', text: fmt(X.margin[p], 3) }), el('td', {}, flags));
    row.addEventListener('click', () => state.open(p));
    body.append(row);
  }
  const total = P.pid.length;
  document.getElementById('list-count').textContent =
    `${plural(state.order.length, 'prompt')} match${state.order.length === 1 ? 'es' : ''} (of ${total.toLocaleString('en')}` +
    `${D.sample ? ' in this page' : ''})`;
  document.getElementById('page-label').textContent = `page ${state.page + 1} of ${pages}`;
  document.getElementById('page-prev').disabled = state.page === 0;
  document.getElementById('page-next').disabled = state.page >= pages - 1;
}

// The three overview charts, over the responses of the matching prompts that pass the response filters.
function renderOverview(state) {
  const { D, X } = state; const P = D.prompts; const R = D.responses; const steer = D.strings.steering;
  const states = ['ok', 'generation error', 'score error', 'not scored'];
  const counts = steer.map(() => Object.fromEntries(states.map((s) => [s, 0])));
  const scores = steer.map(() => []);
  for (const p of state.order) {
    for (let r = P.r0[p]; r < P.r0[p] + P.rn[p]; r++) {
      if (state.matcher.active && !state.matcher.test(r)) continue;
      const s = R.st[r];
      if (s >= steer.length) continue;
      counts[s][responseState(R, r)] += 1;
      if (R.score[r] !== null && R.ss[r] === 0 && !R.gs[r]) scores[s].push(R.score[r]);
    }
  }
  const present = steer.map((_, s) => s).filter((s) => states.some((name) => counts[s][name]));
  stackedBars(document.querySelector('#chart-status .chart'),
    present.map((s) => ({ label: STEER_LABEL[steer[s]] || steer[s], colour: STEER_COLOUR[steer[s]], segments: states.map((name) => ({ name, value: counts[s][name] })) })),
    states);
  histograms(document.querySelector('#chart-scores .chart'),
    present.map((s) => ({ name: steer[s], colour: STEER_COLOUR[steer[s]], values: scores[s] })));
  const pairItems = [{ label: 'kept', value: 0, colour: '#2e7d32' }];
  let note = null;
  if (D.dropped) {
    const byReason = new Map(D.strings.drop.map((_, i) => [i, 0]));
    for (const p of state.order) {
      pairItems[0].value += X.kept[p];
      for (const i of X.droppedOf.get(p) || []) byReason.set(D.dropped.reason[i], byReason.get(D.dropped.reason[i]) + 1);
    }
    for (const [reason, value] of byReason) pairItems.push({ label: D.strings.drop[reason], value, colour: '#8a8f98' });
  } else {
    for (const p of state.order) pairItems[0].value += X.kept[p];
    const totals = new Map();
    for (const part of D.totals) for (const [reason, value] of Object.entries(part.dropped || {})) totals.set(reason, (totals.get(reason) || 0) + value);
    for (const [reason, value] of totals) pairItems.push({ label: reason, value, colour: '#b8c0cc' });
    note = 'Dropped: whole-run counts from the rank summary in the manifest (this run has no ranked/dropped.parquet, so drops are not listed per prompt and do not follow the filters).';
  }
  bars(document.querySelector('#chart-pairs .chart'), pairItems, note);
}

function fillSelect(id, options) {
  const select = document.getElementById(id);
  for (const [value, label] of options) select.append(el('option', { value, text: label }));
  if (options.length <= 1 && id !== 'f-steering') select.disabled = options.length === 0;
}

function setupFilters(state) {
  const D = state.D; const P = D.prompts;
  fillSelect('f-steering', D.strings.steering.map((name, i) => [i, `${name} (${STEER_LABEL[name] || name})`]));
  fillSelect('f-round', [...new Set(P.round)].sort((a, b) => a - b).map((k) => [k, `round ${k}`]));
  fillSelect('f-library', D.strings.lib.map((name, i) => [i, name]));
  fillSelect('f-pair', D.strings.pair.map((name, i) => [i, name]).sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0)));
  const drop = document.getElementById('f-drop');
  if (D.dropped) fillSelect('f-drop', D.strings.drop.map((name, i) => [i, name]));
  else { drop.disabled = true; drop.title = 'this run has no ranked/dropped.parquet: drops are known only as counts'; }
  let typing = null;
  const form = document.getElementById('filters');
  // body[data-settled] is '0' from a change of the form until the list shows it (tests and scripts wait on it)
  const unsettle = () => { document.body.dataset.settled = '0'; };
  for (const type of ['input', 'change', 'reset']) form.addEventListener(type, unsettle, true);
  form.addEventListener('input', (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => state.refresh(), event.target.id === 'search' ? 250 : 60);
  });
  form.addEventListener('change', () => { clearTimeout(typing); state.refresh(); });
  form.addEventListener('submit', (event) => { event.preventDefault(); clearTimeout(typing); state.refresh(); });
  form.addEventListener('reset', () => setTimeout(() => state.refresh(), 0));
  document.getElementById('page-prev').addEventListener('click', () => { state.page -= 1; renderList(state); });
  document.getElementById('page-next').addEventListener('click', () => { state.page += 1; renderList(state); });
}
