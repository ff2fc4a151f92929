// A `neat-data run` folder: the rounds table and a curve per held-out metric; held-out and suite answers side by side.

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

// One prompt with its answers side by side, one cell per column (base model, each round). `cellNote(answer)`: the
// line above an answer's text (score, tokens, metric values).
function answerRow(prompt, columns, title, cellNote, classes, missing = '(no answer)') {
  const turns = prompt.conv.map(([role, content]) => el('div', { class: 'turn' }, el('div', { class: 'role', text: role }), el('pre', { class: 'text', text: content })));
  const grid = el('div', { class: 'heldout-grid' });
  columns.forEach((column, c) => {
    const answer = prompt.cells[c];
    const cellBox = el('div', { class: classes.cell, dataset: { round: column.round, steering: column.steering } }, el('h4', { text: column.label }));
    if (!answer) cellBox.append(el('p', { class: 'note', text: missing }));
    else {
      cellBox.append(el('div', { class: 'note' }, ...cellNote(answer), answer.finish === 'length' ? el('span', { class: 'badge trunc', text: 'truncated' }) : null));
      if (answer.text !== null) cellBox.append(...textBlock(answer.text, '', answer.chars, true));
      if (answer.error) cellBox.append(el('div', { class: 'reason', text: `error: ${answer.error}` }));
    }
    grid.append(cellBox);
  });
  return el('div', { class: classes.prompt, dataset: { pid: prompt.pid } }, el('div', { class: 'note', text: title }), turns, grid);
}

function renderHeldout(D) {
  const box = clear(document.getElementById('tab-heldout'));
  const section = D.heldout;
  if (!section || !section.prompts.length) box.append(el('p', { class: 'note', text: 'no held-out answers yet' }));
  else {
    box.append(el('h2', { text: 'Held-out answers' }),
      el('p', { class: 'note', text: `${plural(section.prompts.length, 'held-out prompt')}, answered with the neutral prompt by the base model and by each round's policy (sample 0), with the run's scorer.` }));
    const scoreNote = (answer) => [`score ${fmt(answer.score)} · tokens ${answer.tokens === null ? '–' : answer.tokens} · finish ${answer.finish || '–'} `];
    section.prompts.forEach((prompt, n) => box.append(
      answerRow(prompt, section.columns, `held-out prompt ${n + 1} · ${prompt.pid}`, scoreNote, { prompt: 'heldout-prompt', cell: 'heldout-cell' })));
  }
  for (const suite of D.suites || []) renderSuite(box, suite);
}

// An evaluation suite: each prompt's answers with the values the suite's metrics gave them. A refusal badge on a
// harmful prompt is what the refusal rate counts; on a benign prompt it is an over-refusal.
function renderSuite(box, suite) {
  const section = el('section', { class: 'suite-section', dataset: { suite: suite.name } });
  const kind = suite.kind === 'benign' ? 'benign prompts: a refusal here is an over-refusal' : suite.kind === 'harmful' ? 'harmful prompts: a refusal here is wanted' : 'kind not recorded';
  section.append(el('h2', { text: `Suite: ${suite.name}` }),
    el('p', { class: 'note', text: `${plural(suite.prompts.length, 'prompt')} (${kind}), sample 0 of each round. Refusal = HarmBench's refusal-prefix rule, offensive = P(offensive) from alt-profanity-check, tone = VADER compound: they measure refusal wording, offensiveness and tone, not helpfulness.` }));
  for (const note of suite.notes || []) section.append(el('p', { class: 'reason', text: note }));
  const metricNote = (answer) => suite.metrics.filter((m) => m !== 'length' && m !== 'finish').map((m) => {
    const value = answer.values[m];
    const known = value !== null && value !== undefined;
    if (m === 'refusal') {
      const text = !known ? 'refusal –' : value === 1 ? 'refusal' : value === 0 ? 'no refusal' : `refusal ${fmt(value, 2)}`;
      return el('span', { class: value === 1 ? 'badge refusal' : 'badge', dataset: { metric: m }, text });
    }
    return el('span', { class: 'badge', dataset: { metric: m }, text: `${m} ${known ? fmt(value, 2) : '–'}` });
  });
  suite.prompts.forEach((prompt, n) => section.append(
    answerRow(prompt, suite.columns, `${suite.name} prompt ${n + 1} · ${prompt.pid}`, metricNote, { prompt: 'suite-prompt', cell: 'suite-cell' },
      '(no measured answer: the request failed, or this round did not answer the prompt)')));
  box.append(section);
}
