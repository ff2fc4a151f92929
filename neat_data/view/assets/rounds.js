// A `neat-data run` folder: the rounds table and a curve per held-out metric; held-out answers side by side.

function renderRounds(D) {
  const box = clear(document.getElementById('tab-rounds'));
  const section = D.rounds;
  if (!section || !section.rounds.length) { box.append(el('p', { class: 'note', text: 'no rounds evaluated yet' })); return; }
  const cell = (series, i) => {
    const value = fmt(series.values[i]);
    if (series.low && series.low[i] !== null && series.high[i] !== null) return `${value} [${fmt(series.low[i])}, ${fmt(series.high[i])}]`;
    return value;
  };
  const head = el('tr', {}, el('th', { text: 'metric' }), section.rounds.map((k) => el('th', { text: k === 0 ? 'round 0 (base)' : `round ${k}` })));
  const body = section.series.map((series) => el('tr', { dataset: { metric: series.name } },
    el('td', { text: series.interval && series.values.every((v) => v === null) ? series.interval : series.name + (series.interval ? ` (± ${series.interval})` : '') }),
    section.rounds.map((_, i) => el('td', { text: cell(series, i) }))));
  box.append(el('h2', { text: 'Rounds' }),
    el('p', { class: 'note', text: 'Every numeric value of round_NN/eval/metrics.json (nested keys joined with "."), and from the run: pairs, training prompts/tokens, seconds. Intervals in brackets.' }),
    el('table', { class: 'metrics', id: 'rounds-table' }, el('thead', {}, head), el('tbody', {}, body)));
  const curves = el('div', { class: 'curves' });
  for (const series of section.series) {
    if (series.values.every((v) => v === null) && !series.low) continue;
    curve(curves, series.name, section.rounds, series.values, series.low, series.high);
  }
  box.append(el('h3', { text: 'Curves' }), curves);
}

function renderHeldout(D) {
  const box = clear(document.getElementById('tab-heldout'));
  const section = D.heldout;
  if (!section || !section.prompts.length) { box.append(el('p', { class: 'note', text: 'no held-out answers yet' })); return; }
  box.append(el('h2', { text: 'Held-out answers' }),
    el('p', { class: 'note', text: `${plural(section.prompts.length, 'held-out prompt')}, answered with the neutral prompt by the base model and by each round's policy (sample 0), with the run's scorer.` }));
  section.prompts.forEach((prompt, n) => {
    const turns = prompt.conv.map(([role, content]) => el('div', { class: 'turn' }, el('div', { class: 'role', text: role }), el('pre', { class: 'text', text: content })));
    const grid = el('div', { class: 'heldout-grid' });
    section.columns.forEach((column, c) => {
      const answer = prompt.cells[c];
      const cellBox = el('div', { class: 'heldout-cell', dataset: { round: column.round, steering: column.steering } }, el('h4', { text: column.label }));
      if (!answer) cellBox.append(el('p', { class: 'note', text: '(no answer)' }));
      else {
        cellBox.append(el('div', { class: 'note' }, `score ${fmt(answer.score)} · tokens ${answer.tokens === null ? '–' : answer.tokens} · finish ${answer.finish || '–'}`,
          answer.finish === 'length' ? el('span', { class: 'badge trunc', text: 'truncated' }) : null));
        if (answer.text !== null) cellBox.append(...textBlock(answer.text, "", answer.chars, true));
        if (answer.error) cellBox.append(el('div', { class: 'reason', text: `error: ${answer.error}` }));
      }
      grid.append(cellBox);
    });
    box.append(el('div', { class: 'heldout-prompt', dataset: { pid: prompt.pid } }, el('div', { class: 'note', text: `held-out prompt ${n + 1} · ${prompt.pid}` }), turns, grid));
  });
}
