// One prompt in full: its neutral conversation, the drawn pair's system prompts, every response grouped by
// steering (score, raw score, rank, tokens, finish reason, chosen / rejected marks, errors) and its pairs.

function sideName(D, r) {
  if (r === null || r === undefined || r < 0) return 'a response not in this page';
  const R = D.responses; const label = sourceLabel(D, r);
  return label ? `dataset ${label}` : `${D.strings.steering[R.st[r]] || '?'} #${R.si[r]}`;
}

// A dataset answer's label in the user's file (chosen, rejected, response_0, ranked …) and its rank there; null for a
// generated answer (and in pages built before the columns existed).
function sourceLabel(D, r) {
  const R = D.responses; if (!R.src || R.src[r] < 0) return null;
  const rank = R.srank[r] === null ? '' : ` (rank ${R.srank[r]} in the dataset)`;
  return `${D.strings.src[R.src[r]]}${rank}`;
}

function textBlock(text, query, fullLength, cut) {
  const block = el('pre', { class: 'text' }, highlighted(text === null || text === undefined ? '' : text, query));
  const shown = text ? text.length : 0;
  if (cut && fullLength > shown) {
    return [block, el('div', { class: 'cut', text: `… ${(fullLength - shown).toLocaleString('en')} more characters are not in this page (neat-data view RUN --serve shows them)` })];
  }
  return [block];
}

async function renderDetail(state, p) {
  const { D, X } = state; const P = D.prompts; const R = D.responses; const S = D.strings;
  const box = clear(document.getElementById('detail'));
  const token = (state.detailToken = (state.detailToken || 0) + 1);
  box.dataset.prompt = String(p);
  const library = P.lib[p] >= 0 ? S.lib[P.lib[p]] : null; const pair = P.pair[p] >= 0 ? S.pair[P.pair[p]] : null;
  box.append(el('h2', { text: `Prompt ${p + 1} · round ${P.round[p]}` }),
    el('div', { class: 'note' }, `prompt_id ${P.pid[p]}`, pair ? ` · pair ${pair}` : '', library ? ` (library ${library})` : '',
      ` · ${plural(P.rn[p], 'response')}`));
  const loading = el('p', { class: 'note', text: 'loading texts…' });
  box.append(loading);
  let texts;
  try {
    texts = await state.source.texts(p);
  } catch (error) {
    texts = { conv: [], resp: [], error: String(error) };
  }
  if (token !== state.detailToken) return; // another prompt was opened meanwhile
  loading.remove();
  if (texts.error) box.append(el('p', { class: 'reason', text: `texts could not be loaded: ${texts.error}` }));
  const query = state.filters.search;

  box.append(el('h3', { text: 'Neutral conversation' }));
  (texts.conv || []).forEach(([role, content], turn) => {
    box.append(el('div', { class: 'turn' }, el('div', { class: 'role', text: role }), textBlock(content, query, (texts.conv_len || [])[turn] || 0, texts.cut)));
  });
  if (!(texts.conv || []).length) box.append(el('p', { class: 'note', text: '(no conversation text)' }));

  box.append(el('h3', { text: 'Steering system prompts of the drawn pair' }));
  for (const [steer, index] of [['pos', P.sys_pos[p]], ['neg', P.sys_neg[p]]]) {
    box.append(el('div', { class: `system ${steer}` }, el('div', { class: `role steer-${steer}`, text: `${STEER_LABEL[steer]}` }),
      index >= 0 ? el('pre', { class: 'text', text: S.sys[index] }) : el('p', { class: 'note', text: `(no ${steer === 'pos' ? 'positive' : 'negative'}-prompt responses for this prompt)` })));
  }

  const marks = new Map(); // response → [badge]
  const add = (r, badge) => { if (r >= 0) { if (!marks.has(r)) marks.set(r, []); marks.get(r).push(badge); } };
  const kept = X.keptOf.get(p) || [];
  kept.forEach((i, n) => {
    const m = D.kept.m[i] === null ? '' : `, margin ${fmt(D.kept.m[i], 3)}`;
    add(D.kept.c[i], el('span', { class: 'badge chosen', text: `chosen · pair ${n + 1}${m}` }));
    add(D.kept.r[i], el('span', { class: 'badge rejected', text: `rejected · pair ${n + 1}${m}` }));
  });
  const dropped = X.droppedOf.get(p) || [];
  dropped.forEach((i, n) => {
    const reason = S.drop[D.dropped.reason[i]];
    add(D.dropped.a[i], el('span', { class: 'badge drop', text: `dropped pair ${n + 1}: ${reason}` }));
    add(D.dropped.b[i], el('span', { class: 'badge drop', text: `dropped pair ${n + 1}: ${reason}` }));
  });

  box.append(el('h3', { text: 'Responses' }));
  for (let s = 0; s < S.steering.length + 1; s++) {
    const rows = [];
    for (let r = P.r0[p]; r < P.r0[p] + P.rn[p]; r++) if (R.st[r] === s) rows.push(r);
    if (!rows.length) continue;
    const name = S.steering[s] || 'other';
    box.append(el('h4', { class: `steer-${name}`, text: `${STEER_LABEL[name] || name} (${rows.length})` }));
    for (const r of rows) {
      const status = responseState(R, r); const finish = R.fin[r] >= 0 ? S.fin[R.fin[r]] : null;
      const meta = el('div', { class: 'meta' },
        sourceLabel(D, r) ? el('span', { class: 'badge source', text: `original: ${sourceLabel(D, r)}` }) : null,
        el('span', {}, 'sample ', el('b', { text: R.si[r] })),
        el('span', {}, 'score ', el('b', { text: fmt(R.score[r]) })),
        el('span', {}, 'raw ', el('b', { text: fmt(R.raw[r]) })),
        el('span', {}, 'rank ', el('b', { text: R.rank[r] ? R.rank[r] : '–' })),
        el('span', {}, 'tokens ', el('b', { text: R.tok[r] === null ? '–' : R.tok[r] })),
        el('span', {}, 'finish ', el('b', { text: finish || '–' })),
        finish === 'length' ? el('span', { class: 'badge trunc', text: 'truncated' }) : null,
        status !== 'ok' ? el('span', { class: 'badge error', text: status }) : null,
        marks.get(r) || []);
      const card = el('div', { class: `response${state.matcher.active && !state.matcher.test(r) ? ' dim' : ''}`, dataset: { row: r, steering: name } }, meta);
      const text = (texts.resp || [])[r - P.r0[p]];
      if (!R.gs[r]) card.append(...textBlock(text, query, R.len[r], texts.cut));
      if (R.err[r]) card.append(el('div', { class: 'reason', text: `${status === 'generation error' ? 'generation error' : 'score error'}: ${R.err[r]}` }));
      card.append(el('div', { class: 'note', text: `key ${R.key[r]}` }));
      box.append(card);
    }
  }

  box.append(el('h3', { text: 'Pairs' }));
  const list = el('ul', { class: 'pairs' });
  kept.forEach((i, n) => list.append(el('li', {}, el('span', { class: 'badge chosen', text: `pair ${n + 1} kept` }),
    `chosen ${sideName(D, D.kept.c[i])} over ${sideName(D, D.kept.r[i])}, margin ${fmt(D.kept.m[i], 4)}`)));
  dropped.forEach((i, n) => list.append(el('li', {}, el('span', { class: 'badge drop', text: `dropped: ${S.drop[D.dropped.reason[i]]}` }),
    `${sideName(D, D.dropped.a[i])} vs ${sideName(D, D.dropped.b[i])}`)));
  if (!kept.length && !dropped.length) list.append(el('li', { class: 'note', text: 'no pairs for this prompt' }));
  box.append(list);
  if (!D.dropped) {
    const part = D.totals.find((t) => t.round === P.round[p]) || D.totals[0];
    const counts = Object.entries((part && part.dropped) || {}).map(([k, v]) => `${k} ${v}`).join(', ');
    box.append(el('p', { class: 'note', text: `Dropped pairs are not recorded per prompt in this run (no ranked/dropped.parquet); ${part ? part.label : 'the run'} dropped: ${counts || 'none'}.` }));
  }
}
